"""``rebuild``: silver and gold emptied and derived again from bronze through the streaming writers.

Bronze and its checkpoints are kept, so nothing is read from Kafka or the SQL source again. The
queries are the pipeline's own (``queries.QueryFactory``), on new checkpoints.
"""

from __future__ import annotations

import logging
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import reduce
from pathlib import Path
from typing import TYPE_CHECKING

from pyspark.sql import functions as F

from fitbit_stream.config import Config
from fitbit_stream.errors import PipelineError
from fitbit_stream.io.guard import read_checkpoint
from fitbit_stream.io.ingest import KINDS, SilverTopics, enabled_ingest_queries, ingest_queries, state_key
from fitbit_stream.io.merge import with_conflict_retry
from fitbit_stream.io.silver import QUARANTINE_KEY, LateState
from fitbit_stream.io.tables import TableRef, Tables, is_uri
from fitbit_stream.queries import BatchWriter, QueryFactory, await_query
from fitbit_stream.recompute import COMPARED_TABLES
from fitbit_stream.topology import INTERNAL_TABLES, TOPIC_QUERIES, Kind, checkpointed
from fitbit_stream.transforms.quality import LATE

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from fitbit_stream.pipeline import RunReport

__all__ = ["RebuildReport", "rebuild"]

log = logging.getLogger(__name__)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


#: Where the old silver and gold checkpoints wait (moved aside whole) until the rebuild is done.
_TRASH = "_rebuild_trash"

#: Delta's availableNow honours maxFilesPerTrigger: a limit above any file count gives one batch.
_ONE_BATCH_FILES = str(2**31 - 1)


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
        #: the silver and gold queries' checkpoints; bronze's hold the Kafka and landing offsets
        #: and are never touched
        self.names = frozenset(checkpointed(("silver", "gold")))
        if is_uri(root):
            raise PipelineError(
                f"rebuild: checkpoint_root {root!r} is a URI; rebuild resets filesystem paths (local or "
                f"/Volumes) only: stop the pipeline, delete the checkpoint directories {', '.join(sorted(self.names))} "
                "by hand and run rebuild with a local checkpoint_root mount"
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
            if child.is_dir() and child.name in self.names:
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
    refs += [tables.ref(name, layer=layer) for name, layer in INTERNAL_TABLES.items()]
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


def _without_late(bronze: DataFrame, tables: Tables) -> DataFrame:
    """``bronze`` minus the records the quarantine holds as ``late`` (the kept decisions), so the
    rebuild keeps them out as the original run did."""
    spark = bronze.sparkSession
    coords = list(QUARANTINE_KEY)
    late = (
        tables.read(spark, tables.ref("quarantine"))
        .filter(F.col("reason") == LATE)
        .select(*(F.col(c).alias(f"_late_{c}") for c in coords))
    )
    same = reduce(lambda a, b: a & b, [F.col(c).eqNullSafe(F.col(f"_late_{c}")) for c in coords])
    return bronze.join(late, same, "left_anti")


def _last_batch(spark: SparkSession, tables: Tables, query: str) -> int:
    """The last batch id the ingest query committed (-1 when none): the rebuild's state goes there."""
    info = read_checkpoint(spark, tables.checkpoint(query))
    return -1 if info.last_commit is None else info.last_commit


def _rederive_topics(spark: SparkSession, config: Config, *, keep_late: bool, progress: Callable[[str], None]) -> None:
    """The silver topic tables from all of bronze in ONE batch, through the pipeline's own writers:
    with no earlier batch nothing new is late, so the result is the rules applied to all of bronze
    minus the kept ``late`` decisions (what ``recompute`` gives)."""
    tables = Tables(config)
    if config.streaming.mode == "layered":
        # The topic queries themselves, on their new checkpoints, over all of bronze in one batch.
        factory = QueryFactory(spark, config, tables)
        for spec in TOPIC_QUERIES:

            def wrap(writer: BatchWriter) -> BatchWriter:
                return (lambda batch, batch_id: writer(_without_late(batch, tables), batch_id)) if keep_late else writer

            query = factory.start(spec, {"availableNow": True}, wrap=wrap, maxFilesPerTrigger=_ONE_BATCH_FILES)
            await_query(query, what="rebuild: ")
            progress(f"{spec.name}: re-derived from bronze")
        return
    _rederive_in_batch(spark, config, tables, keep_late=keep_late, progress=progress)


def _rederive_in_batch(
    spark: SparkSession, config: Config, tables: Tables, *, keep_late: bool, progress: Callable[[str], None]
) -> None:
    """``realtime`` mode: the ingest queries' topic writers over all of bronze, as one batch.

    Each topic is written under the first enabled ingest query that reads it (the Kafka one when
    none is enabled), its ``late`` state recorded under that query's last committed batch; every
    other enabled query reading the topic gets the same state under its own last batch. The next
    batch of each judges lateness against everything bronze held, as if the rebuild had been that
    batch.
    """
    bronze = tables.read(spark, tables.ref("kafka_multiplex_bz"))
    if keep_late:
        bronze = _without_late(bronze, tables)
    first: dict[Kind, str] = {}
    others: dict[Kind, list[str]] = {}
    for kind in KINDS:
        readers = enabled_ingest_queries(config, kind) or [q.name for q in ingest_queries(kind) if q.source == "kafka"]
        first[kind], others[kind] = readers[0], readers[1:]
    rows = bronze.persist()
    try:
        present = {str(r["topic"]) for r in rows.select("topic").distinct().collect()}
        for query in dict.fromkeys(first.values()):
            mine = {kind: query for kind, q in first.items() if q == query}
            SilverTopics(spark, config, mine)(rows, _last_batch(spark, tables, query), present=present)
    finally:
        rows.unpersist()
    state = LateState(tables, spark)
    for kind in KINDS:
        latest = state.previous_max(spark, state_key(first[kind], kind), sys.maxsize)
        for other in others[kind]:
            micros = None if latest is None else (latest - _EPOCH) // timedelta(microseconds=1)
            state.record(spark, state_key(other, kind), _last_batch(spark, tables, other), micros)
    progress(f"silver topic tables: re-derived from bronze ({', '.join(sorted(present)) or 'no records'})")


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
