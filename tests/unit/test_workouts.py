"""Workout sessions: first-ingested dedup, session pairing bounds, workout_bpm band join."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any

import pytest
from chispa import assert_df_equality
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.types import (
    IntegerType,
    LongType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

from fitbit_stream.errors import InvalidConfigError
from fitbit_stream.schemas import (
    COMPLETED_WORKOUTS,
    HEART_RATE,
    QUARANTINE,
    REGISTERED_USERS_BZ,
    USERS,
    WORKOUT_BPM,
    WORKOUTS,
)
from fitbit_stream.transforms.gym import latest_registrations
from fitbit_stream.transforms.workouts import (
    SESSION_KEY,
    SessionStatus,
    classify_sessions,
    first_ingested_events,
    format_duration,
    pair_sessions,
    sessions_near_readings,
    to_workouts,
    workout_bpm,
)

T0 = datetime(2023, 3, 1, 10, 0, tzinfo=UTC)
LOAD1 = datetime(2023, 3, 1, 12, 0, tzinfo=UTC)
LOAD2 = datetime(2023, 3, 1, 12, 1, tzinfo=UTC)
QAT = datetime(2023, 3, 1, 13, 0, tzinfo=UTC)
MAX = timedelta(hours=3)
US = timedelta(microseconds=1)

ACCEPTED = StructType(
    [
        StructField("user_id", LongType()),
        StructField("workout_id", IntegerType()),
        StructField("session_id", IntegerType()),
        StructField("action", StringType()),
        StructField("event_time", TimestampType()),
        StructField("key", StringType()),
        StructField("value", StringType()),
        StructField("topic", StringType()),
        StructField("partition", IntegerType()),
        StructField("offset", LongType()),
        StructField("timestamp", TimestampType()),
        StructField("load_time", TimestampType()),
    ]
)


def ev(
    user_id: int,
    session_id: int,
    action: str,
    time: datetime | None,
    offset: int,
    *,
    workout_id: int = 1,
    load_time: datetime = LOAD1,
    partition: int = 0,
) -> tuple[Any, ...]:
    """An accepted workout event with its bronze coordinates; value mirrors the payload."""
    value = json.dumps(
        {
            "user_id": user_id,
            "workout_id": workout_id,
            "session_id": session_id,
            "action": action,
            "timestamp": None if time is None else time.timestamp(),
        }
    )
    ts = time if time is not None else T0
    return (
        user_id,
        workout_id,
        session_id,
        action,
        time,
        str(user_id),
        value,
        "workout",
        partition,
        offset,
        ts,
        load_time,
    )


def accepted(spark: SparkSession, rows: Iterable[tuple[Any, ...]]) -> DataFrame:
    return spark.createDataFrame(list(rows), ACCEPTED)


def quarantine_row(record: tuple[Any, ...], detail: str) -> tuple[Any, ...]:
    _, _, _, _, _, key, value, topic, partition, offset, timestamp, _ = record
    return (key, value, topic, partition, offset, timestamp, "invalid_session", detail, QAT)


# --- to_workouts ---------------------------------------------------------------------------------


def test_to_workouts_first_ingested_wins(spark: SparkSession) -> None:
    late_dup = ev(1, 1, "start", T0 + timedelta(minutes=5), 7, load_time=LOAD2)
    first = ev(1, 1, "start", T0, 9, load_time=LOAD1)
    # Same load_time: partition then offset decide.
    p1 = ev(2, 1, "start", T0 + timedelta(minutes=1), 1, partition=1)
    p0 = ev(2, 1, "start", T0 + timedelta(minutes=2), 5, partition=0)
    exact_dup_a = ev(1, 1, "stop", T0 + timedelta(hours=1), 3)
    exact_dup_b = ev(1, 1, "stop", T0 + timedelta(hours=1), 4)
    null_time = ev(3, 1, "stop", None, 11)
    df = accepted(spark, [late_dup, p1, exact_dup_b, first, p0, exact_dup_a, null_time])

    expected = spark.createDataFrame(
        [
            (1, 1, 1, "start", T0),
            (1, 1, 1, "stop", T0 + timedelta(hours=1)),
            (2, 1, 1, "start", T0 + timedelta(minutes=2)),
            (3, 1, 1, "stop", None),
        ],
        WORKOUTS,
    )
    assert_df_equality(to_workouts(df), expected, ignore_row_order=True, ignore_nullable=True)

    with_coords = first_ingested_events(df).select("user_id", "session_id", "action", "partition", "offset")
    assert sorted(tuple(r) for r in with_coords.collect()) == [
        (1, 1, "start", 0, 9),
        (1, 1, "stop", 0, 3),
        (2, 1, "start", 0, 5),
        (3, 1, "stop", 0, 11),
    ]


def test_to_workouts_keeps_distinct_sessions_of_the_same_counter(spark: SparkSession) -> None:
    # session_id is a per-user counter: same session_id for another user or workout is another session.
    rows = [ev(1, 1, "start", T0, 1), ev(2, 1, "start", T0, 2), ev(1, 1, "start", T0, 3, workout_id=2)]
    expected = spark.createDataFrame([(1, 1, 1, "start", T0), (2, 1, 1, "start", T0), (1, 2, 1, "start", T0)], WORKOUTS)
    assert_df_equality(to_workouts(accepted(spark, rows)), expected, ignore_row_order=True, ignore_nullable=True)


# --- pair_sessions -------------------------------------------------------------------------------


def test_format_duration() -> None:
    assert format_duration(timedelta(hours=3)) == "3h"
    assert format_duration(timedelta(hours=3, minutes=5)) == "3h05m"
    assert format_duration(timedelta(hours=3, seconds=7)) == "3h00m07s"
    assert format_duration(timedelta(hours=3, microseconds=1)) == "3h00m00.000001s"
    assert format_duration(timedelta(minutes=90)) == "1h30m"


def test_pair_sessions_bounds(spark: SparkSession) -> None:
    stop_before = ev(1, 1, "stop", T0 - timedelta(minutes=1), 2)
    equal = ev(1, 2, "stop", T0, 4)
    exactly_max = ev(1, 3, "stop", T0 + MAX, 6)
    max_plus = ev(1, 4, "stop", T0 + MAX + US, 8)
    over_5m = ev(1, 9, "stop", T0 + MAX + timedelta(minutes=5), 20)
    dup_stop_first = ev(2, 7, "stop", T0 - timedelta(hours=1), 30, load_time=LOAD1)
    dup_stop_late = ev(2, 7, "stop", T0 + timedelta(hours=1), 31, load_time=LOAD2)
    rows = [
        ev(1, 1, "start", T0, 1),
        stop_before,
        ev(1, 2, "start", T0, 3),
        equal,
        ev(1, 3, "start", T0, 5),
        exactly_max,
        ev(1, 4, "start", T0, 7),
        max_plus,
        ev(1, 5, "start", T0, 9),  # start without stop
        ev(1, 6, "stop", T0, 10),  # stop without start
        # duplicate start with a different time: the first ingested (offset 12) wins, 45 min session.
        ev(2, 1, "start", T0 + timedelta(minutes=30), 13, load_time=LOAD2),
        ev(2, 1, "start", T0, 12, load_time=LOAD1),
        ev(2, 1, "stop", T0 + timedelta(minutes=45), 14),
        ev(2, 2, "start", T0, 15),
        ev(2, 2, "stop", None, 16),  # NULL time: cannot be judged
        ev(1, 9, "start", T0, 19),
        over_5m,
        ev(2, 7, "start", T0, 29),
        dup_stop_late,
        dup_stop_first,
    ]
    pairs = pair_sessions(accepted(spark, rows), max_duration=MAX, quarantined_at=QAT)

    completed = spark.createDataFrame(
        [
            (1, 1, 3, T0, T0 + MAX),
            (2, 1, 1, T0, T0 + timedelta(minutes=45)),
        ],
        COMPLETED_WORKOUTS,
    )
    assert_df_equality(pairs.completed, completed, ignore_row_order=True, ignore_nullable=True)

    invalid = spark.createDataFrame(
        [
            quarantine_row(
                stop_before,
                "end_time <= start_time (start_time 2023-03-01 10:00:00, end_time 2023-03-01 09:59:00)",
            ),
            quarantine_row(
                equal, "end_time <= start_time (start_time 2023-03-01 10:00:00, end_time 2023-03-01 10:00:00)"
            ),
            quarantine_row(max_plus, "duration 3h00m00.000001s exceeds 3h"),
            quarantine_row(over_5m, "duration 3h05m exceeds 3h"),
            # the first ingested stop is the one judged and quarantined
            quarantine_row(
                dup_stop_first,
                "end_time <= start_time (start_time 2023-03-01 10:00:00, end_time 2023-03-01 09:00:00)",
            ),
        ],
        QUARANTINE,
    )
    assert_df_equality(pairs.invalid, invalid, ignore_row_order=True, ignore_nullable=True)


def test_classify_sessions_marks_unpaired_incomplete(spark: SparkSession) -> None:
    rows = [
        ev(1, 5, "start", T0, 1),
        ev(1, 6, "stop", T0, 2),
        ev(2, 2, "start", T0, 3),
        ev(2, 2, "stop", None, 4),
    ]
    got = classify_sessions(accepted(spark, rows), max_duration=MAX).select(
        "user_id", "session_id", "status", "detail", "offset"
    )
    assert sorted(tuple(r) for r in got.collect()) == [
        (1, 5, SessionStatus.INCOMPLETE, None, None),
        (1, 6, SessionStatus.INCOMPLETE, None, 2),
        (2, 2, SessionStatus.INCOMPLETE, None, 4),
    ]


def test_pair_sessions_rejects_non_positive_max(spark: SparkSession) -> None:
    with pytest.raises(InvalidConfigError, match="max_duration"):
        pair_sessions(accepted(spark, []), max_duration=timedelta(0), quarantined_at=QAT)


def test_pair_sessions_accepts_silver_events_without_load_time(spark: SparkSession) -> None:
    # The derived-table writer may pass silver events joined to their coordinates (no load_time).
    rows = [ev(1, 1, "start", T0, 1), ev(1, 1, "stop", T0 + timedelta(hours=1), 2)]
    events = first_ingested_events(accepted(spark, rows)).drop("load_time")
    pairs = pair_sessions(events, max_duration=MAX, quarantined_at=QAT)
    expected = spark.createDataFrame([(1, 1, 1, T0, T0 + timedelta(hours=1))], COMPLETED_WORKOUTS)
    assert_df_equality(pairs.completed, expected, ignore_nullable=True)
    assert pairs.invalid.collect() == []


# --- property: arrival order and batch boundaries do not matter ---------------------------------

_STOP_DELTAS = [
    -timedelta(hours=1),
    timedelta(0),
    US,
    timedelta(minutes=40),
    MAX,
    MAX + US,
    timedelta(hours=4),
]

_session = st.tuples(
    st.sampled_from([1, 2]),  # user_id
    st.sampled_from([1, 2]),  # workout_id
    st.sampled_from(["start", "stop", "both"]),
    st.sampled_from(_STOP_DELTAS),
    st.integers(min_value=0, max_value=1),  # extra identical copies of each event
)


@st.composite
def _arrivals(draw: st.DrawFn) -> tuple[list[tuple[int, int, int, str, datetime]], list[int]]:
    sessions = draw(st.lists(_session, min_size=1, max_size=6))
    events: list[tuple[int, int, int, str, datetime]] = []
    for i, (user_id, workout_id, which, delta, copies) in enumerate(sessions):
        session_id = i + 1
        start = T0 + timedelta(minutes=7 * i)
        for _ in range(copies + 1):
            if which in ("start", "both"):
                events.append((user_id, workout_id, session_id, "start", start))
            if which in ("stop", "both"):
                events.append((user_id, workout_id, session_id, "stop", start + delta))
    order = draw(st.permutations(events))
    cuts = draw(st.lists(st.integers(min_value=1, max_value=max(1, len(order) - 1)), max_size=2))
    return list(order), sorted(set(cuts))


def _records(events: list[tuple[int, int, int, str, datetime]], batch: int, first_offset: int) -> list[Any]:
    # Coordinates follow arrival: offsets grow, each micro-batch has its own load_time.
    load_time = LOAD1 + timedelta(minutes=batch)
    return [
        ev(u, s, a, t, first_offset + i, workout_id=w, load_time=load_time) for i, (u, w, s, a, t) in enumerate(events)
    ]


def _completed_set(df: DataFrame) -> set[tuple[Any, ...]]:
    return {tuple(r) for r in df.select(*COMPLETED_WORKOUTS.fieldNames()).collect()}


def _invalid_set(df: DataFrame) -> set[tuple[Any, ...]]:
    return {tuple(r) for r in df.select("key", "value", "topic", "reason", "detail").collect()}


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(arrivals=_arrivals())
# A duplicated invalid stop split over two batches: the recomputation in the second batch must
# quarantine the same (first ingested) stop again, not its later copy.
@example(
    arrivals=(
        [
            (1, 1, 1, "start", T0),
            (1, 1, 1, "stop", T0 - timedelta(hours=1)),
            (1, 1, 1, "stop", T0 - timedelta(hours=1)),
            (1, 1, 1, "start", T0),
        ],
        [2],
    )
)
def test_pair_sessions_independent_of_order_and_batches(
    spark: SparkSession, arrivals: tuple[list[tuple[int, int, int, str, datetime]], list[int]]
) -> None:
    order, cuts = arrivals
    # Reference: everything in one batch, in canonical order.
    canonical = sorted(order, key=lambda e: (e[0], e[1], e[2], e[3], e[4]))
    everything = accepted(spark, _records(canonical, 0, 0))
    ref = pair_sessions(first_ingested_events(everything), max_duration=MAX, quarantined_at=QAT)
    ref_completed, ref_invalid = _completed_set(ref.completed), _invalid_set(ref.invalid)

    # Incremental: the silver workouts table is the state (insert-if-absent on the event key),
    # each batch recomputes the sessions it touched, completed upserts by session key and the
    # quarantine is insert-if-absent on the stop record's (topic, partition, offset).
    state: dict[tuple[Any, ...], tuple[Any, ...]] = {}
    completed: dict[tuple[Any, ...], tuple[Any, ...]] = {}
    quarantine: dict[tuple[Any, ...], tuple[Any, ...]] = {}
    bounds = [0, *cuts, len(order)]
    for batch, (lo, hi) in enumerate(pairwise(bounds)):
        if lo >= hi:
            continue
        records = _records(order[lo:hi], batch, lo)
        touched = {(u, w, sid) for u, w, sid, _, _ in order[lo:hi]}
        # The writer's view: the stored events of the touched sessions plus the raw batch, in which
        # pair_sessions itself must pick the first ingested (stored rows have older load_times).
        stored = [row for k, row in state.items() if k[:3] in touched]
        events_df = accepted(spark, [*stored, *records])
        for r in sorted(records, key=lambda r: (r[11], r[8], r[9])):
            state.setdefault(r[:4], r)
        pairs = pair_sessions(events_df, max_duration=MAX, quarantined_at=QAT)
        for r in pairs.completed.collect():
            completed[(r.user_id, r.workout_id, r.session_id)] = tuple(r)
        for r in pairs.invalid.collect():
            quarantine.setdefault((r.topic, r.partition, r.offset), (r.key, r.value, r.topic, r.reason, r.detail))

    assert set(completed.values()) == ref_completed
    # One quarantine row per invalid session, however often the session was recomputed.
    assert len(quarantine) == len(ref_invalid)
    assert set(quarantine.values()) == ref_invalid
    # ... and it carries the coordinates of the first stop that arrived.
    invalid_keys = {(v["user_id"], v["workout_id"], v["session_id"]) for v in (json.loads(q[1]) for q in ref_invalid)}
    first_stops = {min(i for i, e in enumerate(order) if e[:3] == k and e[3] == "stop") for k in invalid_keys}
    assert {offset for _, _, offset in quarantine} == first_stops


# --- workout_bpm ---------------------------------------------------------------------------------

D100, D200, D300 = 100, 200, 300


def users(spark: SparkSession, rows: list[tuple[Any, ...]]) -> DataFrame:
    return spark.createDataFrame(rows, USERS)


def test_workout_bpm_band_join(spark: SparkSession) -> None:
    end = T0 + timedelta(hours=1)
    night = datetime(2023, 3, 1, 23, 30, tzinfo=UTC)
    completed = spark.createDataFrame(
        [
            (1, 10, 1, T0, end),
            (2, 10, 1, T0, T0 + timedelta(minutes=30)),
            (1, 11, 2, night, night + timedelta(hours=1)),  # crosses midnight and an hour boundary
            (3, 10, 1, T0, end),  # user without a device
            (4, 10, 1, T0, end),  # user not registered
        ],
        COMPLETED_WORKOUTS,
    )
    heart_rate = spark.createDataFrame(
        [
            (D100, T0, 90.0, True),  # exactly at start_time: excluded
            (D100, T0 + US, 91.0, True),
            (D100, T0 + timedelta(minutes=30), 200.0, False),  # invalid: excluded
            (D100, T0 + timedelta(minutes=31), None, False),  # NULL heartrate: excluded
            (D100, T0 + timedelta(minutes=32), 95.0, None),  # NULL valid: excluded
            (D100, end, 99.0, True),  # exactly at end_time: included
            (D100, end + US, 98.0, True),
            (D200, T0 + timedelta(minutes=15), 120.0, True),  # user 2's device only
            (D300, T0 + timedelta(minutes=20), 130.0, True),  # nobody's device in a session
            (D100, night + timedelta(minutes=29, seconds=59), 101.0, True),
            (D100, night + timedelta(minutes=45), 102.0, True),
        ],
        HEART_RATE,
    )
    registered = users(
        spark,
        [
            (1, D100, "aa:aa:aa:aa:aa:01", T0 - timedelta(days=9)),
            (2, D200, "aa:aa:aa:aa:aa:02", T0 - timedelta(days=9)),
            (3, None, "aa:aa:aa:aa:aa:03", T0 - timedelta(days=9)),
        ],
    )
    got = workout_bpm(completed, heart_rate, registered)
    expected = spark.createDataFrame(
        [
            (1, 10, 1, T0 + US, T0, end, 91.0),
            (1, 10, 1, end, T0, end, 99.0),
            (2, 10, 1, T0 + timedelta(minutes=15), T0, T0 + timedelta(minutes=30), 120.0),
            (1, 11, 2, night + timedelta(minutes=29, seconds=59), night, night + timedelta(hours=1), 101.0),
            (1, 11, 2, night + timedelta(minutes=45), night, night + timedelta(hours=1), 102.0),
        ],
        WORKOUT_BPM,
    )
    assert_df_equality(got, expected, ignore_row_order=True, ignore_nullable=True)


def test_workout_bpm_uses_latest_registration_and_subsets(spark: SparkSession) -> None:
    end = T0 + timedelta(hours=1)
    bz = spark.createDataFrame(
        [
            (1, 999, "aa:aa:aa:aa:aa:01", T0 - timedelta(days=30), LOAD1),  # old device
            (1, D100, "aa:aa:aa:aa:aa:01", T0 - timedelta(days=2), LOAD1),  # device changed
            (1, D100, "aa:aa:aa:aa:aa:01", T0 - timedelta(days=2), LOAD1),  # duplicate read
        ],
        REGISTERED_USERS_BZ,
    )
    completed = spark.createDataFrame([(1, 10, 1, T0, end)], COMPLETED_WORKOUTS)
    old = [(999, T0 + timedelta(minutes=5), 80.0, True), (D100, T0 + timedelta(minutes=5), 81.0, True)]
    new = [(D100, T0 + timedelta(minutes=6), 82.0, True)]
    latest = latest_registrations(bz)

    # A micro-batch of new readings only: just their rows come out.
    got_new = workout_bpm(completed, spark.createDataFrame(new, HEART_RATE), latest)
    expected_new = spark.createDataFrame([(1, 10, 1, T0 + timedelta(minutes=6), T0, end, 82.0)], WORKOUT_BPM)
    assert_df_equality(got_new, expected_new, ignore_row_order=True, ignore_nullable=True)

    got_all = workout_bpm(completed, spark.createDataFrame(old + new, HEART_RATE), latest)
    expected_all = spark.createDataFrame(
        [
            (1, 10, 1, T0 + timedelta(minutes=5), T0, end, 81.0),
            (1, 10, 1, T0 + timedelta(minutes=6), T0, end, 82.0),
        ],
        WORKOUT_BPM,
    )
    assert_df_equality(got_all, expected_all, ignore_row_order=True, ignore_nullable=True)


def test_workout_bpm_plans_an_equi_join(spark: SparkSession, capsys: pytest.CaptureFixture[str]) -> None:
    completed = spark.createDataFrame([(1, 10, 1, T0, T0 + timedelta(hours=1))], COMPLETED_WORKOUTS)
    heart_rate = spark.createDataFrame([(D100, T0 + US, 91.0, True)], HEART_RATE)
    registered = users(spark, [(1, D100, "aa:aa:aa:aa:aa:01", T0)])
    workout_bpm(completed, heart_rate, registered).explain()
    plan = capsys.readouterr().out
    assert "CartesianProduct" not in plan
    assert "NestedLoopJoin" not in plan
    assert "HashJoin" in plan or "SortMergeJoin" in plan


def test_workout_bpm_rejects_non_positive_bucket(spark: SparkSession) -> None:
    empty = spark.createDataFrame([], COMPLETED_WORKOUTS)
    with pytest.raises(InvalidConfigError, match="bucket"):
        workout_bpm(empty, spark.createDataFrame([], HEART_RATE), users(spark, []), bucket=timedelta(0))


def test_sessions_near_readings_covers_every_session_workout_bpm_pairs(spark: SparkSession) -> None:
    """The workout_bpm writer's affected sessions: a cheap superset of those holding a new reading."""
    hour, half = timedelta(hours=1), timedelta(minutes=30)
    completed = spark.createDataFrame(
        [
            (1, 10, 1, T0, T0 + hour),  # holds the 10:30 reading
            (1, 10, 2, T0 + 2 * hour, T0 + 3 * hour),  # in the gap between 10:30 and 14:00: listed anyway
            (1, 10, 3, T0 + 4 * hour - US, T0 + 5 * hour),  # holds the 14:00 reading
            (1, 10, 4, T0 + 4 * hour, T0 + 5 * hour),  # starts on the latest reading: does not hold it
            (1, 10, 5, T0 - hour, T0 + half - US),  # ends before the earliest
            (1, 10, 6, T0 + half, T0 + half),  # empty session
            (2, 10, 1, T0, T0 + hour),  # user 2's device sent no valid reading
            (3, 10, 1, T0, T0 + hour),  # user without a device
            (4, 10, 1, T0, T0 + hour),  # user not registered
        ],
        COMPLETED_WORKOUTS,
    )
    readings = spark.createDataFrame(
        [
            (D100, T0 + half, 91.0, True),
            (D100, T0 + 4 * hour, 92.0, True),
            (D100, T0 - 2 * hour, 200.0, False),  # invalid: widens nothing
            (D200, T0 + half, 120.0, None),  # NULL valid: widens nothing
            (D300, T0 + half, 130.0, True),  # nobody's device
        ],
        HEART_RATE,
    )
    registered = users(
        spark,
        [
            (1, D100, "aa:aa:aa:aa:aa:01", T0 - timedelta(days=9)),
            (2, D200, "aa:aa:aa:aa:aa:02", T0 - timedelta(days=9)),
            (3, None, "aa:aa:aa:aa:aa:03", T0 - timedelta(days=9)),
        ],
    )
    got = {tuple(row) for row in sessions_near_readings(completed, readings, registered).collect()}
    assert got == {(1, 10, 1), (1, 10, 2), (1, 10, 3)}
    paired = {tuple(row) for row in workout_bpm(completed, readings, registered).select(*SESSION_KEY).collect()}
    assert paired == {(1, 10, 1), (1, 10, 3)}
    assert paired <= got
