"""Silver writers: ``foreachBatch`` functions that hold no business rule of their own.

Each topic query reads ``kafka_multiplex_bz`` (append-only) filtered to its topic and, per
micro-batch: parses and validates the payload, applies the ``future`` and ``late`` rules,
quarantines what fails, and MERGEs the rest. Every write is idempotent (insert-if-absent on the
table key, or an atomic scope replacement), so a micro-batch replayed after a crash changes nothing.

The ``late`` rule needs the greatest accepted event time of the topic in *earlier* micro-batches.
It is kept per (query, batch_id) in an ops table, so a replay of batch b reads exactly the
threshold it read the first time (the max over batch ids below b), however often it runs. Only
batches that raise the maximum leave a row, and now and then the rows below the current batch are
folded into one: the table holds a few rows per query, however long the query runs.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import reduce
from typing import TYPE_CHECKING

from pyspark.sql import functions as F
from pyspark.sql.types import IntegerType, LongType, StringType, StructField, StructType, TimestampType

from fitbit_stream.config import Config
from fitbit_stream.errors import PipelineError
from fitbit_stream.io.cdc_merge import CdcMergeEngine
from fitbit_stream.io.merge import insert_if_absent, replace_scopes, with_conflict_retry
from fitbit_stream.io.parallel import run_side_by_side
from fitbit_stream.io.tables import TableRef, Tables
from fitbit_stream.schemas import WORKOUTS
from fitbit_stream.transforms.bpm import HEART_RATE_KEY, to_heart_rate
from fitbit_stream.transforms.cdc import USER_PROFILE_CDC
from fitbit_stream.transforms.gym import VISIT_KEY, gym_logs, latest_registrations
from fitbit_stream.transforms.parse import PayloadKind, parse_payload
from fitbit_stream.transforms.quality import (
    accepted,
    late_threshold,
    rejected,
    to_quarantine,
    with_future_flag,
    with_late_flag,
)
from fitbit_stream.transforms.workouts import (
    EVENT_KEY,
    SESSION_KEY,
    SessionStatus,
    classify_sessions,
    completed_sessions,
    first_ingested_events,
    invalid_sessions,
)

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

__all__ = [
    "EVENT_TIME_STATE",
    "QUARANTINE_KEY",
    "WORKOUT_EVENTS",
    "BatchShare",
    "LateState",
    "RegistrationsWriter",
    "SilverRules",
    "TopicWriter",
    "VisitsWriter",
]

QUARANTINE_KEY = ("topic", "partition", "offset")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

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


@dataclass(frozen=True)
class _Known:
    """What the state table says for one query, as seen by batch ``batch_id``."""

    batch_id: int
    #: greatest recorded maximum of the query's batches below ``batch_id`` (unix micros)
    below: int | None
    #: the same, ``batch_id``'s own row included (differs from ``below`` on a replay only)
    through: int | None
    #: ``batch_id`` has its row already: a replay after the row was committed
    recorded: bool
    #: the query's rows at or below ``batch_id``
    rows: int


def _from_micros(micros: int | None) -> datetime | None:
    return None if micros is None else _EPOCH + timedelta(microseconds=micros)


class LateState:
    """The per-batch maxima behind the ``late`` rule (CONTRACT.md §3.6).

    A batch writes its row only when its maximum is above every earlier batch's (otherwise the
    maximum over "the batches below b + 1" is the one over "the batches below b", row or not),
    by a blind append (no scan of the table). Once a query has :attr:`FOLD_AFTER` rows, the next
    write replaces all its rows up to the batch by two: the maximum below the batch (under batch
    id b - 1) and the batch's own, so a replay of the batch still reads the same threshold.

    The object remembers what the last batch it recorded left behind, so the next batch of the same
    query needs no read; a new object (a restarted query, a replay) reads the table once.
    """

    FOLD_AFTER = 16

    def __init__(self, tables: Tables, spark: SparkSession) -> None:
        self._tables = tables
        self.ref = tables.ensure(spark, "_event_time_state", schema=EVENT_TIME_STATE, layer="ops")
        self._known: dict[str, _Known] = {}

    def previous_max(self, spark: SparkSession, query: str, batch_id: int) -> datetime | None:
        """The greatest accepted event time of the query's batches below ``batch_id`` (UTC)."""
        return _from_micros(self._state(spark, query, batch_id).below)

    def _state(self, spark: SparkSession, query: str, batch_id: int) -> _Known:
        known = self._known.get(query)
        if known is not None and known.batch_id == batch_id:
            return known
        micros = F.unix_micros(F.col("max_event_time"))
        ids = F.col("batch_id")
        row = (
            self._tables.read(spark, self.ref)
            .filter((F.col("query") == query) & (ids <= batch_id))
            .agg(
                F.max(F.when(ids < batch_id, micros)).alias("below"),
                F.max(micros).alias("through"),
                F.count(F.when(ids == batch_id, F.lit(1))).alias("recorded"),
                F.count(F.lit(1)).alias("rows"),
            )
            .first()
        )
        if row is None:  # pragma: no cover - a global aggregate always has its row
            known = _Known(batch_id, None, None, False, 0)
        else:
            known = _Known(batch_id, row["below"], row["through"], row["recorded"] > 0, row["rows"])
        self._known[query] = known
        return known

    def record(self, spark: SparkSession, query: str, batch_id: int, maximum: int | None) -> None:
        """Record batch ``batch_id``'s greatest accepted event time (unix micros, None: none).

        Idempotent: a replayed batch (its row already there) writes nothing.
        """
        self.record_many(spark, [(query, batch_id, maximum)])

    def record_many(self, spark: SparkSession, entries: Sequence[tuple[str, int, int | None]]) -> None:
        """:meth:`record` for several queries (each ``(query, batch id, maximum)``) in one commit.

        The rows of the queries that need one go in a single append (an ingest batch's topics: one
        commit instead of one per topic); a query due for folding replaces its rows on its own.
        """
        appended: list[tuple[str, int, int]] = []
        folds: list[tuple[str, int, list[tuple[str, int, int]]]] = []
        after: dict[str, _Known] = {}
        for query, batch_id, maximum in entries:
            known = self._state(spark, query, batch_id)
            below, rows = known.below, known.rows
            if known.recorded:
                following = known.through
            elif maximum is None or (below is not None and maximum <= below):
                following = below
            else:
                following = maximum
                state = (query, batch_id, maximum)
                if below is not None and rows + 1 > self.FOLD_AFTER:
                    folds.append((query, batch_id, [(query, batch_id - 1, below), state]))
                    rows = 2
                else:
                    appended.append(state)
                    rows += 1
            after[query] = _Known(batch_id + 1, following, following, False, rows)
        folding = {query for query, _, _ in folds}
        if appended:
            self._tables.append(self._rows(spark, appended), self.ref)
        # known as soon as committed: a failing fold below leaves the others' state right
        self._known.update({query: known for query, known in after.items() if query not in folding})
        for query, batch_id, rows_of in folds:
            self._replace(spark, query, batch_id, rows_of)
            self._known[query] = after[query]

    def _rows(self, spark: SparkSession, rows: list[tuple[str, int, int]]) -> DataFrame:
        # Built from unix micros in Spark: no round trip through the Python process's time zone.
        raw = spark.createDataFrame(rows, "query string, batch_id long, micros long")
        return raw.select("query", "batch_id", F.timestamp_micros("micros").alias("max_event_time"))

    def _replace(self, spark: SparkSession, query: str, batch_id: int, rows: list[tuple[str, int, int]]) -> None:
        quoted = query.replace("'", "''")
        where = f"query = '{quoted}' AND batch_id <= {int(batch_id)}"
        ref = self.ref

        def write() -> None:
            writer = self._rows(spark, rows).write.format("delta").mode("overwrite").option("replaceWhere", where)
            if ref.path:
                writer.save(ref.path)
            else:
                writer.saveAsTable(str(ref.qualified_name))

        with_conflict_retry(write, what=f"fold the late state of {query} in {ref}")


@dataclass(frozen=True)
class SilverRules:
    """The contract's knobs silver applies, from ``config.rules`` (shared with the batch recomputation)."""

    skew: timedelta
    horizon: timedelta
    hr_low: float
    hr_high: float
    max_session: timedelta

    @classmethod
    def of(cls, config: Config) -> SilverRules:
        rules = config.rules
        return cls(
            skew=timedelta(minutes=rules.clock_skew_minutes),
            horizon=timedelta(minutes=rules.lateness_horizon_minutes),
            hr_low=rules.heartrate_min,
            hr_high=rules.heartrate_max,
            max_session=timedelta(hours=rules.max_session_hours),
        )


class TopicWriter:
    """``foreachBatch`` function of one topic's silver query."""

    def __init__(
        self,
        spark: SparkSession,
        config: Config,
        kind: PayloadKind,
        query_name: str,
        *,
        late: LateState | None = None,
    ) -> None:
        self.kind = kind
        self.query_name = query_name
        self.tables = Tables(config)
        self.rules = SilverRules.of(config)
        # shared by the topics of one ingest query, whose batch records their maxima in one commit
        self.late = late if late is not None else LateState(self.tables, spark)
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

    def __call__(self, batch: DataFrame, batch_id: int, *, share: BatchShare | None = None) -> None:
        """Write one micro-batch of this topic's records.

        With ``share`` (the topics of one ingest batch), the quarantine rows and the batch's maximum
        go to ``share``, which writes every topic's in one quarantine MERGE and one late-state
        commit, beside this topic's own writes; ``share`` also releases the parsed batch.
        """
        spark = batch.sparkSession
        threshold = late_threshold(self.late.previous_max(spark, self.query_name, batch_id), horizon=self.rules.horizon)
        checked = (
            parse_payload(batch, kind=self.kind)
            .transform(with_future_flag, skew=self.rules.skew)
            .transform(with_late_flag, threshold=threshold)
            .persist()
        )
        try:
            # One pass over the persisted batch (the first action: it also fills the cache) says
            # which writes have anything to do. Never an action on ``batch`` itself: each would read
            # the source again (and count its rows twice in the query's progress).
            stats = _stats(checked)
            if share is not None:
                share.deliver(self.kind, _Checked(self.query_name, checked, stats))
            # The batch's writes go to different tables and do not depend on each other: side by
            # side. The late state is keyed by batch id, so recording it beside the other writes
            # (rather than after them) leaves a replay of this batch the same threshold.
            writes: list[Callable[[], None]] = []
            if stats.rejected and share is None:
                bad = quarantine_rows(checked)
                writes.append(
                    lambda: insert_if_absent(spark, self.tables, self.quarantine, bad, keys=QUARANTINE_KEY, unique=True)
                )
            if stats.accepted:
                good = accepted(checked)
                if self.kind == "bpm":
                    # to_heart_rate leaves one row per key, its times the accepted event times
                    rows = to_heart_rate(good, low=self.rules.hr_low, high=self.rules.hr_high)
                    writes.append(
                        lambda: insert_if_absent(
                            spark,
                            self.tables,
                            self.heart_rate,
                            rows,
                            keys=HEART_RATE_KEY,
                            prune_on="time",
                            prune_bounds=stats.bounds,
                            unique=True,
                        )
                    )
                elif self.kind == "workout":
                    writes.append(lambda: self._workouts(spark, good, F.current_timestamp()))
                else:
                    writes.append(lambda: self.cdc.apply(good, batch_id))
            if share is None:
                writes.append(lambda: self.late.record(spark, self.query_name, batch_id, stats.max_micros))
            run_side_by_side(spark, writes)
        except BaseException:
            if share is not None and not share.delivered(self.kind):
                checked.unpersist()  # share releases only what it was given
            raise
        finally:
            if share is None:
                checked.unpersist()

    def _workouts(self, spark: SparkSession, good: DataFrame, quarantined_at: Column) -> None:
        # first_ingested_events leaves one row per event key (the first ingested of this batch)
        events = first_ingested_events(good).select(*WORKOUT_EVENTS.fieldNames()).persist()
        classified: DataFrame | None = None
        try:
            with _events_lock(self.events):
                # Pair from what the events table holds once this batch's insert commits: the
                # events stored before it (first ingested ever, read at a pinned version) plus the
                # batch's events of keys not stored yet. The other event of a session may have
                # arrived in any earlier batch. Pinned, the pairing runs beside the two inserts
                # instead of after them; the lock keeps the other ingest query (Kafka or landing)
                # from storing events in between.
                touched = events.select(*SESSION_KEY).distinct()
                stored = self._stored_events(spark).join(touched, list(SESSION_KEY), "left_semi")
                new = events.join(stored.select(*EVENT_KEY), list(EVENT_KEY), "left_anti")
                classified = classify_sessions(stored.unionByName(new), max_duration=self.rules.max_session).persist()
                status = F.col("status")
                counted: dict[str, int] = {}

                def count() -> None:
                    row = classified.agg(
                        F.count(F.when(status == SessionStatus.COMPLETED, F.lit(1))).alias("completed"),
                        F.count(F.when(status == SessionStatus.INVALID, F.lit(1))).alias("invalid"),
                    ).first()
                    counted.update({} if row is None else row.asDict())

                run_side_by_side(
                    spark,
                    [
                        lambda: insert_if_absent(spark, self.tables, self.events, events, keys=EVENT_KEY, unique=True),
                        lambda: insert_if_absent(
                            spark,
                            self.tables,
                            self.workouts,
                            events.select(*WORKOUTS.fieldNames()),
                            keys=EVENT_KEY,
                            unique=True,
                        ),
                        count,
                    ],
                )
                # The sessions commit after their events: a batch that fails in between leaves no
                # session whose events are not stored. A MERGE with nothing to insert still costs
                # a commit, so the counts decide which run.
                writes: list[Callable[[], None]] = []
                if counted.get("completed"):
                    # classify_sessions leaves one row per session
                    completed = completed_sessions(classified)
                    writes.append(
                        lambda: insert_if_absent(
                            spark, self.tables, self.completed, completed, keys=SESSION_KEY, unique=True
                        )
                    )
                if counted.get("invalid"):
                    invalid = invalid_sessions(classified, quarantined_at=quarantined_at)
                    writes.append(
                        lambda: insert_if_absent(spark, self.tables, self.quarantine, invalid, keys=QUARANTINE_KEY)
                    )
                run_side_by_side(spark, writes)
        finally:
            if classified is not None:
                classified.unpersist()
            events.unpersist()

    def _stored_events(self, spark: SparkSession) -> DataFrame:
        version = self.tables.version(spark, self.events)
        if version is None:  # pragma: no cover - ensure() made the table, so it has version 0
            return spark.createDataFrame([], WORKOUT_EVENTS)
        return self.tables.read_at(spark, self.events, version)


def quarantine_rows(checked: DataFrame) -> DataFrame:
    """A topic batch's rejected records as ``quarantine`` rows (one per quarantine key)."""
    return to_quarantine(rejected(checked), quarantined_at=F.current_timestamp())


@dataclass(frozen=True)
class _Checked:
    """One topic's parsed and flagged micro-batch (persisted), with its statistics."""

    query: str
    rows: DataFrame
    stats: _BatchStats


class BatchShare:
    """The writes an ingest batch's topics share: one ``quarantine`` MERGE with every topic's
    rejected records, and one ``_event_time_state`` commit with every topic's maximum.

    Each topic's :class:`TopicWriter` delivers its parsed batch once it has its statistics.
    :meth:`write`, run beside the topics' own writes, waits for every topic and writes; a topic step
    that ends without delivering (failed, or returned) is reported by :meth:`ended`, and
    :meth:`write` then fails instead of waiting. :meth:`release`, once all have ended, unpersists
    the parsed batches. Per topic these are the rows the topic writes alone
    (``layered`` mode), so a replayed batch writes nothing again.
    """

    def __init__(self, kinds: Sequence[PayloadKind]) -> None:
        self._delivered: dict[PayloadKind, Future[_Checked]] = {kind: Future() for kind in kinds}

    def deliver(self, kind: PayloadKind, checked: _Checked) -> None:
        self._delivered[kind].set_result(checked)

    def delivered(self, kind: PayloadKind) -> bool:
        return self._delivered[kind].done()

    def ended(self, kind: PayloadKind, exc: BaseException | None) -> None:
        """``kind``'s step has ended (``exc``: how it failed): if it delivered nothing, :meth:`write`
        fails instead of waiting for it."""
        future = self._delivered[kind]
        if not future.done():
            future.set_exception(exc or PipelineError(f"the {kind} writer delivered nothing to share"))

    def write(self, spark: SparkSession, tables: Tables, quarantine: TableRef, late: LateState, batch_id: int) -> None:
        # a topic that failed before delivering: nothing shared is written
        checked = [future.result() for future in self._delivered.values()]
        bad = [quarantine_rows(c.rows) for c in checked if c.stats.rejected]
        steps: list[Callable[[], None]] = [
            lambda: late.record_many(spark, [(c.query, batch_id, c.stats.max_micros) for c in checked])
        ]
        if bad:
            # to_quarantine leaves one row per key, and the topics' keys differ
            every = reduce(lambda left, right: left.unionByName(right), bad)
            steps.append(lambda: insert_if_absent(spark, tables, quarantine, every, keys=QUARANTINE_KEY, unique=True))
        run_side_by_side(spark, steps)

    def release(self) -> None:
        """Unpersist the parsed batches delivered (once every write that reads them has ended)."""
        for future in self._delivered.values():
            if future.done() and future.exception() is None:
                future.result().rows.unpersist()


#: One workout step at a time per ``_workout_events`` table in this process (see ``_workouts``).
_EVENT_LOCKS: dict[str, threading.Lock] = {}
_EVENT_LOCKS_GUARD = threading.Lock()


def _events_lock(ref: TableRef) -> threading.Lock:
    with _EVENT_LOCKS_GUARD:
        return _EVENT_LOCKS.setdefault(str(ref), threading.Lock())


@dataclass(frozen=True)
class _BatchStats:
    rejected: int
    accepted: int
    #: greatest accepted event time (unix micros), None when nothing was accepted
    max_micros: int | None
    #: least and greatest accepted event time as Spark renders them, None when nothing was accepted
    bounds: tuple[str, str] | None


def _stats(checked: DataFrame) -> _BatchStats:
    reason_null = F.col("reason").isNull()
    # As batch_max_event_time: the accepted rows' event time, after the future flag.
    ok_time = F.when(reason_null, F.col("event_time").cast("timestamp"))
    row = checked.agg(
        F.count(F.when(~reason_null, F.lit(1))).alias("rejected"),
        F.count(F.when(reason_null, F.lit(1))).alias("accepted"),
        F.max(F.unix_micros(ok_time)).alias("max_micros"),
        # Rendered by Spark in the session time zone, as _range_prune's literal expects.
        F.min(ok_time).cast("string").alias("lo"),
        F.max(ok_time).cast("string").alias("hi"),
    ).first()
    if row is None:  # pragma: no cover - a global aggregate always has its row
        return _BatchStats(0, 0, None, None)
    bounds = None if row["lo"] is None else (str(row["lo"]), str(row["hi"]))
    return _BatchStats(int(row["rejected"]), int(row["accepted"]), row["max_micros"], bounds)


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
