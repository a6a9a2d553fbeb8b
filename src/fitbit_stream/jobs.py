"""One entry point per job: console scripts for Databricks ``python_wheel_task`` and ``entrypoints/``.

``fitbit-stream-bronze``, ``-silver``, ``-gold`` and ``-all`` each run their layers of the pipeline
(:meth:`Pipeline.run_once` with ``--once``, else :meth:`Pipeline.run_continuously` until stopped).
They take the same ``--config FILE`` and ``--set section.key=value`` arguments as ``fitbit-stream``.
A Databricks wheel task calls the function with no arguments and its parameters in ``sys.argv``,
so each function reads ``sys.argv`` and raises ``SystemExit`` with a non-zero code on failure.

Nothing here imports Spark until a job runs: ``--help`` works where pyspark is absent.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from datetime import date
from types import FrameType
from typing import TYPE_CHECKING, Literal, get_args

from fitbit_stream import __version__
from fitbit_stream.azure import AzureAuth
from fitbit_stream.config import load_config
from fitbit_stream.errors import FitbitStreamError

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

__all__ = ["JOBS", "Job", "all_layers", "bronze", "build_parser", "gold", "run_job", "silver"]

Job = Literal["bronze", "silver", "gold", "all"]
JOBS: tuple[Job, ...] = get_args(Job)

_DESCRIPTIONS: dict[Job, str] = {
    "bronze": "Kafka / landing files / SQL source -> bronze tables",
    "silver": "bronze -> silver tables (payload validation, CDC, sessions), then user_bins and date_lookup",
    "gold": "silver -> gold tables (workout and gym summaries, occupancy)",
    "all": "every layer in dependency order: bronze, silver, gold",
}


def build_parser(job: Job) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"fitbit-stream-{job}", description=f"fitbit_stream {job} job: {_DESCRIPTIONS[job]}."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--config", default=None, help="YAML config file (default: built-in local defaults)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one setting (repeatable), e.g. --set storage.catalog=fitbit_dev",
    )
    parser.add_argument(
        "--once",
        action="store_true",
        help="drain all available input and exit (scheduled jobs); without it, run until stopped (continuous)",
    )
    parser.add_argument(
        "--as-of",
        type=date.fromisoformat,
        default=None,
        help="reference date of user_bins (YYYY-MM-DD; default: today, UTC)",
    )
    parser.add_argument(
        "--reset-checkpoints",
        action="store_true",
        help="start queries whose checkpoint is missing or foreign on new checkpoints instead of refusing",
    )
    return parser


def _install_stop(stop: threading.Event, say: Callable[[str], None]) -> None:
    # Signal handlers can only be installed from the main thread; elsewhere the host stops us.
    if threading.current_thread() is not threading.main_thread():
        return

    def _stop(signum: int, _frame: FrameType | None) -> None:
        say(f"{signal.Signals(signum).name}: stopping queries cleanly")
        stop.set()

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)


def run_job(
    job: Job,
    argv: Sequence[str] | None = None,
    *,
    spark: SparkSession | None = None,
    auth: AzureAuth | None = None,
    stop: threading.Event | None = None,
) -> int:
    """Run one job with command-line ``argv``; the exit code (2 for a FitbitStreamError).

    ``spark`` reuses an existing session (tests) instead of :func:`get_spark`; ``auth`` injects a
    prepared :class:`AzureAuth`; ``stop`` ends a continuous run when set.
    """
    args = build_parser(job).parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    def say(message: str) -> None:
        print(f"[{job}] {message}", flush=True)

    try:
        config = load_config(args.config, args.overrides)
        auth = auth if auth is not None else AzureAuth(config)

        from fitbit_stream.pipeline import Pipeline
        from fitbit_stream.session import configure_session, get_spark

        if spark is None:
            spark = get_spark(config, auth=auth)
        else:
            configure_session(spark, config, auth)
        pipeline = Pipeline(spark, config, reset_checkpoints=args.reset_checkpoints)
        if args.once:
            started = time.monotonic()
            report = pipeline.run_once(layers=job, as_of=args.as_of, progress=say)
            print(report.table(), flush=True)
            say(f"drained in {time.monotonic() - started:.1f}s")
            return 0
        stop = stop if stop is not None else threading.Event()
        _install_stop(stop, say)
        say("running; SIGTERM or Ctrl-C stops cleanly")
        pipeline.run_continuously(stop, layers=job, as_of=args.as_of, progress=say)
        return 0
    except FitbitStreamError as exc:
        print(f"fitbit-stream-{job}: error: {exc}", file=sys.stderr, flush=True)
        return 2


def _main(job: Job) -> None:
    code = run_job(job, sys.argv[1:])
    if code:
        raise SystemExit(code)


def bronze() -> None:
    """``fitbit-stream-bronze``: sources -> bronze."""
    _main("bronze")


def silver() -> None:
    """``fitbit-stream-silver``: bronze -> silver (+ user_bins, date_lookup)."""
    _main("silver")


def gold() -> None:
    """``fitbit-stream-gold``: silver -> gold."""
    _main("gold")


def all_layers() -> None:
    """``fitbit-stream-all``: bronze, silver and gold in dependency order."""
    _main("all")
