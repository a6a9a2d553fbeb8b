"""Gold workout_bpm_summary (CONTRACT.md §2.3, §3.2, §3.3), with literal rows."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest
from chispa import assert_df_equality
from pyspark.sql import DataFrame, SparkSession

from fitbit_stream.schemas import COMPLETED_WORKOUTS, USER_PROFILE_HISTORY, WORKOUT_BPM, WORKOUT_BPM_SUMMARY
from fitbit_stream.transforms.gold_bpm import workout_bpm_summary


def ts(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def _version(user_id: int, dob: date | None, city: str, valid_from: str, valid_to: str | None) -> tuple[object, ...]:
    return (
        user_id,
        dob,
        "M",
        "F",
        "Sam",
        "Roe",
        "2 Elm St",
        city,
        "TX",
        "73301",
        ts(valid_from),
        None if valid_to is None else ts(valid_to),
    )


@pytest.fixture(scope="module")
def tables(spark: SparkSession) -> tuple[DataFrame, DataFrame, DataFrame]:
    completed = spark.createDataFrame(
        [
            # user 1: a session crossing midnight is dated by its start; 17 on that date
            (1, 1, 1, ts("2024-03-01 23:50:00"), ts("2024-03-02 00:10:00")),
            (1, 1, 1, ts("2024-03-01 23:50:00"), ts("2024-03-02 00:10:00")),  # duplicate row
            # user 1 moves (new version) exactly when this session starts; 18 on this date
            (1, 2, 2, ts("2024-03-02 09:00:00"), ts("2024-03-02 09:20:00")),
            (1, 1, 3, ts("2024-03-03 09:00:00"), ts("2024-03-03 09:30:00")),  # no reading
            (2, 1, 1, ts("2024-03-01 08:00:00"), ts("2024-03-01 08:30:00")),  # no profile version
            (3, 4, 1, ts("2024-03-01 08:00:00"), ts("2024-03-01 08:30:00")),  # only NULL heartrates
            (4, 5, 7, ts("2024-03-01 08:00:00"), ts("2024-03-01 08:30:00")),  # version with NULL dob
        ],
        COMPLETED_WORKOUTS,
    )
    readings = spark.createDataFrame(
        [
            (1, 1, 1, ts("2024-03-01 23:55:00"), ts("2024-03-01 23:50:00"), ts("2024-03-02 00:10:00"), 100.0),
            (1, 1, 1, ts("2024-03-02 00:00:00"), ts("2024-03-01 23:50:00"), ts("2024-03-02 00:10:00"), 120.0),
            # the same reading twice counts once
            (1, 1, 1, ts("2024-03-02 00:00:00"), ts("2024-03-01 23:50:00"), ts("2024-03-02 00:10:00"), 120.0),
            (1, 1, 1, ts("2024-03-02 00:10:00"), ts("2024-03-01 23:50:00"), ts("2024-03-02 00:10:00"), 110.0),
            (1, 2, 2, ts("2024-03-02 09:10:00"), ts("2024-03-02 09:00:00"), ts("2024-03-02 09:20:00"), 90.5),
            (2, 1, 1, ts("2024-03-01 08:10:00"), ts("2024-03-01 08:00:00"), ts("2024-03-01 08:30:00"), 80.0),
            (2, 1, 1, ts("2024-03-01 08:20:00"), ts("2024-03-01 08:00:00"), ts("2024-03-01 08:30:00"), 100.0),
            (3, 4, 1, ts("2024-03-01 08:20:00"), ts("2024-03-01 08:00:00"), ts("2024-03-01 08:30:00"), None),
            (4, 5, 7, ts("2024-03-01 08:20:00"), ts("2024-03-01 08:00:00"), ts("2024-03-01 08:30:00"), 61.0),
            # a reading of a session that is not completed produces nothing
            (9, 9, 9, ts("2024-03-01 08:20:00"), ts("2024-03-01 08:00:00"), ts("2024-03-01 08:30:00"), 70.0),
        ],
        WORKOUT_BPM,
    )
    history = spark.createDataFrame(
        [
            _version(1, date(2006, 3, 2), "Austin", "2024-01-01 00:00:00", "2024-03-02 09:00:00"),
            _version(1, date(2006, 3, 2), "Boston", "2024-03-02 09:00:00", None),
            _version(3, date(1980, 1, 1), "Waco", "2024-01-01 00:00:00", None),
            _version(4, None, "Tyler", "2024-01-01 00:00:00", None),
            # user 2's only version ended before the session
            _version(2, date(1980, 1, 1), "Dallas", "2024-01-01 00:00:00", "2024-02-01 00:00:00"),
        ],
        USER_PROFILE_HISTORY,
    )
    return completed, readings, history


EXPECTED = [
    (1, 1, 1, date(2024, 3, 1), "under 18", "M", "F", "Austin", "TX", 100.0, 110.0, 120.0, 3),
    (1, 2, 2, date(2024, 3, 2), "18-25", "M", "F", "Boston", "TX", 90.5, 90.5, 90.5, 1),
    (2, 1, 1, date(2024, 3, 1), None, None, None, None, None, 80.0, 90.0, 100.0, 2),
    (4, 5, 7, date(2024, 3, 1), "invalid age", "M", "F", "Tyler", "TX", 61.0, 61.0, 61.0, 1),
]


def test_workout_bpm_summary_whole_tables(spark: SparkSession, tables: tuple[DataFrame, DataFrame, DataFrame]) -> None:
    completed, readings, history = tables
    actual = workout_bpm_summary(completed, readings, history)
    expected = spark.createDataFrame(EXPECTED, WORKOUT_BPM_SUMMARY)
    assert_df_equality(actual, expected, ignore_row_order=True, ignore_nullable=True)


def test_workout_bpm_summary_only_affected_sessions(
    spark: SparkSession, tables: tuple[DataFrame, DataFrame, DataFrame]
) -> None:
    completed, readings, history = tables
    affected = completed.where("user_id = 1 AND session_id = 2")
    actual = workout_bpm_summary(affected, readings, history)
    expected = spark.createDataFrame([EXPECTED[1]], WORKOUT_BPM_SUMMARY)
    assert_df_equality(actual, expected, ignore_row_order=True, ignore_nullable=True)


def test_workout_bpm_summary_late_reading_and_profile_correction(
    spark: SparkSession, tables: tuple[DataFrame, DataFrame, DataFrame]
) -> None:
    completed, readings, history = tables
    late = spark.createDataFrame(
        [(1, 2, 2, ts("2024-03-02 09:15:00"), ts("2024-03-02 09:00:00"), ts("2024-03-02 09:20:00"), 101.5)],
        WORKOUT_BPM,
    )
    # a late change gives user 2 a version in effect at the session's start
    corrected = history.unionByName(
        spark.createDataFrame(
            [_version(2, date(1980, 1, 1), "Plano", "2024-02-15 00:00:00", None)], USER_PROFILE_HISTORY
        )
    )
    actual = workout_bpm_summary(
        completed.where("(user_id = 1 AND session_id = 2) OR user_id = 2"),
        readings.unionByName(late),
        corrected,
    )
    expected = spark.createDataFrame(
        [
            (1, 2, 2, date(2024, 3, 2), "18-25", "M", "F", "Boston", "TX", 90.5, 96.0, 101.5, 2),
            (2, 1, 1, date(2024, 3, 1), "35-45", "M", "F", "Plano", "TX", 80.0, 90.0, 100.0, 2),
        ],
        WORKOUT_BPM_SUMMARY,
    )
    assert_df_equality(actual, expected, ignore_row_order=True, ignore_nullable=True)


def test_avg_bpm_is_the_exact_mean_whatever_order_the_readings_arrive_in(spark: SparkSession) -> None:
    # Added as doubles these seven give 108.16999999999997, ...99 or 108.17 depending on their
    # order. Summed as decimals (Spark turns a double into the shortest decimal that reads back as
    # it, so 66.92 is 66.92) they make 757.19 in every order, and 757.19 / 7 is 108.17.
    rates = [66.92, 133.35, 101.11, 97.3, 120.07, 88.41, 150.03]
    start, end = ts("2024-03-01 08:00:00"), ts("2024-03-01 08:30:00")
    completed = spark.createDataFrame([(1, 1, 1, start, end)], COMPLETED_WORKOUTS)
    history = spark.createDataFrame([], USER_PROFILE_HISTORY)
    means = set()
    for order in (rates, rates[::-1], sorted(rates), sorted(rates, reverse=True)):
        readings = spark.createDataFrame(
            [(1, 1, 1, ts(f"2024-03-01 08:0{i}:00"), start, end, r) for i, r in enumerate(order)], WORKOUT_BPM
        ).repartition(1)
        row = workout_bpm_summary(completed, readings, history).select("avg_bpm", "num_recordings").first()
        assert row is not None
        means.add((row["avg_bpm"], row["num_recordings"]))
    assert means == {(108.17, 7)}
