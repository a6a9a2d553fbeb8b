"""Steady state: records produced at a fixed rate, the pipeline running with processing-time
triggers, and the latency from a record's Kafka timestamp to the commit that made it visible.

The producer (``SteadyProducer``) plays ``devices`` wearables sending one reading a second each,
evenly spread (reading m is due at ``start + m / devices``), plus ``session_rate`` workout sessions
started per second, each stopped ``session_seconds`` later; so the rate is
``devices + 2 * session_rate`` records a second. Members are registered (SQL) and have a profile
(Kafka) before production starts. Event times are the due times and the Kafka record timestamp is
the wall clock at ``produce()`` (CreateTime), so neither the future nor the late rule fires.

Latency, per record, from the tables themselves after the run (``measure``):

- event -> silver: the ``_commit_timestamp`` of the ``heart_rate`` change-feed row that inserted
  the reading (the Delta commit that made it visible to readers), minus the Kafka timestamp of its
  bronze record (joined on device_id and the exact event time). A reading never inserted by the end
  of the wait is "missing". Bronze ``load_time`` is not used: it is when bronze read the record,
  not when silver published it, and it is one value per bronze batch.
- event -> silver for sessions: the ``completed_workouts`` insert commit minus the Kafka timestamp
  of the session's stop record (the event that completes it).
- event -> gold: for each session, the commit of the *last* change of its ``workout_bpm_summary``
  row (when the final figures became visible) minus the Kafka timestamp of the stop record.

Commit timestamps come from the Delta log (commit file time, or the in-commit timestamp when the
table has them), producer times from Kafka: one machine, one clock. Records produced during the
warm-up are left out of the figures.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pyspark.sql import functions as F
from pyspark.sql.streaming.listener import StreamingQueryListener

from fitbit_stream.bench.report import (
    LatencyStats,
    SeriesPoint,
    latency_from_aggregates,
    latency_stats,
    parse_time,
    percentile,
)
from fitbit_stream.errors import SourceError
from fitbit_stream.generator.model import RegistrationRow, SqlEmission, epoch_text
from fitbit_stream.generator.sinks import SqlSink, connect_sql
from fitbit_stream.io.tables import Tables
from fitbit_stream.transforms.dates import epoch_seconds_to_timestamp

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.streaming.listener import (
        QueryIdleEvent,
        QueryProgressEvent,
        QueryStartedEvent,
        QueryTerminatedEvent,
    )

    from fitbit_stream.config import Config

__all__ = [
    "BIN_MS",
    "ProgressWatch",
    "SteadyPlan",
    "SteadyProducer",
    "aggregate_latency",
    "kafka_end_offsets",
    "measure",
    "produce_readings",
    "setup_members",
]

log = logging.getLogger(__name__)

_US = 1_000_000
#: The producer counts readings per bin of this many milliseconds (window bounds are multiples of it).
BIN_MS = 100


@dataclass(frozen=True)
class SteadyPlan:
    """Who produces what: ids are far from the generator's so both can share a broker."""

    devices: int
    session_rate: float = 1.0
    session_seconds: float = 60.0
    seed: int = 42
    first_user: int = 1_000_001
    first_device: int = 5_000_001

    @classmethod
    def for_rate(
        cls, rate: float, *, session_rate: float = 1.0, session_seconds: float = 60.0, seed: int = 42
    ) -> SteadyPlan:
        devices = max(1, round(rate - 2 * session_rate))
        return cls(devices=devices, session_rate=session_rate, session_seconds=session_seconds, seed=seed)

    def user_id(self, i: int) -> int:
        return self.first_user + i

    def device_id(self, i: int) -> int:
        return self.first_device + i

    @staticmethod
    def mac(i: int) -> str:
        return "02:00:" + ":".join(f"{(i >> shift) & 0xFF:02x}" for shift in (24, 16, 8, 0))


def _profile(plan: SteadyPlan, i: int, at_us: int) -> str:
    rng = random.Random(f"{plan.seed}|steady-profile|{i}")
    sex = rng.choice("MF")
    return json.dumps(
        {
            "user_id": plan.user_id(i),
            "update_type": "new",
            "timestamp": json.loads(epoch_text(at_us)),
            "dob": f"{rng.randint(1, 12):02d}/{rng.randint(1, 28):02d}/{rng.randint(1950, 2005)}",
            "sex": sex,
            "gender": sex,
            "first_name": f"Member{i}",
            "last_name": "Steady",
            "address": {
                "street_address": f"{i} Main Street",
                "city": rng.choice(["Boston", "Denver", "Austin"]),
                "state": rng.choice(["MA", "CO", "TX"]),
                "zip": f"{rng.randint(0, 99999):05d}",
            },
        },
        separators=(",", ":"),
    )


def _producer(bootstrap: str, **extra: Any) -> Any:
    from confluent_kafka import Producer

    conf: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        # The Java client's partitioner, as the generator's sink uses.
        "partitioner": "murmur2_random",
        # Small batches: latency is what this producer is for.
        "linger.ms": 5,
        "enable.idempotence": True,
        "logger": logging.getLogger(f"{__name__}.librdkafka"),
        **extra,
    }
    return Producer(conf)


def setup_members(config: Config, plan: SteadyPlan, *, at_us: int) -> int:
    """Register every member (SQL) and send their profiles (Kafka ``user_info``); returns the count."""
    connection, dialect = connect_sql(config.sql.url)
    try:
        sink = SqlSink(
            connection,
            dialect=dialect,
            registered_users_table=config.sql.registered_users_table,
            gym_logins_table=config.sql.gym_logins_table,
            commit_every=10_000,
        )
        for i in range(plan.devices):
            row = RegistrationRow(plan.user_id(i), plan.device_id(i), plan.mac(i), at_us)
            sink.write(SqlEmission("insert_registration", at_us, row))
        sink.finish()
    finally:
        connection.close()
    producer = _producer(config.kafka.bootstrap_servers)
    topic = config.kafka.topics.user_info
    for i in range(plan.devices):
        producer.produce(topic, key=str(plan.user_id(i)).encode(), value=_profile(plan, i, at_us).encode())
        producer.poll(0)
    if producer.flush(60) > 0:
        raise SourceError(f"steady set-up: profiles not delivered to {config.kafka.bootstrap_servers}")
    return plan.devices


def produce_readings(config: Config, count: int, *, seed: int = 42) -> int:
    """``count`` heart-rate readings, one per device of a plan of ``count`` devices, event time now
    (the incremental run's "new records"); returns how many were delivered."""
    plan = SteadyPlan(devices=max(1, count), seed=seed)
    producer = _producer(config.kafka.bootstrap_servers)
    topic = config.kafka.topics.bpm
    now_us = time.time_ns() // 1000
    for i in range(count):
        device = plan.device_id(i)
        value = f'{{"device_id":{device},"time":{epoch_text(now_us + i)},"heartrate":{60 + i % 40}.5}}'
        producer.produce(topic, key=str(device).encode(), value=value.encode())
        producer.poll(0)
    remaining = int(producer.flush(60))
    if remaining:
        raise SourceError(f"incremental: {remaining} of {count} readings not delivered")
    return count


class SteadyProducer(threading.Thread):
    """Produces the plan's readings and sessions at their due times for ``duration`` seconds."""

    def __init__(self, config: Config, plan: SteadyPlan, *, duration: float, tick: float = 0.005) -> None:
        super().__init__(name="bench-steady-producer", daemon=True)
        self.config = config
        self.plan = plan
        self.duration = duration
        self.tick = tick
        self.produced = 0
        #: readings produced per ``BIN_MS`` bin of their Kafka timestamp (epoch ms // BIN_MS)
        self.readings_by_bin: dict[int, int] = {}
        self.started_at: float | None = None
        self.ended_at: float | None = None
        self.errors: list[str] = []
        self._stop_event = threading.Event()

    def stop(self) -> None:
        self._stop_event.set()

    def readings_between(self, lo_ms: int, hi_ms: int) -> int:
        """Readings whose Kafka timestamp is in [lo_ms, hi_ms) (both multiples of ``BIN_MS``)."""
        lo, hi = lo_ms // BIN_MS, hi_ms // BIN_MS
        return sum(n for b, n in self.readings_by_bin.items() if lo <= b < hi)

    def achieved_rate(self) -> float:
        """Records per second over the whole production."""
        if self.started_at is None or self.ended_at is None:
            return 0.0
        return self.produced / max(1e-9, self.ended_at - self.started_at)

    def on_schedule(self) -> float:
        """Readings produced over the readings the plan asked for in the same time (1.0: on time).
        Readings, not all records: sessions that could not complete before the end (or whose start
        came before the beginning) are left out by design, which weighs at a few events/s."""
        if self.started_at is None or self.ended_at is None:
            return 0.0
        asked = self.plan.devices * max(1e-9, self.ended_at - self.started_at)
        return sum(self.readings_by_bin.values()) / asked

    def _reading(self, m: int, due_us: int) -> tuple[str, bytes, bytes]:
        plan = self.plan
        i = m % plan.devices
        # A smooth, plausible heart rate per device; its exact value does not matter.
        hr = 60.0 + ((m * 7919 + i * 104729) % 4000) / 100.0
        device = plan.device_id(i)
        value = f'{{"device_id":{device},"time":{epoch_text(due_us)},"heartrate":{hr:.2f}}}'
        return self.config.kafka.topics.bpm, str(device).encode(), value.encode()

    def _workout(self, j: int, action: str, due_us: int) -> tuple[str, bytes, bytes]:
        plan = self.plan
        i = j % plan.devices
        user = plan.user_id(i)
        value = (
            f'{{"user_id":{user},"workout_id":{1 + j % 7},"session_id":{1 + j // plan.devices},'
            f'"timestamp":{epoch_text(due_us)},"action":"{action}"}}'
        )
        return self.config.kafka.topics.workout, str(user).encode(), value.encode()

    def run(self) -> None:
        producer = _producer(self.config.kafka.bootstrap_servers)

        def on_delivery(err: Any, msg: Any) -> None:
            if err is not None:
                self.errors.append(str(err))

        plan = self.plan
        bpm = self.config.kafka.topics.bpm
        start_us = time.time_ns() // 1000
        end_us = start_us + round(self.duration * _US)
        self.started_at = start_us / _US
        reading_step = _US / plan.devices
        session_step = _US / plan.session_rate
        session_len = round(plan.session_seconds * _US)
        m = j_start = j_stop = 0
        try:
            while not self._stop_event.is_set():
                now_us = time.time_ns() // 1000
                if now_us >= end_us:
                    break
                due: list[tuple[int, tuple[str, bytes, bytes]]] = []
                while start_us + round(m * reading_step) <= now_us:
                    t = start_us + round(m * reading_step)
                    due.append((t, self._reading(m, t)))
                    m += 1
                while (t := start_us + round(j_start * session_step)) <= now_us and t + session_len < end_us:
                    due.append((t, self._workout(j_start, "start", t)))
                    j_start += 1
                while j_stop < j_start and (t := start_us + round(j_stop * session_step) + session_len) <= now_us:
                    due.append((t, self._workout(j_stop, "stop", t)))
                    j_stop += 1
                due.sort(key=lambda item: item[0])
                bins = self.readings_by_bin
                for _t, (topic, key, value) in due:
                    while True:
                        stamp = time.time_ns() // 1_000_000
                        try:
                            producer.produce(topic, key=key, value=value, timestamp=stamp, on_delivery=on_delivery)
                            break
                        except BufferError:
                            producer.poll(0.01)
                    self.produced += 1
                    if topic == bpm:
                        bins[stamp // BIN_MS] = bins.get(stamp // BIN_MS, 0) + 1
                producer.poll(0)
                time.sleep(self.tick)
        finally:
            self.ended_at = time.time()
            remaining = producer.flush(60)
            if remaining:
                self.errors.append(f"{remaining} records not delivered")


@dataclass
class _QueryState:
    name: str
    #: (progress timestamp as epoch seconds, rows, triggerExecution ms, state rows)
    batches: list[tuple[float, int, int, int]] = field(default_factory=list)
    last_event: float = 0.0
    last_idle: bool = False
    #: Kafka source: the offsets its last completed batch read up to, per (topic, partition)
    end_offsets: dict[tuple[str, int], int] = field(default_factory=dict)


def kafka_end_offsets(progress: dict[str, Any]) -> dict[tuple[str, int], int]:
    """The Kafka offsets a batch read up to, per (topic, partition), from its progress JSON (the
    sources' ``endOffset``: an object, or its JSON text, ``{topic: {partition: offset}}``); empty for
    sources that are not Kafka."""
    out: dict[tuple[str, int], int] = {}
    for source in progress.get("sources") or []:
        end = source.get("endOffset")
        if isinstance(end, str):
            try:
                end = json.loads(end)
            except ValueError:
                continue
        if not isinstance(end, dict):
            continue
        for topic, partitions in end.items():
            if not isinstance(partitions, dict):
                continue
            for partition, offset in partitions.items():
                if str(partition).lstrip("-").isdigit() and isinstance(offset, int):
                    out[(str(topic), int(partition))] = offset
    return out


class ProgressWatch(StreamingQueryListener):
    """What every running query has done: its batches, and whether it has gone idle since."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_id: dict[str, _QueryState] = {}

    def onQueryStarted(self, event: QueryStartedEvent) -> None:
        with self._lock:
            self._by_id[str(event.id)] = _QueryState(str(event.name or event.id))

    def onQueryProgress(self, event: QueryProgressEvent) -> None:
        try:
            p = json.loads(event.progress.json)
            at = parse_time(str(p["timestamp"])).timestamp()
            rows = int(p.get("numInputRows", 0))
            ms = int((p.get("durationMs") or {}).get("triggerExecution", 0))
            state = sum(int(op.get("numRowsTotal", 0)) for op in p.get("stateOperators") or [])
            offsets = kafka_end_offsets(p)
            with self._lock:
                q = self._by_id.setdefault(str(p["id"]), _QueryState(str(p.get("name") or p["id"])))
                q.batches.append((at, rows, ms, state))
                q.last_event = at + ms / 1000
                q.last_idle = rows == 0
                if offsets:
                    q.end_offsets = {**q.end_offsets, **offsets}
        except Exception:  # a figure we cannot read must never disturb the query
            log.exception("bench: unreadable progress")

    def onQueryIdle(self, event: QueryIdleEvent) -> None:
        with self._lock:
            q = self._by_id.get(str(event.id))
            if q is not None:
                q.last_event = parse_time(str(event.timestamp)).timestamp()
                q.last_idle = True

    def onQueryTerminated(self, event: QueryTerminatedEvent) -> None:
        pass

    def queries(self) -> dict[str, list[tuple[float, int, int, int]]]:
        with self._lock:
            return {q.name: list(q.batches) for q in self._by_id.values()}

    def end_offsets(self, name: str) -> dict[tuple[str, int], int]:
        """The Kafka offsets query ``name`` has read up to (its last completed batch)."""
        with self._lock:
            return next((dict(q.end_offsets) for q in self._by_id.values() if q.name == name), {})

    def last_work_end(self) -> float:
        """When the last batch that read rows, of any query, ended (epoch seconds; 0 without one)."""
        with self._lock:
            states = list(self._by_id.values())
        return max((at + ms / 1000 for q in states for at, rows, ms, _ in q.batches if rows > 0), default=0.0)

    def caught_up(self, *, expected: int, after: float) -> bool:
        """Every one of ``expected`` queries went idle after ``after`` and after the last batch
        that did work anywhere (so no query still has input another one just committed)."""
        with self._lock:
            states = list(self._by_id.values())
        if len(states) < expected:
            return False
        last_work = max((at + ms / 1000 for q in states for at, rows, ms, _ in q.batches if rows > 0), default=0.0)
        return all(q.last_idle and q.last_event >= max(after, last_work) for q in states)

    def wait_caught_up(self, *, expected: int, after: float, timeout: float, poll: float = 1.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.caught_up(expected=expected, after=after):
                return True
            time.sleep(poll)
        return False


# --- measuring -----------------------------------------------------------------------------------


def _changes(spark: SparkSession, tables: Tables, name: str, *, layer: str | None = None) -> DataFrame:
    ref = tables.ref(name, layer=layer)
    reader = spark.read.format("delta").option("readChangeFeed", "true").option("startingVersion", 0)
    return reader.load(ref.path) if ref.path else reader.table(str(ref.qualified_name))


def _ms(column: str) -> Any:
    return F.unix_millis(F.col(column))


def aggregate_latency(latencies: DataFrame, *, expected: int | None = None) -> LatencyStats:
    """p50/p99/max of the ``latency_ms`` column computed by Spark (a null is a record that never
    arrived); ``expected`` records in all, the ones not in ``latencies`` missing too. For windows
    of millions of records, which are not collected."""
    row = latencies.agg(
        F.count("latency_ms").alias("n"),
        F.sum(F.col("latency_ms").isNull().cast("int")).alias("missing"),
        F.expr("percentile(latency_ms, array(0.5, 0.99))").alias("p"),
        F.max("latency_ms").alias("max"),
    ).first()
    count = int(row["n"]) if row is not None and row["n"] is not None else 0
    missing = int(row["missing"] or 0) if row is not None else 0
    if expected is not None:
        missing += max(0, expected - count - missing)
    p = row["p"] if row is not None and row["p"] is not None else [None, None]
    top = row["max"] if row is not None else None
    return latency_from_aggregates(
        count,
        missing,
        None if p[0] is None else float(p[0]),
        None if p[1] is None else float(p[1]),
        None if top is None else float(top),
    )


def _stats(rows: list[Any]) -> tuple[list[float], int]:
    latencies = [float(r["latency_ms"]) for r in rows if r["latency_ms"] is not None]
    return latencies, sum(1 for r in rows if r["latency_ms"] is None)


@dataclass(frozen=True)
class Measured:
    event_to_silver: LatencyStats
    event_to_completed_workout: LatencyStats
    event_to_gold: LatencyStats
    series: list[SeriesPoint]


def measure(
    spark: SparkSession,
    config: Config,
    *,
    window_start: float,
    window_end: float,
    bucket_seconds: float,
    production_start: float,
    state_series: Callable[[float], int],
    expected_readings: int | None = None,
    sessions: bool = True,
) -> Measured:
    """Per-record latencies of the records produced in [window_start, window_end) (epoch seconds).

    ``expected_readings``: the readings the producer sent in the window; those bronze does not hold
    either count as missing too (otherwise a pipeline that fell behind would leave out exactly the
    records it is slowest on). ``sessions``: also the session and gold latencies and the series
    (else only event->silver, aggregated by Spark: nothing per record is collected).
    """
    tables = Tables(config)
    topics = config.kafka.topics
    lo, hi = round(window_start * 1000), round(window_end * 1000)
    bronze = tables.read(spark, tables.ref("kafka_multiplex_bz")).where(
        (_ms("timestamp") >= lo) & (_ms("timestamp") < hi)
    )
    value = F.col("value")

    # event -> silver heart_rate, bucketed by production time
    readings = bronze.where(F.col("topic") == topics.bpm).select(
        F.get_json_object(value, "$.device_id").cast("long").alias("device_id"),
        epoch_seconds_to_timestamp(F.get_json_object(value, "$.time")).alias("time"),
        _ms("timestamp").alias("produced_ms"),
    )
    inserted = (
        _changes(spark, tables, "heart_rate")
        .where(F.col("_change_type") == "insert")
        .select("device_id", "time", _ms("_commit_timestamp").alias("commit_ms"))
    )
    if not sessions:  # one figure for the window, aggregated by Spark (millions of readings at high rates)
        latencies = readings.join(inserted, ["device_id", "time"], "left").select(
            (F.col("commit_ms") - F.col("produced_ms")).alias("latency_ms")
        )
        none = latency_stats([])
        return Measured(aggregate_latency(latencies, expected=expected_readings), none, none, [])
    bucket_ms = round(bucket_seconds * 1000)
    joined = readings.join(inserted, ["device_id", "time"], "left").select(
        F.floor((F.col("produced_ms") - F.lit(round(production_start * 1000))) / F.lit(bucket_ms)).alias("bucket"),
        (F.col("commit_ms") - F.col("produced_ms")).alias("latency_ms"),
    )
    per_bucket = (
        joined.groupBy("bucket")
        .agg(
            F.collect_list("latency_ms").alias("latencies"),
            F.sum(F.col("latency_ms").isNull().cast("int")).alias("missing"),
        )
        .orderBy("bucket")
        .collect()
    )
    everything: list[float] = []
    missing = 0
    series: list[SeriesPoint] = []
    ops_rows = _ops_state_rows(spark, tables)
    for row in per_bucket:
        values = [float(v) for v in row["latencies"]]
        everything.extend(values)
        missing += int(row["missing"])
        t0 = float(row["bucket"]) * bucket_seconds
        end = production_start + t0 + bucket_seconds
        series.append(
            SeriesPoint(
                t_seconds=t0,
                records=len(values) + int(row["missing"]),
                silver_p50_ms=percentile(values, 0.5),
                silver_p99_ms=percentile(values, 0.99),
                state_rows=state_series(end),
                event_time_state_rows=sum(n for at, n in ops_rows if at <= end),
            )
        )

    if expected_readings is not None:
        missing += max(0, expected_readings - len(everything) - missing)

    # sessions: the stop record completes a session
    stops = bronze.where(F.col("topic") == topics.workout).select(
        F.get_json_object(value, "$.user_id").cast("long").alias("user_id"),
        F.get_json_object(value, "$.workout_id").cast("int").alias("workout_id"),
        F.get_json_object(value, "$.session_id").cast("int").alias("session_id"),
        F.get_json_object(value, "$.action").alias("action"),
        _ms("timestamp").alias("produced_ms"),
    )
    stops = stops.where(F.col("action") == "stop").drop("action")
    key = ["user_id", "workout_id", "session_id"]
    completed = (
        _changes(spark, tables, "completed_workouts")
        .where(F.col("_change_type") == "insert")
        .groupBy(*key)
        .agg(F.min(_ms("_commit_timestamp")).alias("commit_ms"))
    )
    gold = (
        _changes(spark, tables, "workout_bpm_summary")
        .where(F.col("_change_type").isin("insert", "update_postimage"))
        .groupBy(*key)
        .agg(F.max(_ms("_commit_timestamp")).alias("commit_ms"))
    )
    session_rows = {}
    for label, commits in (("completed", completed), ("gold", gold)):
        session_rows[label] = (
            stops.join(commits, key, "left")
            .select((F.col("commit_ms") - F.col("produced_ms")).alias("latency_ms"))
            .collect()
        )
    c_lat, c_missing = _stats(session_rows["completed"])
    g_lat, g_missing = _stats(session_rows["gold"])
    return Measured(
        event_to_silver=latency_stats(everything, missing=missing),
        event_to_completed_workout=latency_stats(c_lat, missing=c_missing),
        event_to_gold=latency_stats(g_lat, missing=g_missing),
        series=series,
    )


def _ops_state_rows(spark: SparkSession, tables: Tables) -> list[tuple[float, int]]:
    """(commit time, rows added less rows removed) of the late rule's state table, ``_event_time_state``.

    Summed up to a time, the figures give the table's row count then (the writer folds old rows).
    """
    change = F.col("_change_type")
    try:
        rows = (
            _changes(spark, tables, "_event_time_state", layer="ops")
            .where(change.isin("insert", "delete"))
            .groupBy("_commit_timestamp")
            .agg(F.sum(F.when(change == "insert", F.lit(1)).otherwise(F.lit(-1))).alias("count"))
            .collect()
        )
    except Exception:  # the table's layout belongs to the silver writers; no figure is no failure
        log.exception("bench: _event_time_state unreadable")
        return []
    return [(r["_commit_timestamp"].timestamp(), int(r["count"])) for r in rows]
