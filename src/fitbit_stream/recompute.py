"""Batch recomputation of silver and gold from bronze: a second, independent path to every table.

- :func:`recompute` applies the contract rules to all of bronze at once with the same pure
  transforms (``fitbit_stream.transforms``) but none of the streaming writers' machinery: plain
  batch reads, no MERGE, no change feeds, no per-batch state. What the two paths share is the rule
  code; what they do not share is everything that makes the streaming path incremental.
- :func:`verify` compares each silver and gold table with its recomputation on the table key.
- :func:`rebuild` empties silver and gold (tables, checkpoints, lateness state) and derives them
  again from bronze through the streaming writers; bronze and its checkpoints are kept, so nothing
  is read from Kafka again.

Lateness is the one rule a batch cannot reproduce: it depends on micro-batch boundaries. The
recomputation takes the streaming run's ``late`` decisions as given (bronze records the quarantine
holds with reason ``late`` are left out, and their quarantine rows are expected as they are) and
applies every other rule to all of bronze. It checks each such decision for plausibility instead:
the record's event time must be older than the greatest accepted event time of its topic among
bronze rows loaded no later than it, minus the horizon. That is a necessary condition of the
streaming rule (the rows of earlier micro-batches were all loaded no later than the record), so a
decision that fails it is reported as a difference. Rows loaded at the same instant count: one
bronze commit shares one ``load_time`` and may still be split over micro-batches.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import date, timedelta
from functools import reduce
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyspark.errors import StreamingQueryException
from pyspark.sql import Window
from pyspark.sql import functions as F
from pyspark.sql.types import DoubleType, FloatType

from fitbit_stream.config import Config
from fitbit_stream.errors import PipelineError
from fitbit_stream.io.merge import with_conflict_retry
from fitbit_stream.io.silver import QUARANTINE_KEY, SilverRules, TopicWriter
from fitbit_stream.io.tables import TableRef, Tables
from fitbit_stream.schemas import TABLES, USER_PROFILE, USER_PROFILE_HISTORY, WORKOUTS
from fitbit_stream.transforms.bpm import to_heart_rate
from fitbit_stream.transforms.cdc import DELETED, USER_PROFILE_CDC, dedupe_changes, scd1_state, scd2_versions
from fitbit_stream.transforms.dates import date_lookup, years_of
from fitbit_stream.transforms.demographics import user_bins
from fitbit_stream.transforms.gold_bpm import workout_bpm_summary
from fitbit_stream.transforms.gold_gym import gym_occupancy, gym_summary
from fitbit_stream.transforms.gym import gym_logs, latest_registrations
from fitbit_stream.transforms.parse import PayloadKind, parse_payload
from fitbit_stream.transforms.quality import LATE, accepted, rejected, to_quarantine, with_future_flag
from fitbit_stream.transforms.workouts import (
    classify_sessions,
    completed_sessions,
    first_ingested_events,
    invalid_sessions,
    workout_bpm,
)

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession
    from pyspark.sql.streaming.query import StreamingQuery

    from fitbit_stream.pipeline import RunReport

__all__ = [
    "COMPARED_TABLES",
    "LateCheck",
    "RebuildReport",
    "TableDiff",
    "VerifyReport",
    "rebuild",
    "recompute",
    "verify",
]

log = logging.getLogger(__name__)

#: The tables :func:`verify` compares and :func:`rebuild` re-derives: every silver and gold table.
COMPARED_TABLES: tuple[str, ...] = tuple(name for name, spec in TABLES.items() if spec.layer in ("silver", "gold"))

_KINDS: tuple[PayloadKind, ...] = ("user_info", "bpm", "workout")

#: Writer-internal tables that hold silver state (io/silver.py, io/cdc_merge.py): reset with silver.
_INTERNAL_TABLES: tuple[tuple[str, str], ...] = (
    ("_workout_events", "silver"),
    ("_user_profile_changes", "silver"),
    ("_event_time_state", "ops"),
)

#: Checkpoints of the queries that write silver and gold (pipeline.py names them so); the bronze
#: queries' checkpoints (``bronze_*``) hold the Kafka and landing offsets and are never touched.
_DERIVED_CHECKPOINT_PREFIXES = ("silver_", "derived_", "gold_")
_TRASH = "_rebuild_trash"

#: Delta's availableNow honours maxFilesPerTrigger: a limit above any file count gives one batch.
_ONE_BATCH_FILES = str(2**31 - 1)

# Doubles that are sums or means may differ in the last bits with the order of summation.
_RELATIVE_TOLERANCE = 1e-9

_ONLY_STREAM, _ONLY_BATCH, _DIFFERING, _DUPLICATE = "only_in_stream", "only_in_batch", "differing", "duplicate_key"
_CATEGORIES = (_ONLY_STREAM, _ONLY_BATCH, _DIFFERING, _DUPLICATE)


# --- the batch recomputation ---------------------------------------------------------------------


class _Batch:
    """The recomputation, one lazily built DataFrame per step (persisted when ``cache``)."""

    def __init__(self, spark: SparkSession, config: Config, *, as_of: date, cache: bool) -> None:
        self.spark = spark
        self.config = config
        self.tables = Tables(config)
        self.rules = SilverRules.of(config)
        self.as_of = as_of
        self._cache = cache
        self._frames: dict[str, DataFrame] = {}

    def close(self) -> None:
        if self._cache:
            for df in self._frames.values():
                df.unpersist()
        self._frames.clear()

    def _memo(self, name: str, build: Callable[[], DataFrame]) -> DataFrame:
        if name not in self._frames:
            df = build()
            self._frames[name] = df.persist() if self._cache else df
        return self._frames[name]

    def read(self, name: str) -> DataFrame:
        """A contract table as it is now; empty (with its schema) when it was never created."""
        ref = self.tables.ref(name)
        if self.tables.exists(self.spark, ref):
            return self.tables.read(self.spark, ref).select(*TABLES[name].schema.fieldNames())
        return self.spark.createDataFrame([], TABLES[name].schema)

    # --- records ---------------------------------------------------------------------------------

    def stream_late(self) -> DataFrame:
        """The streaming run's ``late`` decisions: (topic, partition, offset, detail)."""
        return self._memo(
            "stream_late",
            lambda: (
                self.read("quarantine")
                .filter(F.col("reason") == LATE)
                .select(*QUARANTINE_KEY, "detail")
                .dropDuplicates(list(QUARANTINE_KEY))
            ),
        )

    def flagged(self, kind: PayloadKind) -> DataFrame:
        """Bronze records of the kind's topic, parsed, with every record-level rule but ``late``."""

        def build() -> DataFrame:
            topic = getattr(self.config.kafka.topics, kind)
            bronze = self.read("kafka_multiplex_bz").filter(F.col("topic") == topic)
            return parse_payload(bronze, kind=kind).transform(with_future_flag, skew=self.rules.skew)

        return self._memo(f"flagged_{kind}", build)

    def checked(self, kind: PayloadKind) -> DataFrame:
        """:meth:`flagged` plus the streaming run's ``late`` decisions (with their detail)."""

        def build() -> DataFrame:
            late = self.stream_late().select(
                *(F.col(c).alias(f"_late_{c}") for c in QUARANTINE_KEY), F.col("detail").alias("_late_detail")
            )
            same = reduce(lambda a, b: a & b, [F.col(c).eqNullSafe(F.col(f"_late_{c}")) for c in QUARANTINE_KEY])
            hit = F.col("reason").isNull() & F.col("_late_topic").isNotNull()
            return (
                self.flagged(kind)
                .join(late, same, "left")
                .withColumns(
                    {
                        "reason": F.when(hit, F.lit(LATE)).otherwise(F.col("reason")),
                        "detail": F.when(hit, F.col("_late_detail")).otherwise(F.col("detail")),
                    }
                )
                .drop(*late.columns)
            )

        return self._memo(f"checked_{kind}", build)

    # --- silver ------------------------------------------------------------------------------------

    def heart_rate(self) -> DataFrame:
        return self._memo(
            "heart_rate",
            lambda: to_heart_rate(accepted(self.checked("bpm")), low=self.rules.hr_low, high=self.rules.hr_high),
        )

    def _events(self) -> DataFrame:
        return self._memo("_events", lambda: first_ingested_events(accepted(self.checked("workout"))))

    def _classified(self) -> DataFrame:
        return self._memo("_classified", lambda: classify_sessions(self._events(), max_duration=self.rules.max_session))

    def workouts(self) -> DataFrame:
        return self._events().select(*WORKOUTS.fieldNames())

    def completed_workouts(self) -> DataFrame:
        return self._memo("completed_workouts", lambda: completed_sessions(self._classified()))

    def _changes(self) -> DataFrame:
        spec = USER_PROFILE_CDC
        return self._memo(
            "_changes",
            lambda: dedupe_changes(accepted(self.checked("user_info")).select(*spec.change_columns), spec=spec),
        )

    def user_profile(self) -> DataFrame:
        return self._memo(
            "user_profile",
            lambda: (
                scd1_state(self._changes(), spec=USER_PROFILE_CDC)
                .filter(~F.col(DELETED))
                .select(*USER_PROFILE.fieldNames())
            ),
        )

    def user_profile_history(self) -> DataFrame:
        return self._memo(
            "user_profile_history",
            lambda: scd2_versions(self._changes(), spec=USER_PROFILE_CDC).select(*USER_PROFILE_HISTORY.fieldNames()),
        )

    def users(self) -> DataFrame:
        return self._memo("users", lambda: latest_registrations(self.read("registered_users_bz")))

    def gym_logs(self) -> DataFrame:
        return self._memo("gym_logs", lambda: gym_logs(self.read("gym_logins_bz")))

    def workout_bpm(self) -> DataFrame:
        return self._memo(
            "workout_bpm", lambda: workout_bpm(self.completed_workouts(), self.heart_rate(), self.users())
        )

    def user_bins(self) -> DataFrame:
        return user_bins(self.user_profile(), as_of=self.as_of)

    def date_lookup(self) -> DataFrame:
        # The contract's sources of years (§2.2): record timestamps, accepted event times (all of
        # them, duplicates included), registrations, logins and logouts.
        years = reduce(
            lambda a, b: a.unionByName(b),
            [
                years_of(self.read("kafka_multiplex_bz"), "timestamp"),
                *(years_of(accepted(self.checked(kind)), "event_time") for kind in _KINDS),
                years_of(self.read("registered_users_bz"), "registration_timestamp"),
                years_of(self.read("gym_logins_bz"), "login", "logout"),
            ],
        ).distinct()
        return date_lookup(years)

    def quarantine(self) -> DataFrame:
        never = F.lit(None).cast("timestamp")
        rows = [to_quarantine(rejected(self.checked(kind)), quarantined_at=never) for kind in _KINDS]
        rows.append(invalid_sessions(self._classified(), quarantined_at=never))
        return reduce(lambda a, b: a.unionByName(b), rows)

    # --- gold --------------------------------------------------------------------------------------

    def workout_bpm_summary(self) -> DataFrame:
        return workout_bpm_summary(self.completed_workouts(), self.workout_bpm(), self.user_profile_history())

    def gym_summary(self) -> DataFrame:
        return gym_summary(self.gym_logs(), self.users(), self.completed_workouts())

    def gym_occupancy(self) -> DataFrame:
        return gym_occupancy(self.gym_logs())

    # --- all ---------------------------------------------------------------------------------------

    def table(self, name: str) -> DataFrame:
        """The recomputed table ``name`` in its contract schema (each table has its method above)."""
        build: Callable[[], DataFrame] = getattr(self, name)
        schema = TABLES[name].schema
        return build().select(*(F.col(f.name).cast(f.dataType).alias(f.name) for f in schema.fields))

    def late_check(self) -> DataFrame:
        """One row per streaming ``late`` decision: topic, partition, offset, plausible (boolean)."""
        coords = list(QUARANTINE_KEY)
        columns = [*coords, "load_time", "event_time", "reason"]
        flagged = reduce(lambda a, b: a.unionByName(b), [self.flagged(kind).select(*columns) for kind in _KINDS])
        decisions = self.stream_late().select(*coords)
        # The first ingested bronze copy of each decided record (a record read twice is one).
        first = Window.partitionBy(*coords).orderBy(F.col("load_time").asc_nulls_last())
        records = (
            flagged.join(decisions, coords, "left_semi")
            .withColumn("_rn", F.row_number().over(first))
            .filter(F.col("_rn") == 1)
            .drop("_rn")
        )
        # What the streaming rule can have seen: accepted records (not late themselves), per load.
        candidates = flagged.filter(F.col("reason").isNull()).join(decisions, coords, "left_anti")
        per_load = candidates.groupBy("topic", "load_time").agg(F.max("event_time").alias("_max"))
        loads = per_load.unionByName(
            records.select("topic", "load_time", F.lit(None).cast("timestamp").alias("_max")).distinct()
        )
        upto = Window.partitionBy("topic").orderBy("load_time").rangeBetween(Window.unboundedPreceding, 0)
        seen = (
            loads.filter(F.col("load_time").isNotNull())
            .withColumn("_seen", F.max("_max").over(upto))
            .groupBy("topic", "load_time")
            .agg(F.max("_seen").alias("_seen"))
        )
        horizon = self.rules.horizon // timedelta(microseconds=1)
        older = F.unix_micros(F.col("event_time")) < F.unix_micros(F.col("_seen")) - F.lit(horizon)
        plausible = F.col("reason").isNull() & F.coalesce(older, F.lit(False))
        return (
            decisions.join(records, coords, "left")
            .join(seen, ["topic", "load_time"], "left")
            .select(*coords, F.coalesce(plausible, F.lit(False)).alias("plausible"))
        )


def recompute(spark: SparkSession, config: Config, *, as_of: date) -> dict[str, DataFrame]:
    """Every silver and gold table (:data:`COMPARED_TABLES`) recomputed from bronze, in contract
    schema, as lazy DataFrames. ``as_of`` is the reference date of ``user_bins``. Quarantine rows
    have ``quarantined_at`` NULL; ``late`` decisions are the streaming run's (module docstring)."""
    batch = _Batch(spark, config, as_of=as_of, cache=False)
    return {name: batch.table(name) for name in COMPARED_TABLES}


# --- verify ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TableDiff:
    """How one table differs from its recomputation, compared on the table key.

    ``differing`` keys are in both with other values; a ``duplicate_key`` is a key the table (or
    the recomputation) holds more than once. ``examples`` holds up to N keys per category, in key
    order.
    """

    table: str
    key: tuple[str, ...]
    stream_rows: int
    batch_rows: int
    only_in_stream: int
    only_in_batch: int
    differing: int
    duplicate_keys: int
    examples: Mapping[str, tuple[tuple[Any, ...], ...]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not (self.only_in_stream or self.only_in_batch or self.differing or self.duplicate_keys)


@dataclass(frozen=True)
class LateCheck:
    """The plausibility check of the streaming run's ``late`` decisions."""

    checked: int
    implausible: int
    examples: tuple[tuple[Any, ...], ...] = ()

    @property
    def ok(self) -> bool:
        return self.implausible == 0


@dataclass(frozen=True)
class VerifyReport:
    tables: tuple[TableDiff, ...]
    late: LateCheck

    @property
    def ok(self) -> bool:
        return self.late.ok and all(t.ok for t in self.tables)

    @property
    def differences(self) -> dict[str, TableDiff]:
        """The tables that differ, by name."""
        return {t.table: t for t in self.tables if not t.ok}

    def table(self) -> str:
        heads = ("table", "stream", "batch", "only stream", "only batch", "differing", "dup keys")
        width = max([len(heads[0]), *(len(t.table) for t in self.tables)])
        lines = [f"{heads[0]:<{width}}  " + "  ".join(f"{h:>11}" for h in heads[1:])]
        for t in self.tables:
            figures = (t.stream_rows, t.batch_rows, t.only_in_stream, t.only_in_batch, t.differing, t.duplicate_keys)
            lines.append(f"{t.table:<{width}}  " + "  ".join(f"{n:>11}" for n in figures))
        lines.append(f"late decisions: {self.late.checked} checked, {self.late.implausible} implausible")
        for t in self.tables:
            for category in _CATEGORIES:
                keys = t.examples.get(category, ())
                if keys:
                    shown = ", ".join(_format_key(k) for k in keys)
                    lines.append(f"  {t.table} {category} ({', '.join(t.key)}): {shown}")
        if self.late.examples:
            shown = ", ".join(_format_key(k) for k in self.late.examples)
            lines.append(f"  implausible late (topic, partition, offset): {shown}")
        lines.append("OK: every table equals its recomputation" if self.ok else "DIFFERENT")
        return "\n".join(lines)


def _format_key(key: tuple[Any, ...]) -> str:
    return "(" + ", ".join("NULL" if v is None else str(v) for v in key) + ")"


def _same_value(stream: Column, batch: Column, is_double: bool) -> Column:
    same = stream.eqNullSafe(batch)
    if not is_double:
        return same
    scale = F.greatest(F.lit(1.0), F.abs(stream), F.abs(batch))
    return same | F.coalesce(F.abs(stream - batch) <= F.lit(_RELATIVE_TOLERANCE) * scale, F.lit(False))


def _compare(name: str, stream: DataFrame, batch: DataFrame, *, examples: int) -> TableDiff:
    spec = TABLES[name]
    key = list(spec.key)
    fields = [f for f in spec.schema.fields if f.name not in key and f.name != "quarantined_at"]

    def per_key(df: DataFrame, tag: str) -> DataFrame:
        values = F.struct(*(F.col(f.name).cast(f.dataType).alias(f.name) for f in fields))
        return df.groupBy(*(F.col(k).alias(f"{tag}{k}") for k in key)).agg(
            F.count(F.lit(1)).alias(f"{tag}n"), F.first(values).alias(f"{tag}v")
        )

    s, b = per_key(stream, "_s_"), per_key(batch, "_b_")
    on = reduce(lambda acc, c: acc & c, [F.col(f"_s_{k}").eqNullSafe(F.col(f"_b_{k}")) for k in key])
    same = reduce(
        lambda acc, c: acc & c,
        [
            _same_value(
                F.col(f"_s_v.{f.name}"), F.col(f"_b_v.{f.name}"), isinstance(f.dataType, DoubleType | FloatType)
            )
            for f in fields
        ],
        F.lit(True),
    )
    category = (
        F.when((F.col("_s_n") > 1) | (F.col("_b_n") > 1), F.lit(_DUPLICATE))
        .when(F.col("_b_n").isNull(), F.lit(_ONLY_STREAM))
        .when(F.col("_s_n").isNull(), F.lit(_ONLY_BATCH))
        .when(~same, F.lit(_DIFFERING))
    )
    joined = (
        s.join(b, on, "full_outer")
        .select(
            *(F.coalesce(F.col(f"_s_{k}"), F.col(f"_b_{k}")).alias(k) for k in key),
            F.col("_s_n"),
            F.col("_b_n"),
            category.alias("_category"),
        )
        .persist()
    )
    try:
        counts = joined.agg(
            F.coalesce(F.sum("_s_n"), F.lit(0)).alias("stream_rows"),
            F.coalesce(F.sum("_b_n"), F.lit(0)).alias("batch_rows"),
            *(F.count(F.when(F.col("_category") == c, 1)).alias(c) for c in _CATEGORIES),
        ).first()
        assert counts is not None  # a global aggregate always has one row
        found: dict[str, tuple[tuple[Any, ...], ...]] = {}
        for c in _CATEGORIES:
            if counts[c] and examples > 0:
                rows = (
                    joined.filter(F.col("_category") == c)
                    .orderBy(*(F.col(k).asc_nulls_first() for k in key))
                    .select(*key)
                    .limit(examples)
                    .collect()
                )
                found[c] = tuple(tuple(r) for r in rows)
    finally:
        joined.unpersist()
    return TableDiff(
        table=name,
        key=tuple(key),
        stream_rows=int(counts["stream_rows"]),
        batch_rows=int(counts["batch_rows"]),
        only_in_stream=int(counts[_ONLY_STREAM]),
        only_in_batch=int(counts[_ONLY_BATCH]),
        differing=int(counts[_DIFFERING]),
        duplicate_keys=int(counts[_DUPLICATE]),
        examples=found,
    )


def verify(
    spark: SparkSession,
    config: Config,
    *,
    as_of: date,
    examples: int = 5,
    tables: Collection[str] | None = None,
) -> VerifyReport:
    """Compare each silver and gold table (or only ``tables``) with its batch recomputation.

    ``as_of`` must be the reference date the streaming run gave ``user_bins``. ``quarantined_at``
    is ignored; doubles are equal within a relative 1e-9 (a mean depends on summation order). Run
    it after a run that drained its input: rows bronze holds that silver has not read yet are
    differences too.
    """
    names = COMPARED_TABLES if tables is None else tuple(tables)
    unknown = sorted(set(names) - set(COMPARED_TABLES))
    if unknown:
        raise PipelineError(f"verify: unknown table(s) {unknown}: choose from {', '.join(COMPARED_TABLES)}")
    batch = _Batch(spark, config, as_of=as_of, cache=True)
    try:
        diffs = tuple(
            _compare(name, batch.read(name), batch.table(name), examples=examples)
            for name in COMPARED_TABLES
            if name in names
        )
        check = batch.late_check().persist()
        try:
            total = check.count()
            bad = check.filter(~F.col("plausible")).orderBy(*QUARANTINE_KEY).select(*QUARANTINE_KEY)
            implausible = bad.count()
            shown = tuple(tuple(r) for r in bad.limit(examples).collect()) if implausible and examples > 0 else ()
        finally:
            check.unpersist()
    finally:
        batch.close()
    return VerifyReport(tables=diffs, late=LateCheck(checked=total, implausible=implausible, examples=shown))


# --- rebuild --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RebuildReport:
    checkpoints_reset: tuple[str, ...]
    tables_reset: tuple[str, ...]
    kept_late: int
    run: RunReport

    def table(self) -> str:
        return "\n".join(
            [
                f"checkpoints reset: {', '.join(self.checkpoints_reset) or '-'}",
                f"tables reset: {', '.join(self.tables_reset) or '-'}",
                f"late decisions kept: {self.kept_late}",
                self.run.table(),
            ]
        )


class _Checkpoints:
    """The silver and gold checkpoint directories, moved aside whole before they are deleted."""

    def __init__(self, config: Config) -> None:
        root = config.storage.checkpoint_root
        if "://" in root:
            raise PipelineError(
                f"rebuild: checkpoint_root {root!r} is a URI; rebuild resets filesystem paths (local or "
                f"/Volumes) only: stop the pipeline, delete its {', '.join(_DERIVED_CHECKPOINT_PREFIXES)}* "
                "checkpoint directories by hand and run rebuild with a local checkpoint_root mount"
            )
        self.root = Path(root).absolute()
        self.trash = self.root / _TRASH

    def move_aside(self) -> tuple[str, ...]:
        # Leftovers of an interrupted rebuild first: they are what this one moves aside again.
        self.empty_trash()
        if not self.root.is_dir():
            return ()
        moved = []
        for child in sorted(self.root.iterdir()):
            if child.is_dir() and child.name.startswith(_DERIVED_CHECKPOINT_PREFIXES):
                self.trash.mkdir(parents=True, exist_ok=True)
                # A rename is atomic: a query later finds its whole checkpoint or none, never the
                # half-deleted one that an interrupted recursive delete would leave.
                child.rename(self.trash / child.name)
                moved.append(child.name)
        return tuple(moved)

    def empty_trash(self) -> None:
        if self.trash.exists():
            shutil.rmtree(self.trash)


def _reset_tables(spark: SparkSession, tables: Tables, *, keep_late: bool) -> tuple[str, ...]:
    """Empty every silver, gold and writer-internal table (one atomic DELETE each, so an
    interruption leaves each table either as it was or empty; Delta keeps the old versions)."""
    refs: list[TableRef] = [tables.ref(name) for name in COMPARED_TABLES]
    refs += [tables.ref(name, layer=layer) for name, layer in _INTERNAL_TABLES]
    reset = []
    for ref in refs:
        if not tables.exists(spark, ref):
            continue
        condition = f"NOT (reason <=> '{LATE}')" if keep_late and ref.name == "quarantine" else None

        def delete(ref: TableRef = ref, condition: str | None = condition) -> None:
            tables.delta(spark, ref).delete(condition)

        with_conflict_retry(delete, what=f"reset {ref}")
        reset.append(ref.name)
    return tuple(reset)


def _without_late(
    write: Callable[[DataFrame, int], None], tables: Tables, topic: str
) -> Callable[[DataFrame, int], None]:
    """A ``foreachBatch`` function that hands ``write`` the micro-batch minus the records the
    quarantine holds as ``late`` (the kept decisions), so the rebuild keeps them out as the
    original run did."""
    coords = list(QUARANTINE_KEY)

    def run(batch: DataFrame, batch_id: int) -> None:
        spark = batch.sparkSession
        late = (
            tables.read(spark, tables.ref("quarantine"))
            .filter((F.col("reason") == LATE) & (F.col("topic") == topic))
            .select(*(F.col(c).alias(f"_late_{c}") for c in coords))
        )
        same = reduce(lambda a, b: a & b, [F.col(c).eqNullSafe(F.col(f"_late_{c}")) for c in coords])
        write(batch.join(late, same, "left_anti"), batch_id)

    return run


def _drain(query: StreamingQuery) -> None:
    try:
        # awaitTermination raises the query's failure itself; exception() covers a query stopped
        # from elsewhere with an error.
        query.awaitTermination()
        error = query.exception()
    except StreamingQueryException as exc:
        error = exc
    finally:
        if query.isActive:
            query.stop()
    if error is not None:
        raise PipelineError(f"rebuild: query {query.name!r} failed: {error}") from error


def _rederive_topics(spark: SparkSession, config: Config, *, keep_late: bool, progress: Callable[[str], None]) -> None:
    """The three topic queries of silver, under the pipeline's own names and checkpoints, over all
    of bronze in ONE micro-batch: with no earlier batch nothing new is late, so the result is the
    rules applied to all of bronze minus the kept ``late`` decisions (what :func:`recompute` gives).
    """
    tables = Tables(config)
    bronze = tables.ref("kafka_multiplex_bz")
    for kind in _KINDS:
        topic: str = getattr(config.kafka.topics, kind)
        name = f"silver_{kind}"
        writer: Callable[[DataFrame, int], None] = TopicWriter(spark, config, kind, name)
        if keep_late:
            writer = _without_late(writer, tables, topic)
        source = tables.read_stream(spark, bronze, maxFilesPerTrigger=_ONE_BATCH_FILES).filter(F.col("topic") == topic)
        query = (
            source.writeStream.queryName(name)
            .foreachBatch(writer)
            .option("checkpointLocation", tables.checkpoint(name))
            .trigger(availableNow=True)
            .start()
        )
        _drain(query)
        progress(f"{name}: re-derived from bronze")


def rebuild(
    spark: SparkSession,
    config: Config,
    *,
    as_of: date,
    keep_late: bool = True,
    progress: Callable[[str], None] = log.info,
) -> RebuildReport:
    """Rebuild every silver and gold table from bronze (never from Kafka or the SQL source).

    Stop the pipeline first. Steps: move the silver/derived/gold checkpoints aside (bronze's are
    kept), empty the silver, gold and writer-internal tables (with ``keep_late`` the quarantine
    keeps its ``late`` rows and the rebuild leaves those records out), run the topic queries over
    all of bronze in one micro-batch, then the rest of silver and gold with
    ``Pipeline.run_once(layers=("silver", "gold"))``, and delete the old checkpoints. Every step can
    be repeated, so an interrupted rebuild is finished by running it again (before the pipeline
    runs). Without ``keep_late`` every record is judged again as if all arrived in one batch, so
    nothing is late.
    """
    from fitbit_stream.pipeline import Pipeline

    tables = Tables(config)
    if not tables.exists(spark, tables.ref("kafka_multiplex_bz")):
        raise PipelineError(f"rebuild: no bronze table at {tables.ref('kafka_multiplex_bz')}: nothing to rebuild from")
    running = sorted(str(q.name) for q in spark.streams.active)
    if running:
        raise PipelineError(f"rebuild: stop the running queries first: {', '.join(running)}")
    checkpoints = _Checkpoints(config)
    # Pipeline() creates missing tables with the change feed on before any writer starts.
    pipeline = Pipeline(spark, config)
    with pipeline.exclusive():  # no pipeline may run on these checkpoints while they are replaced
        moved = checkpoints.move_aside()
        progress(f"checkpoints moved aside: {', '.join(moved) or '-'}")
        reset = _reset_tables(spark, tables, keep_late=keep_late)
        progress(f"tables emptied: {', '.join(reset) or '-'}")
        kept = 0
        if keep_late:
            quarantine = tables.ref("quarantine")
            if tables.exists(spark, quarantine):
                kept = tables.read(spark, quarantine).filter(F.col("reason") == LATE).count()
        # New, registered checkpoints for every silver and gold query before any of them starts.
        pipeline.check_checkpoints(("silver", "gold"), reset=True)
        _rederive_topics(spark, config, keep_late=keep_late, progress=progress)
        report = pipeline.run_once(as_of=as_of, layers=("silver", "gold"), progress=progress)
        checkpoints.empty_trash()
    return RebuildReport(checkpoints_reset=moved, tables_reset=reset, kept_late=kept, run=report)
