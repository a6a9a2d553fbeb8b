"""Silver writers: ``foreachBatch`` functions that hold no business rule of their own.

Each topic query reads ``kafka_multiplex_bz`` (append-only) filtered to its topic and, per
micro-batch: parses and validates the payload, applies the ``future`` and ``late`` rules,
quarantines what fails, and MERGEs the rest. Every write is idempotent (insert-if-absent on the
table key, or an atomic scope replacement), so a micro-batch replayed after a crash changes nothing.

The ``late`` rule needs the greatest accepted event time of the topic in *earlier* micro-batches.
It is kept per (query, batch_id) in an ops table, so a replay of batch b reads exactly the
threshold it read the first time (the max over batch ids below b), however often it runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

from pyspark.sql import functions as F
from pyspark.sql.types import IntegerType, LongType, StringType, StructField, StructType, TimestampType

from fitbit_stream.config import Config
from fitbit_stream.io.cdc_merge import CdcMergeEngine
from fitbit_stream.io.merge import insert_if_absent, replace_scopes
from fitbit_stream.io.tables import TableRef, Tables
from fitbit_stream.schemas import WORKOUTS
from fitbit_stream.transforms.bpm import HEART_RATE_KEY, to_heart_rate
from fitbit_stream.transforms.cdc import USER_PROFILE_CDC
from fitbit_stream.transforms.gym import VISIT_KEY, gym_logs, latest_registrations
from fitbit_stream.transforms.parse import PayloadKind, parse_payload
from fitbit_stream.transforms.quality import (
    INGESTION_ORDER,
    accepted,
    batch_max_event_time,
    late_threshold,
    rejected,
    to_quarantine,
    with_future_flag,
    with_late_flag,
)
from fitbit_stream.transforms.workouts import (
    EVENT_KEY,
    SESSION_KEY,
    classify_sessions,
    completed_sessions,
    first_ingested_events,
    invalid_sessions,
)

if TYPE_CHECKING:
    from datetime import datetime

    from pyspark.sql import Column, DataFrame, SparkSession

__all__ = [
    "EVENT_TIME_STATE",
    "QUARANTINE_KEY",
    "WORKOUT_EVENTS",
    "LateState",
    "RegistrationsWriter",
    "TopicWriter",
    "VisitsWriter",
]

QUARANTINE_KEY = ("topic", "partition", "offset")

#: ops table: greatest accepted event time per (query, micro-batch).
EVENT_TIME_STATE = StructType(
    [
        StructField("query", StringType()),
        StructField("batch_id", LongType()),
        StructField("max_event_time", TimestampType()),
    ]
)

#: silver-internal table: the first-ingested workout events with the coordinates of their
#: bronze record (``workouts`` has no room for them, and an invalid pair is quarantined under
#: its stop record's coordinates even when the stop arrived batches before its start).
WORKOUT_EVENTS = StructType(
    [
        *WORKOUTS.fields,
        StructField("key", StringType()),
        StructField("value", StringType()),
        StructField("topic", StringType()),
        StructField("partition", IntegerType()),
        StructField("offset", LongType()),
        StructField("timestamp", TimestampType()),
        StructField("load_time", TimestampType()),
    ]
)


class LateState:
    """The per-batch maxima behind the ``late`` rule (CONTRACT.md §3.6)."""

    def __init__(self, tables: Tables, spark: SparkSession) -> None:
        self._tables = tables
        self.ref = tables.ensure(spark, "_event_time_state", schema=EVENT_TIME_STATE, layer="ops")

    def previous_max(self, spark: SparkSession, query: str, batch_id: int) -> datetime | None:
        row = (
            self._tables.read(spark, self.ref)
            .filter((F.col("query") == query) & (F.col("batch_id") < batch_id))
            .agg(F.max("max_event_time").alias("m"))
            .first()
        )
        return None if row is None else row["m"]

    def record(self, spark: SparkSession, query: str, batch_id: int, maximum: DataFrame) -> None:
        row = maximum.select(
            F.lit(query).alias("query"), F.lit(batch_id).cast("long").alias("batch_id"), "max_event_time"
        ).filter(F.col("max_event_time").isNotNull())
        insert_if_absent(spark, self._tables, self.ref, row, keys=["query", "batch_id"])


@dataclass(frozen=True)
class _Rules:
    skew: timedelta
    horizon: timedelta
    hr_low: float
    hr_high: float
    max_session: timedelta


class TopicWriter:
    """``foreachBatch`` function of one topic's silver query."""

    def __init__(self, spark: SparkSession, config: Config, kind: PayloadKind, query_name: str) -> None:
        rules = config.rules
        self.kind = kind
        self.query_name = query_name
        self.tables = Tables(config)
        self.rules = _Rules(
            skew=timedelta(minutes=rules.clock_skew_minutes),
            horizon=timedelta(minutes=rules.lateness_horizon_minutes),
            hr_low=rules.heartrate_min,
            hr_high=rules.heartrate_max,
            max_session=timedelta(hours=rules.max_session_hours),
        )
        self.late = LateState(self.tables, spark)
        self.quarantine = self.tables.ensure(spark, "quarantine")
        if kind == "bpm":
            self.heart_rate = self.tables.ensure(spark, "heart_rate")
        elif kind == "workout":
            self.events = self.tables.ensure(spark, "_workout_events", schema=WORKOUT_EVENTS, layer="silver")
            self.workouts = self.tables.ensure(spark, "workouts")
            self.completed = self.tables.ensure(spark, "completed_workouts")
        else:
            self.cdc = CdcMergeEngine(
                USER_PROFILE_CDC,
                spark,
                profile=self.tables.ref("user_profile"),
                history=self.tables.ref("user_profile_history"),
                changes=self.tables.ref("_user_profile_changes", layer="silver"),
            )

    def __call__(self, batch: DataFrame, batch_id: int) -> None:
        spark = batch.sparkSession
        threshold = late_threshold(self.late.previous_max(spark, self.query_name, batch_id), horizon=self.rules.horizon)
        checked = (
            parse_payload(batch, kind=self.kind)
            .transform(with_future_flag, skew=self.rules.skew)
            .transform(with_late_flag, threshold=threshold)
            .persist()
        )
        try:
            quarantined_at = F.current_timestamp()
            bad = to_quarantine(rejected(checked), quarantined_at=quarantined_at)
            insert_if_absent(spark, self.tables, self.quarantine, bad, keys=QUARANTINE_KEY)
            good = accepted(checked)
            if self.kind == "bpm":
                rows = to_heart_rate(good, low=self.rules.hr_low, high=self.rules.hr_high)
                insert_if_absent(spark, self.tables, self.heart_rate, rows, keys=HEART_RATE_KEY, prune_on="time")
            elif self.kind == "workout":
                self._workouts(spark, good, quarantined_at)
            else:
                self.cdc.apply(good, batch_id)
            # Last: a crash before this line replays the batch with the same threshold.
            self.late.record(spark, self.query_name, batch_id, batch_max_event_time(checked))
        finally:
            checked.unpersist()

    def _workouts(self, spark: SparkSession, good: DataFrame, quarantined_at: Column) -> None:
        order = [F.col(c).asc_nulls_last() for c in INGESTION_ORDER]
        events = first_ingested_events(good).select(*WORKOUT_EVENTS.fieldNames())
        insert_if_absent(spark, self.tables, self.events, events, keys=EVENT_KEY, order_by=order)
        # events is already one row per key (the first ingested of this batch)
        insert_if_absent(spark, self.tables, self.workouts, events.select(*WORKOUTS.fieldNames()), keys=EVENT_KEY)
        # Pair from the stored events (first ingested ever), not from this batch alone: the other
        # event of a session may have arrived in any earlier batch.
        touched = events.select(*SESSION_KEY).distinct()
        stored = self.tables.read(spark, self.events).join(touched, list(SESSION_KEY), "left_semi")
        classified = classify_sessions(stored, max_duration=self.rules.max_session).persist()
        try:
            insert_if_absent(spark, self.tables, self.completed, completed_sessions(classified), keys=SESSION_KEY)
            invalid = invalid_sessions(classified, quarantined_at=quarantined_at)
            insert_if_absent(spark, self.tables, self.quarantine, invalid, keys=QUARANTINE_KEY)
        finally:
            classified.unpersist()


def _changed_keys(batch: DataFrame, keys: tuple[str, ...]) -> DataFrame:
    return batch.select(*keys).dropDuplicates(list(keys))


class RegistrationsWriter:
    """``registered_users_bz`` micro-batches -> ``users`` (latest registration per user)."""

    def __init__(self, spark: SparkSession, config: Config) -> None:
        self.tables = Tables(config)
        self.source: TableRef = self.tables.ref("registered_users_bz")
        self.target = self.tables.ensure(spark, "users")

    def __call__(self, batch: DataFrame, batch_id: int) -> None:
        spark = batch.sparkSession
        scopes = _changed_keys(batch, ("user_id",))
        versions = self.tables.read(spark, self.source).join(scopes, ["user_id"], "left_semi")
        replace_scopes(
            spark,
            self.tables,
            self.target,
            latest_registrations(versions),
            scopes=scopes,
            scope_keys=["user_id"],
            keys=["user_id"],
        )


class VisitsWriter:
    """``gym_logins_bz`` micro-batches -> ``gym_logs`` (latest observed logout per visit)."""

    def __init__(self, spark: SparkSession, config: Config) -> None:
        self.tables = Tables(config)
        self.source = self.tables.ref("gym_logins_bz")
        self.target = self.tables.ensure(spark, "gym_logs")

    def __call__(self, batch: DataFrame, batch_id: int) -> None:
        spark = batch.sparkSession
        scopes = _changed_keys(batch, VISIT_KEY)
        versions = self.tables.read(spark, self.source).join(scopes, list(VISIT_KEY), "left_semi")
        replace_scopes(
            spark,
            self.tables,
            self.target,
            gym_logs(versions),
            scopes=scopes,
            scope_keys=list(VISIT_KEY),
            keys=list(VISIT_KEY),
        )
