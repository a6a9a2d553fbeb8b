"""The whole pipeline on literal boundary cases, against the pure-Python contract reference.

The generator's worlds rarely land exactly on a rule's boundary; these rows do: a heart rate at the
bounds, a reading at start_time and at end_time, a session of exactly the maximum length and one a
microsecond longer, a stop equal to its start, an event exactly the clock skew ahead and one a
microsecond more, a record exactly at the lateness threshold and one a microsecond older, a
quarantined record far ahead (it must not move the lateness threshold), a session starting exactly
at login and one exactly at logout, a visit logging in between two minutes, a half-way rounding of
minutes, changes of one user at the same timestamp, a change arriving after a newer delete, an
identical duplicate change, a 29 February birthday, a member who re-registers with a new device
between runs, a registration in another year. Every silver and gold table is compared with
``tests/reference/contract.py`` after each of two runs.
"""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from collections.abc import Mapping
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from pyspark.sql import SparkSession

from fitbit_stream.config import Config
from fitbit_stream.io.tables import Tables
from fitbit_stream.pipeline import Pipeline
from reference.contract import TABLE_KEYS, Rules, contract_tables, diff_tables
from support.world import PROFILE as BASE_PROFILE
from support.world import Bronze, Record, source_db, world_config

AS_OF = date(2025, 2, 28)  # a 29 February 2000 birthday is the 25th on this day
RUN_1 = datetime(2025, 3, 4)
RUN_2 = datetime(2025, 3, 5)
US = timedelta(microseconds=1)
PROFILE: dict[str, Any] = {**BASE_PROFILE, "sex": "F", "gender": "F"}


def at(h: int, m: int = 0, s: int = 0, us: int = 0) -> datetime:
    return datetime(2025, 3, 3, h, m, s, us)


class Num(str):
    """Exact JSON number text."""


def epoch(t: datetime) -> Num:
    micros = (t - datetime(1970, 1, 1)) // US
    return Num(str(Decimal(micros) / Decimal(1_000_000)))


def dumps(value: object) -> str:
    if isinstance(value, Num):
        return str(value)
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{json.dumps(k)}:{dumps(v)}" for k, v in value.items()) + "}"
    return json.dumps(value)


def encode(value: object) -> str | None:
    """A value as bronze holds it: NULL and text as they are, anything else in exact JSON."""
    return value if value is None or isinstance(value, str) else dumps(value)


def by_parity(key: str | None) -> int:
    """Even keys on partition 0, odd ones on 1: the offsets of each topic run per partition."""
    assert key is not None
    return int(key) % 2


def exact_bronze(spark: SparkSession, config: Config) -> Bronze:
    """Bronze over two partitions per topic (by key parity), values in exact JSON."""
    return Bronze(spark, config, partition=by_parity, encode=encode)


def user(uid: int, kind: str, t: datetime, ts: datetime | None = None, **profile: Any) -> Record:
    value = {"user_id": uid, "update_type": kind, "timestamp": epoch(t), **profile}
    return ("user_info", str(uid), value, ts or t)


def bpm(device: int, t: datetime, hr: object, ts: datetime | None = None) -> Record:
    return ("bpm", str(device), {"device_id": device, "time": epoch(t), "heartrate": hr}, ts or t)


def workout(uid: int, wid: int, sid: int, action: str, t: datetime, ts: datetime | None = None) -> Record:
    value = {"user_id": uid, "workout_id": wid, "session_id": sid, "timestamp": epoch(t), "action": action}
    return ("workout", str(uid), value, ts or t)


def sql_ts(t: datetime | None) -> str | None:
    return None if t is None else t.strftime("%Y-%m-%d %H:%M:%S.%f")


def mac(n: int) -> str:
    return f"aa:bb:cc:dd:ee:{n:02x}"


@pytest.fixture
def world(tmp_path: Path, spark_config: Config) -> tuple[Config, Path]:
    # records are written to bronze directly: the topic queries read them into silver
    config = world_config(
        tmp_path,
        spark_config.jars_dir,
        mode="layered",
        registered=[
            (1, 100, mac(1), sql_ts(datetime(2025, 3, 1))),
            (2, 101, mac(2), sql_ts(datetime(2025, 3, 1))),
            (6, 102, mac(6), sql_ts(datetime(2025, 3, 1))),
            (7, 107, mac(7), sql_ts(datetime(2024, 12, 31, 23, 59, 59, 999_999))),
        ],
        gym_logins=[
            (mac(2), 2, sql_ts(at(6)), sql_ts(at(7))),  # a session starts exactly at logout
            (mac(2), 1, sql_ts(at(10)), sql_ts(at(11))),  # a session starts exactly at login
            (mac(6), 1, sql_ts(at(10, 0, 30, 500_000)), None),  # open now, closed in run 2
            (mac(6), 1, sql_ts(at(10, 20)), sql_ts(at(10, 40))),  # the same member twice at once
            (mac(99), 1, sql_ts(at(10, 30)), sql_ts(at(10, 31, 0, 300_000))),  # nobody's; 1.005 min
            (mac(1), 3, sql_ts(at(9)), sql_ts(at(9, 45))),  # member 1 until the re-registration
            (mac(2), 2, sql_ts(at(12)), None),  # open at the end
        ],
    )
    return config, source_db(tmp_path)


RUN_1_RECORDS = [
    # user 1: new and update at the same instant (the update wins), delete later
    user(1, "new", at(8), **PROFILE),
    user(1, "update", at(8), **{**PROFILE, "last_name": "Bell"}),
    user(1, "delete", at(9, 50)),
    # user 2: a 29 February birthday, a zip of 3 digits, the same message twice
    user(2, "new", at(8, 30), **{**PROFILE, "dob": "02/29/2000", "address": {**PROFILE["address"], "zip": "501"}}),
    user(2, "new", at(8, 30), **{**PROFILE, "dob": "02/29/2000", "address": {**PROFILE["address"], "zip": "501"}}),
    # user 3: no dob and no address; user 4: born after the reference date; user 5: deleted, never created
    user(3, "new", at(8, 45), sex="M", first_name="Bo"),
    user(4, "new", at(8, 50), **{**PROFILE, "dob": "12/31/2030"}),
    user(5, "delete", at(8, 55)),
    # user 6: 18 exactly on the reference date, then moves before the session at 10:45
    user(6, "new", at(8, 10), **{**PROFILE, "dob": "02/28/2007"}),
    user(6, "update", at(10, 20), **{**PROFILE, "dob": "02/28/2007", "address": {"city": "Dallas", "zip": 0}}),
    # sessions: exactly 3 h (complete), 3 h + 1 us, stop == start, stop before start (invalid),
    # a start alone, a stop alone (its start comes in run 2), the same session_id for two workouts
    workout(2, 6, 2, "start", at(7)),
    workout(2, 6, 2, "stop", at(10)),
    workout(2, 7, 3, "start", at(6)),
    workout(2, 7, 3, "stop", at(9, 0, 0, 1)),
    workout(2, 5, 1, "start", at(10)),
    workout(2, 5, 1, "stop", at(11)),
    workout(2, 9, 1, "start", at(10, 5)),
    workout(2, 9, 1, "stop", at(10, 15)),
    workout(6, 5, 1, "start", at(10, 10)),
    workout(6, 5, 1, "stop", at(10, 10)),
    workout(6, 5, 2, "start", at(10, 30)),
    workout(6, 5, 2, "stop", at(10, 20)),
    workout(6, 8, 3, "start", at(10, 40)),
    workout(6, 9, 4, "stop", at(11)),
    workout(1, 3, 1, "start", at(9, 10)),
    workout(1, 3, 1, "stop", at(9, 30)),
    workout(7, 1, 1, "start", at(10)),
    workout(7, 1, 1, "stop", at(10, 30)),
    (
        "workout",
        "2",
        {"user_id": 2, "workout_id": 5, "session_id": 9, "timestamp": epoch(at(9)), "action": "pause"},
        at(9),
    ),
    # readings of member 2's device around session (10:00, 11:00]
    bpm(101, at(10), 90.0),  # at start_time: not in the session
    bpm(101, at(10, 0, 1, 1), 25),  # lower bound, an integer, a microsecond fraction
    bpm(101, at(10, 10), 250.0),  # upper bound
    bpm(101, at(10, 20), 24.99),
    bpm(101, at(10, 30), 250.01),
    bpm(101, at(10, 40), None),
    bpm(101, at(10, 50), 80),
    bpm(101, at(10, 50), 99.0),  # same key: the first ingested wins
    bpm(101, at(11), 100.0),  # at end_time: in the session
    bpm(101, at(11, 0, 0, 1), 101.0),
    bpm(101, at(11, 15), 60.0, ts=at(11, 5)),  # exactly the clock skew ahead: accepted, the max
    bpm(101, at(23), 60.0, ts=at(11, 5)),  # far ahead: future, must not move the max
    bpm(100, at(9, 20), 60.0),
    bpm(107, at(10, 10), 70.0),
    ("bpm", "101", {"device_id": "101", "time": epoch(at(23, 30)), "heartrate": 70.0}, at(23, 30)),
    ("bpm", "101", "{", at(10, 1)),
]

# Payload validation cases the generator never sends: each is quarantined, except the last two.
PROBES = [
    ("bpm", "301", {"device_id": 301, "time": epoch(at(7)), "heartrate": "72.5"}, at(7)),
    ("bpm", "302", {"device_id": 302, "time": epoch(at(7)), "heartrate": True}, at(7)),
    user(61, "new", at(7), **{**PROFILE, "sex": "X"}),
    user(62, "new", at(7), **{**PROFILE, "address": {**PROFILE["address"], "zip": -1}}),
    user(63, "new", at(7), **{**PROFILE, "address": {**PROFILE["address"], "zip": ""}}),
    user(64, "new", at(7), **{**PROFILE, "address": "1 Main St"}),
    user(65, "new", at(7), **{**PROFILE, "first_name": 5}),
    user(66, "new", at(7), **{**PROFILE, "dob": "2/3/1990"}),
    workout(71, 1, 2**31, "start", at(7)),
    ("workout", "73", None, at(7)),
    ("workout", "74", "[1, 2]", at(7)),
    # optional fields may be null; an exponent is a JSON number; unknown fields are ignored
    user(67, "new", at(7), **{**PROFILE, "dob": None, "sex": None, "address": None}),
    (
        "workout",
        "72",
        {
            "user_id": 72,
            "workout_id": 1,
            "session_id": 1,
            "timestamp": Num("1.7409852E9"),
            "action": "start",
            "extra": {"x": [1]},
        },
        at(7),
    ),
]

RUN_2_RECORDS = [
    # older than the delete of 09:50 but within the horizon of the newest change (10:20)
    user(1, "update", at(9, 40), **{**PROFILE, "last_name": "Cole"}),
    user(1, "update", at(9, 20) - US, **{**PROFILE, "last_name": "Dunn"}),  # late
    workout(6, 9, 4, "start", at(10, 45)),
    workout(2, 5, 1, "stop", at(11)),  # an identical copy
    bpm(102, at(10, 46), 120.0),
    bpm(102, at(10, 59), 130.5),
    bpm(101, at(10, 15), 77.5),  # exactly at the lateness threshold (11:15 - 1 h): accepted
    bpm(101, at(10, 15) - US, 77.0),  # a microsecond older: late
    bpm(101, at(11), 55.0),  # a later copy of a key: the first ingested stays
]


def _collect(spark: SparkSession, tables: Tables, name: str) -> list[dict[str, Any]]:
    return [r.asDict(recursive=True) for r in tables.read(spark, tables.ref(name)).collect()]


def _assert_equals_reference(spark: SparkSession, config: Config) -> dict[str, list[dict[str, Any]]]:
    tables = Tables(config)
    kafka = _collect(spark, tables, "kafka_multiplex_bz")
    expected = contract_tables(
        kafka,
        _collect(spark, tables, "registered_users_bz"),
        _collect(spark, tables, "gym_logins_bz"),
        topics=config.kafka.topics,
        rules=Rules.from_config(config.rules),
        as_of=AS_OF,
    )
    problems: list[str] = []
    for name in TABLE_KEYS:
        problems += diff_tables(
            name, expected[name], _collect(spark, tables, name), ignore=("quarantined_at", "detail")
        )
    assert not problems, "\n" + "\n".join(problems)
    return expected


def test_every_table_equals_the_contract_reference_on_boundary_cases(
    spark: SparkSession, world: tuple[Config, Path]
) -> None:
    config, db = world
    bronze = exact_bronze(spark, config)
    pipeline = Pipeline(spark, config)
    bronze.add([*RUN_1_RECORDS, *PROBES], RUN_1)
    pipeline.run_once(as_of=AS_OF)
    first = _assert_equals_reference(spark, config)
    # the reference itself reads the boundaries as intended (so the comparison tests them)
    assert Counter(q["reason"] for q in first["quarantine"]) == Counter(
        invalid_session=3, schema_violation=11, future=1, malformed_json=3
    )
    assert {(c["user_id"], c["workout_id"], c["session_id"]) for c in first["completed_workouts"]} == {
        (2, 6, 2),
        (2, 5, 1),
        (2, 9, 1),
        (1, 3, 1),
        (7, 1, 1),
    }
    assert {u["user_id"]: u["age"] for u in first["user_bins"]} == {
        2: "25-35",
        3: "invalid age",
        4: "invalid age",
        6: "18-25",
        67: "invalid age",
    }

    with sqlite3.connect(db) as conn:
        conn.execute(
            "UPDATE gym_logins SET logout = ? WHERE mac_address = ? AND gym = 1 AND login = ?",
            (sql_ts(at(11, 30)), mac(6), sql_ts(at(10, 0, 30, 500_000))),
        )
        conn.execute(
            "UPDATE registered_users SET device_id = 111, mac_address = ?, registration_timestamp = ? "
            "WHERE user_id = 1",
            (mac(11), sql_ts(at(12))),
        )
    bronze.add(RUN_2_RECORDS, RUN_2)
    pipeline.run_once(as_of=AS_OF)
    second = _assert_equals_reference(spark, config)
    assert Counter(q["reason"] for q in second["quarantine"]) == Counter(
        invalid_session=3, schema_violation=11, future=1, malformed_json=3, late=2
    )
    # the re-registered member's old device no longer counts: its session left gold
    assert {(s["user_id"], s["workout_id"], s["session_id"]) for s in first["workout_bpm_summary"]} - {
        (s["user_id"], s["workout_id"], s["session_id"]) for s in second["workout_bpm_summary"]
    } == {(1, 3, 1)}
    minutes = {(g["mac_address"], g["login"]): g["minutes_in_gym"] for g in second["gym_summary"]}
    assert minutes[(mac(99), at(10, 30))] == 1.01


def test_date_lookup_counts_the_year_of_every_accepted_change(spark: SparkSession, world: tuple[Config, Path]) -> None:
    config, _db = world
    # a delete of a user that was never created, sent late in 2023 and received in 2025 (accepted)
    exact_bronze(spark, config).add([user(55, "delete", datetime(2023, 12, 31, 23, 59), ts=at(12))], RUN_1)
    Pipeline(spark, config).run_once(as_of=AS_OF)
    assert {r["year"] for r in _assert_equals_reference(spark, config)["date_lookup"]} == {2023, 2024, 2025}
