"""Record-level quality rules of CONTRACT.md §3.6: future and late events, quarantine rows, dedup.

Every rule only looks at rows whose ``reason`` is still NULL, so the first rule that rejects a
record names it: parse (``malformed_json`` / ``schema_violation``), then ``future``, then ``late``.
Nothing here reads the clock: the batch time and the lateness threshold are parameters.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from fitbit_stream.errors import InvalidConfigError
from fitbit_stream.schemas import QUARANTINE

__all__ = [
    "FUTURE",
    "INGESTION_ORDER",
    "INVALID_SESSION",
    "LATE",
    "MALFORMED_JSON",
    "REASONS",
    "SCHEMA_VIOLATION",
    "accepted",
    "batch_max_event_time",
    "first_ingested",
    "late_threshold",
    "rejected",
    "to_quarantine",
    "with_future_flag",
    "with_late_flag",
]

MALFORMED_JSON = "malformed_json"
SCHEMA_VIOLATION = "schema_violation"
FUTURE = "future"
LATE = "late"
#: A start/stop pair that breaks the session bounds (quarantined by ``transforms.workouts``).
INVALID_SESSION = "invalid_session"
#: Every quarantine reason of the contract.
REASONS: tuple[str, ...] = (MALFORMED_JSON, SCHEMA_VIOLATION, FUTURE, LATE, INVALID_SESSION)

#: Bronze ingestion order: the first row in this order is "the first ingested" of its key.
INGESTION_ORDER: tuple[str, ...] = ("load_time", "partition", "offset")


def _as_utc(value: datetime) -> datetime:
    # PySpark turns a naive datetime into a timestamp through the Python process's local time
    # zone; every time in the contract is UTC, so a naive value means UTC.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def _timestamp(value: Column | datetime) -> Column:
    return F.lit(_as_utc(value)).cast("timestamp") if isinstance(value, datetime) else value


def accepted(df: DataFrame) -> DataFrame:
    """The rows no rule has rejected (``reason`` IS NULL)."""
    return df.where(F.col("reason").isNull())


def rejected(df: DataFrame) -> DataFrame:
    """The rows some rule has rejected (``reason`` IS NOT NULL)."""
    return df.where(F.col("reason").isNotNull())


def _flag(df: DataFrame, condition: Column, *, reason: str, detail: Column) -> DataFrame:
    # A NULL condition (NULL event time or record time) never rejects: such rows were already
    # rejected by parse, which requires the event time.
    hit = F.col("reason").isNull() & F.coalesce(condition, F.lit(False))
    return df.withColumns(
        {
            "reason": F.when(hit, F.lit(reason)).otherwise(F.col("reason")),
            "detail": F.when(hit, detail).otherwise(F.col("detail")),
        }
    )


def with_future_flag(
    df: DataFrame,
    *,
    skew: timedelta,
    event_time: str = "event_time",
    record_time: str = "timestamp",
) -> DataFrame:
    """Reject (reason ``future``) accepted rows whose event time is more than ``skew`` ahead of the
    Kafka record timestamp; a device with a wrong clock must not move event time forward."""
    if skew < timedelta(0):
        raise InvalidConfigError(f"clock skew: must not be negative, got {skew!r}")
    skew_micros = skew // timedelta(microseconds=1)
    et, rt = F.col(event_time), F.col(record_time)
    # Compared in integral microseconds: exact, and no interval arithmetic on timestamps.
    condition = F.unix_micros(et) > F.unix_micros(rt) + F.lit(skew_micros)
    detail = F.concat(
        F.lit(f"{event_time}: "),
        et.cast("string"),
        F.lit(f" is more than {skew.total_seconds():g} s ahead of the record timestamp "),
        rt.cast("string"),
    )
    return _flag(df, condition, reason=FUTURE, detail=detail)


def late_threshold(previous_max: datetime | None, *, horizon: timedelta) -> datetime | None:
    """``previous_max - horizon``: the lateness threshold from the greatest accepted event time of
    the topic's earlier micro-batches (None when there was none: nothing is late yet)."""
    if horizon < timedelta(0):
        raise InvalidConfigError(f"lateness horizon: must not be negative, got {horizon!r}")
    return None if previous_max is None else _as_utc(previous_max) - horizon


def with_late_flag(
    df: DataFrame,
    *,
    threshold: Column | datetime | None,
    event_time: str = "event_time",
) -> DataFrame:
    """Reject (reason ``late``) accepted rows whose event time is older than ``threshold``
    (see :func:`late_threshold`); ``None`` rejects nothing. A naive datetime means UTC."""
    if threshold is None:
        return df
    thr = _timestamp(threshold)
    et = F.col(event_time)
    detail = F.concat(
        F.lit(f"{event_time}: "),
        et.cast("string"),
        F.lit(" is older than the lateness threshold "),
        thr.cast("string"),
    )
    return _flag(df, et < thr, reason=LATE, detail=detail)


def batch_max_event_time(df: DataFrame, *, event_time: str = "event_time") -> DataFrame:
    """One row, column ``max_event_time``: the greatest event time of the accepted rows (NULL when
    none). Apply after the future flag, so a device clock in the future never moves it."""
    return accepted(df).agg(F.max(event_time).cast("timestamp").alias("max_event_time"))


def to_quarantine(df: DataFrame, *, quarantined_at: Column | datetime) -> DataFrame:
    """The rejected rows in the ``quarantine`` schema, one per (topic, partition, offset).

    A record read twice into bronze gets one quarantine row: the first ingested copy's (by
    ``load_time`` when the input has it), so a replayed batch produces the same row.
    """
    order = [F.col(c) for c in ("load_time", "reason", "detail") if c in df.columns]
    window = Window.partitionBy("topic", "partition", "offset").orderBy(*order)
    rows = (
        rejected(df)
        .withColumn("_rn", F.row_number().over(window))
        .where(F.col("_rn") == 1)
        .withColumn("quarantined_at", _timestamp(quarantined_at))
    )
    return rows.select(*(F.col(f.name).cast(f.dataType).alias(f.name) for f in QUARANTINE.fields))


def first_ingested(df: DataFrame, *, keys: Sequence[str]) -> DataFrame:
    """One row per ``keys``: the first in bronze ingestion order (load_time, partition, offset).

    ``row_number`` rather than ``rank``: ties must still leave exactly one row, or a MERGE sees two
    source rows for one target row.
    """
    if isinstance(keys, str):
        keys = (keys,)
    if not keys:
        raise InvalidConfigError("first_ingested: keys must name at least one column, got ()")
    window = Window.partitionBy(*keys).orderBy(*(F.col(c).asc() for c in INGESTION_ORDER))
    return df.withColumn("_rn", F.row_number().over(window)).where(F.col("_rn") == 1).drop("_rn")
