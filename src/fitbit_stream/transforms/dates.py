"""Calendar rules of CONTRACT.md §3.5: US weeks and ``week_part``.

US weeks: week 1 holds 1 January and weeks start on Sunday, so week n of a year covers the days
whose ``(dayofyear - 1 + dayofweek(1 January) - 1) / 7`` floor to ``n - 1`` (``dayofweek`` is
1 = Sunday … 7 = Saturday). 31 December is in week 53 whenever the year does not start on a
Sunday late enough to keep it in 52, e.g. ``2023-53``.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from fitbit_stream.errors import InvalidConfigError
from fitbit_stream.schemas import DATE_LOOKUP

__all__ = ["date_lookup", "epoch_seconds_to_timestamp", "us_week", "week_part", "years_of"]


def _col(c: str | Column) -> Column:
    return F.col(c) if isinstance(c, str) else c


def us_week(date: str | Column) -> Column:
    """US week number (1..54) of a DATE; NULL stays NULL."""
    d = _col(date)
    jan1 = F.make_date(F.year(d), F.lit(1), F.lit(1))
    return (F.floor((F.dayofyear(d) + F.dayofweek(jan1) - 2) / 7) + 1).cast("int")


def week_part(date: str | Column) -> Column:
    """``<year>-<week>`` without padding (``2023-1``, ``2023-53``); NULL stays NULL."""
    d = _col(date)
    return F.concat(F.year(d).cast("string"), F.lit("-"), us_week(d).cast("string"))


def epoch_seconds_to_timestamp(seconds: str | Column) -> Column:
    """Epoch seconds (a number, or its exact decimal text) to TIMESTAMP, kept to the microsecond.

    The value goes through DECIMAL(38, 6), never through a float: a FLOAT rounds 2023 instants to
    128-second steps, a DOUBLE loses the last microseconds.
    """
    # try_cast: a non-numeric or out-of-range value gives NULL (quarantined downstream), never an
    # error that would stop the query on every retry of the same input.
    micros = F.round(_col(seconds).try_cast("decimal(38,9)") * F.lit(1_000_000), 0).try_cast("long")
    return F.timestamp_micros(micros)


def years_of(df: DataFrame, *cols: str | Column) -> DataFrame:
    """The distinct calendar years (column ``year`` INT) of the given DATE/TIMESTAMP columns, NULLs
    skipped; one pass over ``df`` whatever the number of columns."""
    if not cols:
        raise InvalidConfigError("years_of: name at least one date or timestamp column, got none")
    years = F.explode(F.array(*(F.year(_col(c)).cast("int") for c in cols)))
    return df.select(years.alias("year")).where(F.col("year").isNotNull()).distinct()


def date_lookup(years: DataFrame, *, year_col: str = "year") -> DataFrame:
    """Every day of every year in ``years[year_col]`` with its calendar attributes (``date_lookup``
    schema): US week and ``week_part`` (§3.5), ``dayofweek`` 1 = Sunday … 7 = Saturday."""
    y = F.col("_year")
    days = F.sequence(F.make_date(y, F.lit(1), F.lit(1)), F.make_date(y, F.lit(12), F.lit(31)))
    dates = (
        years.select(F.col(year_col).cast("int").alias("_year"))
        .where(F.col("_year").isNotNull())
        .distinct()
        .select(F.explode(days).alias("date"))
    )
    d = F.col("date")
    columns = {
        "date": d,
        "week": us_week(d),
        "year": F.year(d),
        "month": F.month(d),
        "dayofweek": F.dayofweek(d),
        "dayofmonth": F.dayofmonth(d),
        "dayofyear": F.dayofyear(d),
        "week_part": week_part(d),
    }
    return dates.select(*(columns[f.name].cast(f.dataType).alias(f.name) for f in DATE_LOOKUP.fields))
