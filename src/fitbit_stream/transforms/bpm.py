"""Heart-rate readings (CONTRACT.md §2.2 ``heart_rate``): accepted bpm records -> one row per
(device_id, time), the first ingested winning, with the plausibility flag."""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from fitbit_stream.schemas import HEART_RATE
from fitbit_stream.transforms.quality import first_ingested

__all__ = ["HEART_RATE_KEY", "to_heart_rate", "with_valid_flag"]

#: The table key of ``heart_rate``.
HEART_RATE_KEY: tuple[str, ...] = ("device_id", "time")


def with_valid_flag(df: DataFrame, *, low: float, high: float, heartrate: str = "heartrate") -> DataFrame:
    """Add ``valid``: the reading is not NULL and ``low <= heartrate <= high`` (never NULL itself)."""
    hr = F.col(heartrate)
    return df.withColumn("valid", F.coalesce(hr.between(F.lit(low), F.lit(high)), F.lit(False)))


def to_heart_rate(accepted: DataFrame, *, low: float, high: float) -> DataFrame:
    """Parsed bpm rows that passed every rule -> the ``heart_rate`` columns, one row per
    (device_id, time): of duplicates the first ingested wins (a later copy with another heartrate
    does not replace it). Rows with a ``reason``, when the column is there, are left out."""
    rows = accepted.where(F.col("reason").isNull()) if "reason" in accepted.columns else accepted
    readings = rows.withColumn("time", F.col("event_time"))
    return (
        first_ingested(readings, keys=HEART_RATE_KEY)
        .transform(with_valid_flag, low=low, high=high)
        .select(*(F.col(f.name).cast(f.dataType).alias(f.name) for f in HEART_RATE.fields))
    )
