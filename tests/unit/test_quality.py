"""Future/late rules, quarantine rows and first-ingested dedup (CONTRACT.md §3.6), literal rows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from chispa import assert_df_equality
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from fitbit_stream.errors import InvalidConfigError
from fitbit_stream.schemas import QUARANTINE
from fitbit_stream.transforms.quality import (
    batch_max_event_time,
    first_ingested,
    late_threshold,
    to_quarantine,
    with_future_flag,
    with_late_flag,
)

KAFKA = datetime(2023, 11, 14, 22, 0, tzinfo=UTC)
LOAD = datetime(2023, 11, 14, 22, 5, tzinfo=UTC)

ROWS = "offset long, timestamp timestamp, event_time timestamp, reason string, detail string"


def rows(spark: SparkSession, data: list[tuple[Any, ...]]) -> DataFrame:
    return spark.createDataFrame(data, ROWS)


def test_future_flag_only_past_the_skew_and_only_on_accepted_rows(spark: SparkSession) -> None:
    at_limit = KAFKA + timedelta(minutes=10)
    beyond = at_limit + timedelta(microseconds=1)
    df = rows(
        spark,
        [
            (1, KAFKA, KAFKA - timedelta(days=3), None, None),
            (2, KAFKA, at_limit, None, None),
            (3, KAFKA, beyond, None, None),
            (4, KAFKA, beyond, "schema_violation", "heartrate: expected number or null, got string"),
            (5, KAFKA, None, None, None),  # no event time: not this rule's business
            (6, None, beyond, None, None),
        ],
    )
    expected = rows(
        spark,
        [
            (1, KAFKA, KAFKA - timedelta(days=3), None, None),
            (2, KAFKA, at_limit, None, None),
            (
                3,
                KAFKA,
                beyond,
                "future",
                "event_time: 2023-11-14 22:10:00.000001 is more than 600 s ahead of the record "
                "timestamp 2023-11-14 22:00:00",
            ),
            (4, KAFKA, beyond, "schema_violation", "heartrate: expected number or null, got string"),
            (5, KAFKA, None, None, None),
            (6, None, beyond, None, None),
        ],
    )
    actual = with_future_flag(df, skew=timedelta(minutes=10))
    assert_df_equality(actual, expected, ignore_row_order=True, ignore_nullable=True)


def test_negative_skew_is_refused(spark: SparkSession) -> None:
    with pytest.raises(InvalidConfigError, match="clock skew"):
        with_future_flag(rows(spark, []), skew=timedelta(seconds=-1))


def test_late_flag_below_the_threshold_only(spark: SparkSession) -> None:
    threshold = datetime(2023, 11, 14, 21, 0)  # naive: read as UTC
    df = rows(
        spark,
        [
            (1, KAFKA, datetime(2023, 11, 14, 20, 59, 59, tzinfo=UTC), None, None),
            (2, KAFKA, datetime(2023, 11, 14, 21, 0, tzinfo=UTC), None, None),
            (3, KAFKA, datetime(2023, 11, 14, 20, 0, tzinfo=UTC), "future", "already rejected"),
            (4, KAFKA, None, None, None),
        ],
    )
    expected = rows(
        spark,
        [
            (
                1,
                KAFKA,
                datetime(2023, 11, 14, 20, 59, 59, tzinfo=UTC),
                "late",
                "event_time: 2023-11-14 20:59:59 is older than the lateness threshold 2023-11-14 21:00:00",
            ),
            (2, KAFKA, datetime(2023, 11, 14, 21, 0, tzinfo=UTC), None, None),
            (3, KAFKA, datetime(2023, 11, 14, 20, 0, tzinfo=UTC), "future", "already rejected"),
            (4, KAFKA, None, None, None),
        ],
    )
    for thr in (threshold, F.lit(threshold.replace(tzinfo=UTC))):
        actual = with_late_flag(df, threshold=thr)
        assert_df_equality(actual, expected, ignore_row_order=True, ignore_nullable=True)
    assert_df_equality(with_late_flag(df, threshold=None), df, ignore_row_order=True)


def test_late_threshold_from_previous_max() -> None:
    previous = datetime(2023, 11, 14, 22, 0, tzinfo=UTC)
    assert late_threshold(previous, horizon=timedelta(hours=1)) == datetime(2023, 11, 14, 21, 0, tzinfo=UTC)
    assert late_threshold(datetime(2023, 11, 14, 22, 0), horizon=timedelta(0)) == previous
    assert late_threshold(None, horizon=timedelta(hours=1)) is None
    with pytest.raises(InvalidConfigError, match="horizon"):
        late_threshold(previous, horizon=timedelta(hours=-1))


def test_batch_max_ignores_rejected_rows(spark: SparkSession) -> None:
    far_future = datetime(2030, 1, 1, tzinfo=UTC)
    df = rows(
        spark,
        [
            (1, KAFKA, datetime(2023, 11, 14, 21, 0, tzinfo=UTC), None, None),
            (2, KAFKA, datetime(2023, 11, 14, 21, 30, tzinfo=UTC), None, None),
            (3, KAFKA, datetime(2023, 11, 14, 21, 30, tzinfo=UTC), None, None),  # duplicate
            (4, KAFKA, None, "malformed_json", "value: NULL"),
            (5, KAFKA, far_future, "future", "a device clock in 2030"),
        ],
    )
    expected = spark.createDataFrame([(datetime(2023, 11, 14, 21, 30, tzinfo=UTC),)], "max_event_time timestamp")
    assert_df_equality(batch_max_event_time(df), expected, ignore_nullable=True)
    none = spark.createDataFrame([(None,)], "max_event_time timestamp")
    assert_df_equality(batch_max_event_time(df.where("reason IS NOT NULL")), none, ignore_nullable=True)


BRONZE = (
    "key string, value string, topic string, partition int, offset long, timestamp timestamp, "
    "load_time timestamp, event_time timestamp, reason string, detail string"
)


def test_to_quarantine_shapes_and_dedups_by_coordinates(spark: SparkSession) -> None:
    later = LOAD + timedelta(minutes=1)
    df = spark.createDataFrame(
        [
            ("k1", '{"x"', "bpm", 0, 10, KAFKA, LOAD, None, "malformed_json", "value: not valid JSON"),
            # The same record read into bronze twice: one quarantine row, the first loaded.
            ("k1", '{"x"', "bpm", 0, 10, KAFKA, later, None, "malformed_json", "value: not valid JSON (2)"),
            ("k2", "{}", "bpm", 1, 10, KAFKA, LOAD, None, "schema_violation", "device_id: missing"),
            ("k3", "{}", "workout", 0, 10, KAFKA, LOAD, None, "late", "too old"),
            ("k4", None, "bpm", 0, 11, KAFKA, LOAD, None, "malformed_json", "value: NULL"),
            ("k5", "{}", "bpm", 0, 12, KAFKA, LOAD, KAFKA, None, None),  # accepted: not quarantined
        ],
        BRONZE,
    )
    at = datetime(2023, 11, 14, 22, 6, tzinfo=UTC)
    expected = spark.createDataFrame(
        [
            ("k1", '{"x"', "bpm", 0, 10, KAFKA, "malformed_json", "value: not valid JSON", at),
            ("k2", "{}", "bpm", 1, 10, KAFKA, "schema_violation", "device_id: missing", at),
            ("k3", "{}", "workout", 0, 10, KAFKA, "late", "too old", at),
            ("k4", None, "bpm", 0, 11, KAFKA, "malformed_json", "value: NULL", at),
        ],
        QUARANTINE,
    )
    actual = to_quarantine(df, quarantined_at=at)
    assert actual.schema.fieldNames() == QUARANTINE.fieldNames()
    assert_df_equality(actual, expected, ignore_row_order=True, ignore_nullable=True)


def test_first_ingested_uses_load_time_then_partition_then_offset(spark: SparkSession) -> None:
    schema = "id long, payload string, partition int, offset long, load_time timestamp"
    early, late = LOAD, LOAD + timedelta(seconds=1)
    df = spark.createDataFrame(
        [
            (1, "second batch", 0, 1, late),
            (1, "first batch", 0, 9, early),
            (2, "partition 1", 1, 0, early),
            (2, "partition 0, offset 5", 0, 5, early),
            (2, "partition 0, offset 3", 0, 3, early),
            (3, "tie a", 0, 7, early),
            (3, "tie a", 0, 7, early),  # an exact duplicate still leaves one row
            (None, "null key", 0, 8, early),
        ],
        schema,
    )
    expected = spark.createDataFrame(
        [
            (1, "first batch", 0, 9, early),
            (2, "partition 0, offset 3", 0, 3, early),
            (3, "tie a", 0, 7, early),
            (None, "null key", 0, 8, early),
        ],
        schema,
    )
    for keys in (["id"], "id"):
        actual = first_ingested(df, keys=keys)
        assert_df_equality(actual, expected, ignore_row_order=True, ignore_nullable=True)
    with pytest.raises(InvalidConfigError, match="keys"):
        first_ingested(df, keys=[])
