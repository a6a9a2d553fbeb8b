"""``fitbit-stream bench``: one command from a fresh clone to the figures and their ratios.

A run owns everything it measures: a Kafka broker on free loopback ports with its data under the
run's work directory, its own SQLite source, table and checkpoint roots per phase, and one Spark
session whose UI (loopback, free port) serves the stage and job figures. Nothing is shared with
another run or with ``data/lake``; the work directory is deleted afterwards unless ``keep``.

Phases:

1. drain: preload a seeded backlog; run the baselines ``kafka_to_noop`` and ``kafka_to_delta_copy``;
   drain bronze -> silver -> gold with ``Pipeline.run_once`` (available-now triggers); run the
   hand-written heart-rate baseline over the same bronze table. Per-stage figures come from the
   progress the pipeline persists in ``_query_progress``; memory from the Spark UI's stage peaks.
2. steady: members set up, every query running with processing-time triggers, records produced at a
   fixed rate for a while; latencies measured from the tables' change feeds (see ``steady``).
"""

from __future__ import annotations

import json
import logging
import os
import platform
import resource
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fitbit_stream.bench.report import (
    BASELINE_COPY,
    BASELINE_HANDWRITTEN,
    BASELINE_NOOP,
    STAGE_ALONE,
    BenchResult,
    QueryFigures,
    SteadyFigures,
    figures_from_progress,
    format_report,
    job_window,
    peak_memory,
    percentile,
    state_growth_per_minute,
)
from fitbit_stream.config import Config, KafkaTopics
from fitbit_stream.errors import InvalidConfigError, PipelineError

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from fitbit_stream.bench.sparkui import SparkUi
    from fitbit_stream.platform.kafka import KafkaBroker

__all__ = ["PHASES", "BenchOptions", "bench_spark_conf", "machine_info", "run_bench", "write_results"]

log = logging.getLogger(__name__)

PHASES = ("drain", "steady")
#: The reference date of the batch tail (user_bins): fixed, so every run computes the same rows.
AS_OF = date(2025, 6, 1)
_STEADY_TOPICS = KafkaTopics(user_info="steady_user_info", bpm="steady_bpm", workout="steady_workout")


@dataclass(frozen=True)
class BenchOptions:
    scale: float = 1.0
    seed: int = 42
    chaos: float = 0.001
    phases: tuple[str, ...] = PHASES
    baselines: bool = True
    rate: float = 2000.0
    steady_seconds: float = 180.0
    warmup_seconds: float = 30.0
    grace_seconds: float = 120.0
    trigger_seconds: float = 1.0
    bucket_seconds: float = 10.0
    work_dir: Path = Path("data/bench")
    out_dir: Path | None = Path("bench/results")
    driver_memory: str = "2g"
    keep: bool = False

    def __post_init__(self) -> None:
        unknown = set(self.phases) - set(PHASES)
        if unknown or not self.phases:
            raise InvalidConfigError(f"bench phases: choose from {', '.join(PHASES)}, got {list(self.phases)}")
        if self.scale <= 0:
            raise InvalidConfigError(f"bench scale: must be positive, got {self.scale!r}")
        if self.rate < 3:
            raise InvalidConfigError(f"bench rate: at least 3 events/s (readings and a session), got {self.rate!r}")
        if self.steady_seconds <= self.warmup_seconds:
            raise InvalidConfigError(
                f"bench steady seconds ({self.steady_seconds:g}) must exceed the warm-up ({self.warmup_seconds:g})"
            )


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


def bench_spark_conf(driver_memory: str) -> dict[str, str]:
    """Settings the figures need: a loopback UI whose stages keep their executor-metric peaks."""
    return {
        "spark.driver.memory": driver_memory,
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
        "load_before": [round(x, 2) for x in os.getloadavg()],
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
    from fitbit_stream.bench.backlog import backlog_knobs, preload
    from fitbit_stream.bench.baselines import (
        handwritten_heart_rate,
        kafka_to_delta_copy,
        kafka_to_noop,
        library_heart_rate,
    )
    from fitbit_stream.bench.sparkui import job_profile, sql_profile
    from fitbit_stream.generator.emit import Progress
    from fitbit_stream.io.tables import Tables
    from fitbit_stream.pipeline import Pipeline

    knobs = backlog_knobs(config, scale=options.scale, seed=options.seed, chaos=options.chaos)

    def generated(p: Progress) -> None:
        show(f"[bench] backlog {p.emitted:,}/{p.total:,} records, {p.rate:,.0f}/s" + (" (done)" if p.done else ""))

    show(f"[bench] preloading the backlog: {knobs.users} members, {knobs.days:g} day, seed {knobs.seed}")
    backlog = preload(config, knobs, broker=broker, progress=generated)
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
    kafka_rows = next((s.rows for s in stages if s.name == "bronze_kafka_multiplex"), backlog.kafka_records)
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


# --- the steady phase ----------------------------------------------------------------------------


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
    from fitbit_stream.bench.sparkui import job_profile, sql_profile
    from fitbit_stream.bench.steady import ProgressWatch, SteadyPlan, SteadyProducer, measure, setup_members
    from fitbit_stream.pipeline import Pipeline

    broker.ensure_topics(config.kafka.topics.names(), config.kafka.partitions)
    # Sessions last a third of the run (at most a minute), so a short run still completes some.
    session_seconds = min(60.0, max(5.0, (options.steady_seconds - options.warmup_seconds) / 3))
    plan = SteadyPlan.for_rate(options.rate, seed=options.seed, session_seconds=session_seconds)
    members = setup_members(config, plan, at_us=time.time_ns() // 1000 - 3600 * 1_000_000)
    show(f"[bench] steady: {members} members registered; starting every query (trigger {options.trigger_seconds:g}s)")
    pipeline = Pipeline(spark, config)
    watch = ProgressWatch()
    spark.streams.addListener(watch)
    stop = threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        try:
            pipeline.run_continuously(stop, as_of=AS_OF, progress=lambda msg: log.debug("%s", msg))
        except BaseException as exc:
            failure.append(exc)
            stop.set()

    runner = threading.Thread(target=run, name="bench-pipeline", daemon=True)
    expected = len(pipeline.query_names())  # every streaming query reports before the clock starts
    producer = SteadyProducer(config, plan, duration=options.steady_seconds)
    try:
        runner.start()
        if not watch.wait_caught_up(expected=expected, after=time.time(), timeout=600) and not failure:
            raise PipelineError("steady: the queries did not start and catch up with the set-up within 600 s")
        if failure:
            raise PipelineError(f"steady: the pipeline failed: {failure[0]}")
        show(f"[bench] steady: producing {options.rate:g} events/s for {options.steady_seconds:g}s")
        producer.start()
        producer.join(options.steady_seconds + 120)
        ended = producer.ended_at or time.time()
        caught = watch.wait_caught_up(expected=expected, after=ended, timeout=options.grace_seconds)
        settled = time.time()
        show(
            "[bench] steady: production ended; "
            + (f"caught up {settled - ended:.1f}s later" if caught else "NOT caught up (grace ran out)")
        )
    finally:
        producer.stop()
        stop.set()
        runner.join(300)
        spark.streams.removeListener(watch)
    if failure:
        raise PipelineError(f"steady: the pipeline failed: {failure[0]}")
    if producer.errors:
        result.notes.append(f"steady producer: {len(producer.errors)} delivery errors, first: {producer.errors[0]}")
    started = producer.started_at or ended
    batches = watch.queries()

    def state_at(at: float) -> int:
        total = 0
        for rows in batches.values():
            last = [state for t, _n, _ms, state in rows if t <= at]
            total += last[-1] if last else 0
        return total

    measured = measure(
        spark,
        config,
        window_start=started + options.warmup_seconds,
        window_end=ended,
        bucket_seconds=options.bucket_seconds,
        production_start=started,
        state_series=state_at,
    )
    batch_ms: dict[str, dict[str, float | int | None]] = {}
    for name, rows in sorted(batches.items()):
        durations = [float(ms) for t, n, ms, _ in rows if n > 0 and started <= t <= settled]
        batch_ms[name] = {
            "batches": len(durations),
            "p50_ms": percentile(durations, 0.5),
            "p99_ms": percentile(durations, 0.99),
        }
    since, until = datetime.fromtimestamp(started, UTC), datetime.fromtimestamp(settled, UTC)
    heap, rss = peak_memory(ui.stages(), since=since, until=until) if ui else (None, None)
    if ui is not None:
        # Queries run side by side here: their jobs, each query's own in sequence, tell who keeps
        # the two cores busy; the SQL executions tell with what.
        result.profile["steady"] = {
            "jobs_by_query": job_profile(ui.jobs(), since=since, until=until, top=20, by_query=True),
            "sql_by_query": sql_profile(ui.sql(), since=since, until=until, top=30, by_query=True),
        }
    duration = max(1e-9, ended - started)
    result.steady = SteadyFigures(
        rate_per_second=options.rate,
        session_seconds=session_seconds,
        catch_up_seconds=round(settled - ended, 3) if caught else None,
        duration_seconds=options.steady_seconds,
        warmup_seconds=options.warmup_seconds,
        trigger_seconds=options.trigger_seconds,
        produced=producer.produced,
        achieved_rate_per_second=round(producer.produced / duration, 1),
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
    )
    horizon = config.rules.lateness_horizon_minutes
    if options.steady_seconds < 2 * horizon * 60:
        result.notes.append(
            f"steady ran {options.steady_seconds:g}s, less than twice the lateness horizon ({2 * horizon:g} min): "
            "the state-growth figure covers what was run, not the bar's full span"
        )


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


def run_bench(base: Config, options: BenchOptions, *, show: Callable[[str], None] = print) -> BenchResult:
    """Run the selected phases on their own broker, source and tables; return (and write) the figures."""
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
        },
    )
    port, controller = _free_ports(2)
    jars = Path(os.environ.get("FITBIT_STREAM_JARS_DIR", base.jars_dir))
    broker = KafkaBroker(
        run_dir / "kafka",
        port=port,
        controller_port=controller,
        jars_dir=jars / "kafka",
        partitions=base.kafka.partitions,
    )
    spark_conf = bench_spark_conf(options.driver_memory)
    show(f"[bench] run {run_id}: work dir {run_dir}")
    broker.start()
    spark: SparkSession | None = None
    try:
        drain_config = _phase_config(base, run_dir / "drain", bootstrap=broker.bootstrap_servers, spark_conf=spark_conf)
        spark = get_spark(drain_config)
        result.settings["spark_master"] = spark.sparkContext.master
        result.settings["default_parallelism"] = spark.sparkContext.defaultParallelism
        ui = SparkUi.of(spark)
        if "drain" in options.phases:
            _drain(spark, drain_config, options, broker=broker, run_dir=run_dir, ui=ui, result=result, show=show)
        if "steady" in options.phases:
            steady_config = _phase_config(
                base,
                run_dir / "steady",
                bootstrap=broker.bootstrap_servers,
                spark_conf=spark_conf,
                topics=_STEADY_TOPICS,
                trigger_seconds=options.trigger_seconds,
            )
            _steady(spark, steady_config, options, broker=broker, ui=ui, result=result, show=show)
        if ui is not None:
            heap, rss = ui.process_peak()
            result.profile["application_peak"] = {"jvm_heap_bytes": heap, "jvm_rss_bytes": rss}
    finally:
        if spark is not None:
            for query in spark.streams.active:
                query.stop()
        broker.stop()
        result.machine["load_after"] = [round(x, 2) for x in os.getloadavg()]
        result.profile["python_peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        result.settings["finished"] = datetime.now(UTC).isoformat()
        if not options.keep:
            shutil.rmtree(run_dir, ignore_errors=True)
    if options.out_dir is not None:
        json_path, text_path = write_results(result, options.out_dir)
        show(f"[bench] results: {json_path} and {text_path}")
    return result
