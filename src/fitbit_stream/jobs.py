"""One entry point per job: console scripts for Databricks ``python_wheel_task`` and ``entrypoints/``.

``fitbit-stream-bronze``, ``-silver``, ``-gold`` and ``-all`` each run their layers of the pipeline
(:meth:`Pipeline.run_once` with ``--once``, else :meth:`Pipeline.run_continuously` until stopped).
They take the same arguments as ``fitbit-stream run`` (one definition here serves both).
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
import traceback
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from datetime import date
from types import FrameType
from typing import TYPE_CHECKING, Literal, get_args

from fitbit_stream import __version__
from fitbit_stream.azure import AzureAuth
from fitbit_stream.config import Config, load_config
from fitbit_stream.errors import FitbitStreamError

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

__all__ = [
    "JOBS",
    "Job",
    "add_config_args",
    "add_output_args",
    "add_run_args",
    "all_layers",
    "bronze",
    "build_parser",
    "configure_output",
    "error_line",
    "gold",
    "preflight",
    "report_error",
    "run_job",
    "run_pipeline",
    "silver",
]

Job = Literal["bronze", "silver", "gold", "all"]
JOBS: tuple[Job, ...] = get_args(Job)

_DESCRIPTIONS: dict[Job, str] = {
    "bronze": "Kafka / landing files / SQL source -> bronze tables",
    "silver": "bronze -> silver tables (payload validation, CDC, sessions), then user_bins and date_lookup",
    "gold": "silver -> gold tables (workout and gym summaries, occupancy)",
    "all": "every layer in dependency order: bronze, silver, gold",
}

# --- arguments: one definition for ``fitbit-stream`` and the job scripts --------------------------


def add_config_args(parser: argparse.ArgumentParser) -> None:
    """``--config FILE`` and any number of ``--set KEY=VALUE``."""
    parser.add_argument("--config", default=None, help="YAML config file (default: built-in local defaults)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=(
            "override one setting (repeatable), e.g. --set kafka.bootstrap_servers=localhost:9092. "
            "VALUE is YAML: a list or a {mapping} sets a whole setting, e.g. --set 'kafka.topics={bpm: heart}'. "
            "A map key holding dots is quoted or bracketed: --set 'kafka.options.\"security.protocol\"=SASL_SSL' "
            "or --set 'spark_conf[spark.ui.enabled]=false'"
        ),
    )


def add_output_args(parser: argparse.ArgumentParser, *, command: bool = False) -> None:
    """``-v/--verbose`` and ``--debug``.

    ``command``: on a subcommand's parser, where the flags are accepted again; their default is left
    unset there so that the same flag given before the command is not reset by the subparser.
    """
    default: object = argparse.SUPPRESS if command else False
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=default,
        help="debug logging, and Spark's own WARN lines (hidden by default)",
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        default=default,
        help="as --verbose, plus the Python and Java stack traces of a failure (default: one line naming the cause)",
    )


def add_run_args(parser: argparse.ArgumentParser) -> None:
    """What a pipeline run takes besides the configuration: ``--once``, ``--as-of``, ``--reset-checkpoints``,
    ``--no-live``."""
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
        help="start queries whose checkpoint is missing or foreign on new checkpoints (the old ones are moved "
        "aside; bronze resumes after the records it holds) instead of refusing to start",
    )
    parser.add_argument(
        "--no-live",
        action="store_true",
        help="on a terminal, print a line per micro-batch instead of the live table of every query "
        "(output that is not a terminal always gets the lines)",
    )


def build_parser(job: Job) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"fitbit-stream-{job}", description=f"fitbit_stream {job} job: {_DESCRIPTIONS[job]}."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    add_output_args(parser)
    add_config_args(parser)
    add_run_args(parser)
    return parser


# --- output and errors ---------------------------------------------------------------------------


def configure_output(args: argparse.Namespace) -> None:
    """Python logging and Spark's log level for ``--verbose``/``--debug`` (quiet by default)."""
    from fitbit_stream.session import set_verbosity

    debug, verbose = bool(getattr(args, "debug", False)), bool(getattr(args, "verbose", False))
    logging.basicConfig(
        level=logging.DEBUG if debug or verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    set_verbosity("debug" if debug else "verbose" if verbose else "quiet")


def error_line(exc: BaseException) -> str:
    """One line saying why ``exc`` happened: its message without the Java stack trace py4j appends."""
    if isinstance(exc, FitbitStreamError):
        return str(exc)
    text = str(exc).split("JVM stacktrace:")[0]
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("at ")]
    if len(lines) > 1 and lines[0].startswith("An error occurred while calling"):
        lines = lines[1:]  # py4j's own first line names only the Java method: the cause follows
    first = lines[0].lstrip(": ") if lines else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def report_error(prog: str, exc: BaseException, *, debug: bool = False) -> int:
    """Print why a command failed and return its exit code.

    2 for a deliberate error (:class:`FitbitStreamError`: a setting, a source, a refused start),
    130 for Ctrl-C, 1 for anything else. One line unless ``debug``, which adds the stack trace.
    """
    if debug:
        traceback.print_exception(exc, file=sys.stderr)
    if isinstance(exc, KeyboardInterrupt):
        print(f"{prog}: interrupted", file=sys.stderr, flush=True)
        return 130
    hint = "" if debug or isinstance(exc, FitbitStreamError) else " (--debug shows the stack trace)"
    print(f"{prog}: error: {error_line(exc)}{hint}", file=sys.stderr, flush=True)
    return 2 if isinstance(exc, FitbitStreamError) else 1


# --- the run -------------------------------------------------------------------------------------


def _install_stop(stop: threading.Event, say: Callable[[str], None]) -> None:
    # Signal handlers can only be installed from the main thread; elsewhere the host stops us.
    if threading.current_thread() is not threading.main_thread():
        return

    def _stop(signum: int, _frame: FrameType | None) -> None:
        say(f"{signal.Signals(signum).name}: stopping queries cleanly")
        stop.set()

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)


def preflight(config: Config, auth: AzureAuth, say: Callable[[str], None]) -> None:
    """Credentials, then every enabled source (:mod:`fitbit_stream.io.preflight`), before Spark starts:
    a wrong setting fails in seconds with one line instead of a query's stack trace a minute later."""
    from fitbit_stream.io.preflight import check_sources

    if not auth.checked:
        auth.check()
    kafka_auth = auth.librdkafka_auth_settings() if config.kafka.enabled else None
    say("sources ok: " + "; ".join(check_sources(config, kafka_auth=kafka_auth)))


def run_pipeline(
    args: argparse.Namespace,
    job: Job,
    *,
    say: Callable[[str], None],
    spark: SparkSession | None = None,
    auth: AzureAuth | None = None,
    stop: threading.Event | None = None,
) -> int:
    """Run ``job``'s layers as ``args`` say (``--config``/``--set``, ``--once``, ``--as-of``, ...).

    Credentials and sources are checked before the session is built. Errors propagate; the caller
    reports them (:func:`report_error`).
    """
    config = load_config(args.config, args.overrides)
    auth = auth if auth is not None else AzureAuth(config)
    preflight(config, auth, say)

    from fitbit_stream.io.live import LiveProgress, live_wanted, quarantine_counter
    from fitbit_stream.pipeline import Pipeline
    from fitbit_stream.session import configure_session, get_spark

    if spark is None:
        spark = get_spark(config, auth=auth)
    else:
        configure_session(spark, config, auth)
    pipeline = Pipeline(spark, config, reset_checkpoints=args.reset_checkpoints)
    # On a terminal, a table of every query redrawn in place; elsewhere (CI, logs, Databricks) lines.
    live = live_wanted(sys.stdout, no_live=bool(getattr(args, "no_live", False)), say=say)
    view = LiveProgress(
        pipeline.query_names(job),
        say=say,
        live=live,
        quarantine=quarantine_counter(spark, config),
        title=f"fitbit_stream {job}" + (" --once" if args.once else ""),
    )
    if args.once:
        started = time.monotonic()
        # Without the live table a drain shows one line per query as it ends (the pipeline's).
        with view.showing() if live else nullcontext(view):
            report = pipeline.run_once(
                layers=job, as_of=args.as_of, progress=say, on_progress=view.on_progress if live else None
            )
        print(report.table(), flush=True)
        say(f"drained in {time.monotonic() - started:.1f}s")
        return 0
    stop = stop if stop is not None else threading.Event()
    _install_stop(stop, say)
    say("running; SIGTERM or Ctrl-C stops cleanly")
    # The view shows each micro-batch (a line, or the table's row): the recorder shows nothing itself.
    with view.showing():
        pipeline.run_continuously(
            stop, layers=job, as_of=args.as_of, progress=lambda _line: None, on_progress=view.on_progress
        )
    return 0


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
    configure_output(args)

    def say(message: str) -> None:
        print(f"[{job}] {message}", flush=True)

    try:
        return run_pipeline(args, job, say=say, spark=spark, auth=auth, stop=stop)
    except (Exception, KeyboardInterrupt) as exc:
        return report_error(f"fitbit-stream-{job}", exc, debug=args.debug)


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
