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
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from functools import partial
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

__all__ = ["ALL_LAYERS", "Layer", "Pipeline", "RunReport", "StageReport", "select_layers", "waves"]

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

#: (query, tables it reads, tables it writes) of each silver query, in ``_silver_streams``'s order.
_SILVER_IO: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    (
        "silver_user_info",
        ("kafka_multiplex_bz",),
        ("quarantine", "user_profile", "user_profile_history", "_user_profile_changes"),
    ),
    ("silver_bpm", ("kafka_multiplex_bz",), ("quarantine", "heart_rate")),
    ("silver_workout", ("kafka_multiplex_bz",), ("quarantine", "_workout_events", "workouts", "completed_workouts")),
    ("silver_users", ("registered_users_bz",), ("users",)),
    ("silver_gym_logs", ("gym_logins_bz",), ("gym_logs",)),
)
_TAIL = "user_bins+date_lookup+tombstones"
#: what the batch tail reads (``refresh_date_lookup``'s inputs and ``user_bins``'s).
_TAIL_READS = (
    "kafka_multiplex_bz",
    "registered_users_bz",
    "gym_logins_bz",
    "heart_rate",
    "workouts",
    "user_profile",
    "user_profile_history",
    "_user_profile_changes",
)


@dataclass(frozen=True)
class _Step:
    """One query (``start``) or batch step (``run``: returns rows and a message) of a drain."""

    name: str
    reads: tuple[str, ...]
    writes: tuple[str, ...]
    start: Callable[[], StreamingQuery] | None = None
    run: Callable[[], tuple[int, str]] | None = None


@dataclass
class _Running:
    """A started step: a streaming query, or a batch step running on a worker thread."""

    step: _Step
    started: float
    query: StreamingQuery | None = None
    future: Future[tuple[int, str]] | None = None

    def done(self) -> bool:
        if self.future is not None:
            return self.future.done()
        assert self.query is not None
        return not self.query.isActive

    def wait(self, seconds: float) -> None:
        if self.future is not None:
            wait([self.future], timeout=seconds)
        elif self.query is not None:
            # pyspark takes fractions of a second (it passes milliseconds on) but types it as int
            self.query.awaitTermination(seconds)  # type: ignore[arg-type]


@contextmanager
def _scheduler_pool(spark: SparkSession, name: str) -> Iterator[None]:
    """Jobs of a query started inside run in its own scheduler pool.

    Under ``spark.scheduler.mode=FAIR`` (the local session's, and Databricks' default) the pools
    share the cores evenly, so a long derived MERGE does not hold up a silver batch queued behind
    it. A stream thread inherits the pool from the thread that starts it. Without a SparkContext
    (Spark Connect) the queries share the default pool.
    """
    try:
        context = spark.sparkContext
    except Exception:  # Spark Connect has no SparkContext
        yield
        return
    before = context.getLocalProperty("spark.scheduler.pool")
    context.setLocalProperty("spark.scheduler.pool", name)
    try:
        yield
    finally:
        context.setLocalProperty("spark.scheduler.pool", before)  # type: ignore[arg-type]


def _writers_of_inputs(step: _Step, steps: Collection[_Step]) -> list[_Step]:
    """The other steps that write a table ``step`` reads: it starts when they have all ended."""
    return [s for s in steps if s is not step and set(s.writes) & set(step.reads)]


def waves(steps: Collection[_Step]) -> list[list[str]]:
    """The names of ``steps`` by the round of :meth:`Pipeline.run_once` they can start in.

    Round 0 needs nothing; round n needs a step of round n - 1. A step may start earlier than its
    round's peers (when its own inputs end first), never before its inputs' writers have ended.
    """
    rounds: dict[str, int] = {}
    remaining = list(steps)
    while remaining:
        level = [s for s in remaining if all(w.name in rounds for w in _writers_of_inputs(s, steps))]
        if not level:
            raise PipelineError(f"cannot order {[s.name for s in remaining]}: they read each other's tables")
        for s in level:
            rounds[s.name] = 1 + max((rounds[w.name] for w in _writers_of_inputs(s, steps)), default=-1)
        remaining = [s for s in remaining if s not in level]
    out: list[list[str]] = [[] for _ in range(max(rounds.values(), default=-1) + 1)]
    for s in steps:
        out[rounds[s.name]].append(s.name)
    return out


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
            names += [name for name, _, _ in _SILVER_IO]
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
            with _scheduler_pool(self.spark, KAFKA_BRONZE_QUERY):
                queries.append(start_kafka_bronze(self.spark, self.config, trigger=trigger))
        if self.config.landing.enabled:
            with _scheduler_pool(self.spark, LANDING_BRONZE_QUERY):
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
        with _scheduler_pool(self.spark, name):
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

    @staticmethod
    def _derived_specs(layer: Layer) -> list[DerivedSpec]:
        return [spec for spec in DERIVED if TABLES[spec.name].layer == layer]

    def _derived_streams(self, trigger: Trigger, layer: Layer) -> list[Callable[[], StreamingQuery]]:
        starters: list[Callable[[], StreamingQuery]] = []
        for spec in self._derived_specs(layer):

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
        a table that did not change is not read again, one that did is read only from its change
        feed since that version, and ``date_lookup`` is written only when a year it lacks turns up.
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

        def years(table: TableRef, columns: tuple[str, ...], rows: DataFrame | None = None) -> frozenset[int]:
            rows = self.tables.read(spark, table) if rows is None else rows
            return frozenset(int(r["year"]) for r in years_of(rows, *columns).collect())

        def years_since(table: TableRef, columns: tuple[str, ...], seen: int, at: int) -> frozenset[int] | None:
            """Years of the rows written after version ``seen`` (its change feed), None when unreadable."""
            try:
                return years(table, columns, self.tables.read_changes(spark, table, after=seen, through=at))
            except Exception as exc:  # feed off or its files vacuumed: read the table instead
                log.info("date_lookup: change feed of %s unreadable (%s); reading the table", table, type(exc).__name__)
                return None

        wanted: set[int] = set()
        for table, columns in inputs:
            at = version(table)
            known = memo.get(str(table))
            if known is None or known[0] is None or at is None or known[0] != at:
                found = None
                if known is not None and known[0] is not None and at is not None and known[0] < at:
                    # Only the rows written since: a growing table is not scanned again (a year seen
                    # stays wanted, as date_lookup never loses a year).
                    added = years_since(table, columns, known[0], at)
                    found = None if added is None else known[1] | added
                known = (at, years(table, columns) if found is None else found)
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

    def _steps(self, selected: tuple[Layer, ...], trigger: Trigger, as_of: date | None) -> list[_Step]:
        """Every query (and batch step) of the selected layers, with the tables each reads and writes."""
        steps: list[_Step] = []
        if "bronze" in selected:
            multiplex = ("kafka_multiplex_bz", "quarantine")
            if self.config.kafka.enabled:
                kafka = partial(start_kafka_bronze, self.spark, self.config, trigger=trigger)
                steps.append(_Step(KAFKA_BRONZE_QUERY, (), multiplex, start=kafka))
            if self.config.landing.enabled:
                landing = partial(start_landing_bronze, self.spark, self.config, trigger=trigger)
                # after the Kafka query: on a new checkpoint it reads bronze to skip what bronze holds
                steps.append(_Step(LANDING_BRONZE_QUERY, ("kafka_multiplex_bz",), multiplex, start=landing))
            if self.config.sql.enabled:
                steps.append(
                    _Step("bronze_sql", (), ("registered_users_bz", "gym_logins_bz"), run=self._ingest_sql_step)
                )
        if "silver" in selected:
            for (name, reads, writes), start in zip(_SILVER_IO, self._silver_streams(trigger), strict=True):
                steps.append(_Step(name, reads, writes, start=start))
            steps += [
                _Step(f"derived_{spec.name}", spec.inputs, (spec.name,), start=start)
                for spec, start in zip(
                    self._derived_specs("silver"), self._derived_streams(trigger, "silver"), strict=True
                )
            ]
            day = as_of or datetime.now(UTC).date()
            steps.append(_Step(_TAIL, _TAIL_READS, ("user_bins", "date_lookup"), run=partial(self._tail, day)))
        if "gold" in selected:
            steps += [
                _Step(f"derived_{spec.name}", spec.inputs, (spec.name,), start=start)
                for spec, start in zip(self._derived_specs("gold"), self._derived_streams(trigger, "gold"), strict=True)
            ]
        return steps

    def _ingest_sql_step(self) -> tuple[int, str]:
        result = self._ingest_sql()
        return (
            result.registered_users_added + result.gym_logins_added,
            f"bronze_sql: {result.registered_users_added} registered_users, "
            f"{result.gym_logins_added} gym_logins row versions",
        )

    def _tail(self, as_of: date) -> tuple[int, str]:
        self.refresh_user_bins(as_of)
        self.refresh_date_lookup()
        self.purge_tombstones()
        return 0, f"{_TAIL}: done"

    def run_once(
        self,
        *,
        as_of: date | None = None,
        layers: str | Collection[str] = ALL_LAYERS,
        progress: Callable[[str], None] = log.info,
    ) -> RunReport:
        """Drain all available input through the selected layers (default all).

        A query starts as soon as every query (or batch step) of this run that writes a table it
        reads has ended, so independent queries run side by side: the five silver queries together,
        then ``workout_bpm`` with the batch tail and the gold queries that do not need it, then the
        rest. Queries that write the same table (the quarantine) retry Delta's concurrent-commit
        conflicts; every write is idempotent. When a query fails, nothing new starts, the running
        ones finish, and the first failure is raised.
        """
        selected = select_layers(layers)
        report = RunReport()
        once: Trigger = {"availableNow": True}
        with self.exclusive(), self._recording(progress) as recorder, ThreadPoolExecutor(2) as batch_steps:
            self.check_checkpoints(selected)
            steps = self._steps(selected, once, as_of)
            log.info("drain plan: %s", " -> ".join("+".join(names) for names in waves(steps)))
            pending = list(steps)
            running: list[_Running] = []
            ended: set[str] = set()
            failure: BaseException | None = None

            def ready(step: _Step) -> bool:
                return all(s.name in ended for s in _writers_of_inputs(step, steps))

            def finish(run: _Running) -> None:
                nonlocal failure
                ended.add(run.step.name)
                seconds = time.monotonic() - run.started
                if run.future is not None:
                    try:
                        rows, message = run.future.result()
                    except Exception as exc:
                        failure = failure or exc
                        return
                    report.add(run.step.name, rows, seconds)
                    progress(message)
                    return
                query = run.query
                assert query is not None
                try:
                    _await(query)
                except PipelineError as exc:
                    failure = failure or exc
                finally:
                    # recentProgress is complete once the query has ended; written once, when the
                    # run ends (one MERGE instead of one per query).
                    recorder.add_all(query.recentProgress)
                rows = _input_rows(query)
                report.add(query.name or run.step.name, rows, seconds)
                progress(f"{query.name}: {rows} rows in {seconds:.1f}s")

            while pending or running:
                if failure is None:
                    for step in [s for s in pending if ready(s)]:
                        pending.remove(step)
                        started = time.monotonic()
                        if step.run is not None:
                            running.append(_Running(step, started, future=batch_steps.submit(step.run)))
                            continue
                        assert step.start is not None
                        try:
                            with _scheduler_pool(self.spark, step.name):
                                running.append(_Running(step, started, query=step.start()))
                        except Exception as exc:  # what already runs still ends cleanly
                            failure = exc
                            break
                else:
                    pending.clear()
                if not running:
                    if pending:  # pragma: no cover - every table a step reads is written before it
                        raise PipelineError(f"cannot order {[s.name for s in pending]}")
                    continue
                done = [run for run in running if run.done()]
                if not done:
                    running[0].wait(0.2)
                for run in done:
                    running.remove(run)
                    finish(run)
            if failure is not None:
                raise failure
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
        streaming = self.config.streaming
        trigger: Trigger = {"processingTime": f"{streaming.trigger_interval_seconds} seconds"}
        derived_seconds = streaming.derived_trigger_interval_seconds or streaming.trigger_interval_seconds
        derived: Trigger = {"processingTime": f"{derived_seconds} seconds"}
        with self.exclusive(), self._recording(progress) as recorder:
            self.check_checkpoints(selected)
            queries: list[StreamingQuery] = []
            try:
                if "bronze" in selected:
                    queries += self._bronze_streams(trigger)
                if "silver" in selected:
                    queries += [
                        s() for s in (*self._silver_streams(trigger), *self._derived_streams(derived, "silver"))
                    ]
                if "gold" in selected:
                    queries += [start() for start in self._derived_streams(derived, "gold")]
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
