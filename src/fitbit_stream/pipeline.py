"""Wires sources, transforms and sinks into streaming queries, in dependency order.

``run_once`` drains everything that is available (available-now triggers, one SQL poll) and
returns; ``run_continuously`` keeps every query running with processing-time triggers until it is
asked to stop, then stops each query cleanly so its checkpoint is consistent.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Literal, get_args

from pyspark.errors import StreamingQueryException
from pyspark.sql import functions as F

from fitbit_stream.config import Config
from fitbit_stream.errors import PipelineError
from fitbit_stream.io import guard
from fitbit_stream.io.bronze import (
    KAFKA_BRONZE_QUERY,
    LANDING_BRONZE_QUERY,
    SqlIngestResult,
    Trigger,
    ingest_sql_sources,
    start_kafka_bronze,
    start_landing_bronze,
)
from fitbit_stream.io.cdc_merge import CdcMergeEngine
from fitbit_stream.io.derived import DERIVED, DerivedSpec, change_stream
from fitbit_stream.io.merge import insert_if_absent, replace_scopes
from fitbit_stream.io.progress import QUERY_PROGRESS, ProgressRecorder
from fitbit_stream.io.silver import LateState, RegistrationsWriter, TopicWriter, VisitsWriter
from fitbit_stream.io.tables import TableRef, Tables
from fitbit_stream.schemas import TABLES
from fitbit_stream.transforms.cdc import USER_PROFILE_CDC
from fitbit_stream.transforms.dates import date_lookup, years_of
from fitbit_stream.transforms.demographics import user_bins
from fitbit_stream.transforms.parse import PayloadKind
from fitbit_stream.transforms.quality import late_threshold

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.streaming.query import StreamingQuery

__all__ = ["ALL_LAYERS", "Layer", "Pipeline", "RunReport", "StageReport", "select_layers"]

log = logging.getLogger(__name__)


@dataclass
class StageReport:
    name: str
    rows: int
    seconds: float


@dataclass
class RunReport:
    stages: list[StageReport] = field(default_factory=list)

    def add(self, name: str, rows: int, seconds: float) -> None:
        self.stages.append(StageReport(name, rows, seconds))

    def table(self) -> str:
        width = max((len(s.name) for s in self.stages), default=5)
        lines = [f"{'stage':<{width}}  {'rows':>10}  {'seconds':>8}"]
        lines += [f"{s.name:<{width}}  {s.rows:>10}  {s.seconds:>8.1f}" for s in self.stages]
        return "\n".join(lines)


def _input_rows(query: StreamingQuery) -> int:
    return sum(int(p.get("numInputRows", 0)) for p in query.recentProgress)


def _await(query: StreamingQuery) -> None:
    """Wait for an available-now query to end; its failure becomes a :class:`PipelineError`."""
    try:
        query.awaitTermination()
    except StreamingQueryException as exc:  # awaitTermination re-raises the query's own failure
        message = str(exc).split("\n\nJVM stacktrace:")[0]
        raise PipelineError(f"query {query.name!r} failed: {message}") from None
    error = query.exception()
    if error is not None:
        raise PipelineError(f"query {query.name!r} failed: {error}")


_SILVER_KINDS: tuple[PayloadKind, ...] = ("user_info", "bpm", "workout")

Layer = Literal["bronze", "silver", "gold"]
ALL_LAYERS: tuple[Layer, ...] = get_args(Layer)


def select_layers(layers: str | Collection[str]) -> tuple[Layer, ...]:
    """``"all"``, one layer name or several, validated, in dependency order."""
    wanted = {layers} if isinstance(layers, str) else set(layers)
    if "all" in wanted:
        return ALL_LAYERS
    unknown = wanted - set(ALL_LAYERS)
    if unknown or not wanted:
        raise PipelineError(f"unknown layer(s) {sorted(unknown)}: choose from {', '.join(ALL_LAYERS)} or all")
    return tuple(layer for layer in ALL_LAYERS if layer in wanted)


class Pipeline:
    """All queries of one configuration.

    Every run holds the single-writer lock of the checkpoint root and first checks that each query
    it starts is on the checkpoint that wrote its tables (:mod:`fitbit_stream.io.guard`): a missing,
    moved or foreign checkpoint is refused unless ``reset_checkpoints`` (then it is moved aside and
    the query starts on a new one without duplicating or skipping a record).
    """

    def __init__(self, spark: SparkSession, config: Config, *, reset_checkpoints: bool = False) -> None:
        self.spark = spark
        self.config = config
        self.reset_checkpoints = reset_checkpoints
        self._holding = False
        # What the batch tails last saw (Delta versions, years), so an unchanged input is not read again.
        self._tail_versions: dict[str, object] = {}
        self._date_lookup_years: dict[str, tuple[int | None, frozenset[int]]] = {}
        self.tables = Tables(config)
        # Derived tables read their inputs' change feeds: every table is created with the feed on.
        spark.conf.set("spark.databricks.delta.properties.defaults.enableChangeDataFeed", "true")
        for name in TABLES:
            self.tables.ensure(spark, name)
        self.progress_table = self.tables.ensure(spark, "_query_progress", schema=QUERY_PROGRESS, layer="ops")

    @contextmanager
    def _recording(self, show: Callable[[str], None]) -> Iterator[ProgressRecorder]:
        """Progress of every query started inside: shown live, persisted to ``_query_progress``."""
        recorder = ProgressRecorder(show=show)
        self.spark.streams.addListener(recorder)
        try:
            yield recorder
        finally:
            self.spark.streams.removeListener(recorder)
            self.flush_progress(recorder)

    def flush_progress(self, recorder: ProgressRecorder) -> None:
        try:
            recorder.flush(self.spark, self.tables, self.progress_table)
        except Exception:  # losing an ops figure must never fail the pipeline
            log.exception("could not persist query progress to %s", self.progress_table)

    # --- the start-up guards --------------------------------------------------------------------

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the single-writer lock of the checkpoint root (re-entrant within this object)."""
        if self._holding:
            yield
            return
        with guard.lock(self.config):
            self._holding = True
            try:
                yield
            finally:
                self._holding = False

    def query_names(self, layers: str | Collection[str] = ALL_LAYERS) -> list[str]:
        """The names (and checkpoint directories) of the queries the selected layers start."""
        selected = select_layers(layers)
        names: list[str] = []
        if "bronze" in selected:
            names += [KAFKA_BRONZE_QUERY] if self.config.kafka.enabled else []
            names += [LANDING_BRONZE_QUERY] if self.config.landing.enabled else []
        if "silver" in selected:
            names += [f"silver_{kind}" for kind in _SILVER_KINDS] + ["silver_users", "silver_gym_logs"]
        for layer in ("silver", "gold"):
            if layer in selected:
                names += [f"derived_{spec.name}" for spec in DERIVED if TABLES[spec.name].layer == layer]
        return names

    def check_checkpoints(self, layers: str | Collection[str] = ALL_LAYERS, *, reset: bool | None = None) -> list[str]:
        """Refuse (or, with ``reset``, renew) every missing or foreign checkpoint of the layers' queries."""
        with self.exclusive():
            renewed = guard.check(
                self.spark,
                self.config,
                self.tables,
                self.query_names(layers),
                reset=self.reset_checkpoints if reset is None else reset,
            )
        if renewed:
            log.warning("started on new checkpoints: %s", ", ".join(renewed))
        return renewed

    # --- query builders ------------------------------------------------------------------------

    def _bronze_streams(self, trigger: Trigger) -> list[StreamingQuery]:
        queries = []
        if self.config.kafka.enabled:
            queries.append(start_kafka_bronze(self.spark, self.config, trigger=trigger))
        if self.config.landing.enabled:
            queries.append(start_landing_bronze(self.spark, self.config, trigger=trigger))
        return queries

    def _ingest_sql(self) -> SqlIngestResult:
        return ingest_sql_sources(self.spark, self.config)

    def _foreach_batch(
        self, name: str, source: DataFrame, writer_fn: Callable[[DataFrame, int], None], trigger: Trigger
    ) -> StreamingQuery:
        writer = (
            source.writeStream.queryName(name)
            .foreachBatch(writer_fn)
            .option("checkpointLocation", self.tables.checkpoint(name))
        )
        # pyspark's trigger() overloads take one keyword each; the dict holds exactly one.
        writer = writer.trigger(**trigger)  # type: ignore[call-overload]
        query: StreamingQuery = writer.start()
        return query

    def _silver_streams(self, trigger: Trigger) -> list[Callable[[], StreamingQuery]]:
        """Starters of the silver queries (started lazily so --once can run them one by one)."""
        bronze = self.tables.ref("kafka_multiplex_bz")
        starters: list[Callable[[], StreamingQuery]] = []
        for kind in _SILVER_KINDS:
            topic = getattr(self.config.kafka.topics, kind)
            name = f"silver_{kind}"

            def start(kind: PayloadKind = kind, topic: str = topic, name: str = name) -> StreamingQuery:
                source = self.tables.read_stream(self.spark, bronze).filter(F.col("topic") == topic)
                writer = TopicWriter(self.spark, self.config, kind, name)
                return self._foreach_batch(name, source, writer, trigger)

            starters.append(start)

        def users() -> StreamingQuery:
            source = self.tables.read_stream(self.spark, self.tables.ref("registered_users_bz"))
            return self._foreach_batch("silver_users", source, RegistrationsWriter(self.spark, self.config), trigger)

        def visits() -> StreamingQuery:
            source = self.tables.read_stream(self.spark, self.tables.ref("gym_logins_bz"))
            return self._foreach_batch("silver_gym_logs", source, VisitsWriter(self.spark, self.config), trigger)

        return [*starters, users, visits]

    def _derived_streams(self, trigger: Trigger, layer: Layer) -> list[Callable[[], StreamingQuery]]:
        starters: list[Callable[[], StreamingQuery]] = []
        for spec in (spec for spec in DERIVED if TABLES[spec.name].layer == layer):

            def start(spec: DerivedSpec = spec) -> StreamingQuery:
                source = change_stream(self.spark, self.tables, spec.inputs)
                return self._foreach_batch(f"derived_{spec.name}", source, spec.make_writer(self.tables), trigger)

            starters.append(start)
        return starters

    # --- batch tails ---------------------------------------------------------------------------

    def refresh_user_bins(self, as_of: date) -> None:
        """``user_bins`` as of the job's reference date (recomputed whole: it moves with the date).

        Skipped while neither the date, ``user_profile`` nor ``user_bins`` changed since this
        object's last refresh (the Delta versions it saw are kept in memory).
        """
        spark = self.spark
        memo = self._tail_versions
        source, target = self.tables.ref("user_profile"), self.tables.ref("user_bins")

        def version(ref: TableRef) -> int | None:
            row = self.tables.delta(spark, ref).history(1).select("version").first()
            return None if row is None else int(row[0])

        seen = (as_of, version(source))
        if memo.get("user_bins") == (*seen, version(target)):
            return
        rows = user_bins(self.tables.read(spark, source), as_of=as_of)
        scopes = rows.select("user_id").unionByName(self.tables.read(spark, target).select("user_id"))
        replace_scopes(spark, self.tables, target, rows, scopes=scopes, scope_keys=["user_id"], keys=["user_id"])
        memo["user_bins"] = (*seen, version(target))

    def refresh_date_lookup(self) -> None:
        """Every day of every year that a record timestamp or an accepted event time falls in.

        The years of each input table are kept in memory with the Delta version they were read at:
        a table that did not change is not read again, and ``date_lookup`` is written only when a
        year it lacks turns up.
        """
        spark = self.spark
        ref = self.tables.ref
        memo = self._date_lookup_years
        inputs = [
            (ref("kafka_multiplex_bz"), ("timestamp",)),
            (ref("heart_rate"), ("time",)),
            (ref("workouts"), ("time",)),
            (ref("user_profile_history"), ("valid_from", "valid_to")),
            (ref("user_profile"), ("updated",)),
            (ref("registered_users_bz"), ("registration_timestamp",)),
            (ref("gym_logins_bz"), ("login", "logout")),
        ]
        # Every accepted profile change, including those that leave no version behind (a delete of
        # a user who does not exist); the CDC engine creates its change log with its first change.
        changes = ref("_user_profile_changes", layer="silver")
        if self.tables.exists(spark, changes):
            inputs.append((changes, (USER_PROFILE_CDC.event_time,)))

        def version(table: TableRef) -> int | None:
            row = self.tables.delta(spark, table).history(1).select("version").first()
            return None if row is None else int(row[0])

        def years(table: TableRef, columns: tuple[str, ...]) -> frozenset[int]:
            return frozenset(int(r["year"]) for r in years_of(self.tables.read(spark, table), *columns).collect())

        wanted: set[int] = set()
        for table, columns in inputs:
            at = version(table)
            known = memo.get(str(table))
            if known is None or known[0] is None or known[0] != at:
                known = (at, years(table, columns))
                memo[str(table)] = known
            wanted |= known[1]
        target = ref("date_lookup")
        at = version(target)
        held = memo.get(str(target))
        if held is None or held[0] is None or held[0] != at:
            held = (at, years(target, ("date",)))
        if wanted <= held[1]:
            memo[str(target)] = held
            return
        missing = sorted(wanted - held[1])
        rows = date_lookup(spark.createDataFrame([(y,) for y in missing], "year int"))
        insert_if_absent(spark, self.tables, target, rows, keys=["date"])
        memo[str(target)] = (version(target), held[1] | frozenset(missing))

    def purge_tombstones(self) -> None:
        """Forget the change log of users deleted longer ago than the tombstone retention.

        The retention is counted back from the user_info lateness threshold, never from the clock:
        every change old enough to have been hidden by a purged tombstone is then quarantined as
        ``late`` before it reaches the CDC engine, so purging never changes a result.
        """
        spark = self.spark
        latest = LateState(self.tables, spark).previous_max(spark, "silver_user_info", sys.maxsize)
        horizon = timedelta(minutes=self.config.rules.lateness_horizon_minutes)
        threshold = late_threshold(latest, horizon=horizon)
        if threshold is None:
            return
        spec = replace(USER_PROFILE_CDC, tombstone_retention=timedelta(days=self.config.rules.tombstone_retention_days))
        engine = CdcMergeEngine(
            spec,
            spark,
            profile=self.tables.ref("user_profile"),
            history=self.tables.ref("user_profile_history"),
            changes=self.tables.ref("_user_profile_changes", layer="silver"),
        )
        engine.purge_tombstones(spark, as_of=threshold)

    # --- runs ----------------------------------------------------------------------------------

    def run_once(
        self,
        *,
        as_of: date | None = None,
        layers: str | Collection[str] = ALL_LAYERS,
        progress: Callable[[str], None] = log.info,
    ) -> RunReport:
        """Drain all available input through the selected layers (default all), in dependency order."""
        selected = select_layers(layers)
        report = RunReport()
        once: Trigger = {"availableNow": True}
        with self.exclusive(), self._recording(progress) as recorder:
            self.check_checkpoints(selected)

            def drain(query: StreamingQuery, started: float) -> None:
                try:
                    _await(query)
                finally:
                    # recentProgress is complete once the query has ended; the listener's copy of
                    # the last batch may still be on its way. Written once, when the run ends (one
                    # MERGE instead of one per query).
                    recorder.add_all(query.recentProgress)
                rows = _input_rows(query)
                report.add(query.name or "query", rows, time.monotonic() - started)
                progress(f"{query.name}: {rows} rows in {time.monotonic() - started:.1f}s")

            if "bronze" in selected:
                for query in self._bronze_streams(once):
                    drain(query, time.monotonic())
                if self.config.sql.enabled:
                    started = time.monotonic()
                    result = self._ingest_sql()
                    report.add(
                        "bronze_sql",
                        result.registered_users_added + result.gym_logins_added,
                        time.monotonic() - started,
                    )
                    progress(
                        f"bronze_sql: {result.registered_users_added} registered_users, "
                        f"{result.gym_logins_added} gym_logins row versions"
                    )
            # One query at a time: they share the quarantine and state tables, and sequential drains
            # avoid optimistic-concurrency retries (continuous mode runs them together, with retries).
            if "silver" in selected:
                for start in (*self._silver_streams(once), *self._derived_streams(once, "silver")):
                    drain(start(), time.monotonic())
                started = time.monotonic()
                self.refresh_user_bins(as_of or datetime.now(UTC).date())
                self.refresh_date_lookup()
                self.purge_tombstones()
                report.add("user_bins+date_lookup+tombstones", 0, time.monotonic() - started)
            if "gold" in selected:
                for start in self._derived_streams(once, "gold"):
                    drain(start(), time.monotonic())
        return report

    def run_continuously(
        self,
        stop: threading.Event,
        *,
        as_of: date | None = None,
        layers: str | Collection[str] = ALL_LAYERS,
        progress: Callable[[str], None] = log.info,
    ) -> None:
        """Run every query of the selected layers until ``stop`` is set; then stop them cleanly."""
        selected = select_layers(layers)
        trigger: Trigger = {"processingTime": f"{self.config.streaming.trigger_interval_seconds} seconds"}
        with self.exclusive(), self._recording(progress) as recorder:
            self.check_checkpoints(selected)
            queries: list[StreamingQuery] = []
            try:
                if "bronze" in selected:
                    queries += self._bronze_streams(trigger)
                if "silver" in selected:
                    queries += [
                        s() for s in (*self._silver_streams(trigger), *self._derived_streams(trigger, "silver"))
                    ]
                if "gold" in selected:
                    queries += [start() for start in self._derived_streams(trigger, "gold")]
                while not stop.is_set():
                    if "bronze" in selected and self.config.sql.enabled:
                        self._ingest_sql()
                    for query in queries:
                        error = query.exception()
                        if error is not None:
                            raise PipelineError(f"query {query.name!r} failed: {error}")
                    if "silver" in selected:
                        self.refresh_user_bins(as_of or datetime.now(UTC).date())
                        self.refresh_date_lookup()
                    self.flush_progress(recorder)
                    stop.wait(self.config.sql.poll_interval_seconds)
            finally:
                for query in queries:
                    if query.isActive:
                        query.stop()
