"""The ``fitbit-stream`` console command."""

from __future__ import annotations

import argparse
import importlib.util
import logging
import sys
import time
from collections.abc import Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from fitbit_stream import __version__
from fitbit_stream.azure import AzureAuth
from fitbit_stream.config import Config, load_config
from fitbit_stream.errors import PlatformError
from fitbit_stream.jobs import (
    add_config_args,
    add_output_args,
    add_run_args,
    configure_output,
    preflight,
    report_error,
    run_pipeline,
)

if TYPE_CHECKING:
    from fitbit_stream.generator import GeneratorConfig, Progress

log = logging.getLogger("fitbit_stream")

#: The development tools: in the source tree (an editable install), not in the wheel a cluster installs.
_DEV_TOOLS = {
    "platform": ("fitbit_stream.platform",),
    "generate": ("fitbit_stream.generator",),
    "demo": ("fitbit_stream.platform", "fitbit_stream.generator"),
    "bench": ("fitbit_stream.bench", "fitbit_stream.platform", "fitbit_stream.generator"),
}


def _require_dev_tools(command: str) -> None:
    """One line naming what ``command`` misses and the fix, when the development tools are not installed."""
    missing = [name for name in _DEV_TOOLS[command] if importlib.util.find_spec(name) is None]
    if missing:
        raise PlatformError(
            f"{command} needs the development tools ({', '.join(missing)}), which the wheel does not ship: "
            "clone the repository and run ./scripts/setup.sh"
        )


def _instant(text: str) -> datetime:
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _add_generator_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--days", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--start", type=_instant, default=datetime(2025, 3, 3, tzinfo=UTC), help="simulated start")
    parser.add_argument(
        "--chaos", type=float, default=0.0, help="rate of duplicate/out-of-order/late/malformed records (0 = off)"
    )


def _config(args: argparse.Namespace) -> Config:
    return load_config(args.config, args.overrides)


# --- commands ------------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    return run_pipeline(args, args.job, say=lambda msg: print(f"[run] {msg}", flush=True))


def cmd_platform(args: argparse.Namespace) -> int:
    _require_dev_tools("platform")
    from fitbit_stream.platform.kafka import KafkaBroker
    from fitbit_stream.platform.postgres import PostgresServer

    config = _config(args)
    if args.cluster:
        return _platform_cluster(args.action, config, args.cluster_port)
    broker = KafkaBroker.from_config(config)
    postgres = PostgresServer.from_config(config) if args.postgres else None
    if args.action == "start":
        status = broker.start()
        broker.ensure_topics(config.kafka.topics.names(), config.kafka.partitions)
        verb = "started" if status.started else "already running"
        print(f"[platform] kafka {verb}: {status.bootstrap_servers} (pid {status.pid}, log {status.log_file})")
        if postgres is not None:
            pg = postgres.start()
            print(f"[platform] postgres running: {postgres.jdbc_url()} (pid {pg.pid})")
    elif args.action == "stop":
        print(f"[platform] kafka {'stopped' if broker.stop() else 'was not running'}")
        if postgres is not None:
            print(f"[platform] postgres {'stopped' if postgres.stop() else 'was not running'}")
    else:
        status = broker.status()
        state = f"running at {status.bootstrap_servers} (pid {status.pid})" if status.running else "stopped"
        print(f"[platform] kafka {state}; topics: {', '.join(status.topics) or '-'}")
        if postgres is not None:
            pg = postgres.status()
            print(f"[platform] postgres {'running' if pg.running else 'stopped'}")
    return 0


def _platform_cluster(action: str, config: Config, port: int) -> int:
    from fitbit_stream.platform.cluster import SparkCluster

    cluster = SparkCluster.from_config(config, port=port, web_port=port + 1003)
    if action == "start":
        status = cluster.start()
        verb = "started" if status.started else "already running"
        print(
            f"[platform] spark cluster {verb}: {status.master_url}, {status.alive_workers} workers "
            f"(web UI {status.web_url}, logs {cluster.log_dir})"
        )
        print(f"[platform] run on it: fitbit-stream run --set 'spark_conf[spark.master]={status.master_url}'")
    elif action == "stop":
        print(f"[platform] spark cluster {'stopped' if cluster.stop() else 'was not running'}")
    else:
        status = cluster.status()
        state = f"running at {status.master_url}, {status.alive_workers} workers alive" if status.running else "stopped"
        print(f"[platform] spark cluster {state}")
    return 0


def _knobs(args: argparse.Namespace, config: Config) -> GeneratorConfig:
    from fitbit_stream.generator import ChaosConfig, GeneratorConfig, realtime_start

    start = realtime_start() if args.pace == "realtime" else args.start
    return GeneratorConfig(
        seed=args.seed,
        users=args.users,
        days=args.days,
        start=start,
        topics=config.kafka.topics,
        max_session_hours=config.rules.max_session_hours,
        chaos=ChaosConfig.on(args.chaos) if args.chaos > 0 else ChaosConfig(),
    )


def _print_progress(p: Progress) -> None:
    print(f"[generate] {p.emitted:>10}/{p.total} emitted, {p.rate:,.0f}/s" + (" (done)" if p.done else ""), flush=True)


def cmd_generate(args: argparse.Namespace) -> int:
    _require_dev_tools("generate")
    from fitbit_stream.generator.run import GenerateRequest, generate

    config = _config(args)
    request = GenerateRequest(
        knobs=_knobs(args, config),
        since=args.since,
        until=args.until,
        main=args.wave in ("main", "all"),
        late_wave=args.wave in ("late", "all"),
        pace=args.pace,
        truth_dir=args.truth,
        sql_timestamps=args.sql_timestamps,
    )
    world, result = generate(config, request, progress=_print_progress)
    print(
        f"[generate] {result.kafka_messages} Kafka records and {result.sql_statements} SQL statements "
        f"in {result.elapsed_seconds:.1f}s (users={world.config.users}, days={world.config.days}, "
        f"seed={world.config.seed})" + (f"; ground truth in {args.truth}" if args.truth else "")
    )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Start the local platform, generate a realistic day, run the pipeline until drained, write the dashboard."""
    _require_dev_tools("demo")
    from fitbit_stream.dashboard.html import write_dashboard
    from fitbit_stream.generator.run import GenerateRequest, generate
    from fitbit_stream.pipeline import Pipeline
    from fitbit_stream.platform.kafka import KafkaBroker
    from fitbit_stream.session import get_spark

    config = _config(args)
    timings: list[tuple[str, float]] = []

    def stage(name: str, started: float) -> None:
        timings.append((name, time.monotonic() - started))
        print(f"[demo] {name}: {timings[-1][1]:.1f}s", flush=True)

    t = time.monotonic()
    if config.kafka.enabled:
        broker = KafkaBroker.from_config(config)
        broker.start()
        broker.ensure_topics(config.kafka.topics.names(), config.kafka.partitions)
    stage("start platform", t)

    t = time.monotonic()
    truth = Path(config.platform_dir) / "truth"
    generated = truth / ".demo-generated"
    if generated.exists():
        # The same seeded day again would collide with the SQL source's keys: a re-run only drains
        # what is there (nothing new, so nothing changes). `make clean` starts over.
        done = generated.read_text().strip()
        print(f"[demo] data already generated ({done}); remove data/ (make clean) to start over")
    else:
        request = GenerateRequest(knobs=_knobs(args, config), late_wave=False, truth_dir=truth)
        _, result = generate(config, request, progress=_print_progress)
        summary = f"{result.kafka_messages} Kafka records, {result.sql_statements} SQL rows"
        print(f"[demo] generated {summary}; truth in {truth}")
        generated.write_text(summary + "\n")
    stage("generate", t)

    t = time.monotonic()
    auth = AzureAuth(config)
    preflight(config, auth, lambda msg: print(f"[demo] {msg}", flush=True))
    spark = get_spark(config, auth=auth)
    report = Pipeline(spark, config).run_once(progress=lambda msg: print(f"[run] {msg}", flush=True))
    print(report.table())
    stage("pipeline", t)

    t = time.monotonic()
    page = write_dashboard(spark, config, Path(config.storage.root).parent / "dashboard.html")
    stage("dashboard", t)

    print(f"[demo] tables under {Path(config.storage.root).absolute()}")
    print(f"[demo] dashboard: open file://{page.absolute()} in a browser (it works offline)")
    print("[demo] elapsed per stage: " + ", ".join(f"{name} {secs:.1f}s" for name, secs in timings))
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    """Print the validated configuration (secrets are never part of it)."""
    config = _config(args)
    print(config.model_dump_json(indent=2))
    return 0


def _cmd_dashboard(args: argparse.Namespace) -> int:
    """Write the offline HTML dashboard over the gold tables (or, with --lakeview, the Databricks one).

    With --serve, serve it on localhost instead, refreshed while the pipeline runs, until Ctrl-C.
    """
    config = _config(args)
    if args.lakeview is not None:
        from fitbit_stream.dashboard.lakeview import write_lakeview

        print(write_lakeview(config, args.lakeview))
        return 0
    from fitbit_stream.session import get_spark

    if args.serve:
        from fitbit_stream.dashboard.server import serve

        serve(get_spark(config), config, host=args.host, port=args.port, say=lambda msg: print(msg, flush=True))
        return 0
    from fitbit_stream.dashboard.html import write_dashboard

    print(write_dashboard(get_spark(config), config, args.out))
    return 0


def _as_of(text: str | None) -> date:
    return date.fromisoformat(text) if text else datetime.now(UTC).date()


def _cmd_verify(args: argparse.Namespace) -> int:
    """Compare every silver and gold table with its batch recomputation from bronze."""
    from fitbit_stream.session import get_spark
    from fitbit_stream.verify import verify

    config = _config(args)
    report = verify(get_spark(config), config, as_of=_as_of(args.as_of), examples=args.examples)
    print(report.table())
    return 0 if report.ok else 1


def _cmd_rebuild(args: argparse.Namespace) -> int:
    """Empty silver and gold and derive them again from bronze."""
    if not args.yes:
        print(
            "fitbit-stream rebuild: this empties every silver and gold table and their checkpoints, then "
            "derives them again from bronze; stop the pipeline and pass --yes to proceed",
            file=sys.stderr,
        )
        return 2
    from fitbit_stream.rebuild import rebuild
    from fitbit_stream.session import get_spark

    config = _config(args)
    report = rebuild(
        get_spark(config),
        config,
        as_of=_as_of(args.as_of),
        keep_late=not args.drop_late,
        progress=lambda msg: print(f"[rebuild] {msg}", flush=True),
    )
    print(report.table())
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    """Every benchmark phase against the same-run baselines (bench/README.md)."""
    _require_dev_tools("bench")
    from fitbit_stream.bench.cli import cmd_bench

    return cmd_bench(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fitbit-stream",
        description="Wearable-fitness analytics with Spark Structured Streaming and Delta Lake.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    add_output_args(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the pipeline (Kafka/landing/SQL -> bronze -> silver -> gold)")
    add_config_args(run)
    add_run_args(run)
    run.add_argument(
        "--job",
        choices=["bronze", "silver", "gold", "all"],
        default="all",
        help="the layer to run (its inputs must be drained by the layers before it); default all",
    )
    run.set_defaults(func=cmd_run)

    plat = sub.add_parser("platform", help="start, stop or inspect the local Kafka broker (and PostgreSQL)")
    plat.add_argument("action", choices=["start", "stop", "status"])
    plat.add_argument("--postgres", action="store_true", help="also the local PostgreSQL server (e2e tests)")
    plat.add_argument(
        "--cluster",
        action="store_true",
        help="instead: a Spark standalone master and two workers on loopback (run the pipeline on it with "
        "--set 'spark_conf[spark.master]=spark://127.0.0.1:7077')",
    )
    plat.add_argument("--cluster-port", type=int, default=7077, help="the master's port (web UI: port + 1003)")
    add_config_args(plat)
    plat.set_defaults(func=cmd_platform)

    gen = sub.add_parser("generate", help="emit a deterministic synthetic world to Kafka/landing files and SQL")
    add_config_args(gen)
    _add_generator_args(gen)
    gen.add_argument("--since", type=_instant, default=None, help="emit from this simulated instant (ISO, UTC)")
    gen.add_argument("--until", type=_instant, default=None, help="emit up to this simulated instant (ISO, UTC)")
    gen.add_argument(
        "--wave",
        choices=["main", "late", "all"],
        default="main",
        help="main data, the held-back late records (chaos), or both",
    )
    gen.add_argument("--pace", choices=["fast", "realtime"], default="fast")
    gen.add_argument("--truth", type=Path, default=None, help="write the simulated ground truth here")
    gen.add_argument("--sql-timestamps", choices=["timestamp", "epoch"], default="timestamp")
    gen.set_defaults(func=cmd_generate)

    demo = sub.add_parser("demo", help="the main job end to end on local defaults")
    add_config_args(demo)
    _add_generator_args(demo)
    demo.set_defaults(func=cmd_demo, pace="fast")

    show = sub.add_parser("config", help="validate a config and print it")
    add_config_args(show)
    show.set_defaults(func=cmd_config)

    dash = sub.add_parser("dashboard", help="write the KPI dashboard over the gold tables as one offline HTML page")
    add_config_args(dash)
    dash.add_argument("--out", type=Path, default=Path("data/dashboard.html"), help="the HTML file to write")
    dash.add_argument(
        "--lakeview",
        type=Path,
        default=None,
        metavar="PATH",
        help="instead, write the Databricks Lakeview definition (.lvdash.json) for the config's catalog",
    )
    dash.add_argument("--serve", action="store_true", help="instead, serve the page live (refreshes as gold changes)")
    dash.add_argument("--host", default="127.0.0.1", help="--serve: the address to bind (default 127.0.0.1)")
    dash.add_argument("--port", type=int, default=8050, help="--serve: the port (default 8050; 0 = any free port)")
    dash.set_defaults(func=_cmd_dashboard)

    as_of_help = "reference date of user_bins (YYYY-MM-DD), as the run used it; default today (UTC)"
    check = sub.add_parser("verify", help="compare silver and gold with a batch recomputation from bronze")
    add_config_args(check)
    check.add_argument("--as-of", default=None, help=as_of_help)
    check.add_argument("--examples", type=int, default=5, help="example keys shown per table and kind of difference")
    check.set_defaults(func=_cmd_verify)

    redo = sub.add_parser("rebuild", help="empty silver and gold and derive them again from bronze (not Kafka)")
    add_config_args(redo)
    redo.add_argument("--yes", action="store_true", help="confirm: silver and gold tables and checkpoints are reset")
    redo.add_argument("--as-of", default=None, help=as_of_help)
    redo.add_argument(
        "--drop-late",
        action="store_true",
        help="forget the late decisions too (default: keep them and leave those records out)",
    )
    redo.set_defaults(func=_cmd_rebuild)

    bench = sub.add_parser(
        "bench", help="benchmarks: drain, incremental runs, steady latency, sustained rate, soak, scaling"
    )
    add_config_args(bench)
    try:
        from fitbit_stream.bench.cli import add_bench_args
    except ImportError:  # the wheel ships no benchmark: the command says so in one line
        bench.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    else:
        add_bench_args(bench)
    bench.set_defaults(func=_cmd_bench)
    # The output flags go before or after the command: `fitbit-stream --debug run` = `fitbit-stream run --debug`.
    for command in sub.choices.values():
        add_output_args(command, command=True)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_output(args)
    try:
        return int(args.func(args))
    except (Exception, KeyboardInterrupt) as exc:
        return report_error("fitbit-stream", exc, debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
