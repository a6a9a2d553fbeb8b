"""Gold ``gym_summary`` and ``gym_occupancy`` (CONTRACT.md §2.3, §3.4).

A visit counts once it is closed (logout not NULL). Durations are computed on whole microseconds
and divided as decimals, so a 65-minute session is 65.0 minutes, not 66.13 (PITFALLS 2), and a
half-way value rounds half up exactly as written, never a float's neighbour.

Occupancy is computed per visit and UTC hour rather than per minute: a visit is cut into the
hours it touches (one row per hour, however long the visit), its present minutes in each hour
are an interval of epoch minutes, and the peak of an hour is the maximum of a running sum of
+1/-1 interval edges. This gives exactly the per-minute rule of §3.4 at 1/60 of the rows.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from fitbit_stream.schemas import GYM_OCCUPANCY, GYM_SUMMARY, TABLES
from fitbit_stream.transforms.gym import VISIT_KEY
from fitbit_stream.transforms.workouts import SESSION_KEY

__all__ = [
    "GYM_SUMMARY_KEY",
    "OCCUPANCY_KEY",
    "affected_hours",
    "closed_visits",
    "gym_occupancy",
    "gym_summary",
    "macs_with_visits_holding",
]

#: Key of ``gym_summary``, one row per closed visit: (gym, mac_address, login), the columns of the
#: visit key :data:`~fitbit_stream.transforms.gym.VISIT_KEY` in the order the contract gives this table.
GYM_SUMMARY_KEY: tuple[str, ...] = TABLES["gym_summary"].key
#: Key of ``gym_occupancy``: (gym, hour).
OCCUPANCY_KEY: tuple[str, ...] = TABLES["gym_occupancy"].key

_MICROS_PER_MINUTE = 60_000_000
_MINUTES_PER_HOUR = 60
_SECONDS_PER_HOUR = 3600

# Internal columns of _visit_hours (epoch minutes / epoch hours, BIGINT).
_FIRST, _LAST, _H, _FROM, _TO = "__first_minute", "__last_minute", "__epoch_hour", "__from", "__to"


def _floor_div(value: Column, divisor: int) -> Column:
    # Integer floor/ceil through a decimal quotient: a non-integer quotient is at least 1/divisor
    # away from an integer, far more than the decimal's rounding, so the result is exact for any
    # instant (no reliance on a DOUBLE's 53 bits, no truncation toward zero before 1970).
    return F.floor(value.cast("decimal(20,0)") / F.lit(divisor).cast("decimal(20,0)")).cast("long")


def _ceil_div(value: Column, divisor: int) -> Column:
    return F.ceil(value.cast("decimal(20,0)") / F.lit(divisor).cast("decimal(20,0)")).cast("long")


def _minutes(micros: Column) -> Column:
    """Whole microseconds -> minutes rounded half up to 2 decimals, exactly, as DOUBLE."""
    exact = micros.cast("decimal(20,0)") / F.lit(_MICROS_PER_MINUTE).cast("decimal(9,0)")
    return F.round(exact, 2).cast("double")


def closed_visits(gym_logs_df: DataFrame) -> DataFrame:
    """The closed visits of ``gym_logs``: (mac_address, gym, login, logout), one row per key.

    A visit with a NULL logout is open and not counted yet. A row with a NULL key column cannot
    come from the source table (its key is a primary key) and could never be MERGEd by key, so
    it is left out too. Exact duplicates of a key collapse to one row.
    """
    return _closed_rows(gym_logs_df).dropDuplicates(list(VISIT_KEY))


def _closed_rows(gym_logs_df: DataFrame) -> DataFrame:
    # Closed rows without the per-key collapse: affected_hours must see every version it is given.
    cols = [*VISIT_KEY, "logout"]
    not_null = F.lit(True)
    for c in cols:
        not_null = not_null & F.col(c).isNotNull()
    return gym_logs_df.where(not_null).select(*cols)


def gym_summary(gym_logs_df: DataFrame, users_df: DataFrame, completed_df: DataFrame) -> DataFrame:
    """``gym_logs`` x ``users`` x ``completed_workouts`` -> ``GYM_SUMMARY``, one row per closed visit.

    The member of a visit is the user whose ``users.mac_address`` equals the visit's; the visit
    counts that member's completed sessions whose start_time lies in [login, logout], both ends
    included. workouts is the sorted distinct workout_id list, num_sessions the number of those
    sessions, minutes_in_gym = round((logout - login) / 60 s, 2) and minutes_exercising =
    round(sum(end_time - start_time) / 60 s, 2). A visit without sessions, including a visit
    whose mac_address is nobody's, still has its row with [], 0 and 0.0. Should two users share a
    mac_address, the sessions of both count (the row stays one per visit).

    To recompute some visits, pass those visits as ``gym_logs_df`` and at least the members'
    completed sessions (the whole tables do).
    """
    visits = closed_visits(gym_logs_df)
    members = (
        users_df.where(F.col("mac_address").isNotNull() & F.col("user_id").isNotNull())
        .select("mac_address", "user_id")
        .dropDuplicates()
    )
    sessions = completed_df.dropDuplicates(list(SESSION_KEY)).select(*SESSION_KEY, "start_time", "end_time")
    member_sessions = members.join(sessions, "user_id").select(
        *[F.col(c).alias(f"__s_{c}") for c in ("mac_address", *SESSION_KEY, "start_time", "end_time")]
    )
    start = F.col("__s_start_time")
    in_visit = (F.col("mac_address") == F.col("__s_mac_address")) & start.between(F.col("login"), F.col("logout"))
    duration = F.unix_micros(F.col("__s_end_time")) - F.unix_micros(start)
    summary = (
        visits.join(member_sessions, in_visit, "left")
        .groupBy(*GYM_SUMMARY_KEY, "logout")
        .agg(
            # collect_set skips NULLs, so a visit without sessions gets [] rather than NULL.
            F.array_sort(F.collect_set("__s_workout_id")).alias("workouts"),
            F.count("__s_user_id").alias("num_sessions"),
            F.coalesce(F.sum(duration), F.lit(0)).alias("__exercising_micros"),
        )
    )
    derived = {
        "date": F.to_date("login"),
        "minutes_in_gym": _minutes(F.unix_micros(F.col("logout")) - F.unix_micros(F.col("login"))),
        "minutes_exercising": _minutes(F.col("__exercising_micros")),
    }
    return summary.select(
        *[derived.get(f.name, F.col(f.name)).cast(f.dataType).alias(f.name) for f in GYM_SUMMARY.fields]
    )


def macs_with_visits_holding(sessions_df: DataFrame, users_df: DataFrame, gym_logs_df: DataFrame) -> DataFrame:
    """The mac addresses (one row each) whose ``gym_summary`` rows some sessions change.

    ``sessions_df`` holds sessions (user_id, start_time), say the newly completed ones. A session
    counts in a visit's row only when its member's mac address has a closed visit with login <=
    start_time <= logout (:func:`gym_summary`): a session of a member whose visits are all open, or
    who has none, changes no row. When such a visit closes later, its ``gym_logs`` change brings the
    mac address back.
    """
    members = users_df.where(F.col("mac_address").isNotNull() & F.col("user_id").isNotNull()).select(
        "user_id", "mac_address"
    )
    starts = sessions_df.select("user_id", "start_time").dropna().join(members, "user_id")
    visits = closed_visits(gym_logs_df).select(
        F.col("mac_address").alias("_mac"), F.col("login").alias("_login"), F.col("logout").alias("_logout")
    )
    holding = (F.col("mac_address") == F.col("_mac")) & F.col("start_time").between(F.col("_login"), F.col("_logout"))
    return starts.join(visits, holding, "left_semi").select("mac_address").distinct()


def _visit_hours(visits_df: DataFrame) -> DataFrame:
    """Closed visit rows cut into UTC hours: one row per (visit, hour it is present in).

    A visit is present at each minute instant m with login <= m < logout, i.e. the epoch minutes
    from ceil(login) to ceil(logout) - 1 (a login at 10:00:30 is first present at 10:01, a logout
    at 10:02:00 last at 10:01). A visit without such an instant has no row. Columns: the visit key
    (mac_address, gym, login), hour (TIMESTAMP) and the internal epoch-minute bounds of its
    presence within the hour (both inclusive).
    """
    visits = visits_df.select(
        *VISIT_KEY,
        _ceil_div(F.unix_micros(F.col("login")), _MICROS_PER_MINUTE).alias(_FIRST),
        (_ceil_div(F.unix_micros(F.col("logout")), _MICROS_PER_MINUTE) - 1).alias(_LAST),
    )
    first, last = F.col(_FIRST), F.col(_LAST)
    hours = visits.where(first <= last).withColumn(
        _H,
        F.explode(F.sequence(_floor_div(first, _MINUTES_PER_HOUR), _floor_div(last, _MINUTES_PER_HOUR))),
    )
    hour_start = F.col(_H) * _MINUTES_PER_HOUR
    return hours.select(
        *VISIT_KEY,
        F.timestamp_seconds(F.col(_H) * _SECONDS_PER_HOUR).alias("hour"),
        _H,
        F.greatest(first, hour_start).alias(_FROM),
        F.least(last, hour_start + (_MINUTES_PER_HOUR - 1)).alias(_TO),
    )


def _hour_keys(hours: DataFrame) -> DataFrame:
    return hours.select("gym", _floor_div(F.unix_seconds(F.col("hour")), _SECONDS_PER_HOUR).alias(_H)).distinct()


def _visits_overlapping(gym_logs_df: DataFrame, keys: DataFrame) -> DataFrame:
    k = keys.select(F.col("gym").alias("__k_gym"), F.col(_H).alias("__k_h"))
    k_start = F.timestamp_seconds(F.col("__k_h") * _SECONDS_PER_HOUR)
    k_end = F.timestamp_seconds((F.col("__k_h") + 1) * _SECONDS_PER_HOUR)
    # Necessary for presence at some m in [hour, hour + 59 min]: login <= m < hour + 1 h and
    # logout > m >= hour. The exact keys are kept after the visits are cut into hours.
    overlaps = (F.col("gym") == F.col("__k_gym")) & (F.col("login") < k_end) & (F.col("logout") > k_start)
    return gym_logs_df.join(k, overlaps, "left_semi")


def affected_hours(gym_logs_df: DataFrame) -> DataFrame:
    """The (gym, hour) keys of ``gym_occupancy`` that the given visits are present in.

    Pass every version of the visits a batch changed, the replaced one as well as the new one
    (a corrected logout also changes the hours the old logout covered). Recompute those keys
    with ``gym_occupancy(gym_logs, hours=...)`` and delete the keys the recompute does not
    return: an hour nobody is present in any more has no row.
    """
    return _visit_hours(_closed_rows(gym_logs_df)).select(*OCCUPANCY_KEY).distinct()


def gym_occupancy(gym_logs_df: DataFrame, *, hours: DataFrame | None = None) -> DataFrame:
    """``gym_logs`` -> ``GYM_OCCUPANCY`` (CONTRACT.md §3.4), one row per gym and UTC hour.

    For an hour with at least one present visit: visitors = distinct mac_address present at one
    of its minute instants, peak_occupancy = the most visits present at one instant and
    avg_occupancy = the number of (visit, instant) presences / 60 (minutes nobody is present
    count as 0). ``hours`` (gym, hour), e.g. from :func:`affected_hours`, restricts the result to
    those keys; only visits overlapping one of them are then read.
    """
    keys = None if hours is None else _hour_keys(hours)
    visits = closed_visits(gym_logs_df if keys is None else _visits_overlapping(gym_logs_df, keys))
    present = _visit_hours(visits)
    if keys is not None:
        present = present.join(keys, ["gym", _H], "left_semi")

    group = ["gym", _H, "hour"]
    totals = present.groupBy(*group).agg(
        F.count_distinct("mac_address").alias("visitors"),
        F.sum(F.col(_TO) - F.col(_FROM) + 1).alias("__presences"),
    )
    # Occupancy is a step function: +1 where a visit's presence in the hour starts, -1 the minute
    # after it ends. Summing the edges per minute before the running sum keeps a visit that
    # leaves and one that arrives on the same minute from showing a false peak.
    edges = present.select(*group, F.col(_FROM).alias("__m"), F.lit(1).alias("__d")).unionByName(
        present.select(*group, (F.col(_TO) + 1).alias("__m"), F.lit(-1).alias("__d"))
    )
    running = Window.partitionBy(*group).orderBy("__m").rowsBetween(Window.unboundedPreceding, Window.currentRow)
    peaks = (
        edges.groupBy(*group, "__m")
        .agg(F.sum("__d").alias("__d"))
        .withColumn("__level", F.sum("__d").over(running))
        .groupBy(*group)
        .agg(F.max("__level").alias("peak_occupancy"))
    )
    derived = {"avg_occupancy": F.col("__presences") / F.lit(float(_MINUTES_PER_HOUR))}
    return totals.join(peaks, group).select(
        *[derived.get(f.name, F.col(f.name)).cast(f.dataType).alias(f.name) for f in GYM_OCCUPANCY.fields]
    )
