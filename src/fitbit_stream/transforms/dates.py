"""Calendar rules of CONTRACT.md §3.5: US weeks and ``week_part``.

US weeks: week 1 holds 1 January and weeks start on Sunday, so week n of a year covers the days
whose ``(dayofyear - 1 + dayofweek(1 January) - 1) / 7`` floor to ``n - 1`` (``dayofweek`` is
1 = Sunday … 7 = Saturday). 31 December is in week 53 whenever the year does not start on a
Sunday late enough to keep it in 52, e.g. ``2023-53``.
"""

from __future__ import annotations

from pyspark.sql import Column
from pyspark.sql import functions as F

__all__ = ["epoch_seconds_to_timestamp", "us_week", "week_part"]


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
    micros = F.round(_col(seconds).cast("decimal(38,9)") * F.lit(1_000_000), 0).cast("long")
    return F.timestamp_micros(micros)
