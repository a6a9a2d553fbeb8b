"""``fitbit-stream bench``: one command from a fresh clone to the figures, their ratios and targets.

A run owns everything it measures: a Kafka broker on free loopback ports with its data under the
run's work directory, its own SQLite source, table and checkpoint roots (and topics) per phase and
per step, and one Spark session whose UI (loopback, free port) serves the stage and job figures.
Nothing is shared with another run or with ``data/lake``; the work directory is deleted afterwards
unless ``keep``.

Phases (``PHASES``, in this order; ``bench/README.md`` has the rules behind each figure):

1. drain: preload a seeded backlog; run the baselines ``kafka_to_noop`` and ``kafka_to_delta_copy``;
   drain bronze -> silver -> gold with ``Pipeline.run_once`` (available-now triggers); run the
   hand-written heart-rate baseline over the same bronze table. Per-stage figures come from the
   progress the pipeline persists in ``_query_progress``; memory from the Spark UI's stage peaks.
2. incremental: ``fitbit-stream run --once`` as a subprocess on the drained state, with nothing new
   and with 1,000 new records; wall time of the whole command.
3. steady: every query running with processing-time triggers, records produced at ``rate`` for
   ``steady_seconds``; latencies from the tables' change feeds, catch-up from the progress.
4. sustained: the highest rate the pipeline holds (bounded backlog, p99 event->silver <= 5 s), by a
   search over rates of ``sustain_seconds`` steps; the same for the raw copy; their ratio.
5. soak: ``soak_seconds`` at ``rate``; batch p95 and Delta file counts, last window against first.
6. scaling: the drain at each of ``scales``, as seconds per million Kafka records.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import resource
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from fitbit_stream.bench.options import AS_OF, PHASES, BenchOptions
from fitbit_stream.bench.report import (
    BASELINE_COPY,
    BASELINE_HANDWRITTEN,
    BASELINE_NOOP,
    STAGE_ALONE,
    BenchResult,
    LatencyStats,
    QueryFigures,
    SustainedFigures,
    figures_from_progress,
    format_report,
    job_window,
    peak_memory,
)
from fitbit_stream.bench.search import load_warning, settle
from fitbit_stream.config import Config, KafkaTopics
from fitbit_stream.errors import PipelineError
from fitbit_stream.session import jars_base
from fitbit_stream.topology import kafka_queries

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from fitbit_stream.bench.backlog import Backlog
    from fitbit_stream.bench.load import LoadOutcome
    from fitbit_stream.bench.sparkui import SparkUi
    from fitbit_stream.platform.kafka import KafkaBroker

__all__ = ["PHASES", "BenchOptions", "bench_spark_conf", "machine_info", "run_bench", "write_results"]

log = logging.getLogger(__name__)

# --- environment ---------------------------------------------------------------------------------


def _free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def bench_spark_conf(driver_memory: str | None) -> dict[str, str]:
    """Settings the figures need: a loopback UI whose stages keep their executor-metric peaks (and
    the driver memory asked for; by default the local session's own)."""
    return {
        **({"spark.driver.memory": driver_memory} if driver_memory else {}),
        "spark.driver.host": "127.0.0.1",
        "spark.driver.bindAddress": "127.0.0.1",
        "spark.ui.enabled": "true",
        "spark.ui.port": "0",
        "spark.ui.retainedJobs": "200000",
        "spark.ui.retainedStages": "200000",
        "spark.ui.retainedTasks": "1000",
        "spark.sql.ui.retainedExecutions": "100000",
        # Memory sampled four times a second; each task's end reports the peaks to its stage (a
        # shorter heartbeat than the default 10 s only races the block manager's registration).
        "spark.executor.metrics.pollingInterval": "250ms",
        "spark.executor.processTreeMetrics.enabled": "true",
        "spark.sql.streaming.numRecentProgressUpdates": "100000",
        # Idle queries say so every second: the steady phase waits for them to catch up.
        "spark.sql.streaming.noDataProgressEventInterval": "1000",
    }


def _phase_config(
    base: Config,
    root: Path,
    *,
    bootstrap: str,
    spark_conf: dict[str, str],
    topics: KafkaTopics | None = None,
    trigger_seconds: float | None = None,
) -> Config:
    """``base`` pointed at the run's broker, SQLite file, table and checkpoint roots."""
    kafka = base.kafka.model_copy(
        update={"enabled": True, "bootstrap_servers": bootstrap, **({"topics": topics} if topics else {})}
    )
    streaming = base.streaming.model_copy(
        update={"trigger_interval_seconds": trigger_seconds or base.streaming.trigger_interval_seconds}
    )
    return base.model_copy(
        update={
            "storage": base.storage.model_copy(
                update={"root": str(root / "lake"), "checkpoint_root": str(root / "checkpoints"), "catalog": None}
            ),
            "kafka": kafka,
            "landing": base.landing.model_copy(update={"enabled": False}),
            "sql": base.sql.model_copy(
                update={"enabled": True, "url": f"jdbc:sqlite:{root / 'source.db'}", "user": None, "password_env": None}
            ),
            "streaming": streaming,
            "spark_conf": {**spark_conf, **base.spark_conf},
            "platform_dir": str(root / "platform"),
        }
    )


def _read_text(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def _topics(prefix: str) -> KafkaTopics:
    return KafkaTopics(user_info=f"{prefix}_user_info", bpm=f"{prefix}_bpm", workout=f"{prefix}_workout")


def _load_avg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def machine_info() -> dict[str, Any]:
    """What the figures were measured on (no host name: the hardware and the load are what matter)."""
    cpu = next(
        (line.split(":", 1)[1].strip() for line in _read_text("/proc/cpuinfo").splitlines() if "model name" in line),
        platform.processor() or "?",
    )
    mem_kb = next(
        (int(line.split()[1]) for line in _read_text("/proc/meminfo").splitlines() if line.startswith("MemTotal")),
        0,
    )

    def pkg(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "?"

    try:
        java = subprocess.run(["java", "-version"], capture_output=True, text=True, timeout=30, check=False)
        java_version = (java.stderr or java.stdout).splitlines()[0].strip()
    except (OSError, subprocess.TimeoutExpired, IndexError):
        java_version = "?"
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(mem_kb / 1024 / 1024, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "pyspark": pkg("pyspark"),
        "delta_spark": pkg("delta-spark"),
        "java": java_version,
        "load_before": _load_avg(),
    }


# --- the drain phase -----------------------------------------------------------------------------


def _library_progress(spark: SparkSession, config: Config) -> dict[str, list[dict[str, Any]]]:
    from fitbit_stream.io.tables import Tables

    tables = Tables(config)
    rows = (
        tables.read(spark, tables.ref("_query_progress", layer="ops")).select("query_name", "progress_json").collect()
    )
    out: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        out.setdefault(str(row["query_name"]), []).append(json.loads(row["progress_json"]))
    return out


def _with_memory(figures: QueryFigures, stages: Sequence[dict[str, Any]]) -> QueryFigures:
    since, until = job_window(figures)
    heap, rss = peak_memory(stages, since=since, until=until)
    return figures.with_memory(heap, rss)


def _preload(
    config: Config, options: BenchOptions, *, scale: float, broker: KafkaBroker, show: Callable[[str], None]
) -> Backlog:
    """The seeded backlog at ``scale`` into ``config``'s topics and SQLite source."""
    from fitbit_stream.bench.backlog import backlog_knobs, preload
    from fitbit_stream.generator.emit import Progress

    knobs = backlog_knobs(config, scale=scale, seed=options.seed, chaos=options.chaos)

    def generated(p: Progress) -> None:
        show(f"[bench] backlog {p.emitted:,}/{p.total:,} records, {p.rate:,.0f}/s" + (" (done)" if p.done else ""))

    show(f"[bench] preloading the backlog: {knobs.users} members, {knobs.days:g} day, seed {knobs.seed}")
    return preload(config, knobs, broker=broker, progress=generated)


def _drain(
    spark: SparkSession,
    config: Config,
    options: BenchOptions,
    *,
    broker: KafkaBroker,
    run_dir: Path,
    ui: SparkUi | None,
    result: BenchResult,
    show: Callable[[str], None],
) -> None:
    from fitbit_stream.bench.baselines import (
        handwritten_heart_rate,
        kafka_to_delta_copy,
        kafka_to_noop,
        library_heart_rate,
    )
    from fitbit_stream.bench.sparkui import job_profile, sql_profile
    from fitbit_stream.io.tables import Tables
    from fitbit_stream.pipeline import Pipeline

    backlog = _preload(config, options, scale=options.scale, broker=broker, show=show)
    result.backlog = {**asdict(backlog), "records_per_second": round(backlog.records_per_second)}
    base = run_dir / "baselines"
    if options.baselines:
        show("[bench] baseline: Kafka -> noop")
        result.baselines[BASELINE_NOOP] = kafka_to_noop(spark, config, checkpoint=str(base / "checkpoints" / "noop"))
        show("[bench] baseline: Kafka -> Delta copy")
        result.baselines[BASELINE_COPY] = kafka_to_delta_copy(
            spark, config, path=str(base / "copy"), checkpoint=str(base / "checkpoints" / "copy")
        )

    started = time.monotonic()
    pipeline = Pipeline(spark, config)
    result.profile["pipeline_setup_seconds"] = round(time.monotonic() - started, 3)
    show("[bench] draining bronze -> silver -> gold (available-now)")
    wall_start = datetime.now(UTC)
    started = time.monotonic()
    report = pipeline.run_once(as_of=AS_OF, progress=lambda msg: show(f"[run] {msg}"))
    elapsed = time.monotonic() - started
    wall_end = datetime.now(UTC)

    progress = _library_progress(spark, config)
    stages: list[QueryFigures] = []
    for stage in report.stages:
        if stage.name in progress:
            stages.append(
                figures_from_progress(stage.name, progress[stage.name], elapsed_seconds=round(stage.seconds, 3))
            )
        else:  # the batch parts of a run (SQL poll, user_bins + date_lookup) have no progress
            stages.append(QueryFigures(stage.name, stage.rows, 0, round(stage.seconds, 3), round(stage.seconds, 3)))
    kafka = kafka_queries(config.streaming.mode)
    kafka_rows = sum(s.rows for s in stages if s.name in kafka) or backlog.kafka_records
    pipeline_figures = QueryFigures(
        name="pipeline",
        rows=kafka_rows,
        batches=sum(s.batches for s in stages),
        wall_seconds=round(elapsed, 3),
        elapsed_seconds=round(elapsed, 3),
        state_rows=max((s.state_rows for s in stages), default=0),
        first_batch_start=wall_start.isoformat(),
        last_batch_end=wall_end.isoformat(),
    )

    if options.baselines:
        show("[bench] baseline: hand-written heart-rate silver")
        bronze_path = str(Tables(config).ref("kafka_multiplex_bz").path)
        result.baselines[BASELINE_HANDWRITTEN] = handwritten_heart_rate(
            spark,
            config,
            bronze_path=bronze_path,
            path=str(base / "heart_rate"),
            checkpoint=str(base / "checkpoints" / "heart_rate"),
        )
        show("[bench] the library's silver_bpm alone, the same way")
        result.baselines[STAGE_ALONE] = library_heart_rate(
            spark,
            config,
            bronze_path=bronze_path,
            root=str(base / "alone"),
            checkpoint=str(base / "checkpoints" / "alone"),
        )

    ui_stages = ui.stages() if ui else []
    ui_jobs = ui.jobs() if ui else []
    ui_sql = ui.sql() if ui else []
    result.stages = [_with_memory(s, ui_stages) if s.batches else s for s in stages]
    result.pipeline = _with_memory(pipeline_figures, ui_stages)
    result.baselines = {k: _with_memory(v, ui_stages) for k, v in result.baselines.items()}
    for figures in [*result.stages, *result.baselines.values()]:
        if not figures.batches:
            continue
        since, until = job_window(figures)
        result.profile.setdefault("stages", {})[figures.name] = {
            "durations_ms": figures.durations_ms,
            "jobs": job_profile(ui_jobs, since=since, until=until),
            "sql": sql_profile(ui_sql, since=since, until=until),
        }
    accounted = sum(s.elapsed_seconds or 0 for s in stages)
    result.profile["pipeline_between_stages_seconds"] = round(elapsed - accounted, 3)


# --- phases on a running system: steady, sustained, soak -----------------------------------------


def _state_series(batches: dict[str, list[tuple[float, int, int, int]]]) -> Callable[[float], int]:
    def state_at(at: float) -> int:
        total = 0
        for rows in batches.values():
            last = [state for t, _n, _ms, state in rows if t <= at]
            total += last[-1] if last else 0
        return total

    return state_at


def _pipeline_load(
    spark: SparkSession,
    config: Config,
    options: BenchOptions,
    *,
    broker: KafkaBroker,
    seconds: float,
    show: Callable[[str], None],
) -> LoadOutcome:
    """The pipeline under production at ``options.rate`` for ``seconds`` (steady and soak)."""
    from fitbit_stream.bench.load import run_load

    return run_load(
        spark,
        config,
        broker=broker,
        system="pipeline",
        rate=options.rate,
        seconds=seconds,
        warmup=options.warmup_seconds,
        grace=options.grace_seconds,
        seed=options.seed,
        show=show,
    )


def _steady(
    spark: SparkSession,
    config: Config,
    options: BenchOptions,
    *,
    broker: KafkaBroker,
    ui: SparkUi | None,
    result: BenchResult,
    show: Callable[[str], None],
) -> None:
    from fitbit_stream.bench.report import SteadyFigures, percentile, state_growth_per_minute
    from fitbit_stream.bench.search import backlog_ends
    from fitbit_stream.bench.sparkui import job_profile, sql_profile
    from fitbit_stream.bench.steady import measure

    show(
        f"[bench] steady: {options.rate:g} events/s for {options.steady_seconds:g}s, "
        f"trigger {options.trigger_seconds:g}s"
    )
    out = _pipeline_load(spark, config, options, broker=broker, seconds=options.steady_seconds, show=show)
    show(
        "[bench] steady: production ended; "
        + (
            f"caught up {out.catch_up_seconds:.1f}s later"
            if out.catch_up_seconds is not None
            else "NOT caught up (grace ran out)"
        )
    )
    result.notes += [f"steady: {note}" for note in out.notes]
    batches = out.watch.queries()
    lo, hi = out.window_ms(options.warmup_seconds)
    measured = measure(
        spark,
        config,
        window_start=lo / 1000,
        window_end=hi / 1000,
        bucket_seconds=options.bucket_seconds,
        production_start=out.started,
        state_series=_state_series(batches),
        expected_readings=out.producer.readings_between(lo, hi),
    )
    batch_ms: dict[str, dict[str, float | int | None]] = {}
    for name, rows in sorted(batches.items()):
        durations = [float(ms) for t, n, ms, _ in rows if n > 0 and out.started <= t <= out.settled]
        batch_ms[name] = {
            "batches": len(durations),
            "p50_ms": percentile(durations, 0.5),
            "p99_ms": percentile(durations, 0.99),
        }
    since, until = datetime.fromtimestamp(out.started, UTC), datetime.fromtimestamp(out.settled, UTC)
    heap, rss = peak_memory(ui.stages(), since=since, until=until) if ui else (None, None)
    if ui is not None:
        # Queries run side by side here: their jobs, each query's own in sequence, tell who keeps
        # the two cores busy; the SQL executions tell with what.
        result.profile["steady"] = {
            "jobs_by_query": job_profile(ui.jobs(), since=since, until=until, top=20, by_query=True),
            "sql_by_query": sql_profile(ui.sql(), since=since, until=until, top=30, by_query=True),
        }
    backlog_start, backlog_end = backlog_ends(out.lag, window_start=lo / 1000, window_end=hi / 1000)
    result.steady = SteadyFigures(
        rate_per_second=options.rate,
        session_seconds=out.plan.session_seconds,
        catch_up_seconds=out.catch_up_seconds,
        duration_seconds=options.steady_seconds,
        warmup_seconds=options.warmup_seconds,
        trigger_seconds=options.trigger_seconds,
        produced=out.producer.produced,
        achieved_rate_per_second=round(out.producer.achieved_rate(), 1),
        event_to_silver=measured.event_to_silver,
        event_to_gold=measured.event_to_gold,
        event_to_completed_workout=measured.event_to_completed_workout,
        series=measured.series,
        state_growth_per_minute=state_growth_per_minute(measured.series, after_seconds=options.warmup_seconds),
        ops_state_growth_per_minute=state_growth_per_minute(
            measured.series, after_seconds=options.warmup_seconds, ops=True
        ),
        batch_ms=batch_ms,
        heap_peak_bytes=heap,
        rss_peak_bytes=rss,
        queries=out.queries,
        backlog_start=backlog_start,
        backlog_end=backlog_end,
    )
    horizon = config.rules.lateness_horizon_minutes
    if options.steady_seconds < 2 * horizon * 60:
        result.notes.append(
            f"steady ran {options.steady_seconds:g}s, less than twice the lateness horizon ({2 * horizon:g} min): "
            "the state-growth figure covers what was run, not the bar's full span"
        )


def _cleanup(broker: KafkaBroker, config: Config, root: Path, *, keep: bool) -> None:
    """A step's topics and directory go once its figures are taken (a search writes gigabytes)."""
    if keep:
        return
    try:
        broker.delete_topics(config.kafka.topics.names())
    except Exception:  # disk, not figures: a failure here is logged, not fatal
        log.exception("bench: could not delete the topics of %s", root)
    shutil.rmtree(root, ignore_errors=True)


def _search(
    spark: SparkSession,
    base: Config,
    options: BenchOptions,
    *,
    system: Literal["pipeline", "copy"],
    broker: KafkaBroker,
    run_dir: Path,
    spark_conf: dict[str, str],
    result: BenchResult,
    show: Callable[[str], None],
) -> SustainedFigures:
    """The highest rate ``system`` holds: steps on fresh topics, tables and checkpoints each."""
    from fitbit_stream.bench.load import copy_latency, run_load
    from fitbit_stream.bench.report import RateStep
    from fitbit_stream.bench.search import backlog_ends, judge_step, next_rate, sustained_rate
    from fitbit_stream.bench.steady import measure

    label = "pipeline" if system == "pipeline" else BASELINE_COPY
    steps: list[RateStep] = []

    def upcoming() -> float | None:
        return next_rate(
            steps,
            start=options.sustain_start_rate,
            max_rate=options.sustain_max_rate,
            min_rate=options.sustain_min_rate,
            resolution=options.sustain_resolution,
            max_steps=options.sustain_max_steps,
        )

    while (rate := upcoming()) is not None:
        n = len(steps) + 1
        root = run_dir / "sustained" / f"{system}-{n:02d}"
        config = _phase_config(
            base,
            root,
            bootstrap=broker.bootstrap_servers,
            spark_conf=spark_conf,
            topics=_topics(f"sus_{system}_{n:02d}"),
            trigger_seconds=options.trigger_seconds,
        )
        load_before = os.getloadavg()[0]
        show(
            f"[bench] sustained {label}: step {n} at {rate:,g} events/s for {options.sustain_seconds:g}s "
            f"(load {load_before:.2f})"
        )
        copy_path = str(root / "copy")
        out = run_load(
            spark,
            config,
            broker=broker,
            system=system,
            rate=rate,
            seconds=options.sustain_seconds,
            warmup=options.warmup_seconds,
            grace=options.sustain_grace_seconds,
            seed=options.seed,
            copy_path=copy_path,
            show=show,
        )
        lo, hi = out.window_ms(options.warmup_seconds)
        expected = out.producer.readings_between(lo, hi)
        if system == "pipeline":
            stats = measure(
                spark,
                config,
                window_start=lo / 1000,
                window_end=hi / 1000,
                bucket_seconds=max(1.0, (hi - lo) / 1000),
                production_start=out.started,
                state_series=lambda _at: 0,
                expected_readings=expected,
                sessions=False,
            ).event_to_silver
        else:
            stats = copy_latency(spark, copy_path, topic=config.kafka.topics.bpm, lo_ms=lo, hi_ms=hi, expected=expected)
        backlog_start, backlog_end = backlog_ends(out.lag, window_start=lo / 1000, window_end=hi / 1000)
        # the rate times the share of the plan's readings produced on time (module steady)
        achieved = rate * out.producer.on_schedule()
        holds, why = judge_step(
            rate,
            achieved,
            stats.p99_ms,
            backlog_start,
            backlog_end,
            p99_bound_ms=options.sustain_p99_seconds * 1000,
        )
        step = RateStep(
            rate=rate,
            achieved_rate=round(achieved, 1),
            seconds=options.sustain_seconds,
            p99_ms=stats.p99_ms,
            missing=stats.missing,
            backlog_start=None if backlog_start is None else round(backlog_start, 1),
            backlog_end=None if backlog_end is None else round(backlog_end, 1),
            holds=holds,
            why=why,
            load_before=round(load_before, 2),
        )
        steps.append(step)
        result.notes += [f"sustained {label} at {rate:g}/s: {note}" for note in out.notes]
        show(
            f"[bench] sustained {label}: {rate:,g}/s "
            + ("holds" if holds else f"fails ({why})")
            + f"; p99 {'-' if stats.p99_ms is None else f'{stats.p99_ms / 1000:.2f}s'}, backlog "
            + f"{'-' if backlog_start is None else f'{backlog_start:,.0f}'} -> "
            + f"{'-' if backlog_end is None else f'{backlog_end:,.0f}'}"
        )
        _cleanup(broker, config, root, keep=options.keep)
    sustained, limit = sustained_rate(steps, max_rate=options.sustain_max_rate, max_steps=options.sustain_max_steps)
    return SustainedFigures(
        system=label,
        rate_per_second=sustained,
        limit=limit,
        steps=steps,
        step_seconds=options.sustain_seconds,
        warmup_seconds=options.warmup_seconds,
        p99_bound_ms=options.sustain_p99_seconds * 1000,
        start_rate=options.sustain_start_rate,
        max_rate=options.sustain_max_rate,
    )


def _sustained(
    spark: SparkSession,
    base: Config,
    options: BenchOptions,
    *,
    broker: KafkaBroker,
    run_dir: Path,
    spark_conf: dict[str, str],
    result: BenchResult,
    show: Callable[[str], None],
) -> None:
    systems: list[Literal["pipeline", "copy"]] = ["pipeline", "copy"] if options.baselines else ["pipeline"]
    for system in systems:
        figures = _search(
            spark,
            base,
            options,
            system=system,
            broker=broker,
            run_dir=run_dir,
            spark_conf=spark_conf,
            result=result,
            show=show,
        )
        result.sustained[figures.system] = figures
        rate = "none" if figures.rate_per_second is None else f"{figures.rate_per_second:,.0f} events/s"
        show(f"[bench] sustained {figures.system}: {rate} ({figures.limit})")


def _soak(
    spark: SparkSession,
    base: Config,
    options: BenchOptions,
    *,
    broker: KafkaBroker,
    run_dir: Path,
    spark_conf: dict[str, str],
    result: BenchResult,
    show: Callable[[str], None],
) -> None:
    from fitbit_stream.bench.load import delta_files
    from fitbit_stream.bench.report import SoakFigures
    from fitbit_stream.bench.search import backlog_ends, soak_windows, window_p95
    from fitbit_stream.bench.steady import BIN_MS, measure
    from fitbit_stream.io.tables import Tables
    from fitbit_stream.schemas import TABLES

    config = _phase_config(
        base,
        run_dir / "soak",
        bootstrap=broker.bootstrap_servers,
        spark_conf=spark_conf,
        topics=_topics("soak"),
        trigger_seconds=options.trigger_seconds,
    )
    show(f"[bench] soak: {options.rate:g} events/s for {options.soak_seconds:g}s")
    out = _pipeline_load(spark, config, options, broker=broker, seconds=options.soak_seconds, show=show)
    result.notes += [f"soak: {note}" for note in out.notes]
    first, last = soak_windows(
        out.started, out.ended, warmup=options.warmup_seconds, window=options.soak_window_seconds
    )
    per_query = window_p95(out.watch.queries(), first, last)
    ratios = [(float(row["ratio"]), name) for name, row in per_query.items() if row["ratio"] is not None]
    worst = max(ratios) if ratios else None
    tables = Tables(config)
    names = [name for name, spec in TABLES.items() if spec.layer in ("silver", "gold")]
    at_start = delta_files(spark, tables, names, at=first[0])
    at_end = delta_files(spark, tables, names, at=last[1])
    backlog_first, backlog_last = backlog_ends(
        out.lag, window_start=first[0], window_end=last[1], probe=first[1] - first[0]
    )

    def latency(window: tuple[float, float]) -> LatencyStats:
        lo = math.ceil(window[0] * 1000 / BIN_MS) * BIN_MS
        hi = max(lo, math.floor(window[1] * 1000 / BIN_MS) * BIN_MS)
        return measure(
            spark,
            config,
            window_start=lo / 1000,
            window_end=hi / 1000,
            bucket_seconds=max(1.0, (hi - lo) / 1000),
            production_start=out.started,
            state_series=lambda _at: 0,
            expected_readings=out.producer.readings_between(lo, hi),
            sessions=False,
        ).event_to_silver

    result.soak = SoakFigures(
        rate_per_second=options.rate,
        duration_seconds=options.soak_seconds,
        warmup_seconds=options.warmup_seconds,
        produced=out.producer.produced,
        achieved_rate_per_second=round(out.producer.achieved_rate(), 1),
        first_window=(round(first[0] - out.started, 1), round(first[1] - out.started, 1)),
        last_window=(round(last[0] - out.started, 1), round(last[1] - out.started, 1)),
        batch_p95=per_query,
        batch_p95_ratio=None if worst is None else round(worst[0], 3),
        batch_p95_query=None if worst is None else worst[1],
        files={name: {"start": at_start.get(name), "end": at_end.get(name)} for name in names},
        backlog_first=None if backlog_first is None else round(backlog_first, 1),
        backlog_last=None if backlog_last is None else round(backlog_last, 1),
        event_to_silver_first=latency(first),
        event_to_silver_last=latency(last),
        catch_up_seconds=out.catch_up_seconds,
    )
    ratio_text = "-" if worst is None else f"{worst[0]:.2f}x ({worst[1]})"
    show(f"[bench] soak: last-window batch p95 / first: {ratio_text}")


# --- phases on a drained state: incremental run, scale sweep -------------------------------------


def _incremental(
    spark: SparkSession,
    base: Config,
    options: BenchOptions,
    *,
    broker: KafkaBroker,
    run_dir: Path,
    spark_conf: dict[str, str],
    drained: Config | None,
    result: BenchResult,
    show: Callable[[str], None],
) -> None:
    from fitbit_stream.bench.incremental import command, timed_run, write_config
    from fitbit_stream.bench.report import CommandRun, IncrementalFigures
    from fitbit_stream.bench.steady import produce_readings
    from fitbit_stream.pipeline import Pipeline

    config = drained
    if config is None:  # no drain in this run: drain a backlog first (not timed)
        config = _phase_config(base, run_dir / "incremental", bootstrap=broker.bootstrap_servers, spark_conf=spark_conf)
        _preload(config, options, scale=options.scale, broker=broker, show=show)
        show("[bench] incremental: draining the backlog first (not timed)")
        Pipeline(spark, config).run_once(as_of=AS_OF, progress=lambda msg: log.debug("%s", msg))
    # The command's configuration: this run's broker, source and roots; the user's Spark settings.
    path = write_config(config.model_copy(update={"spark_conf": dict(base.spark_conf)}), run_dir / "incremental.yaml")
    cmd = command(path, as_of=AS_OF.isoformat())
    runs: list[CommandRun] = []
    outputs: dict[str, list[str]] = {}
    plan = [("nothing new", 0)]
    if options.incremental_records:
        plan.append((f"{options.incremental_records:,} new records", options.incremental_records))
    for label, records in plan:
        if records:
            produce_readings(config, records, seed=options.seed)
        show(f"[bench] incremental: {' '.join(cmd)} ({label})")
        run, output = timed_run(cmd, label=label, new_records=records, mode=config.streaming.mode)
        runs.append(run)
        outputs[label] = output.splitlines()[-40:]
        show(f"[bench] incremental: {label}: {run.wall_seconds:.1f}s wall, exit {run.exit_code}")
        if run.exit_code != 0:
            result.notes.append(f"incremental run ({label}) exited {run.exit_code}: {outputs[label][-1:]}")
    result.incremental = IncrementalFigures(command=cmd, runs=runs)
    result.profile["incremental_output"] = outputs


def _scaling(
    spark: SparkSession,
    base: Config,
    options: BenchOptions,
    *,
    broker: KafkaBroker,
    run_dir: Path,
    spark_conf: dict[str, str],
    result: BenchResult,
    show: Callable[[str], None],
) -> None:
    from fitbit_stream.bench.baselines import kafka_to_delta_copy
    from fitbit_stream.bench.report import ScalePoint
    from fitbit_stream.bench.search import seconds_per_million
    from fitbit_stream.pipeline import Pipeline

    for i, scale in enumerate(options.scales):
        if "drain" in options.phases and scale == options.scale and result.pipeline is not None:
            p, copy = result.pipeline, result.baselines.get(BASELINE_COPY)
            result.scaling.append(
                ScalePoint(
                    scale,
                    p.rows,
                    p.elapsed_seconds or 0.0,
                    seconds_per_million(p.elapsed_seconds, p.rows),
                    copy.elapsed_seconds if copy else None,
                    seconds_per_million(copy.elapsed_seconds, copy.rows) if copy else None,
                )
            )
            show(f"[bench] scaling: scale {scale:g} is the drain phase's")
            continue
        root = run_dir / "scaling" / f"scale-{i}"
        config = _phase_config(
            base, root, bootstrap=broker.bootstrap_servers, spark_conf=spark_conf, topics=_topics(f"scale{i}")
        )
        show(f"[bench] scaling: drain at scale {scale:g}")
        backlog = _preload(config, options, scale=scale, broker=broker, show=show)
        _settle(options, show, f"the drain at scale {scale:g}")
        copy_figures = (
            kafka_to_delta_copy(
                spark, config, path=str(root / "copy"), checkpoint=str(root / "checkpoints" / BASELINE_COPY)
            )
            if options.baselines
            else None
        )
        pipeline = Pipeline(spark, config)
        started = time.monotonic()
        report = pipeline.run_once(as_of=AS_OF, progress=lambda msg: log.debug("%s", msg))
        elapsed = round(time.monotonic() - started, 3)
        kafka = kafka_queries(config.streaming.mode)
        rows = sum(s.rows for s in report.stages if s.name in kafka) or backlog.kafka_records
        point = ScalePoint(
            scale,
            rows,
            elapsed,
            seconds_per_million(elapsed, rows),
            copy_figures.elapsed_seconds if copy_figures else None,
            seconds_per_million(copy_figures.elapsed_seconds, copy_figures.rows) if copy_figures else None,
        )
        result.scaling.append(point)
        show(f"[bench] scaling: scale {scale:g}: {rows:,} records in {elapsed:.1f}s")
        _cleanup(broker, config, root, keep=options.keep)


# --- the whole run -------------------------------------------------------------------------------


def _stamp(at: datetime) -> str:
    return at.strftime("%Y%m%dT%H%M%SZ")


def write_results(result: BenchResult, out_dir: Path) -> tuple[Path, Path]:
    """``<stamp>.json`` and ``<stamp>.txt`` in ``out_dir``, also copied to ``latest.json``/``latest.txt``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = str(result.settings.get("run_id", "run"))
    data = json.dumps(result.to_json(), indent=2, sort_keys=False, default=str) + "\n"
    text = format_report(result) + "\n"
    json_path, text_path = out_dir / f"{stamp}.json", out_dir / f"{stamp}.txt"
    json_path.write_text(data, encoding="utf-8")
    text_path.write_text(text, encoding="utf-8")
    (out_dir / "latest.json").write_text(data, encoding="utf-8")
    (out_dir / "latest.txt").write_text(text, encoding="utf-8")
    return json_path, text_path


@contextmanager
def _phase(name: str, options: BenchOptions, result: BenchResult, show: Callable[[str], None]) -> Iterator[None]:
    """Load average before and after the phase; a warning line when it starts on a loaded machine.

    The phase first waits (up to ``--settle-seconds``) for the load an earlier phase left to fall.
    """
    waited = _settle(options, show, name)
    before = _load_avg()
    warning = load_warning(before[0], phase=name, bound=options.load_warning)
    if warning is not None:
        show(f"[bench] {warning}")
        result.notes.append(warning)
    show(f"[bench] phase {name} (load {before[0]:.2f} {before[1]:.2f} {before[2]:.2f})")
    try:
        yield
    finally:
        result.phase_load[name] = {"before": before, "after": _load_avg(), "settled_seconds": waited}


def _settle(options: BenchOptions, show: Callable[[str], None], what: str) -> float:
    """Wait (up to ``--settle-seconds``) for the load the work before ``what`` left to fall; the
    seconds waited."""
    waited, load = settle(
        lambda: _load_avg()[0],
        bound=options.load_warning,
        limit_seconds=options.settle_seconds,
        sleep=time.sleep,
    )
    if waited:
        show(f"[bench] waited {waited:.0f}s for the machine to settle before {what} (load {load:.2f})")
    return waited


def run_bench(base: Config, options: BenchOptions, *, show: Callable[[str], None] = print) -> BenchResult:
    """Run the selected phases on their own broker, source and tables; return (and write) the figures.

    A phase that fails is reported (a note, the figures of the other phases are kept and written)
    and the run goes on with the next one; the run then raises, naming the phases that failed.
    """
    from fitbit_stream.bench.sparkui import SparkUi
    from fitbit_stream.platform.kafka import KafkaBroker
    from fitbit_stream.session import get_spark

    begun = datetime.now(UTC)
    run_id = f"{_stamp(begun)}-{uuid.uuid4().hex[:6]}"
    run_dir = options.work_dir.absolute() / run_id
    run_dir.mkdir(parents=True)
    # The Spark UI binds to SPARK_LOCAL_IP (all interfaces otherwise): keep it on loopback.
    os.environ["SPARK_LOCAL_IP"] = "127.0.0.1"
    result = BenchResult(
        machine=machine_info(),
        settings={
            "run_id": run_id,
            "started": begun.isoformat(),
            **{k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(options).items()},
            "partitions": base.kafka.partitions,
            "shuffle_partitions": base.streaming.shuffle_partitions,
            "state_store": base.streaming.state_store,
            "max_offsets_per_trigger": base.kafka.max_offsets_per_trigger,
            "streaming_mode": base.streaming.mode,
            "derived_trigger_interval_seconds": base.streaming.derived_trigger_interval_seconds,
            "query_trigger_seconds": dict(base.streaming.query_trigger_seconds),
        },
    )
    warning = load_warning(result.machine["load_before"][0], phase="the run", bound=options.load_warning)
    if warning is not None:
        show(f"[bench] {warning}")
    port, controller = _free_ports(2)
    jars = jars_base(base.jars_dir)
    broker = KafkaBroker(
        run_dir / "kafka",
        port=port,
        controller_port=controller,
        jars_dir=jars / "kafka",
        partitions=base.kafka.partitions,
    )
    spark_conf = bench_spark_conf(options.driver_memory)
    show(f"[bench] run {run_id}: work dir {run_dir}; phases {', '.join(options.phases)}")
    broker.start()
    spark: SparkSession | None = None
    failed: list[str] = []
    try:
        drain_config = _phase_config(base, run_dir / "drain", bootstrap=broker.bootstrap_servers, spark_conf=spark_conf)
        spark = get_spark(drain_config)
        result.settings["spark_master"] = spark.sparkContext.master
        result.settings["default_parallelism"] = spark.sparkContext.defaultParallelism
        ui = SparkUi.of(spark)
        steady_config = _phase_config(
            base,
            run_dir / "steady",
            bootstrap=broker.bootstrap_servers,
            spark_conf=spark_conf,
            topics=_topics("steady"),
            trigger_seconds=options.trigger_seconds,
        )

        def phase(name: str) -> None:
            assert spark is not None
            if name == "drain":
                _drain(spark, drain_config, options, broker=broker, run_dir=run_dir, ui=ui, result=result, show=show)
            elif name == "incremental":
                _incremental(
                    spark,
                    base,
                    options,
                    broker=broker,
                    run_dir=run_dir,
                    spark_conf=spark_conf,
                    drained=drain_config if "drain" in options.phases and "drain" not in failed else None,
                    result=result,
                    show=show,
                )
            elif name == "steady":
                _steady(spark, steady_config, options, broker=broker, ui=ui, result=result, show=show)
            else:
                run = {"sustained": _sustained, "soak": _soak, "scaling": _scaling}[name]
                run(
                    spark,
                    base,
                    options,
                    broker=broker,
                    run_dir=run_dir,
                    spark_conf=spark_conf,
                    result=result,
                    show=show,
                )

        for name in PHASES:
            if name not in options.phases:
                continue
            with _phase(name, options, result, show):
                try:
                    phase(name)
                except Exception as exc:
                    log.debug("bench phase %s failed", name, exc_info=True)
                    failed.append(name)
                    result.notes.append(f"phase {name} failed: {type(exc).__name__}: {str(exc).splitlines()[:1]}")
                    show(f"[bench] phase {name} FAILED: {type(exc).__name__}: {exc}")
            if options.out_dir is not None:  # figures so far survive a later failure or a kill
                write_results(result, options.out_dir)
        if ui is not None:
            heap, rss = ui.process_peak()
            result.profile["application_peak"] = {"jvm_heap_bytes": heap, "jvm_rss_bytes": rss}
    finally:
        if spark is not None:
            for query in spark.streams.active:
                query.stop()
        broker.stop()
        result.machine["load_after"] = _load_avg()
        result.profile["python_peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        result.settings["finished"] = datetime.now(UTC).isoformat()
        if not options.keep:
            shutil.rmtree(run_dir, ignore_errors=True)
    if options.out_dir is not None:
        json_path, text_path = write_results(result, options.out_dir)
        show(f"[bench] results: {json_path} and {text_path}")
    if failed:
        raise PipelineError(f"bench: phase(s) {', '.join(failed)} failed (figures of the others written): see notes")
    return result
