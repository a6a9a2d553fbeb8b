"""Ingest: one micro-batch of records from a source writes the silver topic tables, then bronze.

The Kafka queries (one for ``bpm``, one for ``user_info`` and ``workout``:
``topology.KAFKA_INGEST_REALTIME``) and the landing query each run an :class:`IngestWriter`: per
micro-batch, the records of each of its topics present go through that topic's silver writer
(parse, ``future``, ``late``, quarantine, MERGE; :class:`~fitbit_stream.io.silver.TopicWriter`),
the topics side by side, with
one ``quarantine`` MERGE and one late-state commit for all of them
(:class:`~fitbit_stream.io.silver.BatchShare`), and then the whole batch is appended to
``kafka_multiplex_bz``. A reading is in silver one batch after
it is in Kafka, not two (no second query reading bronze back), and a batch with nothing for a
table commits nothing to it.

Exactly once:
- Silver writes are idempotent (insert-if-absent on the table key, CDC re-derivation), and the
  ``late`` threshold of a batch is kept per (query, topic, batch id), so a replayed batch writes the
  same rows or nothing.
- The bronze append is idempotent by Delta's ``txnAppId`` (the checkpoint's id) and ``txnVersion``
  (the batch id): a replayed batch appends nothing the second time.
- Bronze is written last: when bronze holds a record, its silver writes have committed. A new
  checkpoint (``--reset-checkpoints``) resumes after what bronze holds (Kafka: after the greatest
  offset per partition; landing: skipping the records bronze holds), so nothing bronze holds is
  missing from silver and nothing is read twice.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

from pyspark.sql import functions as F

from fitbit_stream.config import Config
from fitbit_stream.errors import PipelineError
from fitbit_stream.io.guard import checkpoint_id
from fitbit_stream.io.live import LATENCY
from fitbit_stream.io.parallel import run_side_by_side
from fitbit_stream.io.silver import BatchShare, LateState, TopicWriter
from fitbit_stream.io.tables import TableRef, Tables
from fitbit_stream.topology import KINDS, QuerySpec, queries
from fitbit_stream.transforms.parse import PayloadKind

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

__all__ = [
    "KINDS",
    "BronzeAppend",
    "IngestWriter",
    "SilverTopics",
    "enabled_ingest_queries",
    "ingest_queries",
    "late_state_keys",
    "state_key",
]

log = logging.getLogger(__name__)


def state_key(query: str, kind: PayloadKind) -> str:
    """The ``late`` rule's state key of one topic within one ingest query (``_event_time_state.query``)."""
    return f"{query}/{kind}"


def late_state_keys(config: Config, kind: PayloadKind) -> list[str]:
    """The state keys behind the ``late`` rule of a topic with this configuration: one per enabled
    ingest query that reads the topic (``realtime``), or the topic query's (``layered``)."""
    if config.streaming.mode == "layered":
        return [f"silver_{kind}"]
    return [state_key(name, kind) for name in enabled_ingest_queries(config, kind)]


def enabled_ingest_queries(config: Config, kind: PayloadKind | None = None) -> list[str]:
    """The ``realtime`` ingest queries (Kafka, landing) this configuration runs, in drain order;
    with ``kind``, those that read that topic."""
    on = {"kafka": config.kafka.enabled, "landing": config.landing.enabled}
    return [q.name for q in ingest_queries(kind) if on.get(q.source)]


def ingest_queries(kind: PayloadKind | None = None) -> list[QuerySpec]:
    """Every ``realtime`` ingest query (enabled or not), in drain order; with ``kind``, those that
    read that topic."""
    return [q for q in queries("realtime") if q.kinds and (kind is None or kind in q.kinds)]


class BronzeAppend:
    """Idempotent appends to ``kafka_multiplex_bz`` under one checkpoint's id."""

    def __init__(self, spark: SparkSession, tables: Tables, location: str) -> None:
        self.tables = tables
        self.ref: TableRef = tables.ensure(spark, "kafka_multiplex_bz")
        self.location = location
        self._app_id: str | None = None

    def app_id(self, spark: SparkSession) -> str:
        # Spark writes the checkpoint's metadata before the first batch; its id changes with the
        # checkpoint, so a new checkpoint's batch 0 is never mistaken for the old one's.
        if self._app_id is None:
            self._app_id = checkpoint_id(spark, self.location)
            if self._app_id is None:
                raise PipelineError(f"bronze: no checkpoint metadata in {self.location}")
        return self._app_id

    def __call__(self, rows: DataFrame, batch_id: int) -> None:
        spark = rows.sparkSession
        writer = (
            rows.write.format("delta")
            .mode("append")
            .option("txnAppId", self.app_id(spark))
            .option("txnVersion", str(batch_id))
        )
        if self.ref.path:
            writer.save(self.ref.path)
        else:
            writer.saveAsTable(str(self.ref.qualified_name))


class SilverTopics:
    """The silver writers of some topics, applied to bronze-shaped rows of those topics.

    ``queries`` maps each topic (payload kind) written to the ingest query whose ``late`` rule
    state it uses (one per topic and query, see :func:`state_key`); rows of other topics are left
    alone.
    """

    def __init__(self, spark: SparkSession, config: Config, queries: Mapping[PayloadKind, str]) -> None:
        topics = config.kafka.topics
        self.kind_of: dict[str, PayloadKind] = {getattr(topics, kind): kind for kind in KINDS if kind in queries}
        self.tables = Tables(config)
        self.quarantine = self.tables.ensure(spark, "quarantine")
        self.late = LateState(self.tables, spark)
        self.writers = {
            kind: TopicWriter(spark, config, kind, state_key(query, kind), late=self.late)
            for kind, query in queries.items()
        }

    def __call__(self, rows: DataFrame, batch_id: int, *, present: set[str]) -> None:
        """Write the topics in ``present`` (topic names) of ``rows``, side by side.

        Each topic writes its own tables; their rejected records go to ``quarantine`` in one MERGE
        and their maxima to the late state in one commit (:class:`BatchShare`), beside the topics'
        own writes. A topic's failure is raised once every write has ended.
        """
        mine_of = {kind: topic for topic, kind in self.kind_of.items() if topic in present}
        if not mine_of:
            return
        share = BatchShare(list(mine_of))
        work: list[Callable[[], None]] = []
        ended: dict[int, Callable[[BaseException | None], None]] = {}
        for kind, topic in mine_of.items():
            mine = rows.filter(F.col("topic") == topic)
            ended[len(work)] = functools.partial(share.ended, kind)
            work.append(functools.partial(self.writers[kind], mine, batch_id, share=share))
        spark = rows.sparkSession
        work.append(lambda: share.write(spark, self.tables, self.quarantine, self.late, batch_id))
        try:
            run_side_by_side(spark, work, when_done=ended)
        finally:
            share.release()


class IngestWriter:
    """``foreachBatch`` of an ingest query: bronze-shaped rows -> silver topic tables, then bronze.

    ``kinds`` are the topics the query reads. ``prepare`` turns the source's micro-batch into
    bronze-shaped rows (and handles what is not a record, such as a landing line that is not JSON);
    ``resume`` drops the records bronze already holds (a landing query on a new checkpoint over a
    non-empty bronze).
    """

    def __init__(
        self,
        spark: SparkSession,
        config: Config,
        query: str,
        *,
        kinds: Sequence[PayloadKind] = KINDS,
        prepare: Callable[[DataFrame], DataFrame] | None = None,
        resume: bool = False,
    ) -> None:
        self.tables = Tables(config)
        self.query = query
        self.prepare = prepare
        self.resume = resume
        self.bronze = BronzeAppend(spark, self.tables, self.tables.checkpoint(query))
        # ``layered`` mode: silver is the topic queries' job (they read bronze back).
        self.silver = (
            SilverTopics(spark, config, dict.fromkeys(kinds, query)) if config.streaming.mode == "realtime" else None
        )

    def __call__(self, batch: DataFrame, batch_id: int) -> None:
        spark = batch.sparkSession
        # Materialised once: ``prepare``, the silver writers and the bronze append see the same
        # rows, and the source is read once per batch (its progress counts each record once).
        source = batch.persist()
        rows: DataFrame | None = None
        try:
            prepared = source if self.prepare is None else self.prepare(source)
            if self.resume:
                held = self.tables.read(spark, self.bronze.ref).select("topic", "partition", "offset")
                prepared = prepared.join(held, ["topic", "partition", "offset"], "left_anti")
            rows = prepared.persist()
            # The batch's topics, with each one's least and greatest record timestamp (unix micros)
            # for the event->silver latency of the live view (the same one aggregate).
            bounds = {
                str(r["topic"]): (r["lo"], r["hi"])
                for r in rows.groupBy("topic")
                .agg(
                    F.unix_micros(F.min("timestamp")).alias("lo"),
                    F.unix_micros(F.max("timestamp")).alias("hi"),
                )
                .collect()
            }
            present = set(bounds)
            if not present:
                return
            if self.silver is not None:
                self.silver(rows, batch_id, present=present)
                LATENCY.publish(self.query, batch_id, bounds)
            # Last: bronze holds a record only once its silver writes have committed.
            self.bronze(rows, batch_id)
        finally:
            if rows is not None:
                rows.unpersist()
            source.unpersist()
