"""Workout sessions: the ``workouts``, ``completed_workouts`` and ``workout_bpm`` rules (CONTRACT.md §2.2).

Every function here works on whole tables or on the subset of keys a micro-batch touched; the
writer turns the result into an idempotent MERGE. Pipeline order:

1. :func:`first_ingested_events` / :func:`to_workouts`: accepted workout events -> one row per
   (user_id, workout_id, session_id, action), the first ingested wins.
2. :func:`pair_sessions` (or :func:`classify_sessions` plus :func:`completed_sessions` and
   :func:`invalid_sessions`): the events of some sessions -> ``completed_workouts`` rows and
   ``invalid_session`` quarantine rows. A session missing one of its events is neither.
3. :func:`workout_bpm`: completed sessions x valid readings of the user's device, as a band join.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import NamedTuple

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from fitbit_stream.errors import InvalidConfigError
from fitbit_stream.schemas import COMPLETED_WORKOUTS, QUARANTINE, WORKOUT_BPM, WORKOUTS
from fitbit_stream.transforms.quality import INVALID_SESSION

__all__ = [
    "BRONZE_COORDINATES",
    "EVENT_KEY",
    "SESSION_KEY",
    "SessionPairs",
    "SessionStatus",
    "affected_sessions",
    "classify_sessions",
    "completed_sessions",
    "first_ingested_events",
    "format_duration",
    "invalid_sessions",
    "pair_sessions",
    "sessions_near_readings",
    "to_workouts",
    "workout_bpm",
]

#: A session is identified by these columns (session_id is a per-user counter).
SESSION_KEY: tuple[str, ...] = ("user_id", "workout_id", "session_id")
#: Key of the ``workouts`` table: one start and one stop per session.
EVENT_KEY: tuple[str, ...] = (*SESSION_KEY, "action")
#: The bronze record columns a quarantine row carries.
BRONZE_COORDINATES: tuple[str, ...] = ("key", "value", "topic", "partition", "offset", "timestamp")

_MICROS_PER_SECOND = 1_000_000


class SessionStatus:
    """Values of the ``status`` column of :func:`classify_sessions`."""

    COMPLETED = "completed"
    INVALID = "invalid"
    #: A start without a stop, a stop without a start, or an event without a time: not judged yet.
    INCOMPLETE = "incomplete"


class SessionPairs(NamedTuple):
    """The two outputs of :func:`pair_sessions`."""

    #: ``COMPLETED_WORKOUTS`` rows, keyed by (user_id, workout_id, session_id).
    completed: DataFrame
    #: ``QUARANTINE`` rows with reason ``invalid_session``, keyed by the stop record's coordinates.
    invalid: DataFrame


def _first_per_key(df: DataFrame, key: Sequence[str]) -> DataFrame:
    # Ingestion order of bronze rows is (load_time, partition, offset). load_time may be absent
    # when events re-read from silver are passed with their coordinates; a NULL coordinate sorts
    # last so that a real record wins. row_number, never rank: rank keeps every tied row and
    # makes the MERGE see two source rows for one target row (PITFALLS 3).
    order_cols = ["load_time", "partition", "offset"] if "load_time" in df.columns else ["partition", "offset"]
    w = Window.partitionBy(*key).orderBy(*[F.col(c).asc_nulls_last() for c in order_cols])
    return df.withColumn("_rn", F.row_number().over(w)).filter(F.col("_rn") == 1).drop("_rn")


def _with_time(df: DataFrame) -> DataFrame:
    # Parsed events name their instant event_time; silver names it time.
    return df.withColumnRenamed("event_time", "time") if "event_time" in df.columns else df


def first_ingested_events(accepted_df: DataFrame) -> DataFrame:
    """One accepted workout event per (user_id, workout_id, session_id, action), first ingested wins.

    Input: the parsed, accepted events (user_id, workout_id, session_id, action, event_time) with
    their bronze coordinates (key, value, topic, partition, offset, timestamp, load_time). Output:
    the ``WORKOUTS`` columns (``event_time`` renamed ``time``) plus the coordinates, which
    :func:`pair_sessions` needs to quarantine an invalid pair under its stop record.
    """
    renamed = _with_time(accepted_df)
    coords = [c for c in (*BRONZE_COORDINATES, "load_time") if c in renamed.columns]
    typed = renamed.select(*[F.col(f.name).cast(f.dataType).alias(f.name) for f in WORKOUTS.fields], *coords)
    return _first_per_key(typed, EVENT_KEY)


def to_workouts(accepted_df: DataFrame) -> DataFrame:
    """Accepted workout events -> ``WORKOUTS`` rows, one per event key, the first ingested wins."""
    return first_ingested_events(accepted_df).select(*WORKOUTS.fieldNames())


def affected_sessions(df: DataFrame) -> DataFrame:
    """The distinct session keys (user_id, workout_id, session_id) of any DataFrame that has them.

    The derived-table writer semi-joins the current ``workouts`` events with this to recompute only
    the sessions a micro-batch touched.
    """
    return df.select(*SESSION_KEY).distinct()


def _timedelta_micros(td: timedelta) -> int:
    return td // timedelta(microseconds=1)


def format_duration(td: timedelta) -> str:
    """``3h``, ``3h05m``, ``3h00m00.000001s``: the shortest exact form, as used in quarantine details."""
    return _format_micros(_timedelta_micros(td))


def _format_micros(micros: int) -> str:
    sign = "-" if micros < 0 else ""
    micros = abs(micros)
    seconds, frac = divmod(micros, _MICROS_PER_SECOND)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if frac:
        return f"{sign}{hours}h{minutes:02d}m{secs:02d}.{frac:06d}s"
    if secs:
        return f"{sign}{hours}h{minutes:02d}m{secs:02d}s"
    if minutes:
        return f"{sign}{hours}h{minutes:02d}m"
    return f"{sign}{hours}h"


def _duration_text(micros: Column) -> Column:
    """Column twin of :func:`format_duration` for a non-negative duration in microseconds."""
    seconds = F.floor(micros / F.lit(_MICROS_PER_SECOND))
    frac = micros - seconds * F.lit(_MICROS_PER_SECOND)
    hours = F.floor(seconds / F.lit(3600))
    minutes = F.floor((seconds % F.lit(3600)) / F.lit(60))
    secs = seconds % F.lit(60)
    return (
        F.when(frac != 0, F.format_string("%dh%02dm%02d.%06ds", hours, minutes, secs, frac))
        .when(secs != 0, F.format_string("%dh%02dm%02ds", hours, minutes, secs))
        .when(minutes != 0, F.format_string("%dh%02dm", hours, minutes))
        .otherwise(F.format_string("%dh", hours))
    )


def _check_max_duration(max_duration: timedelta) -> int:
    micros = _timedelta_micros(max_duration)
    if micros <= 0:
        raise InvalidConfigError(f"max_duration must be positive, got {max_duration!r}")
    return micros


def classify_sessions(events_df: DataFrame, *, max_duration: timedelta) -> DataFrame:
    """One row per session of ``events_df`` with its bounds, a status and the stop record.

    ``events_df`` holds workout events (``WORKOUTS`` columns plus bronze coordinates) of some
    sessions, normally from :func:`first_ingested_events`; raw accepted events (``event_time``)
    are taken too. Should it still hold duplicates of an event key, the first ingested is used
    (by load_time when present, then partition, offset). Output columns: user_id, workout_id, session_id,
    start_time, end_time, status (:class:`SessionStatus`), detail (why a pair is invalid) and the
    stop record's key, value, topic, partition, offset, timestamp.

    A pair is completed when start_time < end_time <= start_time + max_duration (a session of
    exactly ``max_duration`` is valid), invalid otherwise. Bounds are compared in microseconds.
    """
    max_micros = _check_max_duration(max_duration)
    events = _first_per_key(_with_time(events_df), EVENT_KEY)
    action = F.col("action")
    coords = [c for c in BRONZE_COORDINATES if c in events.columns]
    # One aggregation instead of a start/stop self-join: a single shuffle on the session key, and
    # max() of a single non-NULL value per action is that value (events are unique per action).
    sessions = events.groupBy(*SESSION_KEY).agg(
        F.max(F.when(action == "start", F.struct(F.col("time")))).alias("_start"),
        F.max(F.when(action == "stop", F.struct(F.col("time"), *coords))).alias("_stop"),
    )
    start = F.col("_start.time")
    end = F.col("_stop.time")
    duration = F.unix_micros(end) - F.unix_micros(start)
    incomplete = start.isNull() | end.isNull()
    status = (
        F.when(incomplete, F.lit(SessionStatus.INCOMPLETE))
        .when(duration <= 0, F.lit(SessionStatus.INVALID))
        .when(duration > F.lit(max_micros), F.lit(SessionStatus.INVALID))
        .otherwise(F.lit(SessionStatus.COMPLETED))
    )
    max_text = format_duration(max_duration)
    detail = (
        F.when(incomplete, F.lit(None).cast("string"))
        .when(
            duration <= 0,
            F.format_string(
                "end_time <= start_time (start_time %s, end_time %s)",
                start.cast("string"),
                end.cast("string"),
            ),
        )
        .when(
            duration > F.lit(max_micros),
            F.concat(F.lit("duration "), _duration_text(duration), F.lit(f" exceeds {max_text}")),
        )
    )
    return sessions.select(
        *SESSION_KEY,
        start.alias("start_time"),
        end.alias("end_time"),
        status.alias("status"),
        detail.alias("detail"),
        *[
            F.col(f"_stop.{c}").alias(c) if c in coords else F.lit(None).cast(QUARANTINE[c].dataType).alias(c)
            for c in BRONZE_COORDINATES
        ],
    )


def _as_column(value: datetime | Column) -> Column:
    return value if isinstance(value, Column) else F.lit(value)


def completed_sessions(classified_df: DataFrame) -> DataFrame:
    """``COMPLETED_WORKOUTS`` rows of the completed sessions of :func:`classify_sessions`."""
    return classified_df.filter(F.col("status") == SessionStatus.COMPLETED).select(*COMPLETED_WORKOUTS.fieldNames())


def invalid_sessions(classified_df: DataFrame, *, quarantined_at: datetime | Column) -> DataFrame:
    """``QUARANTINE`` rows (reason ``invalid_session``) for the invalid pairs of :func:`classify_sessions`.

    Each carries the stop record's key, value and coordinates; ``quarantined_at`` is the batch time
    the writer passes (pure code never reads the clock).
    """
    return classified_df.filter(F.col("status") == SessionStatus.INVALID).select(
        *BRONZE_COORDINATES,
        F.lit(INVALID_SESSION).alias("reason"),
        F.col("detail"),
        _as_column(quarantined_at).cast("timestamp").alias("quarantined_at"),
    )


def pair_sessions(events_df: DataFrame, *, max_duration: timedelta, quarantined_at: datetime | Column) -> SessionPairs:
    """Workout events of some sessions -> (completed sessions, invalid-session quarantine rows).

    Completed: both events and start_time < end_time <= start_time + max_duration. Invalid: both
    events and the bounds broken (stop at or before start, or longer than ``max_duration``), one
    quarantine row under the stop record. A start without a stop (or a stop without a start) is
    neither. See :func:`classify_sessions` for the input.
    """
    classified = classify_sessions(events_df, max_duration=max_duration)
    return SessionPairs(
        completed=completed_sessions(classified),
        invalid=invalid_sessions(classified, quarantined_at=quarantined_at),
    )


def workout_bpm(
    completed_df: DataFrame,
    heart_rate_df: DataFrame,
    users_df: DataFrame,
    *,
    bucket: timedelta = timedelta(hours=1),
) -> DataFrame:
    """Completed sessions x valid readings of the user's device with start_time < time <= end_time.

    ``completed_df`` (``COMPLETED_WORKOUTS``), ``heart_rate_df`` (``HEART_RATE``) and ``users_df``
    (``USERS``) may each be a subset: only the affected sessions, or only the new readings. Output:
    ``WORKOUT_BPM`` rows. Readings with ``valid`` false or NULL are left out.

    The range condition is planned as an equi-join on (device_id, time bucket) plus a filter: each
    session is exploded into the ``bucket``-wide slots it overlaps (a few per session, since
    sessions are bounded), each reading falls in exactly one slot, so a reading pairs with a
    session at most once and no cartesian product is formed.
    """
    bucket_micros = _timedelta_micros(bucket)
    if bucket_micros <= 0:
        raise InvalidConfigError(f"bucket must be positive, got {bucket!r}")

    def slot(ts: Column) -> Column:
        return F.floor(F.unix_micros(ts) / F.lit(bucket_micros)).cast("long")

    devices = users_df.filter(F.col("device_id").isNotNull()).select("user_id", "device_id")
    sessions = (
        completed_df.filter(F.col("start_time") < F.col("end_time"))
        .select(*COMPLETED_WORKOUTS.fieldNames())
        .join(devices, on="user_id", how="inner")
        .withColumn("_slot", F.explode(F.sequence(slot(F.col("start_time")), slot(F.col("end_time")))))
    )
    readings = (
        heart_rate_df.filter(F.col("valid") & F.col("time").isNotNull())
        .select(
            F.col("device_id").alias("_device_id"),
            F.col("time"),
            F.col("heartrate"),
        )
        .withColumn("_slot", slot(F.col("time")))
    )
    joined = sessions.join(
        readings,
        on=(
            (sessions["device_id"] == readings["_device_id"])
            & (sessions["_slot"] == readings["_slot"])
            & (readings["time"] > sessions["start_time"])
            & (readings["time"] <= sessions["end_time"])
        ),
        how="inner",
    )
    return joined.select(*[F.col(f.name).cast(f.dataType).alias(f.name) for f in WORKOUT_BPM.fields])


def sessions_near_readings(completed_df: DataFrame, heart_rate_df: DataFrame, users_df: DataFrame) -> DataFrame:
    """The keys of the sessions some of ``heart_rate_df``'s readings may fall in, without the band join.

    Every session :func:`workout_bpm` pairs with one of the readings is listed: the completed
    sessions of each reading device's users that overlap the range of that device's valid readings
    (start_time < the latest, end_time >= the earliest). The readings are first reduced to one row
    per device and joined by equality (device_id, then user_id), so no session is cut into slots
    and no reading is compared with a session.

    A superset: a session overlapping the range of its device's readings without holding one (it
    lies in a gap between them) is listed too. Recomputing it gives the rows it already has, so a
    writer that recomputes and replaces these scopes ends with the same rows as with the exact set.
    """
    ranges = (
        heart_rate_df.filter(F.col("valid") & F.col("time").isNotNull() & F.col("device_id").isNotNull())
        .groupBy("device_id")
        .agg(F.min("time").alias("_earliest"), F.max("time").alias("_latest"))
    )
    owners = users_df.filter(F.col("device_id").isNotNull()).select("user_id", "device_id").join(ranges, "device_id")
    return (
        completed_df.join(owners, "user_id")
        .filter(
            (F.col("start_time") < F.col("end_time"))
            & (F.col("start_time") < F.col("_latest"))
            & (F.col("end_time") >= F.col("_earliest"))
        )
        .select(*SESSION_KEY)
        .distinct()
    )
