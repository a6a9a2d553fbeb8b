"""Wires sources, transforms and sinks into streaming queries, in dependency order.

``run_once`` drains everything that is available (available-now triggers, one SQL poll) and
returns; ``run_continuously`` keeps every query running with processing-time triggers until it is
asked to stop, then stops each query cleanly so its checkpoint is consistent.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from functools import partial
from typing import TYPE_CHECKING

from fitbit_stream.azure import auth_for
from fitbit_stream.config import Config
from fitbit_stream.errors import PipelineError, PreflightError
from fitbit_stream.io import guard
from fitbit_stream.io.bronze import SqlIngestResult, Trigger, ingest_sql_sources
from fitbit_stream.io.commits import Written, caught_up, latest_version, written_since
from fitbit_stream.io.preflight import check_sources
from fitbit_stream.io.progress import QUERY_PROGRESS, ProgressRecord, ProgressRecorder, stop_between_batches
from fitbit_stream.io.tables import TableRef, Tables
from fitbit_stream.queries import QueryFactory, await_query
from fitbit_stream.schemas import TABLES
from fitbit_stream.tail import BatchTail
from fitbit_stream.topology import (
    ALL_JOBS,
    INTERNAL_TABLES,
    TAIL,
    JobLayer,
    QuerySpec,
    queries,
    select_jobs,
    waves,
    writers_of_inputs,
)

if TYPE_CHECKING:
    from pyspark.sql import SparkSession
    from pyspark.sql.streaming.query import StreamingQuery

__all__ = ["Pipeline", "RunReport", "StageReport", "waves"]

log = logging.getLogger(__name__)


@dataclass
class StageReport:
    name: str
    #: rows read (the query's input rows; for a batch step, what it reports)
    rows: int
    seconds: float
    #: what each table it writes gained while it ran (tables on a local path; see io.commits)
    written: dict[str, Written] = field(default_factory=dict)

    def line(self) -> str:
        """One line: rows read, rows written per table, seconds."""
        wrote = ", ".join(f"{name} {w.text()}" for name, w in self.written.items() if w)
        return f"{self.name}: read {self.rows:,} rows; wrote {wrote or 'nothing'} ({self.seconds:.1f}s)"


@dataclass
class RunReport:
    stages: list[StageReport] = field(default_factory=list)

    def add(self, name: str, rows: int, seconds: float, written: dict[str, Written] | None = None) -> StageReport:
        stage = StageReport(name, rows, seconds, written or {})
        self.stages.append(stage)
        return stage

    def table(self) -> str:
        width = max((len(s.name) for s in self.stages), default=5)
        lines = [f"{'stage':<{width}}  {'rows':>10}  {'seconds':>8}"]
        lines += [f"{s.name:<{width}}  {s.rows:>10}  {s.seconds:>8.1f}" for s in self.stages]
        return "\n".join(lines)


def _input_rows(query: StreamingQuery) -> int:
    return sum(int(p.get("numInputRows", 0)) for p in query.recentProgress)


#: Sources whose progress a checkpoint records as Delta versions (see io.commits.caught_up).
_DELTA_SOURCES = frozenset({"bronze_topic", "bronze_table", "change_feed"})


@dataclass(frozen=True)
class _Step:
    """One query (``start``) or batch step (``run``: returns rows and a message) of a drain."""

    name: str
    reads: tuple[str, ...]
    writes: tuple[str, ...]
    start: Callable[[], StreamingQuery] | None = None
    run: Callable[[], tuple[int, str]] | None = None
    #: True when the query has read everything its Delta inputs hold: a drain need not start it
    idle: Callable[[], bool] | None = None


@dataclass
class _Running:
    """A started step: a streaming query, or a batch step running on a worker thread."""

    step: _Step
    started: float
    #: the Delta version of each table the step writes, when it started
    versions: dict[str, int | None] = field(default_factory=dict)
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
        self.tables = Tables(config)
        self.queries = QueryFactory(spark, config, self.tables)
        # Remembers what it last saw (Delta versions, years), so an unchanged input is not read again.
        self.tail = BatchTail(spark, config, self.tables)
        # Derived tables read their inputs' change feeds: every table is created with the feed on.
        spark.conf.set("spark.databricks.delta.properties.defaults.enableChangeDataFeed", "true")
        for name in TABLES:
            self.tables.ensure(spark, name)
        self.progress_table = self.tables.ensure(spark, "_query_progress", schema=QUERY_PROGRESS, layer="ops")

    @contextmanager
    def _recording(
        self, show: Callable[[str], None], on_progress: Callable[[ProgressRecord], None] | None = None
    ) -> Iterator[ProgressRecorder]:
        """Progress of every query started inside: shown live, persisted to ``_query_progress``."""
        recorder = ProgressRecorder(show=show, on_progress=on_progress)
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

    def specs(self, jobs: str | Collection[str] = ALL_JOBS) -> list[QuerySpec]:
        """The queries and batch steps the selected jobs run with this configuration's sources."""
        selected = select_jobs(jobs)
        off = {
            "kafka": not self.config.kafka.enabled,
            "landing": not self.config.landing.enabled,
            "sql": not self.config.sql.enabled,
        }
        return [q for q in queries(self.config.streaming.mode) if q.job in selected and not off.get(q.source, False)]

    def query_names(self, jobs: str | Collection[str] = ALL_JOBS) -> list[str]:
        """The names (and checkpoint directories) of the streaming queries the selected jobs start."""
        return [q.name for q in self.specs(jobs) if q.streaming]

    def check_checkpoints(self, layers: str | Collection[str] = ALL_JOBS, *, reset: bool | None = None) -> list[str]:
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

    def _ingest_sql(self) -> SqlIngestResult:
        return ingest_sql_sources(self.spark, self.config)

    # --- runs ----------------------------------------------------------------------------------

    def _steps(self, selected: tuple[JobLayer, ...], trigger: Trigger, as_of: date | None) -> list[_Step]:
        """Every query (and batch step) of the selected jobs, with the tables each reads and writes."""
        day = as_of or datetime.now(UTC).date()
        steps: list[_Step] = []
        for spec in self.specs(selected):
            if spec.source == "sql":
                steps.append(_Step(spec.name, spec.reads, spec.writes, run=self._ingest_sql_step))
            elif spec.name == TAIL:
                steps.append(_Step(spec.name, spec.reads, spec.writes, run=partial(self._tail, day)))
            else:
                start = partial(self.queries.start, spec, trigger)
                idle = partial(self._caught_up, spec) if spec.source in _DELTA_SOURCES else None
                steps.append(_Step(spec.name, spec.reads, spec.writes, start=start, idle=idle))
        return steps

    def _ingest_sql_step(self) -> tuple[int, str]:
        result = self._ingest_sql()
        return (
            result.registered_users_added + result.gym_logins_added,
            f"bronze_sql: {result.registered_users_added} registered_users, "
            f"{result.gym_logins_added} gym_logins row versions",
        )

    def _tail(self, as_of: date) -> tuple[int, str]:
        self.tail.run(as_of)
        return 0, f"{TAIL}: done"

    def _explained(self, failure: BaseException) -> BaseException:
        """A failure during a run, with the cause named when a source has gone away since the run
        started: the sources are checked again, and a failing one becomes the error (one line).
        Nothing is lost either way: what a failed batch wrote is replayed from its checkpoint."""
        if not isinstance(failure, Exception) or isinstance(failure, PreflightError):
            return failure
        try:
            auth = auth_for(self.config)
            check_sources(
                self.config, kafka_auth=auth.librdkafka_auth_settings() if self.config.kafka.enabled else None
            )
        except PreflightError as gone:
            return PreflightError(
                f"{gone} (the run stopped cleanly: nothing is lost, run it again once the source is back; "
                "it resumes from its checkpoints)"
            )
        except Exception:  # the check itself could not run: the original failure says more
            log.debug("sources could not be checked again", exc_info=True)
        return failure

    def _caught_up(self, spec: QuerySpec) -> bool:
        return caught_up(self.tables.checkpoint(spec.name), [self._ref(t) for t in spec.reads])

    def _ref(self, table: str) -> TableRef:
        return self.tables.ref(table, layer=INTERNAL_TABLES.get(table))

    def _versions(self, step: _Step) -> dict[str, int | None]:
        return {table: latest_version(self._ref(table)) for table in step.writes}

    def _written(self, run: _Running) -> dict[str, Written]:
        out = {}
        for table, version in run.versions.items():
            written = written_since(self._ref(table), version)
            if written is not None:
                out[table] = written
        return out

    def run_once(
        self,
        *,
        as_of: date | None = None,
        layers: str | Collection[str] = ALL_JOBS,
        progress: Callable[[str], None] = log.info,
        on_progress: Callable[[ProgressRecord], None] | None = None,
    ) -> RunReport:
        """Drain all available input through the selected layers (default all).

        A query starts as soon as every query (or batch step) of this run that writes a table it
        reads has ended, so independent queries run side by side: the five silver queries together,
        then ``workout_bpm`` with the batch tail and the gold queries that do not need it, then the
        rest. Queries that write the same table (the quarantine) retry Delta's concurrent-commit
        conflicts; every write is idempotent. When a query fails, nothing new starts, the running
        ones finish, and the first failure is raised.
        """
        selected = select_jobs(layers)
        report = RunReport()
        once: Trigger = {"availableNow": True}
        # One line per query when it ends (rows read, rows written per table); its micro-batches at
        # debug level (the continuous run shows them).
        with (
            self.exclusive(),
            self._recording(lambda line: log.debug("%s", line), on_progress) as recorder,
            ThreadPoolExecutor(2) as batch_steps,
        ):
            self.check_checkpoints(selected)
            steps = self._steps(selected, once, as_of)
            log.info("drain plan: %s", " -> ".join("+".join(names) for names in waves(steps)))
            pending = list(steps)
            running: list[_Running] = []
            ended: set[str] = set()
            failure: BaseException | None = None

            def ready(step: _Step) -> bool:
                return all(s.name in ended for s in writers_of_inputs(step, steps))

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
                    log.debug("%s", message)
                    progress(report.add(run.step.name, rows, seconds, self._written(run)).line())
                    return
                query = run.query
                assert query is not None
                try:
                    await_query(query)
                except PipelineError as exc:
                    failure = failure or exc
                finally:
                    # recentProgress is complete once the query has ended; written once, when the
                    # run ends (one MERGE instead of one per query).
                    recorder.add_all(query.recentProgress)
                rows = _input_rows(query)
                progress(report.add(query.name or run.step.name, rows, seconds, self._written(run)).line())

            while pending or running:
                if failure is None:
                    for step in [s for s in pending if ready(s)]:
                        pending.remove(step)
                        started = time.monotonic()
                        if step.run is not None:
                            running.append(
                                _Running(step, started, self._versions(step), future=batch_steps.submit(step.run))
                            )
                            continue
                        assert step.start is not None
                        if step.idle is not None and step.idle():
                            # Nothing to read: starting it would only cost its start-up.
                            ended.add(step.name)
                            report.add(step.name, 0, 0.0)
                            progress(f"{step.name}: nothing new since its last batch")
                            continue
                        try:
                            running.append(_Running(step, started, self._versions(step), query=step.start()))
                        except Exception as exc:  # what already runs still ends cleanly
                            failure = exc
                            break
                if failure is not None:  # nothing new starts, not even the rest of this round
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
                raise self._explained(failure)
        return report

    def run_continuously(
        self,
        stop: threading.Event,
        *,
        as_of: date | None = None,
        layers: str | Collection[str] = ALL_JOBS,
        progress: Callable[[str], None] = log.info,
        on_progress: Callable[[ProgressRecord], None] | None = None,
    ) -> None:
        """Run every query of the selected layers until ``stop`` is set; then stop them cleanly.

        ``progress`` gets a line per micro-batch; ``on_progress`` every progress the listener
        delivers (the live view, :class:`~fitbit_stream.io.live.LiveProgress`)."""
        selected = select_jobs(layers)
        streaming = self.config.streaming

        def trigger(spec: QuerySpec) -> Trigger:
            seconds = streaming.trigger_seconds(spec.name, derived=spec.source == "change_feed")
            return {"processingTime": f"{seconds} seconds"}

        with self.exclusive(), self._recording(progress, on_progress) as recorder:
            self.check_checkpoints(selected)
            specs = self.specs(selected)
            queries: list[StreamingQuery] = []
            try:
                for spec in specs:
                    if stop.is_set():  # asked to stop while starting: start no more
                        break
                    if spec.streaming:
                        queries.append(self.queries.start(spec, trigger(spec)))
                polls_sql = any(spec.source == "sql" for spec in specs)
                tail = any(spec.name == TAIL for spec in specs)
                while not stop.is_set():
                    if polls_sql:
                        try:
                            self._ingest_sql()
                        except Exception as exc:
                            raise self._explained(exc) from None
                    for query in queries:
                        error = query.exception()
                        if error is not None:
                            raise self._explained(PipelineError(f"query {query.name!r} failed: {error}"))
                    if tail:  # the tombstone purge is left to the drains (run --once)
                        self.tail.refresh_user_bins(as_of or datetime.now(UTC).date())
                        self.tail.refresh_date_lookup()
                    self.flush_progress(recorder)
                    stop.wait(self.config.sql.poll_interval_seconds)
            finally:
                # Between micro-batches where possible: stopping a batch in flight interrupts its
                # writes (nothing is lost, it runs again on restart, but Spark logs the aborted jobs).
                stop_between_batches(queries)
