"""The ``fitbit-stream`` console command."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from collections.abc import Sequence
from types import FrameType

from fitbit_stream import __version__
from fitbit_stream.config import Config, load_config
from fitbit_stream.errors import FitbitStreamError

log = logging.getLogger("fitbit_stream")


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, help="YAML config file (default: built-in local defaults)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one setting (repeatable), e.g. --set kafka.bootstrap_servers=localhost:9092",
    )


def _config(args: argparse.Namespace) -> Config:
    return load_config(args.config, args.overrides)


# --- commands ------------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    from fitbit_stream.pipeline import Pipeline
    from fitbit_stream.session import get_spark

    config = _config(args)
    spark = get_spark(config)
    pipeline = Pipeline(spark, config)
    if args.once:
        started = time.monotonic()
        report = pipeline.run_once(progress=lambda msg: print(f"[run] {msg}", flush=True))
        print(report.table())
        print(f"[run] drained in {time.monotonic() - started:.1f}s")
        return 0
    stop = threading.Event()

    def _stop(signum: int, _frame: FrameType | None) -> None:
        print(f"[run] {signal.Signals(signum).name}: stopping queries cleanly", flush=True)
        stop.set()

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    print("[run] running; Ctrl-C stops cleanly", flush=True)
    pipeline.run_continuously(stop)
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    """Print the validated configuration (secrets are never part of it)."""
    config = _config(args)
    print(config.model_dump_json(indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fitbit-stream",
        description="Wearable-fitness analytics with Spark Structured Streaming and Delta Lake.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the pipeline (Kafka/landing/SQL -> bronze -> silver -> gold)")
    _add_config_args(run)
    run.add_argument("--once", action="store_true", help="drain all available input, then exit")
    run.set_defaults(func=cmd_run)

    show = sub.add_parser("config", help="validate a config and print it")
    _add_config_args(show)
    show.set_defaults(func=cmd_config)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args))
    except FitbitStreamError as exc:
        print(f"fitbit-stream: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
