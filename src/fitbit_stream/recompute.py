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
from collections.abc import Callable
from datetime import date, timedelta
from functools import reduce
from typing import TYPE_CHECKING

from pyspark.sql import Window
from pyspark.sql import functions as F

from fitbit_stream.config import Config
from fitbit_stream.io.silver import QUARANTINE_KEY, SilverRules
from fitbit_stream.io.tables import Tables
from fitbit_stream.schemas import TABLES, USER_PROFILE, USER_PROFILE_HISTORY, WORKOUTS
from fitbit_stream.topology import DATE_LOOKUP_SOURCES
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
    from pyspark.sql import DataFrame, SparkSession


__all__ = ["COMPARED_TABLES", "Recomputation", "recompute"]

log = logging.getLogger(__name__)

#: The tables :func:`verify` compares and :func:`rebuild` re-derives: every silver and gold table.
COMPARED_TABLES: tuple[str, ...] = tuple(name for name, spec in TABLES.items() if spec.layer in ("silver", "gold"))

_KINDS: tuple[PayloadKind, ...] = ("user_info", "bpm", "workout")


# --- the batch recomputation ---------------------------------------------------------------------


class Recomputation:
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
        # The same sources of years as the streaming tail (topology.DATE_LOOKUP_SOURCES), each the
        # recomputed table (bronze as read).
        frames: dict[str, Callable[[], DataFrame]] = {
            "heart_rate": self.heart_rate,
            "workouts": self.workouts,
            "_user_profile_changes": self._changes,
            "user_profile_history": self.user_profile_history,
            "user_profile": self.user_profile,
        }
        years = reduce(
            lambda a, b: a.unionByName(b),
            [
                years_of(frames[name]() if name in frames else self.read(name), *columns)
                for name, columns in DATE_LOOKUP_SOURCES
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
    batch = Recomputation(spark, config, as_of=as_of, cache=False)
    return {name: batch.table(name) for name in COMPARED_TABLES}
