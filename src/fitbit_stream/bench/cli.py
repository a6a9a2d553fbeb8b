"""The benchmark's command line: every flag of :class:`~fitbit_stream.bench.runner.BenchOptions`.

``python -m fitbit_stream.bench`` (what ``scripts/bench.sh`` runs) parses with :func:`build_parser`;
``fitbit-stream bench`` can serve the same flags by calling :func:`add_bench_args` on its subparser
and :func:`cmd_bench` as its function. Nothing here imports Spark: ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from fitbit_stream.bench.options import PHASES, BenchOptions
from fitbit_stream.errors import InvalidConfigError

__all__ = ["add_bench_args", "build_parser", "cmd_bench", "main", "options_from_args", "parse_phases", "parse_scales"]

_PHASES_HELP = (
    "comma-separated, run in this order: drain (backlog drained vs the raw copy), incremental (run --once "
    "as a subprocess), steady (latency and catch-up at --rate), sustained (rate search, pipeline and copy), "
    "soak (--soak-seconds at --rate), scaling (drain at each of --scales); or all (default)"
)


def parse_phases(text: str) -> tuple[str, ...]:
    """``"all"`` or a comma-separated list of phases (checked by ``BenchOptions``)."""
    names = tuple(p.strip() for p in text.split(",") if p.strip())
    return PHASES if names == ("all",) else names


def parse_scales(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise InvalidConfigError(f"bench scales: comma-separated numbers, got {text!r}") from None


def add_bench_args(parser: argparse.ArgumentParser) -> None:
    """The benchmark's flags (not ``--config``/``--set``, which the caller adds)."""
    d = BenchOptions()
    add = parser.add_argument
    add("--phases", default="all", help=_PHASES_HELP)
    add("--scale", type=float, default=d.scale, help="drain backlog size; 1.0 = about 1M heart-rate readings")
    add("--seed", type=int, default=d.seed)
    add("--chaos", type=float, default=d.chaos, help="rate of bad/duplicate records in the backlog")
    add(
        "--no-baselines",
        action="store_true",
        help="skip the raw-Kafka and hand-written baselines and the copy's search",
    )
    add("--rate", type=float, default=d.rate, help="steady and soak: events produced per second")
    add("--steady-seconds", type=float, default=d.steady_seconds, help="steady: seconds of production")
    add(
        "--warmup-seconds", type=float, default=d.warmup_seconds, help="steady, sustained, soak: first seconds left out"
    )
    add("--grace-seconds", type=float, default=d.grace_seconds, help="steady, soak: wait for catch-up at most")
    add("--trigger-seconds", type=float, default=d.trigger_seconds, help="processing-time trigger of the queries")
    add("--sustain-seconds", type=float, default=d.sustain_seconds, help="sustained: seconds of production per step")
    add("--sustain-start-rate", type=float, default=d.sustain_start_rate, help="sustained: the first step's rate")
    add("--sustain-max-rate", type=float, default=d.sustain_max_rate, help="sustained: the search's cap")
    add(
        "--sustain-resolution",
        type=float,
        default=d.sustain_resolution,
        help="sustained: bisect until the highest rate held and the lowest failed are within this fraction",
    )
    add("--sustain-p99-seconds", type=float, default=d.sustain_p99_seconds, help="sustained: the p99 bar")
    add("--sustain-max-steps", type=int, default=d.sustain_max_steps, help="sustained: steps per search at most")
    add(
        "--sustain-grace-seconds",
        type=float,
        default=d.sustain_grace_seconds,
        help="sustained: wait for a step's records at most (a step that fell behind fails)",
    )
    add("--incremental-records", type=int, default=d.incremental_records, help="incremental: new records, 2nd run")
    add("--soak-seconds", type=float, default=d.soak_seconds, help="soak: seconds of production at --rate")
    add(
        "--soak-window-seconds",
        type=float,
        default=d.soak_window_seconds,
        help="soak: length of the first (after warm-up) and last windows compared",
    )
    add("--scales", default=",".join(f"{s:g}" for s in d.scales), help="scaling: comma-separated drain scales")
    add("--load-warning", type=float, default=d.load_warning, help="warn when a phase starts above this load")
    add(
        "--settle-seconds",
        type=float,
        default=d.settle_seconds,
        help="before each phase, wait up to this long for the load to fall below --load-warning (0: never)",
    )
    add("--work-dir", type=Path, default=d.work_dir, help="broker, tables, checkpoints")
    add("--out", type=Path, default=d.out_dir, help="where the JSON and table go")
    add("--driver-memory", default=d.driver_memory, help="the pipeline's heap (default: the local session's own)")
    add("--keep", action="store_true", help="keep the run's work directory")


def options_from_args(args: argparse.Namespace) -> BenchOptions:
    """The :class:`BenchOptions` the parsed flags ask for."""
    return BenchOptions(
        scale=args.scale,
        seed=args.seed,
        chaos=args.chaos,
        phases=parse_phases(args.phases),
        baselines=not args.no_baselines,
        rate=args.rate,
        steady_seconds=args.steady_seconds,
        warmup_seconds=args.warmup_seconds,
        grace_seconds=args.grace_seconds,
        trigger_seconds=args.trigger_seconds,
        work_dir=args.work_dir,
        out_dir=args.out,
        driver_memory=args.driver_memory,
        keep=args.keep,
        sustain_seconds=args.sustain_seconds,
        sustain_start_rate=args.sustain_start_rate,
        sustain_max_rate=args.sustain_max_rate,
        sustain_resolution=args.sustain_resolution,
        sustain_p99_seconds=args.sustain_p99_seconds,
        sustain_max_steps=args.sustain_max_steps,
        sustain_grace_seconds=args.sustain_grace_seconds,
        incremental_records=args.incremental_records,
        soak_seconds=args.soak_seconds,
        soak_window_seconds=args.soak_window_seconds,
        scales=parse_scales(args.scales),
        load_warning=args.load_warning,
        settle_seconds=args.settle_seconds,
    )


def cmd_bench(args: argparse.Namespace) -> int:
    """Run the phases; print the table (figures, targets, verdicts)."""
    from fitbit_stream.bench.report import format_report
    from fitbit_stream.bench.runner import run_bench
    from fitbit_stream.config import load_config

    options = options_from_args(args)
    result = run_bench(load_config(args.config, args.overrides), options, show=lambda msg: print(msg, flush=True))
    print(format_report(result), flush=True)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from fitbit_stream.jobs import add_config_args, add_output_args

    parser = argparse.ArgumentParser(
        prog="python -m fitbit_stream.bench",
        description="Benchmark: drain, incremental run, steady latency, sustained rate, soak and scale sweep, "
        "against the raw Kafka->Delta copy; figures and the targets of issue 13.",
    )
    add_output_args(parser)
    add_config_args(parser)
    add_bench_args(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from fitbit_stream.jobs import configure_output, report_error

    args = build_parser().parse_args(argv)
    configure_output(args)
    try:
        return cmd_bench(args)
    except (Exception, KeyboardInterrupt) as exc:
        return report_error("fitbit-stream bench", exc, debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
