"""Source readers: Kafka (stream), landing files (stream) and the SQL database (JDBC batch)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from fitbit_stream.config import Config, KafkaConfig, SqlConfig
from fitbit_stream.errors import InvalidConfigError
from fitbit_stream.schemas import LANDING_RECORD

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

__all__ = [
    "JDBC_DRIVERS",
    "kafka_options",
    "read_kafka_stream",
    "read_landing_stream",
    "read_sql_table",
    "sql_source_query",
]

JDBC_DRIVERS = {
    "sqlite": "org.sqlite.JDBC",
    "postgresql": "org.postgresql.Driver",
    "sqlserver": "com.microsoft.sqlserver.jdbc.SQLServerDriver",
}

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


def kafka_options(kafka: KafkaConfig) -> dict[str, str]:
    """Consumer options for Spark's Kafka source; secret values come from the environment."""
    options = {
        "kafka.bootstrap.servers": kafka.bootstrap_servers,
        "subscribe": ",".join(kafka.topics.names()),
        "startingOffsets": kafka.starting_offsets,
        "failOnDataLoss": str(kafka.fail_on_data_loss).lower(),
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
    return options


def read_kafka_stream(spark: SparkSession, config: Config) -> DataFrame:
    return spark.readStream.format("kafka").options(**kafka_options(config.kafka)).load()


def read_landing_stream(spark: SparkSession, config: Config) -> DataFrame:
    """JSON-lines landing files; ``timestamp`` stays text so epoch fractions convert exactly."""
    reader = (
        spark.readStream.format("json")
        .schema(LANDING_RECORD)
        .option("mode", "PERMISSIVE")
        .option("recursiveFileLookup", "true")
    )
    if config.landing.max_files_per_trigger is not None:
        reader = reader.option("maxFilesPerTrigger", str(config.landing.max_files_per_trigger))
    return reader.load(config.landing.path)


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


def read_sql_table(spark: SparkSession, sql: SqlConfig, logical: str) -> DataFrame:
    """Read one SQL source table whole (the tables are small; updates happen in place)."""
    table = {"registered_users": sql.registered_users_table, "gym_logins": sql.gym_logins_table}[logical]
    reader = (
        spark.read.format("jdbc")
        .option("url", sql.url)
        .option("driver", JDBC_DRIVERS[sql.dialect])
        .option("query", sql_source_query(table, logical, sql.dialect))
        # Read the rendered timestamps as strings whatever type the driver guesses for them.
        .option("customSchema", ", ".join(f"{name} STRING" for name, is_ts in SQL_TABLE_COLUMNS[logical] if is_ts))
    )
    if sql.user:
        reader = reader.option("user", sql.user)
    password = sql.password()
    if password is not None:
        reader = reader.option("password", password.get_secret_value())
    return reader.load()
