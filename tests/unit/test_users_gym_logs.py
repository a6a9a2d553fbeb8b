"""Silver rules of the SQL source: latest registration per user, gym visits, member of a visit."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from chispa import assert_df_equality
from pyspark.sql import SparkSession
from pyspark.sql.types import LongType, StructField, StructType

from fitbit_stream.schemas import GYM_LOGINS_BZ, GYM_LOGS, REGISTERED_USERS_BZ, USERS
from fitbit_stream.transforms.gym import gym_logs, latest_registrations, member_of_visits

T0 = datetime(2023, 3, 1, 8, 0, tzinfo=UTC)
L1 = datetime(2023, 3, 1, 12, 0, tzinfo=UTC)
L2 = datetime(2023, 3, 1, 12, 5, tzinfo=UTC)
L3 = datetime(2023, 3, 1, 12, 10, tzinfo=UTC)
MAC1, MAC2, MAC3, MAC4, MAC5 = (f"aa:bb:cc:dd:ee:0{i}" for i in range(1, 6))
H = timedelta(hours=1)


# --- latest_registrations ------------------------------------------------------------------------


def test_latest_registration_wins(spark: SparkSession) -> None:
    bz = spark.createDataFrame(
        [
            # user 1 changed device; the newer registration was observed first (late old version).
            (1, 200, MAC1, T0 + 24 * H, L1),
            (1, 100, MAC1, T0, L2),
            # user 2: same registration_timestamp twice, the later observed version wins.
            (2, 300, MAC2, T0, L1),
            (2, 301, MAC2, T0, L2),
            # user 3: a NULL registration_timestamp never beats a known one.
            (3, 400, MAC3, None, L3),
            (3, 401, MAC3, T0, L1),
            # user 4: only a NULL timestamp; duplicate identical reads collapse to one row.
            (4, 500, None, None, L1),
            (4, 500, None, None, L1),
            # user 5: full tie on timestamp and load_time: the greater device_id, deterministically.
            (5, 600, MAC5, T0, L1),
            (5, 601, MAC5, T0, L1),
        ],
        REGISTERED_USERS_BZ,
    )
    expected = spark.createDataFrame(
        [
            (1, 200, MAC1, T0 + 24 * H),
            (2, 301, MAC2, T0),
            (3, 401, MAC3, T0),
            (4, 500, None, None),
            (5, 601, MAC5, T0),
        ],
        USERS,
    )
    assert_df_equality(
        latest_registrations(bz),
        expected,
        ignore_row_order=True,
        ignore_nullable=True,
        ignore_column_order=True,
    )


def test_latest_registration_does_not_depend_on_row_order(spark: SparkSession) -> None:
    rows = [(5, 600, MAC5, T0, L1), (5, 601, MAC5, T0, L1), (5, 599, MAC4, T0 - H, L3)]
    first = latest_registrations(spark.createDataFrame(rows, REGISTERED_USERS_BZ)).collect()
    second = latest_registrations(spark.createDataFrame(rows[::-1], REGISTERED_USERS_BZ)).collect()
    assert first == second
    assert [(r.user_id, r.device_id) for r in first] == [(5, 601)]


# --- gym_logs ------------------------------------------------------------------------------------


def test_gym_logs_latest_observed_logout(spark: SparkSession) -> None:
    login = T0
    bz = spark.createDataFrame(
        [
            # MAC1: seen open, then closed.
            (MAC1, 1, login, None, L1),
            (MAC1, 1, login, login + 2 * H, L2),
            # MAC2: closed, then the logout was corrected (to an earlier time): the correction wins.
            (MAC2, 1, login, login + 3 * H, L1),
            (MAC2, 1, login, login + 2 * H, L2),
            # MAC3: open only (read twice): NULL logout.
            (MAC3, 1, login, None, L1),
            (MAC3, 1, login, None, L2),
            # MAC4: closed version rows arrive in reverse order, then an open-looking re-read.
            (MAC4, 2, login, None, L3),
            (MAC4, 2, login, login + H, L2),
            (MAC4, 2, login, None, L1),
            # MAC1 at another gym and another login: separate visits; an exact duplicate collapses.
            (MAC1, 2, login, login + H, L1),
            (MAC1, 2, login, login + H, L1),
            (MAC1, 1, login + 5 * H, login + 6 * H, L3),
        ],
        GYM_LOGINS_BZ,
    )
    expected = spark.createDataFrame(
        [
            (MAC1, 1, login, login + 2 * H),
            (MAC2, 1, login, login + 2 * H),
            (MAC3, 1, login, None),
            (MAC4, 2, login, login + H),
            (MAC1, 2, login, login + H),
            (MAC1, 1, login + 5 * H, login + 6 * H),
        ],
        GYM_LOGS,
    )
    assert_df_equality(gym_logs(bz), expected, ignore_row_order=True, ignore_nullable=True, ignore_column_order=True)


def test_gym_logs_incremental_versions_close_the_visit(spark: SparkSession) -> None:
    # The writer recomputes a visit from all its bronze versions: the closing version of a later
    # batch must replace the open row (PITFALLS 5: no NULL > comparison, no dedup dropping it).
    open_only = spark.createDataFrame([(MAC1, 1, T0, None, L1)], GYM_LOGINS_BZ)
    both = spark.createDataFrame([(MAC1, 1, T0, None, L1), (MAC1, 1, T0, T0 + H, L2)], GYM_LOGINS_BZ)
    assert [tuple(r) for r in gym_logs(open_only).collect()] == [(MAC1, 1, T0.replace(tzinfo=None), None)]
    assert [tuple(r) for r in gym_logs(both).collect()] == [
        (MAC1, 1, T0.replace(tzinfo=None), (T0 + H).replace(tzinfo=None))
    ]


# --- member_of_visits ----------------------------------------------------------------------------


def test_member_of_visits(spark: SparkSession) -> None:
    users = spark.createDataFrame(
        [
            (1, 100, MAC1, T0),
            # MAC2 moved from user 2 to user 3: the newer registration is the member.
            (2, 200, MAC2, T0 - 48 * H),
            (3, 300, MAC2, T0 - 24 * H),
            (4, 400, None, T0),  # no mac: member of nothing
        ],
        USERS,
    )
    visits = spark.createDataFrame(
        [
            (MAC1, 1, T0, T0 + H),
            (MAC1, 1, T0 + 3 * H, None),
            (MAC2, 2, T0, T0 + 2 * H),
            (MAC3, 1, T0, T0 + H),  # nobody's mac: kept, user_id NULL
            (None, 1, T0, T0 + H),
        ],
        GYM_LOGS,
    )
    schema = StructType([*GYM_LOGS.fields, StructField("user_id", LongType())])
    expected = spark.createDataFrame(
        [
            (MAC1, 1, T0, T0 + H, 1),
            (MAC1, 1, T0 + 3 * H, None, 1),
            (MAC2, 2, T0, T0 + 2 * H, 3),
            (MAC3, 1, T0, T0 + H, None),
            (None, 1, T0, T0 + H, None),
        ],
        schema,
    )
    assert_df_equality(
        member_of_visits(visits, users),
        expected,
        ignore_row_order=True,
        ignore_nullable=True,
        ignore_column_order=True,
    )
