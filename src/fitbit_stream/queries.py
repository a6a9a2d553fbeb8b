"""Query factories: one streaming query per :class:`~fitbit_stream.topology.QuerySpec`.

The specs say what each query reads and writes; this module says how it is started (source,
``foreachBatch`` writer, checkpoint, trigger, scheduler pool). The scheduler (``pipeline``) and
rebuild (``rebuild``) start queries only through :meth:`QueryFactory.start`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from pyspark.errors import StreamingQueryException
from pyspark.sql import functions as F

from fitbit_stream.config import Config
from fitbit_stream.errors import PipelineError
from fitbit_stream.io.bronze import Trigger, start_kafka_bronze, start_landing_bronze
from fitbit_stream.io.derived import change_stream, derived_writer
from fitbit_stream.io.silver import RegistrationsWriter, TopicWriter, VisitsWriter
from fitbit_stream.io.tables import Tables
from fitbit_stream.topology import QuerySpec

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.streaming.query import StreamingQuery

__all__ = ["BatchWriter", "QueryFactory", "await_query", "scheduler_pool"]

BatchWriter = Callable[["DataFrame", int], None]


def await_query(query: StreamingQuery, *, what: str = "") -> None:
    """Wait for an available-now query to end (stopping it if it is still active after an error);
    its failure becomes one :class:`PipelineError` line, without the JVM stack trace."""
    try:
        # awaitTermination re-raises the query's own failure; exception() covers a query stopped
        # from elsewhere with an error.
        query.awaitTermination()
        error: object = query.exception()
    except StreamingQueryException as exc:
        error = str(exc).split("\n\nJVM stacktrace:")[0]
    finally:
        if query.isActive:
            query.stop()
    if error is not None:
        raise PipelineError(f"{what}query {query.name!r} failed: {error}") from None


@contextmanager
def scheduler_pool(spark: SparkSession, name: str) -> Iterator[None]:
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


class QueryFactory:
    """Starts the streaming queries of one configuration."""

    def __init__(self, spark: SparkSession, config: Config, tables: Tables | None = None) -> None:
        self.spark = spark
        self.config = config
        self.tables = tables or Tables(config)

    def start(
        self,
        spec: QuerySpec,
        trigger: Trigger,
        *,
        wrap: Callable[[BatchWriter], BatchWriter] | None = None,
        **source_options: str,
    ) -> StreamingQuery:
        """Start ``spec``'s query (in its own scheduler pool) and return it.

        ``wrap`` decorates the ``foreachBatch`` writer and ``source_options`` go to the Delta source;
        neither applies to the ingest queries (Kafka, landing), which own their sources.
        """
        with scheduler_pool(self.spark, spec.name):
            if spec.source == "kafka":
                return start_kafka_bronze(self.spark, self.config, spec, trigger=trigger)
            if spec.source == "landing":
                return start_landing_bronze(self.spark, self.config, trigger=trigger)
            source, writer = self._source_and_writer(spec, source_options)
            return self._foreach_batch(spec.name, source, wrap(writer) if wrap else writer, trigger)

    def _source_and_writer(self, spec: QuerySpec, options: dict[str, str]) -> tuple[DataFrame, BatchWriter]:
        tables, spark = self.tables, self.spark
        if spec.source == "bronze_topic":
            assert spec.kind is not None
            topic: str = getattr(self.config.kafka.topics, spec.kind)
            (bronze,) = spec.reads
            source = tables.read_stream(spark, tables.ref(bronze), **options).filter(F.col("topic") == topic)
            return source, TopicWriter(spark, self.config, spec.kind, spec.name)
        if spec.source == "bronze_table":
            (bronze,) = spec.reads
            source = tables.read_stream(spark, tables.ref(bronze), **options)
            if bronze == "registered_users_bz":
                return source, RegistrationsWriter(spark, self.config)
            return source, VisitsWriter(spark, self.config)
        if spec.source == "change_feed":
            return change_stream(spark, tables, spec.reads, **options), derived_writer(spec.writes).make_writer(tables)
        raise PipelineError(f"query {spec.name!r} ({spec.source}) is a batch step, not a streaming query")

    def _foreach_batch(self, name: str, source: DataFrame, writer_fn: BatchWriter, trigger: Trigger) -> StreamingQuery:
        writer = (
            source.writeStream.queryName(name)
            .foreachBatch(writer_fn)
            .option("checkpointLocation", self.tables.checkpoint(name))
        )
        # pyspark's trigger() overloads take one keyword each; the dict holds exactly one.
        writer = writer.trigger(**trigger)  # type: ignore[call-overload]
        query: StreamingQuery = writer.start()
        return query
