"""Bronze shaping: raw source records to the columns of CONTRACT.md §2.1, nothing dropped.

Bronze keeps every record exactly as it came: the key and value as strings (the value is never
parsed here, so a malformed record still lands and is quarantined by silver with its coordinates),
the Kafka coordinates, and the Kafka record timestamp from which ``date`` and ``week_part`` derive.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from fitbit_stream.transforms.dates import epoch_seconds_to_timestamp, week_part

__all__ = [
    "BRONZE_COLUMNS",
    "gym_logins_to_bronze",
    "kafka_to_bronze",
    "landing_to_bronze",
    "registered_users_to_bronze",
    "sql_timestamp",
]

BRONZE_COLUMNS = (
    "key",
    "value",
    "topic",
    "partition",
    "offset",
    "timestamp",
    "date",
    "week_part",
    "load_time",
)


def _with_calendar(df: DataFrame, *, load_time: Column) -> DataFrame:
    return (
        df.withColumn("date", F.to_date("timestamp"))
        .withColumn("week_part", week_part("date"))
        .withColumn("load_time", load_time)
        .select(*BRONZE_COLUMNS)
    )


def _record(df: DataFrame, *, timestamp: Column, load_time: Column) -> DataFrame:
    return _with_calendar(
        df.select(
            F.col("key").cast("string").alias("key"),
            F.col("value").cast("string").alias("value"),
            F.col("topic").cast("string").alias("topic"),
            F.col("partition").cast("int").alias("partition"),
            F.col("offset").cast("long").alias("offset"),
            timestamp.alias("timestamp"),
        ),
        load_time=load_time,
    )


def kafka_to_bronze(df: DataFrame, *, load_time: Column) -> DataFrame:
    """Spark's Kafka source rows (binary key/value) to ``kafka_multiplex_bz`` rows."""
    return _record(df, timestamp=F.col("timestamp").cast("timestamp"), load_time=load_time)


def landing_to_bronze(df: DataFrame, *, load_time: Column) -> DataFrame:
    """Landing-file lines (CONTRACT.md §1.3; ``timestamp`` in epoch seconds, kept exact)."""
    return _record(df, timestamp=epoch_seconds_to_timestamp(F.col("timestamp")), load_time=load_time)


def sql_timestamp(text: str | Column) -> Column:
    """A SQL timestamp column read as text: numeric epoch seconds or a UTC timestamp literal.

    The source may hold either (CONTRACT.md §1.2); numbers go through the exact epoch conversion,
    everything else through Spark's timestamp parsing in the (UTC) session time zone.
    """
    c = F.col(text) if isinstance(text, str) else text
    trimmed = F.trim(c)
    numeric = trimmed.rlike(r"^[+-]?(\d+(\.\d*)?|\.\d+)$")
    return F.when(numeric, epoch_seconds_to_timestamp(trimmed)).otherwise(
        F.to_timestamp(F.regexp_replace(trimmed, r"(\+00(:?00)?|Z)$", ""))
    )


def registered_users_to_bronze(df: DataFrame, *, load_time: Column) -> DataFrame:
    """Source ``registered_users`` rows (timestamps as text) to ``registered_users_bz`` rows."""
    return df.select(
        F.col("user_id").cast("long").alias("user_id"),
        F.col("device_id").cast("long").alias("device_id"),
        F.col("mac_address").cast("string").alias("mac_address"),
        sql_timestamp("registration_timestamp").alias("registration_timestamp"),
        load_time.alias("load_time"),
    )


def gym_logins_to_bronze(df: DataFrame, *, load_time: Column) -> DataFrame:
    """Source ``gym_logins`` rows (timestamps as text) to ``gym_logins_bz`` rows."""
    return df.select(
        F.col("mac_address").cast("string").alias("mac_address"),
        F.col("gym").cast("long").alias("gym"),
        sql_timestamp("login").alias("login"),
        sql_timestamp("logout").alias("logout"),
        load_time.alias("load_time"),
    )
