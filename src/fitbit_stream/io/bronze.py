"""Bronze writers: Kafka and landing files stream into ``kafka_multiplex_bz``; the SQL tables land
in ``registered_users_bz`` and ``gym_logins_bz``.

Exactly once:
- The Kafka and landing queries use Delta's streaming sink, which records each micro-batch's id in
  the Delta log under the query id: a batch replayed after a crash is skipped, and the checkpoint
  holds the source offsets, so a restart neither loses nor repeats a record.
- The SQL tables have no change feed and a visit is updated in place at logout, so each poll reads
  the (small) source tables whole and appends only the row versions bronze has not seen yet
  (null-safe anti-join on every source column). Re-reading unchanged rows adds nothing, and a
  crash between read and append is repaired by the next poll.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import reduce
from typing import TYPE_CHECKING

from pyspark.sql import functions as F

from fitbit_stream.config import Config
from fitbit_stream.io.sources import read_kafka_stream, read_landing_stream, read_sql_table
from fitbit_stream.io.tables import Tables
from fitbit_stream.transforms.bronze import (
    gym_logins_to_bronze,
    kafka_to_bronze,
    landing_to_bronze,
    registered_users_to_bronze,
)

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession
    from pyspark.sql.streaming.query import StreamingQuery  # the package re-exports it implicitly

__all__ = ["SqlIngestResult", "Trigger", "ingest_sql_sources", "start_kafka_bronze", "start_landing_bronze"]

#: ``{"availableNow": True}`` drains what is there and stops; ``{"processingTime": "10 seconds"}``
#: runs continuously.
Trigger = dict[str, object]

KAFKA_BRONZE_QUERY = "bronze_kafka_multiplex"
LANDING_BRONZE_QUERY = "bronze_landing_multiplex"


def _start_multiplex(
    spark: SparkSession, config: Config, source: DataFrame, query_name: str, trigger: Trigger
) -> StreamingQuery:
    tables = Tables(config)
    ref = tables.ensure(spark, "kafka_multiplex_bz")
    writer = (
        source.writeStream.format("delta")
        .queryName(query_name)
        .outputMode("append")
        .option("checkpointLocation", tables.checkpoint(query_name))
        .partitionBy("topic", "week_part")
    )
    # pyspark's overloads take exactly one typed keyword each; a Trigger holds one of them.
    writer = writer.trigger(**trigger)  # type: ignore[call-overload]
    return tables.start_stream(writer, ref)


def start_kafka_bronze(spark: SparkSession, config: Config, *, trigger: Trigger) -> StreamingQuery:
    """Kafka topics -> ``kafka_multiplex_bz`` (append-only, exactly once)."""
    source = read_kafka_stream(spark, config).transform(kafka_to_bronze, load_time=F.current_timestamp())
    return _start_multiplex(spark, config, source, KAFKA_BRONZE_QUERY, trigger)


def start_landing_bronze(spark: SparkSession, config: Config, *, trigger: Trigger) -> StreamingQuery:
    """Landing files -> ``kafka_multiplex_bz`` (same table, its own checkpoint)."""
    source = read_landing_stream(spark, config).transform(landing_to_bronze, load_time=F.current_timestamp())
    return _start_multiplex(spark, config, source, LANDING_BRONZE_QUERY, trigger)


@dataclass(frozen=True)
class SqlIngestResult:
    registered_users_added: int
    gym_logins_added: int


def _null_safe_all(left: DataFrame, right: DataFrame, columns: list[str]) -> Column:
    return reduce(lambda acc, cond: acc & cond, [left[c].eqNullSafe(right[c]) for c in columns])


def new_versions(observed: DataFrame, bronze: DataFrame, columns: list[str]) -> DataFrame:
    """Row versions in ``observed`` that ``bronze`` does not hold yet (every column compared, NULL-safe)."""
    distinct = observed.select(*columns).dropDuplicates(columns)
    seen = bronze.select(*columns).dropDuplicates(columns)
    return distinct.join(seen, _null_safe_all(distinct, seen, columns), "left_anti")


def _ingest_one(spark: SparkSession, config: Config, logical: str) -> int:
    tables = Tables(config)
    ref = tables.ensure(spark, f"{logical}_bz")
    shape = registered_users_to_bronze if logical == "registered_users" else gym_logins_to_bronze
    observed = read_sql_table(spark, config.sql, logical).transform(shape, load_time=F.lit(None))
    columns = [c for c in observed.columns if c != "load_time"]
    # Materialised once: the count and the append must see the same rows even if the source
    # changes in between (two JDBC reads are not one snapshot).
    fresh = (
        new_versions(observed, tables.read(spark, ref), columns)
        .withColumn("load_time", F.current_timestamp())
        .localCheckpoint(eager=True)
    )
    added = fresh.count()
    if added:
        tables.append(fresh, ref)
    return added


def ingest_sql_sources(spark: SparkSession, config: Config) -> SqlIngestResult:
    """One poll of the SQL source: append every row version not seen before."""
    return SqlIngestResult(
        registered_users_added=_ingest_one(spark, config, "registered_users"),
        gym_logins_added=_ingest_one(spark, config, "gym_logins"),
    )
