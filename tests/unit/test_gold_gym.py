"""Gold gym_summary and gym_occupancy (CONTRACT.md §2.3, §3.4), with literal rows."""

from __future__ import annotations

import random
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta

from chispa import assert_df_equality
from pyspark.sql import DataFrame, SparkSession

from fitbit_stream.schemas import COMPLETED_WORKOUTS, GYM_LOGS, GYM_OCCUPANCY, GYM_SUMMARY, USERS
from fitbit_stream.transforms.gold_gym import (
    GYM_SUMMARY_KEY,
    OCCUPANCY_KEY,
    affected_hours,
    gym_occupancy,
    gym_summary,
    macs_with_visits_holding,
)
from fitbit_stream.transforms.gym import VISIT_KEY

AA, BB, CC, DD, EE = (f"aa:bb:cc:dd:ee:{n}" for n in ("0a", "0b", "0c", "0d", "0e"))


def ts(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def test_each_table_key_in_its_contract_order() -> None:
    """docs/contract.md §2.2, §2.3: gym_logs is keyed (mac_address, gym, login), gym_summary (gym,
    mac_address, login): the same visit, one name per table's order."""
    assert VISIT_KEY == ("mac_address", "gym", "login")
    assert GYM_SUMMARY_KEY == ("gym", "mac_address", "login")
    assert OCCUPANCY_KEY == ("gym", "hour")
    assert tuple(GYM_SUMMARY.fieldNames()[: len(GYM_SUMMARY_KEY)]) == GYM_SUMMARY_KEY


def test_a_new_session_touches_a_mac_address_only_where_a_closed_visit_holds_its_start(spark: SparkSession) -> None:
    """CONTRACT.md §2.3: a visit counts its member's sessions with start_time in [login, logout], and
    only closed visits have rows; so only those sessions can change a gym_summary row."""
    users = spark.createDataFrame(
        [
            (1, 10, AA, ts("2023-01-01 00:00")),
            (2, 20, BB, ts("2023-01-01 00:00")),
            (3, 30, CC, ts("2023-01-01 00:00")),
            (4, 40, None, ts("2023-01-01 00:00")),
        ],
        USERS,
    )
    logs = spark.createDataFrame(
        [
            (AA, 1, ts("2023-06-01 08:00"), ts("2023-06-01 09:00")),  # closed
            (BB, 1, ts("2023-06-01 08:00"), None),  # open
            (CC, 1, ts("2023-06-01 08:00"), ts("2023-06-01 09:00")),  # closed
            (DD, 1, ts("2023-06-01 08:00"), ts("2023-06-01 09:00")),  # nobody's
        ],
        GYM_LOGS,
    )
    sessions = spark.createDataFrame(
        [
            (1, ts("2023-06-01 08:00")),  # at login: held (both ends count)
            (1, ts("2023-06-01 09:00")),  # at logout: held, AA once
            (2, ts("2023-06-01 08:30")),  # BB's visit is open: no row to change
            (3, ts("2023-06-01 09:00:01")),  # after CC's logout: not held
            (4, ts("2023-06-01 08:30")),  # a member without a mac address
            (5, ts("2023-06-01 08:30")),  # not a registered user
        ],
        "user_id bigint, start_time timestamp",
    )
    assert_df_equality(
        macs_with_visits_holding(sessions, users, logs),
        spark.createDataFrame([(AA,)], "mac_address string"),
        ignore_nullable=True,
    )


# --- gym_summary ---------------------------------------------------------------------------------


def test_gym_summary(spark: SparkSession) -> None:
    users = spark.createDataFrame(
        [
            (1, 101, AA, ts("2024-01-01 00:00")),
            (1, 101, AA, ts("2024-01-01 00:00")),  # duplicate row
            (2, 102, BB, ts("2024-01-01 00:00")),
            (3, 103, None, ts("2024-01-01 00:00")),  # NULL mac: member of nothing
        ],
        USERS,
    )
    completed = spark.createDataFrame(
        [
            # user 1, visit 10:00:00-11:05:00 at gym 1
            (1, 2, 1, ts("2024-03-01 10:00:00"), ts("2024-03-01 11:05:00")),  # starts on login: 65 min
            (1, 2, 1, ts("2024-03-01 10:00:00"), ts("2024-03-01 11:05:00")),  # duplicate row
            (1, 1, 2, ts("2024-03-01 11:05:00"), ts("2024-03-01 11:20:00.3")),  # starts on logout
            (1, 3, 3, ts("2024-03-01 10:10:00.123456"), ts("2024-03-01 10:20:00.123456")),  # 10 min
            (1, 4, 4, ts("2024-03-01 09:59:59.999999"), ts("2024-03-01 10:30:00")),  # starts before
            (1, 5, 5, ts("2024-03-01 11:05:00.000001"), ts("2024-03-01 11:30:00")),  # starts after
            # user 1's second visit, at gym 2
            (1, 1, 6, ts("2024-03-01 13:30:00"), ts("2024-03-01 13:45:00")),
            # user 2 exercises outside the visit only
            (2, 1, 1, ts("2024-03-01 11:00:00"), ts("2024-03-01 11:10:00")),
            # user 3 (NULL mac) exercises during a visit of a mac nobody owns
            (3, 1, 1, ts("2024-03-01 23:59:30"), ts("2024-03-02 00:05:00")),
        ],
        COMPLETED_WORKOUTS,
    )
    logs = spark.createDataFrame(
        [
            (AA, 1, ts("2024-03-01 10:00:00"), ts("2024-03-01 11:05:00")),
            (AA, 1, ts("2024-03-01 10:00:00"), ts("2024-03-01 11:05:00")),  # duplicate row
            (AA, 2, ts("2024-03-01 13:00:00"), ts("2024-03-01 14:00:00")),
            (AA, 1, ts("2024-03-02 10:00:00"), None),  # open: no row yet
            # a member's visit without sessions; 600.3 s = 10.005 min rounds half up to 10.01
            (BB, 1, ts("2024-03-01 12:00:30"), ts("2024-03-01 12:10:30.3")),
            # a mac nobody has registered, over midnight: dated by login
            (CC, 2, ts("2024-03-01 23:59:00"), ts("2024-03-02 00:10:20")),
            (None, 1, ts("2024-03-01 10:00:00"), ts("2024-03-01 11:00:00")),  # NULL key column
        ],
        GYM_LOGS,
    )
    actual = gym_summary(logs, users, completed)
    expected = spark.createDataFrame(
        [
            # 65 + 15.005 + 10 = 90.005 minutes, exactly, so half up gives 90.01
            (
                1,
                AA,
                ts("2024-03-01 10:00:00"),
                date(2024, 3, 1),
                ts("2024-03-01 11:05:00"),
                [1, 2, 3],
                3,
                65.0,
                90.01,
            ),
            (
                2,
                AA,
                ts("2024-03-01 13:00:00"),
                date(2024, 3, 1),
                ts("2024-03-01 14:00:00"),
                [1],
                1,
                60.0,
                15.0,
            ),
            (
                1,
                BB,
                ts("2024-03-01 12:00:30"),
                date(2024, 3, 1),
                ts("2024-03-01 12:10:30.3"),
                [],
                0,
                10.01,
                0.0,
            ),
            (
                2,
                CC,
                ts("2024-03-01 23:59:00"),
                date(2024, 3, 1),
                ts("2024-03-02 00:10:20"),
                [],
                0,
                11.33,
                0.0,
            ),
        ],
        GYM_SUMMARY,
    )
    assert_df_equality(actual, expected, ignore_row_order=True, ignore_nullable=True)

    # recomputing only the visit a batch touched gives that visit's row alone
    only = gym_summary(logs.where(f"mac_address = '{AA}' AND gym = 2"), users, completed)
    assert_df_equality(
        only,
        expected.where(f"gym = 2 AND mac_address = '{AA}'"),
        ignore_row_order=True,
        ignore_nullable=True,
        ignore_column_order=True,
    )


def test_gym_summary_65_minute_session_is_65(spark: SparkSession) -> None:
    # PITFALLS 2: with 32-bit float epochs this came out 66.13
    users = spark.createDataFrame([(7, 70, DD, ts("2023-01-01 00:00"))], USERS)
    completed = spark.createDataFrame(
        [(7, 3, 1, ts("2023-06-01 08:00:00.123456"), ts("2023-06-01 09:05:00.123456"))], COMPLETED_WORKOUTS
    )
    logs = spark.createDataFrame([(DD, 5, ts("2023-06-01 07:59:59.5"), ts("2023-06-01 09:10:00"))], GYM_LOGS)
    row = gym_summary(logs, users, completed).first()
    assert row is not None
    assert (row.workouts, row.num_sessions, row.minutes_exercising, row.minutes_in_gym) == (
        [3],
        1,
        65.0,
        70.01,
    )


# --- gym_occupancy -------------------------------------------------------------------------------


def _logs(spark: SparkSession, rows: list[tuple[str | None, int, str, str | None]]) -> DataFrame:
    return spark.createDataFrame(
        [(mac, gym, ts(login), None if logout is None else ts(logout)) for mac, gym, login, logout in rows],
        GYM_LOGS,
    )


OCCUPANCY_LOGS: list[tuple[str | None, int, str, str | None]] = [
    (AA, 1, "2024-03-01 10:00:30", "2024-03-01 10:02:00"),  # present at 10:01 only
    (BB, 1, "2024-03-01 10:00:00", "2024-03-01 10:30:00"),  # 10:00 .. 10:29
    (BB, 1, "2024-03-01 10:00:00", "2024-03-01 10:30:00"),  # duplicate row
    (CC, 1, "2024-03-01 10:15:00", "2024-03-01 11:10:00"),  # spans two hours: 45 + 10 minutes
    (AA, 1, "2024-03-01 10:20:00", "2024-03-01 10:25:00"),  # same mac again, overlapping b and c
    (DD, 1, "2024-03-01 10:00:00", None),  # open: ignored
    (None, 1, "2024-03-01 10:00:00", "2024-03-01 10:50:00"),  # NULL key column: ignored
    (EE, 1, "2024-03-01 10:59:59", "2024-03-01 11:00:00"),  # no minute instant at all
    (AA, 2, "2024-03-01 10:00:00", "2024-03-01 10:01:00"),  # other gym, 10:00 only
    # one leaves as the other arrives: never two at once
    (AA, 3, "2024-03-01 09:00:00", "2024-03-01 09:30:00"),
    (BB, 3, "2024-03-01 09:30:00", "2024-03-01 10:00:00"),
    # a visit of more than a day
    (CC, 4, "2024-03-01 23:30:00", "2024-03-03 00:00:00"),
]

OCCUPANCY_EXPECTED = [
    # gym 1, 10:xx: presences 1 + 30 + 45 + 5 = 81; b, c and the second aa visit at 10:20..10:24
    (1, ts("2024-03-01 10:00"), 3, 81 / 60, 3),
    (1, ts("2024-03-01 11:00"), 1, 10 / 60, 1),
    (2, ts("2024-03-01 10:00"), 1, 1 / 60, 1),
    (3, ts("2024-03-01 09:00"), 2, 1.0, 1),
    (4, ts("2024-03-01 23:00"), 1, 0.5, 1),
    *[(4, ts("2024-03-02 00:00") + timedelta(hours=h), 1, 1.0, 1) for h in range(24)],
]


def test_gym_occupancy(spark: SparkSession) -> None:
    actual = gym_occupancy(_logs(spark, OCCUPANCY_LOGS))
    expected = spark.createDataFrame(OCCUPANCY_EXPECTED, GYM_OCCUPANCY)
    assert_df_equality(actual, expected, ignore_row_order=True, ignore_nullable=True, ignore_column_order=True)


def test_affected_hours_and_partial_recompute(spark: SparkSession) -> None:
    logs = _logs(spark, OCCUPANCY_LOGS)
    # c's logout is corrected from 11:10 to 12:30: pass the replaced and the new version
    changed = _logs(
        spark,
        [
            (CC, 1, "2024-03-01 10:15:00", "2024-03-01 11:10:00"),
            (CC, 1, "2024-03-01 10:15:00", "2024-03-01 12:30:00"),
            (DD, 1, "2024-03-01 10:00:00", None),  # still open: touches nothing
            (EE, 1, "2024-03-01 10:59:59", "2024-03-01 11:00:00"),  # touches nothing
        ],
    )
    keys = affected_hours(changed)
    hour = {h: ts(f"2024-03-01 {h}:00") for h in (10, 11, 12)}
    expected_keys = spark.createDataFrame([(1, hour[10]), (1, hour[11]), (1, hour[12])], "gym BIGINT, hour TIMESTAMP")
    assert_df_equality(keys, expected_keys, ignore_row_order=True, ignore_nullable=True, ignore_column_order=True)

    corrected = logs.where(f"NOT (mac_address <=> '{CC}' AND gym = 1)").unionByName(
        _logs(spark, [(CC, 1, "2024-03-01 10:15:00", "2024-03-01 12:30:00")])
    )
    actual = gym_occupancy(corrected, hours=keys)
    expected = spark.createDataFrame(
        [
            (1, hour[10], 3, 81 / 60, 3),
            (1, hour[11], 1, 1.0, 1),
            (1, hour[12], 1, 0.5, 1),
        ],
        GYM_OCCUPANCY,
    )
    assert_df_equality(actual, expected, ignore_row_order=True, ignore_nullable=True, ignore_column_order=True)

    # an hour nobody is present in any more has no row: the writer deletes that key
    gone = gym_occupancy(
        corrected.where(f"mac_address <> '{CC}'"),
        hours=spark.createDataFrame([(1, hour[11]), (9, hour[10])], "gym BIGINT, hour TIMESTAMP"),
    )
    assert gone.collect() == []


def test_gym_occupancy_matches_minute_by_minute_reference(spark: SparkSession) -> None:
    rng = random.Random(20240301)
    base = ts("2024-03-01 08:00")
    rows: list[tuple[str, int, datetime, datetime]] = []
    for i in range(60):
        login = base + timedelta(seconds=rng.randrange(0, 6 * 3600), microseconds=rng.choice([0, 0, 250_000]))
        logout = login + timedelta(seconds=rng.randrange(0, 3 * 3600), microseconds=rng.choice([0, 1]))
        rows.append((f"mac-{rng.randrange(12)}", rng.randrange(1, 4), login, logout + timedelta(microseconds=i)))

    present: dict[tuple[int, datetime], list[tuple[datetime, str]]] = defaultdict(list)
    for mac, gym, login, logout in rows:
        m = login.replace(second=0, microsecond=0)
        if m < login:
            m += timedelta(minutes=1)
        while m < logout:
            present[(gym, m.replace(minute=0))].append((m, mac))
            m += timedelta(minutes=1)
    expected_rows = []
    for (gym, hour), hits in present.items():
        per_minute: dict[datetime, int] = defaultdict(int)
        for m, _ in hits:
            per_minute[m] += 1
        expected_rows.append((gym, hour, len({mac for _, mac in hits}), len(hits) / 60, max(per_minute.values())))

    actual = gym_occupancy(spark.createDataFrame(rows, GYM_LOGS))
    assert_df_equality(
        actual,
        spark.createDataFrame(expected_rows, GYM_OCCUPANCY),
        ignore_row_order=True,
        ignore_nullable=True,
        ignore_column_order=True,
    )
