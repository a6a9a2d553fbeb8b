"""Table schemas: one StructType constant per table of the data contract (CONTRACT.md §2).

Column order is free in the contract; names and types are not. Identity columns keep the types
of the input: user_id, device_id and gym are BIGINT, workout_id and session_id INT.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyspark.sql.types import (
    ArrayType,
    BooleanType,
    DataType,
    DateType,
    DoubleType,
    IntegerType,
    LongType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

__all__ = [
    "COMPLETED_WORKOUTS",
    "DATE_LOOKUP",
    "GYM_LOGINS_BZ",
    "GYM_LOGS",
    "GYM_OCCUPANCY",
    "GYM_SUMMARY",
    "HEART_RATE",
    "KAFKA_MULTIPLEX_BZ",
    "LANDING_RECORD",
    "PROFILE_COLUMNS",
    "QUARANTINE",
    "REGISTERED_USERS_BZ",
    "TABLES",
    "USERS",
    "USER_BINS",
    "USER_PROFILE",
    "USER_PROFILE_HISTORY",
    "WORKOUTS",
    "WORKOUT_BPM",
    "WORKOUT_BPM_SUMMARY",
    "TableSpec",
]


def _struct(*fields: tuple[str, DataType]) -> StructType:
    return StructType([StructField(name, dtype, nullable=True) for name, dtype in fields])


# --- inputs ------------------------------------------------------------------------------------

#: A landing-file line (CONTRACT.md §1.3). ``timestamp`` is epoch seconds, read as a decimal so
#: that fractions survive exactly (never through a float).
LANDING_RECORD = StructType(
    [
        StructField("key", StringType()),
        StructField("value", StringType()),
        StructField("topic", StringType()),
        StructField("partition", IntegerType()),
        StructField("offset", LongType()),
        StructField("timestamp", StringType()),
    ]
)

# --- bronze ------------------------------------------------------------------------------------

KAFKA_MULTIPLEX_BZ = _struct(
    ("key", StringType()),
    ("value", StringType()),
    ("topic", StringType()),
    ("partition", IntegerType()),
    ("offset", LongType()),
    ("timestamp", TimestampType()),
    ("date", DateType()),
    ("week_part", StringType()),
    ("load_time", TimestampType()),
)

REGISTERED_USERS_BZ = _struct(
    ("user_id", LongType()),
    ("device_id", LongType()),
    ("mac_address", StringType()),
    ("registration_timestamp", TimestampType()),
    ("load_time", TimestampType()),
)

GYM_LOGINS_BZ = _struct(
    ("mac_address", StringType()),
    ("gym", LongType()),
    ("login", TimestampType()),
    ("logout", TimestampType()),
    ("load_time", TimestampType()),
)

# --- silver ------------------------------------------------------------------------------------

USERS = _struct(
    ("user_id", LongType()),
    ("device_id", LongType()),
    ("mac_address", StringType()),
    ("registration_timestamp", TimestampType()),
)

GYM_LOGS = _struct(
    ("mac_address", StringType()),
    ("gym", LongType()),
    ("login", TimestampType()),
    ("logout", TimestampType()),
)

_PROFILE_FIELDS: tuple[tuple[str, DataType], ...] = (
    ("dob", DateType()),
    ("sex", StringType()),
    ("gender", StringType()),
    ("first_name", StringType()),
    ("last_name", StringType()),
    ("street_address", StringType()),
    ("city", StringType()),
    ("state", StringType()),
    ("zip", StringType()),
)

#: The profile columns shared by ``user_profile`` and ``user_profile_history``.
PROFILE_COLUMNS: tuple[str, ...] = tuple(name for name, _ in _PROFILE_FIELDS)

USER_PROFILE = _struct(("user_id", LongType()), *_PROFILE_FIELDS, ("updated", TimestampType()))

USER_PROFILE_HISTORY = _struct(
    ("user_id", LongType()),
    *_PROFILE_FIELDS,
    ("valid_from", TimestampType()),
    ("valid_to", TimestampType()),
)

HEART_RATE = _struct(
    ("device_id", LongType()),
    ("time", TimestampType()),
    ("heartrate", DoubleType()),
    ("valid", BooleanType()),
)

WORKOUTS = _struct(
    ("user_id", LongType()),
    ("workout_id", IntegerType()),
    ("session_id", IntegerType()),
    ("action", StringType()),
    ("time", TimestampType()),
)

COMPLETED_WORKOUTS = _struct(
    ("user_id", LongType()),
    ("workout_id", IntegerType()),
    ("session_id", IntegerType()),
    ("start_time", TimestampType()),
    ("end_time", TimestampType()),
)

WORKOUT_BPM = _struct(
    ("user_id", LongType()),
    ("workout_id", IntegerType()),
    ("session_id", IntegerType()),
    ("time", TimestampType()),
    ("start_time", TimestampType()),
    ("end_time", TimestampType()),
    ("heartrate", DoubleType()),
)

USER_BINS = _struct(
    ("user_id", LongType()),
    ("age", StringType()),
    ("gender", StringType()),
    ("city", StringType()),
    ("state", StringType()),
)

DATE_LOOKUP = _struct(
    ("date", DateType()),
    ("week", IntegerType()),
    ("year", IntegerType()),
    ("month", IntegerType()),
    ("dayofweek", IntegerType()),
    ("dayofmonth", IntegerType()),
    ("dayofyear", IntegerType()),
    ("week_part", StringType()),
)

QUARANTINE = _struct(
    ("key", StringType()),
    ("value", StringType()),
    ("topic", StringType()),
    ("partition", IntegerType()),
    ("offset", LongType()),
    ("timestamp", TimestampType()),
    ("reason", StringType()),
    ("detail", StringType()),
    ("quarantined_at", TimestampType()),
)

# --- gold --------------------------------------------------------------------------------------

WORKOUT_BPM_SUMMARY = _struct(
    ("user_id", LongType()),
    ("workout_id", IntegerType()),
    ("session_id", IntegerType()),
    ("date", DateType()),
    ("age", StringType()),
    ("sex", StringType()),
    ("gender", StringType()),
    ("city", StringType()),
    ("state", StringType()),
    ("min_bpm", DoubleType()),
    ("avg_bpm", DoubleType()),
    ("max_bpm", DoubleType()),
    ("num_recordings", LongType()),
)

GYM_SUMMARY = _struct(
    ("gym", LongType()),
    ("mac_address", StringType()),
    ("login", TimestampType()),
    ("date", DateType()),
    ("logout", TimestampType()),
    ("workouts", ArrayType(IntegerType())),
    ("num_sessions", IntegerType()),
    ("minutes_in_gym", DoubleType()),
    ("minutes_exercising", DoubleType()),
)

GYM_OCCUPANCY = _struct(
    ("gym", LongType()),
    ("hour", TimestampType()),
    ("visitors", LongType()),
    ("avg_occupancy", DoubleType()),
    ("peak_occupancy", LongType()),
)


@dataclass(frozen=True)
class TableSpec:
    """A contract table: its layer, name, schema, key and partitioning."""

    layer: str
    name: str
    schema: StructType
    key: tuple[str, ...]
    partition_by: tuple[str, ...] = ()


#: Every contract table by name.
TABLES: dict[str, TableSpec] = {
    spec.name: spec
    for spec in (
        TableSpec(
            "bronze",
            "kafka_multiplex_bz",
            KAFKA_MULTIPLEX_BZ,
            ("topic", "partition", "offset"),
            ("topic", "week_part"),
        ),
        TableSpec("bronze", "registered_users_bz", REGISTERED_USERS_BZ, ()),
        TableSpec("bronze", "gym_logins_bz", GYM_LOGINS_BZ, ()),
        TableSpec("silver", "users", USERS, ("user_id",)),
        TableSpec("silver", "gym_logs", GYM_LOGS, ("mac_address", "gym", "login")),
        TableSpec("silver", "user_profile", USER_PROFILE, ("user_id",)),
        TableSpec("silver", "user_profile_history", USER_PROFILE_HISTORY, ("user_id", "valid_from")),
        TableSpec("silver", "heart_rate", HEART_RATE, ("device_id", "time")),
        TableSpec("silver", "workouts", WORKOUTS, ("user_id", "workout_id", "session_id", "action")),
        TableSpec("silver", "completed_workouts", COMPLETED_WORKOUTS, ("user_id", "workout_id", "session_id")),
        TableSpec("silver", "workout_bpm", WORKOUT_BPM, ("user_id", "workout_id", "session_id", "time")),
        TableSpec("silver", "user_bins", USER_BINS, ("user_id",)),
        TableSpec("silver", "date_lookup", DATE_LOOKUP, ("date",)),
        TableSpec("silver", "quarantine", QUARANTINE, ("topic", "partition", "offset")),
        TableSpec(
            "gold",
            "workout_bpm_summary",
            WORKOUT_BPM_SUMMARY,
            ("user_id", "workout_id", "session_id"),
        ),
        TableSpec("gold", "gym_summary", GYM_SUMMARY, ("gym", "mac_address", "login")),
        TableSpec("gold", "gym_occupancy", GYM_OCCUPANCY, ("gym", "hour")),
    )
}
