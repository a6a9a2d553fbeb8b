"""Calendar rules (CONTRACT.md §3.5) and date_lookup (§2.2), with literal rows."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
from chispa import assert_df_equality
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from fitbit_stream.errors import InvalidConfigError
from fitbit_stream.schemas import DATE_LOOKUP
from fitbit_stream.transforms.dates import (
    date_lookup,
    epoch_seconds_to_timestamp,
    us_week,
    week_part,
    years_of,
)


def test_us_week_and_week_part(spark: SparkSession) -> None:
    df = spark.createDataFrame(
        [(date(2023, 1, 1),), (date(2023, 12, 31),), (date(2022, 1, 1),), (date(2022, 1, 2),), (None,)],
        "d date",
    )
    actual = df.select("d", us_week("d").alias("week"), week_part(F.col("d")).alias("week_part"))
    expected = spark.createDataFrame(
        [
            (date(2023, 1, 1), 1, "2023-1"),
            (date(2023, 12, 31), 53, "2023-53"),
            (date(2022, 1, 1), 1, "2022-1"),
            (date(2022, 1, 2), 2, "2022-2"),
            (None, None, None),
        ],
        "d date, week int, week_part string",
    )
    assert_df_equality(actual, expected, ignore_row_order=True, ignore_nullable=True)


def test_epoch_seconds_to_timestamp_is_exact(spark: SparkSession) -> None:
    df = spark.createDataFrame(
        [(Decimal("1700000000.123456"),), (Decimal("1690000037.000001"),), (None,)], "s decimal(20,6)"
    )
    expected = spark.createDataFrame(
        [
            (Decimal("1700000000.123456"), datetime(2023, 11, 14, 22, 13, 20, 123456, tzinfo=UTC)),
            (Decimal("1690000037.000001"), datetime(2023, 7, 22, 4, 27, 17, 1, tzinfo=UTC)),
            (None, None),
        ],
        "s decimal(20,6), t timestamp",
    )
    actual = df.select("s", epoch_seconds_to_timestamp("s").alias("t"))
    assert_df_equality(actual, expected, ignore_row_order=True, ignore_nullable=True)


def test_years_of_collects_distinct_years_of_several_columns(spark: SparkSession) -> None:
    df = spark.createDataFrame(
        [
            (datetime(2023, 12, 31, 23, 59, tzinfo=UTC), date(2021, 5, 1)),
            (datetime(2023, 1, 1, tzinfo=UTC), None),  # duplicate year, NULL date
            (None, date(2024, 2, 29)),
        ],
        "ts timestamp, d date",
    )
    expected = spark.createDataFrame([(2021,), (2023,), (2024,)], "year int")
    assert_df_equality(years_of(df, "ts", F.col("d")), expected, ignore_row_order=True, ignore_nullable=True)
    with pytest.raises(InvalidConfigError, match="years_of"):
        years_of(df)


def test_date_lookup_covers_whole_years(spark: SparkSession) -> None:
    years = spark.createDataFrame([(2022,), (2023,), (2023,), (2024,), (None,)], "year int")
    lookup = date_lookup(years)
    assert [(f.name, f.dataType) for f in lookup.schema.fields] == [(f.name, f.dataType) for f in DATE_LOOKUP.fields]
    per_year = lookup.groupBy("year").agg(
        F.count("*").alias("days"),
        F.countDistinct("date").alias("distinct_days"),
        F.min("date").alias("first"),
        F.max("date").alias("last"),
        F.max("week").alias("weeks"),
    )
    expected_years = spark.createDataFrame(
        [
            (2022, 365, 365, date(2022, 1, 1), date(2022, 12, 31), 53),
            (2023, 365, 365, date(2023, 1, 1), date(2023, 12, 31), 53),
            (2024, 366, 366, date(2024, 1, 1), date(2024, 12, 31), 53),
        ],
        "year int, days long, distinct_days long, first date, last date, weeks int",
    )
    assert_df_equality(per_year, expected_years, ignore_row_order=True, ignore_nullable=True)

    picked = [date(2022, 1, 1), date(2022, 1, 2), date(2023, 1, 1), date(2023, 12, 31), date(2024, 2, 29)]
    expected_days = spark.createDataFrame(
        [
            (date(2022, 1, 1), 1, 2022, 1, 7, 1, 1, "2022-1"),
            (date(2022, 1, 2), 2, 2022, 1, 1, 2, 2, "2022-2"),
            (date(2023, 1, 1), 1, 2023, 1, 1, 1, 1, "2023-1"),
            (date(2023, 12, 31), 53, 2023, 12, 1, 31, 365, "2023-53"),
            (date(2024, 2, 29), 9, 2024, 2, 5, 29, 60, "2024-9"),
        ],
        DATE_LOOKUP,
    )
    actual_days = lookup.where(F.col("date").isin(*picked))
    assert_df_equality(actual_days, expected_days, ignore_row_order=True, ignore_nullable=True)


def test_date_lookup_of_a_named_year_column(spark: SparkSession) -> None:
    years = spark.createDataFrame([(2020,)], "y long")
    counted = date_lookup(years, year_col="y").agg(F.count("*").alias("days"))
    assert_df_equality(counted, spark.createDataFrame([(366,)], "days long"), ignore_nullable=True)
