"""heart_rate (CONTRACT.md §2.2): validity bounds, first ingested wins, rejected rows left out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from chispa import assert_df_equality
from pyspark.sql import SparkSession

from fitbit_stream.schemas import HEART_RATE
from fitbit_stream.transforms.bpm import to_heart_rate, with_valid_flag
from fitbit_stream.transforms.parse import parse_payload

T = datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)
LOAD = datetime(2023, 11, 14, 22, 15, tzinfo=UTC)


def test_valid_flag_bounds_inclusive_and_null_is_invalid(spark: SparkSession) -> None:
    df = spark.createDataFrame([(None,), (24.9,), (25.0,), (80.0,), (250.0,), (250.1,)], "heartrate double")
    expected = spark.createDataFrame(
        [(None, False), (24.9, False), (25.0, True), (80.0, True), (250.0, True), (250.1, False)],
        "heartrate double, valid boolean",
    )
    actual = with_valid_flag(df, low=25, high=250)
    assert_df_equality(actual, expected, ignore_row_order=True, ignore_nullable=True)


PARSED = (
    "device_id long, event_time timestamp, heartrate double, partition int, offset long, "
    "load_time timestamp, reason string"
)


def test_to_heart_rate_keeps_the_first_ingested_reading(spark: SparkSession) -> None:
    t2 = T + timedelta(seconds=1)
    df = spark.createDataFrame(
        [
            (1, T, 70.0, 0, 5, LOAD, None),
            # Same (device_id, time) again with another value: a later load loses, even at a
            # smaller offset.
            (1, T, 99.0, 0, 1, LOAD + timedelta(minutes=1), None),
            (1, t2, None, 0, 6, LOAD, None),
            (1, t2, 300.0, 0, 7, LOAD, None),  # same load: the smaller offset won
            (2, T, 20.0, 1, 1, LOAD, None),
            (3, T, None, 0, 8, LOAD, "future"),  # rejected rows never reach the table
        ],
        PARSED,
    )
    expected = spark.createDataFrame(
        [(1, T, 70.0, True), (1, t2, None, False), (2, T, 20.0, False)],
        HEART_RATE,
    )
    actual = to_heart_rate(df, low=25, high=250)
    assert actual.schema.fieldNames() == HEART_RATE.fieldNames()
    assert_df_equality(actual, expected, ignore_row_order=True, ignore_nullable=True)


def test_parse_then_heart_rate(spark: SparkSession) -> None:
    from fitbit_stream.schemas import KAFKA_MULTIPLEX_BZ

    values = [
        '{"device_id":1,"time":1700000000.123456,"heartrate":80}',
        '{"device_id":1,"time":1700000000.123456,"heartrate":81}',  # duplicate key, later offset
        '{"device_id":1,"time":1700000001,"heartrate":null}',
        '{"device_id":1,"time":"1700000002","heartrate":60}',  # schema violation
        None,
    ]
    bronze = spark.createDataFrame(
        [(None, v, "bpm", 0, i, T, T.date(), "2023-46", LOAD) for i, v in enumerate(values)],
        KAFKA_MULTIPLEX_BZ,
    )
    expected = spark.createDataFrame(
        [
            (1, datetime(2023, 11, 14, 22, 13, 20, 123456, tzinfo=UTC), 80.0, True),
            (1, datetime(2023, 11, 14, 22, 13, 21, tzinfo=UTC), None, False),
        ],
        HEART_RATE,
    )
    actual = to_heart_rate(parse_payload(bronze, kind="bpm"), low=25, high=250)
    assert_df_equality(actual, expected, ignore_row_order=True, ignore_nullable=True)
