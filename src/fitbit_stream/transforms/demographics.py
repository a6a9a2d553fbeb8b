"""Demographics: age bins (CONTRACT.md §3.3), ``user_bins`` (§2.2) and as-of profiles (§3.2).

Every function works on whole tables or on the subset of keys a micro-batch touched; the writer
MERGEs the result by key. The reference date of an age is always a parameter or a column (the
session date in gold), never the clock: an age read from today's date moves a workout from one
bin to another between runs (PITFALLS 9).
"""

from __future__ import annotations

from datetime import date

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from fitbit_stream.errors import FitbitStreamError
from fitbit_stream.schemas import PROFILE_COLUMNS, USER_BINS

__all__ = [
    "AGE_BINS",
    "INVALID_AGE",
    "PROFILE_COLUMNS",
    "PROFILE_VALID_FROM",
    "age_bin",
    "age_years",
    "as_of_profile",
    "user_bins",
]

#: (lower bound inclusive, label), ascending; a bin ends where the next one starts.
AGE_BINS: tuple[tuple[int, str], ...] = (
    (0, "under 18"),
    (18, "18-25"),
    (25, "25-35"),
    (35, "35-45"),
    (45, "45-55"),
    (55, "55-65"),
    (65, "65-75"),
    (75, "75-85"),
    (85, "85-95"),
    (95, "95+"),
)
#: The bin of a NULL dob, a dob after the reference date (or a NULL reference date).
INVALID_AGE = "invalid age"

#: Column added by :func:`as_of_profile`: valid_from of the matched version, NULL when none matched.
#: It tells "no version" apart from "a version whose dob is NULL".
PROFILE_VALID_FROM = "profile_valid_from"

_HISTORY_PREFIX = "__history_"


def _col(c: str | Column) -> Column:
    return F.col(c) if isinstance(c, str) else c


def age_years(dob: str | Column, as_of: str | Column) -> Column:
    """Whole years from ``dob`` to ``as_of``: ``floor(months_between(as_of, dob) / 12)``; NULL-safe.

    Both sides are cast to DATE first. Between two dates Spark's ``months_between`` is an integer
    when both fall on the same day of the month or both on the last day of their month (so a
    29 February birthday is reached on 28 February of a common year, on 29 February of a leap
    year), else ``whole months + day difference / 31``. Its fraction is then at least 1/31 away
    from an integer, so the 8-digit ``roundOff`` can never carry a value over a birthday; with
    a time of day it could, which is why a TIMESTAMP ``as_of`` is truncated to its (UTC) date.
    """
    months = F.months_between(_col(as_of).cast("date"), _col(dob).cast("date"))
    return F.floor(months / F.lit(12)).cast("int")


def age_bin(dob: str | Column, as_of: str | Column) -> Column:
    """The age bin (CONTRACT.md §3.3) of ``dob`` on the DATE ``as_of``; a string is a column name.

    Bins are lower-bound inclusive (18 on the 18th birthday is ``18-25``); a NULL dob, a dob after
    ``as_of`` or a NULL ``as_of`` gives ``invalid age``. Never NULL.
    """
    d, ref = _col(dob).cast("date"), _col(as_of).cast("date")
    years = age_years(d, ref)
    result = F.when(d.isNull() | ref.isNull() | (d > ref), F.lit(INVALID_AGE))
    # Highest bound first, so each branch only needs its lower bound.
    for low, label in reversed(AGE_BINS[1:]):
        result = result.when(years >= F.lit(low), F.lit(label))
    return result.otherwise(F.lit(AGE_BINS[0][1]))


def user_bins(user_profile_df: DataFrame, *, as_of: date) -> DataFrame:
    """``user_profile`` rows -> ``USER_BINS`` (user_id, age bin as of ``as_of``, gender, city, state).

    One row per user (an exact duplicate row collapses). A deleted user has no ``user_profile``
    row, so the writer removes its ``user_bins`` row when it recomputes that key and finds nothing.
    """
    return user_profile_df.dropDuplicates(["user_id"]).select(
        *[
            (age_bin("dob", F.lit(as_of)) if f.name == "age" else F.col(f.name)).cast(f.dataType).alias(f.name)
            for f in USER_BINS.fields
        ]
    )


def as_of_profile(history_df: DataFrame, events_df: DataFrame, *, at: str) -> DataFrame:
    """Each ``events_df`` row with the ``user_profile_history`` version in effect at column ``at``.

    The version in effect at t has ``valid_from <= t < valid_to`` (or ``valid_to`` NULL), matched on
    ``user_id`` (CONTRACT.md §3.2). Adds :data:`PROFILE_COLUMNS` and :data:`PROFILE_VALID_FROM`;
    when no version is in effect (no history, t before the first version, after a delete, or t
    NULL) they are NULL and the event row is kept.

    At most one version matches, so the output has exactly the input's rows: the history of one
    user is a chain of changes ordered by time where each version is closed by the next change
    (valid_to = the next change's timestamp, which is >= its own valid_from) and empty versions
    (valid_from = valid_to) are dropped. The half-open intervals [valid_from, valid_to) are
    therefore disjoint, and only the last one can be open. Rows with equal (user_id, valid_from)
    are collapsed first, so an exact duplicate in the input cannot double an event.
    """
    taken = [c for c in (*PROFILE_COLUMNS, PROFILE_VALID_FROM) if c in events_df.columns]
    if taken:
        raise FitbitStreamError(f"as_of_profile: events_df already has profile columns {taken!r}")
    if at not in events_df.columns or "user_id" not in events_df.columns:
        raise FitbitStreamError(
            f"as_of_profile: events_df needs columns 'user_id' and {at!r}, got {events_df.columns!r}"
        )

    def h(name: str) -> str:
        return _HISTORY_PREFIX + name

    versions = history_df.dropDuplicates(["user_id", "valid_from"]).select(
        F.col("user_id").alias(h("user_id")),
        F.col("valid_from").alias(h("valid_from")),
        F.col("valid_to").alias(h("valid_to")),
        *[F.col(c).alias(h(c)) for c in PROFILE_COLUMNS],
    )
    t = F.col(at)
    in_effect = (
        (F.col("user_id") == F.col(h("user_id")))
        & (F.col(h("valid_from")) <= t)
        & (F.col(h("valid_to")).isNull() | (t < F.col(h("valid_to"))))
    )
    joined = events_df.join(versions, in_effect, "left")
    return joined.select(
        *[F.col(c) for c in events_df.columns],
        *[F.col(h(c)).alias(c) for c in PROFILE_COLUMNS],
        F.col(h("valid_from")).alias(PROFILE_VALID_FROM),
    )
