"""Bronze shaping (CONTRACT.md §2.1, §3.5) and the SQL row-version ingest, with literal rows."""

from __future__ import annotations

import sqlite3
from datetime import date, datetime
from pathlib import Path

import pytest
from chispa import assert_df_equality
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import (
    BinaryType,
    IntegerType,
    LongType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

from fitbit_stream.config import Config, load_config
from fitbit_stream.io.bronze import ingest_sql_sources, new_versions
from fitbit_stream.io.tables import Tables
from fitbit_stream.schemas import GYM_LOGINS_BZ, KAFKA_MULTIPLEX_BZ
from fitbit_stream.transforms.bronze import kafka_to_bronze, landing_to_bronze, sql_timestamp

LOAD = datetime(2026, 1, 2, 3, 4, 5)

KAFKA_SOURCE = StructType(
    [
        StructField("key", BinaryType()),
        StructField("value", BinaryType()),
        StructField("topic", StringType()),
        StructField("partition", IntegerType()),
        StructField("offset", LongType()),
        StructField("timestamp", TimestampType()),
        StructField("timestampType", IntegerType()),
    ]
)


def test_kafka_to_bronze_keeps_every_record_and_derives_us_week(spark: SparkSession) -> None:
    source = spark.createDataFrame(
        [
            (
                b"7",
                b'{"device_id": 7, "time": 1672531200, "heartrate": 61}',
                "bpm",
                0,
                0,
                datetime(2023, 1, 1, 0, 0, 1),
                0,
            ),
            # a duplicate message at another offset is still a separate bronze record
            (
                b"7",
                b'{"device_id": 7, "time": 1672531200, "heartrate": 61}',
                "bpm",
                0,
                1,
                datetime(2023, 12, 31, 23, 59),
                0,
            ),
            # malformed payload and a NULL key land untouched: silver quarantines them
            (None, b"not json", "workout", 2, 41, datetime(2022, 1, 1, 12, 0), 0),
            (b"9", None, "user_info", 1, 5, datetime(2022, 1, 2, 0, 0), 0),
        ],
        KAFKA_SOURCE,
    )
    actual = source.transform(kafka_to_bronze, load_time=F.lit(LOAD))
    expected = spark.createDataFrame(
        [
            (
                "7",
                '{"device_id": 7, "time": 1672531200, "heartrate": 61}',
                "bpm",
                0,
                0,
                datetime(2023, 1, 1, 0, 0, 1),
                date(2023, 1, 1),
                "2023-1",
                LOAD,
            ),
            (
                "7",
                '{"device_id": 7, "time": 1672531200, "heartrate": 61}',
                "bpm",
                0,
                1,
                datetime(2023, 12, 31, 23, 59),
                date(2023, 12, 31),
                "2023-53",
                LOAD,
            ),
            (
                None,
                "not json",
                "workout",
                2,
                41,
                datetime(2022, 1, 1, 12, 0),
                date(2022, 1, 1),
                "2022-1",
                LOAD,
            ),
            ("9", None, "user_info", 1, 5, datetime(2022, 1, 2, 0, 0), date(2022, 1, 2), "2022-2", LOAD),
        ],
        KAFKA_MULTIPLEX_BZ,
    )
    assert_df_equality(actual, expected, ignore_row_order=True, ignore_nullable=True)


def test_landing_to_bronze_converts_epoch_seconds_exactly(spark: SparkSession) -> None:
    rows = [
        (
            '{"key": "1", "value": "{\\"user_id\\": 1}", "topic": "workout", "partition": 0, "offset": 3, '
            '"timestamp": 1700000000.123456}',
        ),
        # 1680000000.5 s is not representable in a FLOAT (2023 instants round to 128 s steps)
        ('{"key": "2", "value": "x", "topic": "bpm", "partition": 1, "offset": 4, "timestamp": 1680000000.5}',),
        ('{"key": null, "value": null, "topic": "bpm", "partition": 1, "offset": 5, "timestamp": 1680000000}',),
    ]
    from fitbit_stream.schemas import LANDING_RECORD

    lines = spark.createDataFrame(rows, ["line"]).select(F.from_json("line", LANDING_RECORD).alias("r")).select("r.*")
    actual = lines.transform(landing_to_bronze, load_time=F.lit(LOAD))
    expected = spark.createDataFrame(
        [
            (
                "1",
                '{"user_id": 1}',
                "workout",
                0,
                3,
                datetime(2023, 11, 14, 22, 13, 20, 123456),
                date(2023, 11, 14),
                "2023-46",
                LOAD,
            ),
            (
                "2",
                "x",
                "bpm",
                1,
                4,
                datetime(2023, 3, 28, 10, 40, 0, 500000),
                date(2023, 3, 28),
                "2023-13",
                LOAD,
            ),
            (None, None, "bpm", 1, 5, datetime(2023, 3, 28, 10, 40), date(2023, 3, 28), "2023-13", LOAD),
        ],
        KAFKA_MULTIPLEX_BZ,
    )
    assert_df_equality(actual, expected, ignore_row_order=True, ignore_nullable=True)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1700000000", datetime(2023, 11, 14, 22, 13, 20)),
        ("1700000000.123456", datetime(2023, 11, 14, 22, 13, 20, 123456)),
        ("1700000000.000000", datetime(2023, 11, 14, 22, 13, 20)),
        ("2023-11-14 22:13:20", datetime(2023, 11, 14, 22, 13, 20)),
        ("2023-11-14 22:13:20.123456", datetime(2023, 11, 14, 22, 13, 20, 123456)),
        ("2023-11-14T22:13:20", datetime(2023, 11, 14, 22, 13, 20)),
        ("2023-11-14 22:13:20+00", datetime(2023, 11, 14, 22, 13, 20)),
        (None, None),
    ],
)
def test_sql_timestamp_accepts_both_encodings(spark: SparkSession, text: str | None, expected: datetime | None) -> None:
    df = spark.createDataFrame([(text,)], "t string").select(sql_timestamp("t").alias("ts"))
    assert df.collect()[0]["ts"] == expected


def test_new_versions_compares_every_column_null_safely(spark: SparkSession) -> None:
    schema = "mac_address string, gym bigint, login timestamp, logout timestamp"
    login = datetime(2025, 3, 3, 10)
    bronze = spark.createDataFrame([("aa:bb:cc:dd:ee:01", 1, login, None)], schema)
    observed = spark.createDataFrame(
        [
            ("aa:bb:cc:dd:ee:01", 1, login, None),  # seen: open version
            ("aa:bb:cc:dd:ee:01", 1, login, datetime(2025, 3, 3, 11)),  # new: closed version
            ("aa:bb:cc:dd:ee:01", 1, login, datetime(2025, 3, 3, 11)),  # duplicate in one read
            ("aa:bb:cc:dd:ee:02", 1, login, None),  # new visit
        ],
        schema,
    )
    actual = new_versions(observed, bronze, ["mac_address", "gym", "login", "logout"])
    expected = spark.createDataFrame(
        [("aa:bb:cc:dd:ee:01", 1, login, datetime(2025, 3, 3, 11)), ("aa:bb:cc:dd:ee:02", 1, login, None)],
        schema,
    )
    assert_df_equality(actual, expected, ignore_row_order=True, ignore_nullable=True)


@pytest.fixture
def sqlite_config(tmp_path: Path, spark_config: Config) -> Config:
    db = tmp_path / "source.db"
    with sqlite3.connect(db) as conn:
        conn.execute(
            "CREATE TABLE registered_users (user_id BIGINT PRIMARY KEY, device_id BIGINT, "
            "mac_address VARCHAR(17), registration_timestamp TIMESTAMP)"
        )
        conn.execute(
            "CREATE TABLE gym_logins (mac_address VARCHAR(17), gym BIGINT, login TIMESTAMP, logout TIMESTAMP, "
            "PRIMARY KEY (mac_address, gym, login))"
        )
    return load_config(
        None,
        [
            f"storage.root={tmp_path / 'lake'}",
            f"storage.checkpoint_root={tmp_path / 'chk'}",
            f"sql.url=jdbc:sqlite:{db}",
            f"jars_dir={spark_config.jars_dir}",
        ],
    )


def _bronze(spark: SparkSession, config: Config, name: str) -> DataFrame:
    tables = Tables(config)
    return tables.read(spark, tables.ref(name)).drop("load_time")


def test_sql_ingest_lands_every_row_version_once(spark: SparkSession, sqlite_config: Config) -> None:
    db = sqlite_config.sql.url.removeprefix("jdbc:sqlite:")
    with sqlite3.connect(db) as conn:
        # both accepted encodings: a SQL timestamp literal and numeric epoch seconds
        conn.execute("INSERT INTO registered_users VALUES (1, 101, 'aa:bb:cc:dd:ee:01', '2025-03-01 08:00:00')")
        conn.execute("INSERT INTO registered_users VALUES (2, 102, 'aa:bb:cc:dd:ee:02', 1740816000.25)")
        conn.execute("INSERT INTO gym_logins VALUES ('aa:bb:cc:dd:ee:01', 1, '2025-03-03 10:00:00', NULL)")
    first = ingest_sql_sources(spark, sqlite_config)
    assert (first.registered_users_added, first.gym_logins_added) == (2, 1)

    # unchanged source: nothing added
    again = ingest_sql_sources(spark, sqlite_config)
    assert (again.registered_users_added, again.gym_logins_added) == (0, 0)

    # the member logs out (row updated in place) and a second visit opens
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE gym_logins SET logout = 1741000500 WHERE mac_address = 'aa:bb:cc:dd:ee:01'")
        conn.execute("INSERT INTO gym_logins VALUES ('aa:bb:cc:dd:ee:02', 2, 1741000000.5, NULL)")
    later = ingest_sql_sources(spark, sqlite_config)
    assert (later.registered_users_added, later.gym_logins_added) == (0, 2)

    expected_users = spark.createDataFrame(
        [
            (1, 101, "aa:bb:cc:dd:ee:01", datetime(2025, 3, 1, 8, 0)),
            (2, 102, "aa:bb:cc:dd:ee:02", datetime(2025, 3, 1, 8, 0, 0, 250000)),
        ],
        "user_id bigint, device_id bigint, mac_address string, registration_timestamp timestamp",
    )
    assert_df_equality(
        _bronze(spark, sqlite_config, "registered_users_bz"),
        expected_users,
        ignore_row_order=True,
        ignore_nullable=True,
    )
    expected_visits = spark.createDataFrame(
        [
            ("aa:bb:cc:dd:ee:01", 1, datetime(2025, 3, 3, 10), None),
            ("aa:bb:cc:dd:ee:01", 1, datetime(2025, 3, 3, 10), datetime(2025, 3, 3, 11, 15, 0)),
            ("aa:bb:cc:dd:ee:02", 2, datetime(2025, 3, 3, 11, 6, 40, 500000), None),
        ],
        "mac_address string, gym bigint, login timestamp, logout timestamp",
    )
    assert_df_equality(
        _bronze(spark, sqlite_config, "gym_logins_bz"),
        expected_visits,
        ignore_row_order=True,
        ignore_nullable=True,
    )
    tables = Tables(sqlite_config)
    schema = tables.read(spark, tables.ref("gym_logins_bz")).schema
    assert [(f.name, f.dataType) for f in schema] == [(f.name, f.dataType) for f in GYM_LOGINS_BZ]


def test_an_sql_poll_whose_executor_was_lost_polls_again(monkeypatch: pytest.MonkeyPatch) -> None:
    from fitbit_stream.io import bronze

    calls: list[str] = []

    def poll(spark: object, config: object, logical: str) -> int:
        calls.append(logical)
        if len(calls) == 1:
            raise RuntimeError("[CHECKPOINT_RDD_BLOCK_ID_NOT_FOUND] Checkpoint block rdd_567_1 not found!")
        return 3

    monkeypatch.setattr(bronze, "_poll_once", poll)
    assert bronze._ingest_one(None, None, "gym_logins") == 3  # type: ignore[arg-type]
    assert calls == ["gym_logins", "gym_logins"]

    def broken(spark: object, config: object, logical: str) -> int:
        calls.append(logical)
        raise RuntimeError("relation gym_logins does not exist")

    calls.clear()
    monkeypatch.setattr(bronze, "_poll_once", broken)
    with pytest.raises(RuntimeError, match="does not exist"):
        bronze._ingest_one(None, None, "gym_logins")  # type: ignore[arg-type]
    assert calls == ["gym_logins"]  # any other failure is raised at once
