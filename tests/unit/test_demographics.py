"""Age bins (CONTRACT.md §3.3), user_bins (§2.2) and as-of profiles (§3.2), with literal rows."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest
from chispa import assert_df_equality
from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import (
    DateType,
    IntegerType,
    LongType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

from fitbit_stream.errors import FitbitStreamError
from fitbit_stream.schemas import USER_BINS, USER_PROFILE, USER_PROFILE_HISTORY
from fitbit_stream.transforms.demographics import (
    PROFILE_VALID_FROM,
    age_bin,
    age_years,
    as_of_profile,
    user_bins,
)


def ts(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


AGE_CASES = StructType(
    [
        StructField("case", StringType()),
        StructField("dob", DateType()),
        StructField("as_of", DateType()),
        StructField("expected_years", IntegerType()),
        StructField("expected_bin", StringType()),
    ]
)


def test_age_bin_boundaries_follow_months_between(spark: SparkSession) -> None:
    d = date
    cases = spark.createDataFrame(
        [
            # 29 February: Spark's end-of-month rule reaches the birthday on 28 February of a
            # common year, but on 29 February of a leap year.
            ("leap dob, day before", d(2000, 2, 29), d(2018, 2, 27), 17, "under 18"),
            ("leap dob, 28 Feb common year", d(2000, 2, 29), d(2018, 2, 28), 18, "18-25"),
            ("leap dob, 1 Mar common year", d(2000, 2, 29), d(2018, 3, 1), 18, "18-25"),
            ("leap dob, 28 Feb leap year", d(2000, 2, 29), d(2020, 2, 28), 19, "18-25"),
            ("leap dob, 29 Feb leap year", d(2000, 2, 29), d(2020, 2, 29), 20, "18-25"),
            ("18th birthday, day before", d(2000, 6, 15), d(2018, 6, 14), 17, "under 18"),
            ("18th birthday", d(2000, 6, 15), d(2018, 6, 15), 18, "18-25"),
            ("18th birthday, day after", d(2000, 6, 15), d(2018, 6, 16), 18, "18-25"),
            ("25th, 31st dob day before", d(1990, 1, 31), d(2015, 1, 30), 24, "18-25"),
            ("25th, 31st dob", d(1990, 1, 31), d(2015, 1, 31), 25, "25-35"),
            # both on the last day of their month: whole months, so 34 years 11 months here
            ("end of month, 28 Feb", d(1990, 3, 31), d(2025, 2, 28), 34, "25-35"),
            ("35th, 30 Mar", d(1990, 3, 31), d(2025, 3, 30), 34, "25-35"),
            ("35th", d(1990, 3, 31), d(2025, 3, 31), 35, "35-45"),
            ("45th, day before", d(1970, 7, 1), d(2015, 6, 30), 44, "35-45"),
            ("45th", d(1970, 7, 1), d(2015, 7, 1), 45, "45-55"),
            ("55th, day before", d(1960, 5, 10), d(2015, 5, 9), 54, "45-55"),
            ("55th", d(1960, 5, 10), d(2015, 5, 10), 55, "55-65"),
            ("65th, day before", d(1950, 5, 10), d(2015, 5, 9), 64, "55-65"),
            ("65th", d(1950, 5, 10), d(2015, 5, 10), 65, "65-75"),
            ("75th, day before", d(1940, 5, 10), d(2015, 5, 9), 74, "65-75"),
            ("75th", d(1940, 5, 10), d(2015, 5, 10), 75, "75-85"),
            ("85th, day before", d(1930, 5, 10), d(2015, 5, 9), 84, "75-85"),
            ("85th", d(1930, 5, 10), d(2015, 5, 10), 85, "85-95"),
            ("95th, day before", d(1920, 1, 1), d(2014, 12, 31), 94, "85-95"),
            ("95th", d(1920, 1, 1), d(2015, 1, 1), 95, "95+"),
            ("born that day", d(2024, 3, 1), d(2024, 3, 1), 0, "under 18"),
            ("dob after the date", d(2024, 3, 2), d(2024, 3, 1), -1, "invalid age"),
            ("NULL dob", None, d(2024, 3, 1), None, "invalid age"),
            ("NULL date", d(2000, 1, 1), None, None, "invalid age"),
            # a duplicate input row gives a duplicate output row: a column function keeps rows
            ("18th birthday", d(2000, 6, 15), d(2018, 6, 15), 18, "18-25"),
        ],
        AGE_CASES,
    )
    actual = cases.select(
        "case",
        "dob",
        "as_of",
        age_years("dob", "as_of").alias("expected_years"),
        age_bin("dob", F.col("as_of")).alias("expected_bin"),
    )
    assert_df_equality(actual, cases, ignore_row_order=True, ignore_nullable=True, ignore_column_order=True)


def test_age_bin_truncates_a_timestamp_to_its_date(spark: SparkSession) -> None:
    schema = StructType([StructField("dob", DateType()), StructField("at", TimestampType())])
    df = spark.createDataFrame(
        [
            (date(2000, 6, 15), ts("2018-06-14 23:59:59.999999")),
            (date(2000, 6, 15), ts("2018-06-15 00:00:00")),
            (None, ts("2018-06-15 00:00:00")),
        ],
        schema,
    )
    assert [r.age for r in df.select(age_bin("dob", "at").alias("age")).collect()] == [
        "under 18",
        "18-25",
        "invalid age",
    ]


def _profile(user_id: int, dob: date | None, gender: str | None, city: str | None) -> tuple[object, ...]:
    return (user_id, dob, "F", gender, "Ann", "Lee", "1 Main St", city, "TX", "00501", ts("2024-01-01 00:00"))


def test_user_bins_as_of_a_reference_date(spark: SparkSession) -> None:
    profiles = spark.createDataFrame(
        [
            _profile(1, date(2006, 2, 28), "F", "Austin"),
            _profile(2, date(2006, 3, 1), "M", "Dallas"),
            _profile(3, None, None, None),
            _profile(4, date(2030, 1, 1), "M", "Waco"),
            _profile(1, date(2006, 2, 28), "F", "Austin"),  # duplicate row of user 1
        ],
        USER_PROFILE,
    )
    actual = user_bins(profiles, as_of=date(2024, 2, 28))
    expected = spark.createDataFrame(
        [
            (1, "18-25", "F", "Austin", "TX"),  # 18th birthday that very day
            (2, "under 18", "M", "Dallas", "TX"),  # 18 the next day
            (3, "invalid age", None, None, "TX"),
            (4, "invalid age", "M", "Waco", "TX"),
        ],
        USER_BINS,
    )
    assert_df_equality(actual, expected, ignore_row_order=True, ignore_nullable=True)


def test_user_bins_leap_birthday_reached_on_28_february(spark: SparkSession) -> None:
    profiles = spark.createDataFrame([_profile(5, date(2000, 2, 29), "M", "Waco")], USER_PROFILE)
    before = user_bins(profiles, as_of=date(2018, 2, 27)).select("age").first()
    on = user_bins(profiles, as_of=date(2018, 2, 28)).select("age").first()
    assert (before and before.age, on and on.age) == ("under 18", "18-25")


EVENTS = StructType(
    [
        StructField("event", StringType()),
        StructField("user_id", LongType()),
        StructField("t", TimestampType()),
    ]
)
AS_OF = StructType(
    [
        *EVENTS.fields,
        *[f for f in USER_PROFILE_HISTORY.fields if f.name not in ("user_id", "valid_from", "valid_to")],
        StructField(PROFILE_VALID_FROM, TimestampType()),
    ]
)


def _version(user_id: int, city: str | None, valid_from: str, valid_to: str | None) -> tuple[object, ...]:
    dob = None if city is None else date(1990, 1, 1)
    return (
        user_id,
        dob,
        "F",
        "F",
        "Ann",
        "Lee",
        "1 Main St",
        city,
        "TX",
        "00501",
        ts(valid_from),
        None if valid_to is None else ts(valid_to),
    )


def _matched(
    event: str, user_id: int | None, t: str | None, city: str | None, valid_from: str | None
) -> tuple[object, ...]:
    at = None if t is None else ts(t)
    if valid_from is None:
        return (event, user_id, at, None, None, None, None, None, None, None, None, None, None)
    dob = None if city is None else date(1990, 1, 1)
    return (event, user_id, at, dob, "F", "F", "Ann", "Lee", "1 Main St", city, "TX", "00501", ts(valid_from))


def test_as_of_profile_picks_the_one_version_in_effect(spark: SparkSession) -> None:
    history = spark.createDataFrame(
        [
            _version(1, "Austin", "2024-01-01 00:00", "2024-03-01 12:00"),
            _version(1, "Boston", "2024-03-01 12:00", "2024-04-01 00:00"),
            _version(1, "Chicago", "2024-04-01 00:00", None),
            _version(1, "Austin", "2024-01-01 00:00", "2024-03-01 12:00"),  # exact duplicate
            _version(2, "Dallas", "2024-01-01 00:00", "2024-02-01 00:00"),  # closed by a delete
            _version(3, None, "2024-01-01 00:00", None),  # a version with NULL dob and city
        ],
        USER_PROFILE_HISTORY,
    )
    events = spark.createDataFrame(
        [
            ("before first", 1, ts("2023-12-31 23:59:59.999999")),
            ("at first valid_from", 1, ts("2024-01-01 00:00")),
            ("just before change", 1, ts("2024-03-01 11:59:59.999999")),
            ("at change", 1, ts("2024-03-01 12:00")),
            ("at change", 1, ts("2024-03-01 12:00")),  # duplicate event: kept, same version
            ("at second change", 1, ts("2024-04-01 00:00")),
            ("open version", 1, ts("2030-01-01 00:00")),
            ("inside deleted", 2, ts("2024-01-31 23:59:59")),
            ("after delete", 2, ts("2024-02-01 00:00")),
            ("null demographics", 3, ts("2024-06-01 00:00")),
            ("no history", 4, ts("2024-06-01 00:00")),
            ("NULL time", 1, None),
            ("NULL user", None, ts("2024-06-01 00:00")),
        ],
        EVENTS,
    )
    actual = as_of_profile(history, events, at="t")
    expected = spark.createDataFrame(
        [
            _matched("before first", 1, "2023-12-31 23:59:59.999999", None, None),
            _matched("at first valid_from", 1, "2024-01-01 00:00", "Austin", "2024-01-01 00:00"),
            _matched("just before change", 1, "2024-03-01 11:59:59.999999", "Austin", "2024-01-01 00:00"),
            _matched("at change", 1, "2024-03-01 12:00", "Boston", "2024-03-01 12:00"),
            _matched("at change", 1, "2024-03-01 12:00", "Boston", "2024-03-01 12:00"),
            _matched("at second change", 1, "2024-04-01 00:00", "Chicago", "2024-04-01 00:00"),
            _matched("open version", 1, "2030-01-01 00:00", "Chicago", "2024-04-01 00:00"),
            _matched("inside deleted", 2, "2024-01-31 23:59:59", "Dallas", "2024-01-01 00:00"),
            _matched("after delete", 2, "2024-02-01 00:00", None, None),
            _matched("null demographics", 3, "2024-06-01 00:00", None, "2024-01-01 00:00"),
            _matched("no history", 4, "2024-06-01 00:00", None, None),
            _matched("NULL time", 1, None, None, None),
            _matched("NULL user", None, "2024-06-01 00:00", None, None),
        ],
        AS_OF,
    )
    assert_df_equality(actual, expected, ignore_row_order=True, ignore_nullable=True, ignore_column_order=True)


def test_as_of_profile_refuses_to_shadow_event_columns(spark: SparkSession) -> None:
    history = spark.createDataFrame([], USER_PROFILE_HISTORY)
    events = spark.createDataFrame([], "user_id BIGINT, t TIMESTAMP, city STRING")
    with pytest.raises(FitbitStreamError, match="city"):
        as_of_profile(history, events, at="t")
    with pytest.raises(FitbitStreamError, match="'when'"):
        as_of_profile(history, events.drop("city"), at="when")
