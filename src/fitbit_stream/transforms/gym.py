"""Silver rules of the SQL source: ``users`` and ``gym_logs`` (CONTRACT.md §1.2, §2.2).

The SQL bronze tables hold every distinct version of a source row that was observed, with its
``load_time``. Silver keeps one row per source key:

- :func:`latest_registrations`: per user_id the registration with the greatest
  registration_timestamp;
- :func:`gym_logs`: per visit (mac_address, gym, login) the logout of the latest observed version
  that has one, NULL while the visit is open;
- :func:`member_of_visits`: the member (user_id) of each visit, for the gold gym tables.

Each works on whole tables or on every bronze version of the keys a micro-batch touched; the
writer MERGEs the result with a null-safe change test (``NOT (t.logout <=> s.logout)``), never
``s.logout > t.logout``, which is NULL while the stored visit is open (PITFALLS 5).
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from fitbit_stream.schemas import GYM_LOGS, TABLES, USERS

__all__ = [
    "VISIT_KEY",
    "gym_logs",
    "latest_registrations",
    "member_of_visits",
    "registration_order",
]

#: Key of ``gym_logs`` (and of a source ``gym_logins`` row): (mac_address, gym, login).
VISIT_KEY: tuple[str, ...] = TABLES["gym_logs"].key


def registration_order() -> list[Column]:
    """Newest first: the order in which the registrations of one user compete.

    The greatest registration_timestamp wins. Ties (the source row re-read with the same
    timestamp but other values) go to the latest observed version (greatest load_time), then to
    the greatest device_id and mac_address so that the choice never depends on row order.
    NULLs sort last at every step, so a known value always beats a missing one.
    """
    return [
        F.col("registration_timestamp").desc_nulls_last(),
        F.col("load_time").desc_nulls_last(),
        F.col("device_id").desc_nulls_last(),
        F.col("mac_address").desc_nulls_last(),
    ]


def latest_registrations(registered_users_bz_df: DataFrame) -> DataFrame:
    """``registered_users_bz`` versions -> ``USERS``: one row per user_id, see :func:`registration_order`."""
    # row_number, never rank: exactly one row per user even on full ties (PITFALLS 3).
    w = Window.partitionBy("user_id").orderBy(*registration_order())
    return (
        registered_users_bz_df.withColumn("_rn", F.row_number().over(w))
        .filter(F.col("_rn") == 1)
        .select(*[F.col(f.name).cast(f.dataType).alias(f.name) for f in USERS.fields])
    )


def gym_logs(gym_logins_bz_df: DataFrame) -> DataFrame:
    """``gym_logins_bz`` versions -> ``GYM_LOGS``: one row per (mac_address, gym, login).

    logout is the one of the latest observed version (greatest load_time) among the versions that
    have a logout, so a visit seen open and then closed is closed, a corrected logout replaces the
    earlier one even when it is earlier in time, and a later open-looking re-read does not reopen
    it. logout is NULL while no version has one. Aggregating (instead of keeping one whole row
    per key) is what stops the open version from hiding the logout update (PITFALLS 5).
    """
    logout = F.col("logout")
    # max over (load_time, logout) structs: NULL structs (versions without a logout) are skipped;
    # at equal load_time the greater logout wins, so the result never depends on row order.
    closing = F.max(F.when(logout.isNotNull(), F.struct(F.col("load_time"), logout)))
    return (
        gym_logins_bz_df.groupBy(*VISIT_KEY)
        .agg(closing.getField("logout").alias("logout"))
        .select(*[F.col(f.name).cast(f.dataType).alias(f.name) for f in GYM_LOGS.fields])
    )


def member_of_visits(gym_logs_df: DataFrame, users_df: DataFrame) -> DataFrame:
    """Visits with their member: ``GYM_LOGS`` columns plus user_id (NULL when nobody has the mac).

    The member is the user whose ``users.mac_address`` equals the visit's mac_address. Every visit
    is kept (a left join) and appears exactly once: should several users carry the same
    mac_address, the one with the newest registration (then the greatest user_id) is the member.
    """
    w = Window.partitionBy("mac_address").orderBy(
        F.col("registration_timestamp").desc_nulls_last(), F.col("user_id").desc_nulls_last()
    )
    members = (
        users_df.filter(F.col("mac_address").isNotNull())
        .withColumn("_rn", F.row_number().over(w))
        .filter(F.col("_rn") == 1)
        .select("mac_address", F.col("user_id").cast("long").alias("user_id"))
    )
    return gym_logs_df.select(*GYM_LOGS.fieldNames()).join(members, on="mac_address", how="left")
