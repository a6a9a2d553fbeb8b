"""Bronze writers: Kafka and landing files stream into ``kafka_multiplex_bz``; the SQL tables land
in ``registered_users_bz`` and ``gym_logins_bz``.

Exactly once:
- The Kafka query uses Delta's streaming sink, and the landing query appends with Delta's
  idempotent-write options (``txnAppId`` = the checkpoint's id, ``txnVersion`` = the batch id):
  either way Delta records each micro-batch under the query's id, a batch replayed after a crash
  is skipped, and the checkpoint holds the source offsets, so a restart neither loses nor repeats
  a record.
- A new checkpoint (first run, or ``--reset-checkpoints``, see :mod:`fitbit_stream.io.guard`) does
  not read again what bronze already holds: the Kafka query starts each partition at the offset
  after the greatest one bronze holds, and the landing query skips the records whose (topic,
  partition, offset) bronze holds, until its first batch is committed.
- The SQL tables have no change feed and a visit is updated in place at logout, so each poll reads
  the (small) source tables whole and appends only the row versions bronze has not seen yet
  (null-safe anti-join on every source column). Re-reading unchanged rows adds nothing, and a
  crash between read and append is repaired by the next poll.

Data loss: before the Kafka query starts, the offsets it will read next (from its checkpoint, or
after bronze for a new checkpoint) are compared with the earliest offsets Kafka still holds. Records
that are gone (retention, deleted records, a recreated topic) stop the pipeline with a
:class:`PipelineError` naming topic, partition and offsets, unless ``kafka.fail_on_data_loss`` is
false: then each gap is recorded in the ops table ``_kafka_gaps`` and the query continues at the
earliest offsets. A broker that does not answer the lookup stops the run before the query starts
(the sources were checked just before, :mod:`fitbit_stream.io.preflight`). Without confluent-kafka
only Spark's own failOnDataLoss check remains, whose message names the partitions but not the
offsets.

Landing lines that are not a JSON record of the landing shape (not JSON, or no topic, partition,
offset or epoch-seconds timestamp) are not records of any topic: they go to ``quarantine`` with
reason ``malformed_json``, the raw line as ``value`` and a detail naming the problem and the file.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import reduce
from typing import TYPE_CHECKING

from pyspark.sql import functions as F
from pyspark.sql.types import IntegerType, LongType, StringType, StructField, StructType, TimestampType

from fitbit_stream.azure import auth_for
from fitbit_stream.config import Config
from fitbit_stream.errors import PipelineError, SourceError
from fitbit_stream.io.guard import initial_offsets, is_local, read_checkpoint, source_offsets
from fitbit_stream.io.ingest import IngestWriter
from fitbit_stream.io.merge import insert_if_absent
from fitbit_stream.io.sources import (
    CORRUPT_LINE,
    RAW_LINE,
    SOURCE_FILE,
    kafka_partition_offsets,
    read_kafka_stream,
    read_landing_stream,
    read_sql_table,
)
from fitbit_stream.io.tables import TableRef, Tables
from fitbit_stream.schemas import QUARANTINE
from fitbit_stream.transforms.bronze import (
    gym_logins_to_bronze,
    kafka_to_bronze,
    landing_to_bronze,
    registered_users_to_bronze,
)
from fitbit_stream.transforms.dates import epoch_seconds_to_timestamp
from fitbit_stream.transforms.quality import MALFORMED_JSON

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession
    from pyspark.sql.streaming.query import StreamingQuery  # the package re-exports it implicitly

    from fitbit_stream.topology import QuerySpec

__all__ = [
    "KAFKA_GAPS",
    "LANDING_BRONZE_QUERY",
    "KafkaGap",
    "SqlIngestResult",
    "Trigger",
    "find_gaps",
    "ingest_sql_sources",
    "kafka_position",
    "start_kafka_bronze",
    "start_landing_bronze",
]

log = logging.getLogger(__name__)

#: ``{"availableNow": True}`` drains what is there and stops; ``{"processingTime": "10 seconds"}``
#: runs continuously.
Trigger = dict[str, object]

LANDING_BRONZE_QUERY = "bronze_landing_multiplex"

#: ops table: offsets lost to Kafka before bronze read them, accepted with fail_on_data_loss false.
KAFKA_GAPS = StructType(
    [
        StructField("query", StringType()),
        StructField("topic", StringType()),
        StructField("partition", IntegerType()),
        StructField("from_offset", LongType()),
        StructField("to_offset", LongType()),
        StructField("detected_at", TimestampType()),
    ]
)

Partition = tuple[str, int]


# --- Kafka ---------------------------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class KafkaGap:
    """Offsets ``from_offset..to_offset`` (inclusive) of one partition that Kafka no longer holds."""

    topic: str
    partition: int
    from_offset: int
    to_offset: int

    def __str__(self) -> str:
        return f"topic {self.topic!r} partition {self.partition}: offsets {self.from_offset}..{self.to_offset}"


def _offsets_json(text: str | None) -> dict[Partition, int]:
    if not text:
        return {}
    value = json.loads(text)
    return {(str(t), int(p)): int(o) for t, parts in value.items() for p, o in parts.items() if int(o) >= 0}


def _bronze_next_offsets(spark: SparkSession, tables: Tables, ref: TableRef, topics: list[str]) -> dict[Partition, int]:
    rows = (
        tables.read(spark, ref)
        .where(F.col("topic").isin(topics) & F.col("offset").isNotNull())
        .groupBy("topic", "partition")
        .agg(F.max("offset").alias("last"))
        .collect()
    )
    return {(r["topic"], int(r["partition"])): int(r["last"]) + 1 for r in rows}


def kafka_position(
    spark: SparkSession, config: Config, tables: Tables, ref: TableRef, location: str, topics: Sequence[str]
) -> tuple[dict[Partition, int], str | None]:
    """Where a Kafka bronze query reading ``topics`` reads next, per partition, and the startingOffsets to pass.

    From the checkpoint: the end offsets of its last committed batch (or, when no batch was ever
    committed, the offsets it started from). A new checkpoint starts after what bronze holds: then
    the startingOffsets JSON names every partition (Spark requires all of them), those bronze has
    never seen at the earliest offset (-2). An empty bronze starts as configured.
    """
    info = read_checkpoint(spark, location)
    if info.last_commit is not None:
        return _offsets_json(source_offsets(location, info.last_commit)), None
    if info.last_offsets is not None:
        return _offsets_json(initial_offsets(location)), None
    if info.exists and not is_local(location):
        return {}, None  # Spark resumes from a checkpoint Python cannot read: nothing to decide
    resume = _bronze_next_offsets(spark, tables, ref, list(topics))
    if not resume:
        return {}, None
    try:
        partitions = kafka_partition_offsets(config.kafka, auth=auth_for(config).librdkafka_auth_settings())
    except SourceError as exc:
        raise PipelineError(
            f"the kafka bronze query has a new checkpoint ({location}) and bronze already holds records of "
            f"{', '.join(sorted({t for t, _ in resume}))}: it must start after them, which needs the topics' "
            f"partitions: {exc}"
        ) from None
    starting: dict[str, dict[str, int]] = {t: {} for t in topics}
    for topic, partition in sorted(partitions):
        if topic in starting:
            starting[topic][str(partition)] = resume.get((topic, partition), -2)
    log.info("kafka bronze: new checkpoint, resuming after the records bronze holds: %s", starting)
    return resume, json.dumps(starting, separators=(",", ":"))


def find_gaps(position: dict[Partition, int], earliest: dict[Partition, int]) -> list[KafkaGap]:
    """The offsets between where the query reads next and the earliest Kafka still holds."""
    return sorted(
        KafkaGap(topic, partition, next_offset, earliest[(topic, partition)] - 1)
        for (topic, partition), next_offset in position.items()
        if earliest.get((topic, partition), next_offset) > next_offset
    )


def _record_gaps(spark: SparkSession, tables: Tables, query: str, gaps: list[KafkaGap]) -> None:
    ref = tables.ensure(spark, "_kafka_gaps", schema=KAFKA_GAPS, layer="ops")
    rows = spark.createDataFrame(
        [(query, g.topic, g.partition, g.from_offset, g.to_offset) for g in gaps],
        "query string, topic string, partition int, from_offset bigint, to_offset bigint",
    ).withColumn("detected_at", F.current_timestamp())
    insert_if_absent(spark, tables, ref, rows, keys=["topic", "partition", "from_offset"])


def _check_data_loss(
    spark: SparkSession, config: Config, tables: Tables, query: str, position: dict[Partition, int]
) -> None:
    if not position:
        return
    if importlib.util.find_spec("confluent_kafka") is None:
        # The one case the check cannot be made: without librdkafka only Spark's own check remains.
        log.info("kafka bronze: offsets lost to retention are left to Spark's check (confluent-kafka is not installed)")
        return
    try:
        earliest = kafka_partition_offsets(config.kafka, auth=auth_for(config).librdkafka_auth_settings())
    except SourceError as exc:
        # The sources passed the preflight moments ago (io.preflight): a broker that does not answer
        # now stops the run before the query starts, rather than leaving lost records unnoticed.
        raise PipelineError(
            f"kafka bronze: cannot check the offsets Kafka still holds before starting: {exc}; check that the "
            f"broker at kafka.bootstrap_servers={config.kafka.bootstrap_servers} runs, then start again"
        ) from None
    gaps = find_gaps(position, earliest)
    if not gaps:
        return
    listed = "; ".join(str(g) for g in gaps)
    if config.kafka.fail_on_data_loss:
        raise PipelineError(
            f"kafka data loss: records the pipeline has not read are no longer in Kafka (retention or deletion): "
            f"{listed}. Nothing was skipped. To continue from the earliest offsets Kafka holds and record the gap "
            f"in the ops table _kafka_gaps, set kafka.fail_on_data_loss: false (--set kafka.fail_on_data_loss=false)."
        )
    log.warning("kafka bronze: continuing past lost records (kafka.fail_on_data_loss is false): %s", listed)
    _record_gaps(spark, tables, query, gaps)


def start_kafka_bronze(spark: SparkSession, config: Config, spec: QuerySpec, *, trigger: Trigger) -> StreamingQuery:
    """The Kafka topics of ``spec.kinds`` -> ``kafka_multiplex_bz`` (append-only, exactly once); in
    ``realtime`` mode their silver topic tables from the same micro-batch (``io.ingest``)."""
    tables = Tables(config)
    ref = tables.ensure(spark, "kafka_multiplex_bz")
    name = spec.name
    topics = [getattr(config.kafka.topics, kind) for kind in spec.kinds]
    position, starting = kafka_position(spark, config, tables, ref, tables.checkpoint(name), topics)
    _check_data_loss(spark, config, tables, name, position)
    source = read_kafka_stream(spark, config, starting_offsets=starting, topics=topics).transform(
        kafka_to_bronze, load_time=F.current_timestamp()
    )
    writer = (
        source.writeStream.queryName(name)
        .foreachBatch(IngestWriter(spark, config, name, kinds=spec.kinds))
        .option("checkpointLocation", tables.checkpoint(name))
    )
    writer = writer.trigger(**trigger)  # type: ignore[call-overload]
    query: StreamingQuery = writer.start()
    return query


# --- landing files -------------------------------------------------------------------------------


def _landing_problem() -> Column:
    """Why a landing line is not a record (NULL when it is one)."""
    missing = F.concat_ws(
        ", ",
        *(F.when(F.col(c).isNull(), F.lit(c)) for c in ("topic", "partition", "offset", "timestamp")),
    )
    bad_time = F.col("timestamp").isNotNull() & epoch_seconds_to_timestamp(F.col("timestamp")).isNull()
    return (
        F.when(F.col(CORRUPT_LINE).isNotNull(), F.lit("not a JSON object with the landing record's fields and types"))
        .when(missing != "", F.concat(F.lit("missing "), missing))
        .when(bad_time, F.lit("timestamp is not epoch seconds"))
    )


class LandingLines:
    """``prepare`` of the landing ingest: lines that are not records go to the quarantine (with
    their raw text and why), the others become bronze-shaped rows."""

    def __init__(self, spark: SparkSession, config: Config) -> None:
        self.tables = Tables(config)
        self.quarantine = self.tables.ensure(spark, "quarantine")

    def __call__(self, batch: DataFrame) -> DataFrame:
        spark = batch.sparkSession
        checked = batch.withColumn("_problem", _landing_problem())
        bad = checked.where(F.col("_problem").isNotNull()).select(
            "key",
            F.col(RAW_LINE).alias("value"),
            "topic",
            "partition",
            "offset",
            epoch_seconds_to_timestamp(F.col("timestamp")).alias("timestamp"),
            F.lit(MALFORMED_JSON).alias("reason"),
            F.concat(
                F.lit("landing line: "), F.col("_problem"), F.lit(" (file "), F.col(SOURCE_FILE), F.lit(")")
            ).alias("detail"),
            F.current_timestamp().alias("quarantined_at"),
        )
        bad = bad.select(*(F.col(f.name).cast(f.dataType) for f in QUARANTINE.fields))
        if not bad.isEmpty():  # the usual case: no MERGE (and no empty quarantine commit) per batch
            # Such a line may have no coordinates at all: its raw text tells it apart.
            keys = ("topic", "partition", "offset", "value")
            insert_if_absent(spark, self.tables, self.quarantine, bad, keys=keys)
        return checked.where(F.col("_problem").isNull()).transform(landing_to_bronze, load_time=F.current_timestamp())


def start_landing_bronze(spark: SparkSession, config: Config, *, trigger: Trigger) -> StreamingQuery:
    """Landing files -> ``kafka_multiplex_bz`` (same table, its own checkpoint)."""
    tables = Tables(config)
    ref = tables.ensure(spark, "kafka_multiplex_bz")
    location = tables.checkpoint(LANDING_BRONZE_QUERY)
    info = read_checkpoint(spark, location)
    # A checkpoint Python cannot list counts as fresh only when it does not exist at all.
    fresh = info.last_commit is None if is_local(location) else not info.exists
    resume = fresh and not tables.read(spark, ref).limit(1).isEmpty()
    if resume:
        log.info("landing bronze: new checkpoint over a non-empty bronze: skipping the records bronze holds")
    writer = (
        read_landing_stream(spark, config)
        .writeStream.queryName(LANDING_BRONZE_QUERY)
        .foreachBatch(
            IngestWriter(spark, config, LANDING_BRONZE_QUERY, prepare=LandingLines(spark, config), resume=resume)
        )
        .option("checkpointLocation", location)
    )
    writer = writer.trigger(**trigger)  # type: ignore[call-overload]
    query: StreamingQuery = writer.start()
    return query


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


#: Spark's error when an executor that held a local checkpoint's blocks was lost.
_LOST_CHECKPOINT = "CHECKPOINT_RDD_BLOCK_ID_NOT_FOUND"
_POLL_ATTEMPTS = 3


def _ingest_one(spark: SparkSession, config: Config, logical: str) -> int:
    """Append the new row versions of one SQL table; polled again when an executor holding the
    poll's rows is lost before the append commits (on a cluster). Nothing was appended then (a
    Delta append commits whole or not at all), and the new poll compares with bronze again."""
    for attempt in range(1, _POLL_ATTEMPTS + 1):
        try:
            return _poll_once(spark, config, logical)
        except Exception as exc:  # py4j wraps Spark's errors: match on the message
            if attempt == _POLL_ATTEMPTS or _LOST_CHECKPOINT not in str(exc):
                raise
            log.warning(
                "bronze_sql %s: an executor holding the polled rows was lost; polling again (attempt %d/%d)",
                logical,
                attempt + 1,
                _POLL_ATTEMPTS,
            )
    raise PipelineError("bronze_sql: unreachable")  # pragma: no cover


def _poll_once(spark: SparkSession, config: Config, logical: str) -> int:
    tables = Tables(config)
    ref = tables.ensure(spark, f"{logical}_bz")
    shape = registered_users_to_bronze if logical == "registered_users" else gym_logins_to_bronze
    observed = read_sql_table(spark, config.sql, logical, auth=auth_for(config).jdbc_options()).transform(
        shape, load_time=F.lit(None)
    )
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
