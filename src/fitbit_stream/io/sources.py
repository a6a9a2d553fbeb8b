"""Source readers: Kafka (stream), landing files (stream) and the SQL database (JDBC batch)."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Literal

from pyspark.sql import functions as F
from pyspark.sql.types import StringType, StructField, StructType

from fitbit_stream.azure import auth_for
from fitbit_stream.config import Config, KafkaConfig, SqlConfig
from fitbit_stream.errors import InvalidConfigError, SourceError
from fitbit_stream.io.preflight import JDBC_DRIVERS, librdkafka_conf
from fitbit_stream.schemas import LANDING_RECORD

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

__all__ = [
    "CORRUPT_LINE",
    "JDBC_DRIVERS",
    "RAW_LINE",
    "SOURCE_FILE",
    "kafka_options",
    "kafka_partition_offsets",
    "read_kafka_stream",
    "read_landing_stream",
    "read_sql_table",
    "sql_source_query",
]

#: Columns of the SQL source tables (CONTRACT.md §1.2) and which of them are timestamps.
SQL_TABLE_COLUMNS: dict[str, tuple[tuple[str, bool], ...]] = {
    "registered_users": (
        ("user_id", False),
        ("device_id", False),
        ("mac_address", False),
        ("registration_timestamp", True),
    ),
    "gym_logins": (("mac_address", False), ("gym", False), ("login", True), ("logout", True)),
}


def kafka_options(
    kafka: KafkaConfig,
    *,
    auth: Mapping[str, str] | None = None,
    starting_offsets: str | None = None,
    fail_on_data_loss: bool | None = None,
    topics: Sequence[str] | None = None,
) -> dict[str, str]:
    """Consumer options for Spark's Kafka source; secret values come from the environment.

    ``topics`` (default: every configured topic) are the topics subscribed to.

    ``auth`` holds the sign-in options (:meth:`fitbit_stream.azure.AzureAuth.kafka_auth_options`:
    Event Hubs' SASL_SSL settings, empty for plain Kafka); they are added last.

    ``starting_offsets`` (Spark's JSON form) and ``fail_on_data_loss`` override the configured
    values; the bronze writer uses them to resume after what bronze holds and to continue past a
    gap the operator accepted.
    """
    fail = kafka.fail_on_data_loss if fail_on_data_loss is None else fail_on_data_loss
    options = {
        "kafka.bootstrap.servers": kafka.bootstrap_servers,
        "subscribe": ",".join(kafka.topics.names() if topics is None else topics),
        "startingOffsets": starting_offsets or kafka.starting_offsets,
        "failOnDataLoss": str(fail).lower(),
        "includeHeaders": "false",
    }
    if kafka.max_offsets_per_trigger is not None:
        options["maxOffsetsPerTrigger"] = str(kafka.max_offsets_per_trigger)
    for key, value in kafka.options.items():
        options[f"kafka.{key}"] = value
    for key, env in kafka.options_env.items():
        if env not in os.environ:
            raise InvalidConfigError(f"kafka.options_env.{key}: environment variable {env!r} is not set")
        options[f"kafka.{key}"] = os.environ[env]
    options.update(auth or {})
    return options


def read_kafka_stream(
    spark: SparkSession,
    config: Config,
    *,
    starting_offsets: str | None = None,
    fail_on_data_loss: bool | None = None,
    topics: Sequence[str] | None = None,
) -> DataFrame:
    options = kafka_options(
        config.kafka,
        auth=auth_for(config).kafka_auth_options(),
        starting_offsets=starting_offsets,
        fail_on_data_loss=fail_on_data_loss,
        topics=topics,
    )
    return spark.readStream.format("kafka").options(**options).load()


def kafka_partition_offsets(
    kafka: KafkaConfig,
    *,
    auth: Mapping[str, str] | None = None,
    spec: Literal["earliest", "latest"] = "earliest",
    timeout: float = 30.0,
) -> dict[tuple[str, int], int]:
    """The earliest (or latest) offset Kafka still holds for every partition of the configured topics.

    Asked through librdkafka (confluent-kafka, the ``platform`` extra) with the bootstrap servers and
    the ``kafka.options`` librdkafka shares with the Java consumer. Raises :class:`SourceError` when
    the client is missing or the broker does not answer. ``auth`` holds librdkafka's sign-in
    settings (:meth:`fitbit_stream.azure.AzureAuth.librdkafka_auth_settings`).
    """
    try:
        from confluent_kafka import TopicPartition

        # OffsetSpec's documented import path; the package re-exports it without listing it in __all__.
        from confluent_kafka.admin import AdminClient, OffsetSpec  # type: ignore[attr-defined]
    except ImportError:
        raise SourceError("Kafka offset lookups need confluent-kafka: pip install 'fitbit-stream[platform]'") from None
    conf = librdkafka_conf(kafka, auth)
    conf["logger"] = logging.getLogger(f"{__name__}.librdkafka")
    deadline = time.monotonic() + timeout
    try:
        admin = AdminClient(conf)
        metadata = admin.list_topics(timeout=timeout)
        partitions = []
        for topic in kafka.topics.names():
            found = metadata.topics.get(topic)
            if found is None or found.error is not None:
                raise SourceError(f"kafka topic {topic!r} does not exist on {kafka.bootstrap_servers}")
            partitions += [TopicPartition(topic, p) for p in sorted(found.partitions)]
        # OffsetSpec's factories carry no annotations.
        which = OffsetSpec.earliest() if spec == "earliest" else OffsetSpec.latest()  # type: ignore[no-untyped-call]
        futures = admin.list_offsets(
            {tp: which for tp in partitions}, request_timeout=max(1.0, deadline - time.monotonic())
        )
        return {(tp.topic, tp.partition): int(f.result().offset) for tp, f in futures.items()}
    except SourceError:
        raise
    except Exception as exc:  # librdkafka raises KafkaException with its own error object
        raise SourceError(
            f"cannot list the {spec} offsets of the kafka topics on {kafka.bootstrap_servers}: {exc}"
        ) from None


#: Landing-reader columns besides the record's: the raw line, the raw line again when it is not a
#: JSON object of the record's shape, and the file it came from (for the quarantine detail).
RAW_LINE = "_line"
CORRUPT_LINE = "_corrupt_line"
SOURCE_FILE = "_source_file"


def read_landing_stream(spark: SparkSession, config: Config) -> DataFrame:
    """JSON-lines landing files; ``timestamp`` stays text so epoch fractions convert exactly.

    The files are read as text and each line parsed here, so every line keeps its raw text: a line
    that is not a JSON record (the JSON reader's PERMISSIVE mode would turn it into an all-NULL row)
    can then be quarantined as it came instead of being lost. Blank lines are not records.
    """
    schema = StructType([*LANDING_RECORD.fields, StructField(CORRUPT_LINE, StringType())])
    reader = spark.readStream.format("text").option("recursiveFileLookup", "true")
    if config.landing.max_files_per_trigger is not None:
        reader = reader.option("maxFilesPerTrigger", str(config.landing.max_files_per_trigger))
    line = F.col("value")
    parsed = F.from_json(line, schema, {"mode": "PERMISSIVE", "columnNameOfCorruptRecord": CORRUPT_LINE})
    return (
        reader.load(config.landing.path)
        .where(F.trim(line) != "")
        .select(
            parsed.alias("r"),
            line.alias(RAW_LINE),
            F.col("_metadata.file_path").alias(SOURCE_FILE),
        )
        .select(
            *(F.col(f"r.{f.name}").alias(f.name) for f in LANDING_RECORD.fields),
            # from_json gives a NULL struct for a line that is not an object at all
            F.when(F.col("r").isNull() | F.col(f"r.{CORRUPT_LINE}").isNotNull(), F.col(RAW_LINE)).alias(CORRUPT_LINE),
            RAW_LINE,
            SOURCE_FILE,
        )
    )


def _as_text(column: str, dialect: str) -> str:
    """A timestamp-or-epoch column rendered as text by the source database itself.

    Reading the text (not the JDBC type) keeps both accepted encodings (CONTRACT.md §1.2) exact:
    SQLite would otherwise read integers as epoch *milliseconds* and round REALs to 15 digits.
    """
    if dialect == "sqlite":
        return (
            f"CASE WHEN typeof({column}) IN ('integer', 'real') THEN printf('%.6f', {column}) "
            f"ELSE CAST({column} AS TEXT) END AS {column}"
        )
    if dialect == "postgresql":
        return f"CAST({column} AS TEXT) AS {column}"
    # SQL Server: style 126 is ISO 8601 for datetime2 and leaves DECIMAL epoch seconds as digits.
    return f"CONVERT(VARCHAR(40), {column}, 126) AS {column}"


def sql_source_query(table: str, logical: str, dialect: str) -> str:
    columns = ", ".join(_as_text(name, dialect) if is_ts else name for name, is_ts in SQL_TABLE_COLUMNS[logical])
    return f"SELECT {columns} FROM {table}"


def read_sql_table(
    spark: SparkSession, sql: SqlConfig, logical: str, *, auth: Mapping[str, str] | None = None
) -> DataFrame:
    """Read one SQL source table whole (the tables are small; updates happen in place).

    ``auth`` holds the sign-in options (:meth:`fitbit_stream.azure.AzureAuth.jdbc_options`: user and
    password, or an Entra ``accessToken`` for Azure SQL); without it, ``sql``'s user and password.
    """
    table = {"registered_users": sql.registered_users_table, "gym_logins": sql.gym_logins_table}[logical]
    reader = (
        spark.read.format("jdbc")
        .option("url", sql.url)
        .option("driver", JDBC_DRIVERS[sql.dialect])
        .option("query", sql_source_query(table, logical, sql.dialect))
        # Read the rendered timestamps as strings whatever type the driver guesses for them.
        .option("customSchema", ", ".join(f"{name} STRING" for name, is_ts in SQL_TABLE_COLUMNS[logical] if is_ts))
    )
    if auth is not None:
        return reader.options(**auth).load()
    if sql.user:
        reader = reader.option("user", sql.user)
    password = sql.password()
    if password is not None:
        reader = reader.option("password", password.get_secret_value())
    return reader.load()
