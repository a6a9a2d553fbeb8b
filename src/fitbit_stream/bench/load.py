"""Production at a fixed rate against a running system: the whole pipeline (every query, processing-
time triggers, ``Pipeline.run_continuously``) or the raw Kafka->Delta copy as a continuous query.

The steady phase, each step of the sustained-rate search and the soak are one :func:`run_load`
each, on the configuration the caller made for it (its own topics, tables, checkpoints and SQL
source). A run: members set up (pipeline only), the system started and caught up with the set-up,
then :class:`~fitbit_stream.bench.steady.SteadyProducer` at the rate for the duration while a
:class:`LagSampler` records the ingest query's Kafka backlog every second, then the wait for every
query to process everything (at most ``grace`` seconds), then the system stopped cleanly.

- **backlog** of the ingest query at an instant: over the partitions of its topics, Kafka's high
  watermark (read with a consumer that joins no group) minus the offset the query's last completed
  batch read up to (its progress ``sources[].endOffset``). ``maxOffsetsPerTrigger`` is unset, so
  the progress' own ``latestOffset`` equals ``endOffset`` at planning time and says nothing about
  what arrived during the batch; the watermark does.
- **catch-up**: from the end of production to the end of the last batch that read rows, once every
  query has gone idle after both (``ProgressWatch.caught_up``); None when the grace ran out.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from pyspark.sql import functions as F

from fitbit_stream.bench.options import AS_OF
from fitbit_stream.bench.report import BASELINE_COPY, LatencyStats
from fitbit_stream.bench.steady import (
    BIN_MS,
    ProgressWatch,
    SteadyPlan,
    SteadyProducer,
    aggregate_latency,
    setup_members,
)
from fitbit_stream.errors import PipelineError

if TYPE_CHECKING:
    from pyspark.sql import SparkSession
    from pyspark.sql.streaming.query import StreamingQuery

    from fitbit_stream.config import Config
    from fitbit_stream.io.tables import Tables
    from fitbit_stream.platform.kafka import KafkaBroker

__all__ = [
    "LagSampler",
    "LoadOutcome",
    "copy_latency",
    "delta_files",
    "run_load",
]

log = logging.getLogger(__name__)

System = Literal["pipeline", "copy"]


class LagSampler(threading.Thread):
    """Every ``interval`` seconds: (epoch seconds, records the queries ``names`` have not read yet).

    ``names`` are the queries that read Kafka (each reads its own topics)."""

    def __init__(self, config: Config, watch: ProgressWatch, names: Sequence[str], *, interval: float = 1.0) -> None:
        super().__init__(name="bench-lag-sampler", daemon=True)
        self.config = config
        self.watch = watch
        self.queries = list(names)
        self.interval = interval
        self.samples: list[tuple[float, float]] = []
        self.errors: list[str] = []
        self._stop_event = threading.Event()

    def stop(self) -> None:
        self._stop_event.set()
        self.join(30)

    def run(self) -> None:
        from confluent_kafka import Consumer, TopicPartition

        consumer = Consumer(
            {
                "bootstrap.servers": self.config.kafka.bootstrap_servers,
                "group.id": "fitbit-stream-bench-lag",
                "enable.auto.commit": False,
                "logger": logging.getLogger(f"{__name__}.librdkafka"),
            }
        )
        try:
            partitions: list[Any] = []
            for topic in self.config.kafka.topics.names():
                meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
                for p in sorted(meta.partitions if meta is not None else {}):
                    partitions.append(TopicPartition(topic, p))
            while not self._stop_event.is_set():
                at = time.time()
                read = {k: v for name in self.queries for k, v in self.watch.end_offsets(name).items()}
                lag = 0
                for tp in partitions:
                    low, high = consumer.get_watermark_offsets(tp, timeout=5, cached=False)
                    lag += max(0, int(high) - read.get((tp.topic, tp.partition), int(low)))
                self.samples.append((at, float(lag)))
                self._stop_event.wait(self.interval)
        except Exception as exc:  # a missing figure must not fail the run; it is reported
            log.exception("bench: lag sampler failed")
            self.errors.append(str(exc))
        finally:
            consumer.close()


@dataclass
class LoadOutcome:
    system: System
    plan: SteadyPlan
    producer: SteadyProducer
    watch: ProgressWatch
    lag: list[tuple[float, float]]
    #: epoch seconds: production start and end; the end of the wait for catch-up
    started: float
    ended: float
    settled: float
    catch_up_seconds: float | None
    #: the streaming queries the system runs (the pipeline's from ``Pipeline.query_names()``)
    queries: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def window_ms(self, warmup: float) -> tuple[int, int]:
        """[after the warm-up, end of production) in epoch ms, on ``BIN_MS`` bounds (the producer's
        reading counts are per bin)."""
        lo = math.ceil((self.started + warmup) * 1000 / BIN_MS) * BIN_MS
        hi = math.floor(self.ended * 1000 / BIN_MS) * BIN_MS
        return lo, max(lo, hi)


def _wait_producer(producer: SteadyProducer, seconds: float, failure: list[BaseException]) -> None:
    deadline = time.monotonic() + seconds + 120
    while producer.is_alive() and time.monotonic() < deadline and not failure:
        producer.join(1.0)


def run_load(
    spark: SparkSession,
    config: Config,
    *,
    broker: KafkaBroker,
    system: System,
    rate: float,
    seconds: float,
    warmup: float,
    grace: float,
    seed: int = 42,
    copy_path: str | None = None,
    show: Callable[[str], None] = print,
    start_timeout: float = 600.0,
) -> LoadOutcome:
    """Run ``system`` on ``config``, produce ``rate`` events/s for ``seconds``, wait for catch-up."""
    from fitbit_stream.bench.baselines import start_copy
    from fitbit_stream.io.progress import stop_between_batches
    from fitbit_stream.pipeline import Pipeline

    broker.ensure_topics(config.kafka.topics.names(), config.kafka.partitions)
    # Sessions last a third of the run (at most a minute), so a short run still completes some.
    session_seconds = min(60.0, max(5.0, (seconds - warmup) / 3))
    plan = SteadyPlan.for_rate(rate, seed=seed, session_seconds=session_seconds)
    watch = ProgressWatch()
    spark.streams.addListener(watch)
    stop = threading.Event()
    failure: list[BaseException] = []
    runner: threading.Thread | None = None
    copy: StreamingQuery | None = None
    producer = SteadyProducer(config, plan, duration=seconds)
    sampler: LagSampler | None = None
    try:
        if system == "pipeline":
            members = setup_members(config, plan, at_us=time.time_ns() // 1000 - 3600 * 1_000_000)
            pipeline = Pipeline(spark, config)
            names = pipeline.query_names()
            ingest = [spec.name for spec in pipeline.specs() if spec.source == "kafka"]

            def run() -> None:
                try:
                    pipeline.run_continuously(stop, as_of=AS_OF, progress=lambda msg: log.debug("%s", msg))
                except BaseException as exc:
                    failure.append(exc)
                    stop.set()

            runner = threading.Thread(target=run, name="bench-pipeline", daemon=True)
            show(f"[bench]   {members} members; starting {len(names)} queries")
            runner.start()
        else:
            assert copy_path is not None
            # Its commits' times are read back from the change feed, as the pipeline's tables'.
            spark.conf.set("spark.databricks.delta.properties.defaults.enableChangeDataFeed", "true")
            names = [BASELINE_COPY]
            ingest = [BASELINE_COPY]
            copy = start_copy(
                spark,
                config,
                path=copy_path,
                checkpoint=f"{config.storage.checkpoint_root}/{BASELINE_COPY}",
                trigger_seconds=config.streaming.trigger_interval_seconds,
            )
        begun = time.time()
        if not watch.wait_caught_up(expected=len(names), after=begun, timeout=start_timeout) and not failure:
            raise PipelineError(f"bench: the queries did not start and catch up within {start_timeout:g} s")
        if failure:
            raise PipelineError(f"bench: the pipeline failed: {failure[0]}")
        show(f"[bench]   started and caught up in {time.time() - begun:.0f}s; producing {rate:,g}/s for {seconds:g}s")
        sampler = LagSampler(config, watch, ingest)
        sampler.start()
        producer.start()
        _wait_producer(producer, seconds, failure)
        ended = producer.ended_at or time.time()
        caught = watch.wait_caught_up(expected=len(names), after=ended, timeout=grace)
        settled = time.time()
        sampler.stop()
    finally:
        producer.stop()
        if sampler is not None:
            sampler.stop()
        stop.set()
        if runner is not None:
            runner.join(300)
        if copy is not None:
            stop_between_batches([copy])
        spark.streams.removeListener(watch)
    if failure:
        raise PipelineError(f"bench: the pipeline failed: {failure[0]}")
    if copy is not None and copy.exception() is not None:
        raise PipelineError(f"bench: the copy failed: {copy.exception()}")
    outcome = LoadOutcome(
        system=system,
        plan=plan,
        producer=producer,
        watch=watch,
        lag=list(sampler.samples) if sampler else [],
        started=producer.started_at or ended,
        ended=ended,
        settled=settled,
        catch_up_seconds=round(max(0.0, watch.last_work_end() - ended), 3) if caught else None,
        queries=list(names),
    )
    if producer.errors:
        outcome.notes.append(f"producer: {len(producer.errors)} delivery errors, first: {producer.errors[0]}")
    if sampler is not None and sampler.errors:
        outcome.notes.append(f"backlog sampler failed: {sampler.errors[0]}")
    return outcome


def copy_latency(spark: SparkSession, path: str, *, topic: str, lo_ms: int, hi_ms: int, expected: int) -> LatencyStats:
    """Event -> copy: the commit that appended each reading of [lo_ms, hi_ms) (change feed
    ``_commit_timestamp``) minus its Kafka timestamp; readings not in the copy count as missing."""
    produced = F.unix_millis(F.col("timestamp"))
    latencies = (
        spark.read.format("delta")
        .option("readChangeFeed", "true")
        .option("startingVersion", 0)
        .load(path)
        .where((F.col("topic") == topic) & (produced >= lo_ms) & (produced < hi_ms))
        .select((F.unix_millis(F.col("_commit_timestamp")) - produced).alias("latency_ms"))
    )
    return aggregate_latency(latencies, expected=expected)


def delta_files(spark: SparkSession, tables: Tables, names: list[str], *, at: float) -> dict[str, int | None]:
    """Files of each table's snapshot as of ``at`` (epoch seconds): its last commit at or before
    then (Delta refuses a ``timestampAsOf`` after the latest commit, so the version comes from the
    history); None for a table with no commit by then, or unreadable."""
    from delta.tables import DeltaTable

    moment = datetime.fromtimestamp(at, UTC)
    out: dict[str, int | None] = {}
    for name in names:
        ref = tables.ref(name)
        try:
            table = (
                DeltaTable.forPath(spark, ref.path) if ref.path else DeltaTable.forName(spark, str(ref.qualified_name))
            )
            history = table.history().select("version", "timestamp").collect()
            # Spark hands TIMESTAMPs back as naive datetimes in the process's zone (as ``timestamp()`` reads them).
            versions = [int(r["version"]) for r in history if r["timestamp"].timestamp() <= at]
            if not versions:
                out[name] = None
                continue
            reader = spark.read.format("delta").option("versionAsOf", max(versions))
            frame = reader.load(ref.path) if ref.path else reader.table(str(ref.qualified_name))
            out[name] = len(frame.inputFiles())
        except Exception:  # a missing figure must not fail the soak
            log.debug("bench: no snapshot of %s as of %s", name, moment, exc_info=True)
            out[name] = None
    return out
