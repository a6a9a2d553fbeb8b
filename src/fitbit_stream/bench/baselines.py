"""The yardsticks the library's stages are measured against, on the same backlog and session.

- ``kafka_to_noop``: Spark's Kafka source into the ``noop`` sink: what reading the backlog costs.
- ``kafka_to_delta_copy``: the Kafka rows, unchanged, appended to a Delta table: reading plus the
  cheapest possible durable write. ``start_copy`` also runs it as a continuous query, the
  baseline of the sustained-rate search.
- ``handwritten_heart_rate``: what a careful notebook does for the heart-rate silver table, in
  idiomatic PySpark: ``from_json`` with a schema, the epoch time cast to TIMESTAMP through a double
  (the notebooks' way; it loses sub-microsecond digits the library keeps exact), duplicates dropped
  within the micro-batch, and an insert-if-absent ``MERGE`` in ``foreachBatch``. It reads the same
  bronze table as the library's ``silver_bpm`` query, with the same trigger and partitions. It has
  none of the library's rules (validation detail, quarantine, future/late rules, first-ingested
  order), which is the point: it is the floor of the work, not a correct alternative.

Every figure comes from the queries' own progress (``recentProgress``), as for the library.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from pyspark.sql import functions as F
from pyspark.sql.types import DoubleType, LongType, StructField, StructType

from fitbit_stream.azure import auth_for
from fitbit_stream.bench.report import (
    BASELINE_COPY,
    BASELINE_HANDWRITTEN,
    BASELINE_NOOP,
    STAGE_ALONE,
    QueryFigures,
    figures_from_progress,
)
from fitbit_stream.errors import PipelineError
from fitbit_stream.io.sources import kafka_options
from fitbit_stream.schemas import HEART_RATE

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.streaming.query import StreamingQuery

    from fitbit_stream.config import Config

__all__ = ["handwritten_heart_rate", "kafka_to_delta_copy", "kafka_to_noop", "library_heart_rate", "start_copy"]

#: The notebook's payload schema: epoch seconds read as a double.
_BPM_JSON = StructType(
    [
        StructField("device_id", LongType()),
        StructField("time", DoubleType()),
        StructField("heartrate", DoubleType()),
    ]
)


def _drain(query: StreamingQuery, started: float) -> QueryFigures:
    query.awaitTermination()
    elapsed = time.monotonic() - started
    error = query.exception()
    if error is not None:
        raise PipelineError(f"benchmark query {query.name!r} failed: {error}")
    progresses = [json.loads(p.json) for p in query.recentProgress]
    return figures_from_progress(str(query.name), progresses, elapsed_seconds=round(elapsed, 3))


def _kafka(spark: SparkSession, config: Config) -> DataFrame:
    return (
        spark.readStream.format("kafka")
        .options(**kafka_options(config.kafka, auth=auth_for(config).kafka_auth_options()))
        .load()
    )


def kafka_to_noop(spark: SparkSession, config: Config, *, checkpoint: str) -> QueryFigures:
    """Read every Kafka record of the configured topics and throw it away."""
    started = time.monotonic()
    query = (
        _kafka(spark, config)
        .writeStream.format("noop")
        .queryName(BASELINE_NOOP)
        .option("checkpointLocation", checkpoint)
        .trigger(availableNow=True)
        .start()
    )
    return _drain(query, started)


def start_copy(
    spark: SparkSession, config: Config, *, path: str, checkpoint: str, trigger_seconds: float | None = None
) -> StreamingQuery:
    """Start the copy: every Kafka record, columns as the source gives them, appended to a Delta
    table at ``path``; available-now, or every ``trigger_seconds`` (the sustained-rate search)."""
    writer = (
        _kafka(spark, config)
        .writeStream.format("delta")
        .queryName(BASELINE_COPY)
        .outputMode("append")
        .option("checkpointLocation", checkpoint)
    )
    if trigger_seconds is None:
        writer = writer.trigger(availableNow=True)
    else:
        writer = writer.trigger(processingTime=f"{trigger_seconds} seconds")
    return writer.start(path)


def kafka_to_delta_copy(spark: SparkSession, config: Config, *, path: str, checkpoint: str) -> QueryFigures:
    """Append every Kafka record, columns as the source gives them, to a Delta table at ``path``."""
    started = time.monotonic()
    return _drain(start_copy(spark, config, path=path, checkpoint=checkpoint), started)


def _drain_bpm_stage(
    spark: SparkSession,
    config: Config,
    name: str,
    write: Callable[[DataFrame, int], None],
    *,
    bronze_path: str,
    checkpoint: str,
) -> QueryFigures:
    """Drain the bronze table's heart-rate records through ``write`` (available-now, one query)."""
    started = time.monotonic()
    source = spark.readStream.format("delta").load(bronze_path).where(F.col("topic") == config.kafka.topics.bpm)
    query = (
        source.writeStream.queryName(name)
        .foreachBatch(write)
        .option("checkpointLocation", checkpoint)
        .trigger(availableNow=True)
        .start()
    )
    return _drain(query, started)


def handwritten_heart_rate(
    spark: SparkSession, config: Config, *, bronze_path: str, path: str, checkpoint: str
) -> QueryFigures:
    """The notebook-style heart-rate silver stage over the library's bronze table (see module doc)."""
    from delta.tables import DeltaTable

    DeltaTable.createIfNotExists(spark).addColumns(HEART_RATE).location(path).execute()
    low, high = config.rules.heartrate_min, config.rules.heartrate_max

    def write(batch: DataFrame, batch_id: int) -> None:
        readings = (
            batch.select(F.from_json("value", _BPM_JSON).alias("r"))
            .select(
                F.col("r.device_id").alias("device_id"),
                F.col("r.time").cast("timestamp").alias("time"),
                F.col("r.heartrate").alias("heartrate"),
            )
            .where(F.col("device_id").isNotNull() & F.col("time").isNotNull())
            .dropDuplicates(["device_id", "time"])
            .withColumn("valid", F.coalesce(F.col("heartrate").between(low, high), F.lit(False)))
        )
        (
            DeltaTable.forPath(batch.sparkSession, path)
            .alias("t")
            .merge(readings.alias("s"), "t.device_id = s.device_id AND t.time = s.time")
            .whenNotMatchedInsertAll()
            .execute()
        )

    return _drain_bpm_stage(spark, config, BASELINE_HANDWRITTEN, write, bronze_path=bronze_path, checkpoint=checkpoint)


def library_heart_rate(
    spark: SparkSession, config: Config, *, bronze_path: str, root: str, checkpoint: str
) -> QueryFigures:
    """The library's ``silver_bpm`` query alone, as :func:`handwritten_heart_rate` runs: the same
    bronze table, trigger and session, its tables (heart_rate, quarantine, late state) under ``root``."""
    from fitbit_stream.io.silver import TopicWriter

    scratch = config.model_copy(
        update={"storage": config.storage.model_copy(update={"root": root, "checkpoint_root": checkpoint})}
    )
    writer = TopicWriter(spark, scratch, "bpm", STAGE_ALONE)
    return _drain_bpm_stage(
        spark, config, STAGE_ALONE, writer, bronze_path=bronze_path, checkpoint=f"{checkpoint}/{STAGE_ALONE}"
    )
