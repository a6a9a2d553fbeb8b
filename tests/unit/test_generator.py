"""The synthetic data generator: determinism, realism invariants, chaos ground truth, sinks.

No Spark here: the contract checks of §1.1 are restated in plain Python (``_classify``) so every
good message can be shown to pass them and every injected bad record to fail them as its truth says.
"""

from __future__ import annotations

import itertools
import json
import re
import sqlite3
from collections import Counter, defaultdict
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from fitbit_stream.errors import InvalidConfigError, SourceError
from fitbit_stream.generator import (
    TRUTH_FILES,
    ChaosConfig,
    GeneratorConfig,
    KafkaEmission,
    KafkaSink,
    LandingSink,
    Progress,
    SqlEmission,
    SqlSink,
    World,
    build_world,
    connect_sql,
    emit,
    murmur2,
    partition_for_key,
    realtime_start,
    write_truth,
)
from fitbit_stream.generator.model import ChaosKind, from_us, iso, to_us

US = 1_000_000
START = datetime(2025, 3, 3, tzinfo=UTC)
CHAOS = ChaosConfig(
    duplicates=30, late=20, malformed_json=14, schema_violations=34, future=6, shuffle_window_seconds=20
)
TOPICS = {"user_info": "user_info", "bpm": "bpm", "workout": "workout"}

# --- the contract's input rules (CONTRACT.md §1.1), restated -----------------------------------

_REQUIRED: dict[str, dict[str, str]] = {
    "user_info": {"user_id": "int", "update_type": "enum:new,update,delete", "timestamp": "epoch"},
    "bpm": {"device_id": "int", "time": "epoch"},
    "workout": {
        "user_id": "int",
        "workout_id": "int",
        "session_id": "int",
        "timestamp": "epoch",
        "action": "enum:start,stop",
    },
}
_EVENT_FIELD = {"user_info": "timestamp", "bpm": "time", "workout": "timestamp"}
_DOB = re.compile(r"^(\d{2})/(\d{2})/(\d{4})$")
_ZIP = re.compile(r"^\d{1,5}$")
_EPOCH_TEXT = re.compile(r'"(?:time|timestamp)":(\d+(?:\.\d{6})?)[,}]')


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _classify(topic: str, value: str) -> tuple[str | None, str | None]:
    """(reason, field) the contract gives a message value; (None, None) when it is accepted."""
    try:
        obj = json.loads(value, parse_float=Decimal)
    except ValueError:
        return "malformed_json", None
    if not isinstance(obj, dict):
        return "malformed_json", None
    for name, kind in _REQUIRED[topic].items():
        v = obj.get(name)
        if v is None:
            return "schema_violation", name
        if kind == "int" and not _is_int(v):
            return "schema_violation", name
        if kind == "epoch" and not (_is_int(v) or isinstance(v, Decimal)):
            return "schema_violation", name
        if kind.startswith("enum:") and v not in kind[5:].split(","):
            return "schema_violation", name
    if topic == "bpm":
        hr = obj.get("heartrate")
        if hr is not None and not (_is_int(hr) or isinstance(hr, Decimal)):
            return "schema_violation", "heartrate"
    if topic == "user_info" and obj["update_type"] != "delete":
        dob = obj.get("dob")
        if dob is not None:
            m = _DOB.match(dob) if isinstance(dob, str) else None
            try:
                date(int(m.group(3)), int(m.group(1)), int(m.group(2))) if m else None
            except ValueError:
                m = None
            if m is None:
                return "schema_violation", "dob"
        for name in ("sex", "gender"):
            if obj.get(name) not in (None, "M", "F"):
                return "schema_violation", name
        zip_value = (obj.get("address") or {}).get("zip")
        if zip_value is not None and not (
            (_is_int(zip_value) and 0 <= zip_value <= 99999) or (isinstance(zip_value, str) and _ZIP.match(zip_value))
        ):
            return "schema_violation", "zip"
    return None, None


def _event_us(topic: str, value: str) -> int:
    obj = json.loads(value, parse_float=Decimal)
    return int(Decimal(obj[_EVENT_FIELD[topic]]) * US)


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world() -> World:
    return build_world(GeneratorConfig(seed=11, users=12, chaos=CHAOS))


@pytest.fixture(scope="module")
def stream(world: World) -> list[tuple[int, Any, str]]:
    return list(world.timed_emissions(main=True, late_wave=True))


@pytest.fixture(scope="module")
def calm_world() -> World:
    return build_world(GeneratorConfig(seed=5, users=6, days=0.5))


# --- murmur2 ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        # org.apache.kafka.common.utils.UtilsTest#testMurmur2
        (b"21", -973932308),
        (b"foobar", -790332482),
        (b"a-little-bit-long-string", -985981536),
        (b"a-little-bit-longer-string", -1486304829),
        (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
        (b"abc", 479470107),
        # every tail length (0-3 leftover bytes), as cross-checked by other Kafka clients
        (b"1", -1993445489),
        (b"12", 126087238),
        (b"123", -267702483),
        (b"1234", -1614185708),
        (b"12345", -1188365604),
    ],
)
def test_murmur2_matches_kafka_vectors(key: bytes, expected: int) -> None:
    assert murmur2(key) == expected


def test_partition_for_key_is_java_to_positive_modulo() -> None:
    assert partition_for_key("21", 3) == (-973932308 & 0x7FFFFFFF) % 3
    assert partition_for_key(b"abc", 7) == 479470107 % 7
    assert partition_for_key("abc", 1) == 0
    with pytest.raises(ValueError, match="partitions"):
        partition_for_key("abc", 0)


# --- config ------------------------------------------------------------------------------------


def test_config_defaults_and_validation() -> None:
    cfg = GeneratorConfig()
    assert (cfg.users, cfg.days, cfg.start) == (50, 1.0, START)
    assert cfg.chaos.resolve(10_000) == (0, 0, 0, 0, 0)
    assert ChaosConfig(rate=0.001).resolve(10_000) == (10, 10, 10, 10, 10)
    assert ChaosConfig(rate=0.001, late=0).resolve(10_000).late == 0
    assert ChaosConfig(late=5).resolve(10_000) == (0, 5, 0, 0, 0)
    with pytest.raises(ValueError, match="time zone"):
        GeneratorConfig(start=datetime(2025, 3, 3))  # the naive datetime under test
    with pytest.raises(ValueError, match="users"):
        GeneratorConfig(users=0)
    with pytest.raises(ValueError, match="late_age_minutes"):
        ChaosConfig(late_age_minutes=30)


def test_rate_counts_are_per_topic_rounded_half_up_with_one_for_a_small_topic() -> None:
    chaos = ChaosConfig(rate=0.001)
    assert chaos.rate_counts(206_743) == (207, 207, 207, 207, 207)
    assert chaos.rate_counts(2_500) == (3, 3, 3, 3, 3), "half up, not half to even"
    user_info: tuple[ChaosKind, ...] = ("duplicates", "late", "malformed_json", "schema_violations")
    assert chaos.rate_counts(1_500, kinds=user_info) == (2, 2, 2, 2, 0)
    # A small topic gets one bad record in all, not one of every kind.
    assert chaos.rate_counts(68, kinds=user_info) == (0, 0, 0, 1, 0)
    assert chaos.rate_counts(68, kinds=("late", "future")) == (0, 0, 0, 0, 1)
    assert chaos.rate_counts(0) == (0, 0, 0, 0, 0)
    assert chaos.rate_counts(68, kinds=()) == (0, 0, 0, 0, 0)
    assert ChaosConfig().rate_counts(10_000) == (0, 0, 0, 0, 0)
    assert ChaosConfig(rate=0.001, schema_violations=4).resolve(100) == (0, 0, 1, 4, 0)
    assert ChaosConfig(rate=0.001, schema_violations=4).explicit_kinds() == {"schema_violations"}


# --- determinism ---------------------------------------------------------------------------------


def _emissions(cfg: GeneratorConfig) -> list[Any]:
    return list(build_world(cfg).emissions(late_wave=True))


def test_same_seed_gives_identical_emissions_and_truth(tmp_path: Path) -> None:
    cfg = GeneratorConfig(seed=3, users=5, days=0.5, chaos=CHAOS)
    assert _emissions(cfg) == _emissions(cfg)
    write_truth(build_world(cfg), tmp_path / "a")
    write_truth(build_world(cfg), tmp_path / "b")
    for name in TRUTH_FILES:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_rate_chaos_is_deterministic() -> None:
    cfg = GeneratorConfig(seed=3, users=5, days=0.5, chaos=ChaosConfig.on(0.01))
    first = build_world(cfg)
    assert first.chaos_counts == build_world(cfg).chaos_counts
    assert _emissions(cfg) == _emissions(cfg)
    assert first.bad_records() == build_world(cfg).bad_records()


def test_different_seed_or_knob_gives_different_emissions() -> None:
    base = GeneratorConfig(seed=3, users=5, days=0.5)
    first = _emissions(base)
    assert first != _emissions(base.model_copy(update={"seed": 4}))
    assert first != _emissions(base.model_copy(update={"users": 6}))


# --- the simulated world -------------------------------------------------------------------------


def test_registrations_and_reregistration(world: World) -> None:
    rows = world.registrations
    assert all(re.fullmatch(r"([0-9a-f]{2}:){5}[0-9a-f]{2}", r.row.mac_address) for r in rows)
    assert len({r.row.user_id for r in rows if r.op == "insert"}) == 12
    updates = [r for r in rows if r.op == "update"]
    assert updates, "a member re-registers a new device"
    for u in updates:
        first = next(r for r in rows if r.op == "insert" and r.row.user_id == u.row.user_id)
        assert u.row.registration_us > first.row.registration_us
        assert u.row.device_id != first.row.device_id
        assert u.row.mac_address != first.row.mac_address
    assert any(r.row.device_id > 2**31 for r in rows), "BIGINT device ids beyond INT range"


def test_visits_are_consistent(world: World) -> None:
    assert any(v.logout_us is None for v in world.visits), "some visits are still open at the end"
    by_mac: dict[str, list[Any]] = defaultdict(list)
    registration = {r.row.user_id: r.row.registration_us for r in world.registrations if r.op == "insert"}
    for v in world.visits:
        assert world.start_us <= v.login_us < world.end_us
        assert v.logout_us is None or v.login_us < v.logout_us < world.end_us
        assert v.login_us > registration[v.user_id]
        assert v.gym in world.gyms
        by_mac[v.mac_address].append(v)
    for visits in by_mac.values():
        visits.sort(key=lambda v: v.login_us)
        for a, b in itertools.pairwise(visits):
            assert a.logout_us is not None
            assert a.logout_us < b.login_us, "a member is in one gym at a time"


def test_sessions_sit_inside_visits(world: World) -> None:
    statuses = Counter(s.status for s in world.sessions)
    assert statuses["complete"]
    assert statuses["incomplete"]
    assert statuses["invalid"]
    kinds = {s.kind for s in world.sessions}
    assert kinds == {"normal", "stop_before_start", "too_long", "no_stop"}
    visit_of = {(v.user_id, v.login_us): v for v in world.visits}
    per_user: dict[int, list[int]] = defaultdict(list)
    for s in world.sessions:
        v = visit_of[(s.user_id, s.visit_login_us)]
        end = v.logout_us if v.logout_us is not None else world.end_us
        assert v.login_us < s.start_us < end
        assert (s.gym, s.mac_address, s.device_id) == (v.gym, v.mac_address, v.device_id)
        per_user[s.user_id].append(s.session_id)
        if s.status == "complete":
            assert s.stop_us is not None
            assert 20 * 60 * US <= s.stop_us - s.start_us <= 90 * 60 * US + US
            assert s.stop_us <= end
        elif s.status == "invalid":
            assert s.stop_us is not None
            assert s.stop_us < s.start_us or s.stop_us - s.start_us > 3 * 3600 * US
        else:
            assert s.stop_us is None
    for ids in per_user.values():
        assert ids == list(range(1, len(ids) + 1)), "session_id is a per-user counter"


def test_profile_changes_cover_the_cdc_cases(world: World) -> None:
    changes = world.profile_changes
    types = Counter(c.update_type for c in changes)
    assert types["new"] > 12, "re-creation after a delete"
    assert types["update"]
    assert types["delete"]
    deleted = {c.user_id for c in changes if c.update_type == "delete"}
    for uid in deleted:
        mine = [c for c in changes if c.user_id == uid]
        t_del = next(c.time_us for c in mine if c.update_type == "delete")
        assert any(c.update_type == "update" and c.time_us == t_del for c in mine) or any(
            c.update_type == "new" and c.time_us > t_del for c in mine
        )
    assert any(
        c.update_type == "update" and any(d.update_type == "delete" and d.time_us == c.time_us for d in changes)
        for c in changes
    ), "an update and a delete at the very same timestamp"
    values = [json.loads(c.value) for c in changes]
    deletes = [v for v in values if v["update_type"] == "delete"]
    assert all(set(v) == {"user_id", "update_type", "timestamp"} for v in deletes)
    zips = [v["address"]["zip"] for v in values if "address" in v]
    assert any(isinstance(z, int) for z in zips)
    assert any(isinstance(z, str) for z in zips)
    assert any(v.get("dob") == "02/29/2000" for v in values), "a 29 February birthday"


def test_readings_are_1hz_inside_visits_and_plausible(world: World) -> None:
    resting: list[float] = []
    exercising: list[float] = []
    specials: Counter[str] = Counter()
    by_device: dict[int, list[tuple[int, str]]] = defaultdict(list)
    for r in world.readings():
        by_device[r.device_id].append((r.time_us, r.heartrate))
    for v in world.visits:
        mine = [(t, hr) for t, hr in by_device[v.device_id] if v.login_us <= t < (v.logout_us or world.end_us)]
        assert len(mine) == v.readings
        assert all(b - a == US for (a, _), (b, _) in itertools.pairwise(mine)), "1 Hz"
        for t, hr in mine:
            if hr in ("null", "0", "300"):
                specials[hr] += 1
                continue
            # Five minutes into a session the heart rate has risen to the session's intensity.
            warm = any(s.start_us + 5 * 60 * US < t <= s.exercise_end_us for s in v.sessions)
            cold = not any(s.start_us < t <= s.exercise_end_us + 5 * 60 * US for s in v.sessions)
            if warm:
                exercising.append(float(hr))
            elif cold:
                resting.append(float(hr))
    assert sum(len(x) for x in by_device.values()) == sum(v.readings for v in world.visits)
    assert specials["null"]
    assert specials["0"] + specials["300"]
    assert 55 < sum(resting) / len(resting) < 95
    assert 115 < sum(exercising) / len(exercising) < 185


# --- messages ------------------------------------------------------------------------------------


def test_good_messages_follow_the_contract(stream: list[tuple[int, Any, str]], world: World) -> None:
    fractions = 0
    for at, em, kind in stream:
        if kind == "sql":
            assert isinstance(em, SqlEmission)
            assert at == em.time_us
            continue
        assert isinstance(em, KafkaEmission)
        assert at == em.timestamp_ms * 1000
        if kind not in ("good", "duplicate"):
            continue
        assert _classify(em.topic, em.value) == (None, None), em.value
        obj = json.loads(em.value, parse_float=Decimal)
        assert em.key == str(obj["device_id"] if em.topic == "bpm" else obj["user_id"])
        if em.topic != "user_info":
            assert " " not in em.value, "compact JSON"
        # Exact epoch text: whole seconds or exactly six decimals, never a float repr.
        for text in _EPOCH_TEXT.findall(em.value):
            fractions += "." in text
        # Kafka timestamp = arrival = event time + a delay of a few ms to a few s.
        delay = em.timestamp_ms * 1000 - int(Decimal(obj[_EVENT_FIELD[em.topic]]) * US)
        assert 0 <= delay <= 5 * US
    assert fractions > 0


def test_emissions_are_in_time_order_and_devices_registered_first(calm_world: World) -> None:
    calm = calm_world
    timed = list(calm.timed_emissions())
    assert [at for at, _em, _kind in timed] == sorted(at for at, _em, _kind in timed)
    registered = {str(r.row.device_id): r.row.registration_us for r in calm.registrations}
    for at, em, _kind in timed:
        if isinstance(em, KafkaEmission) and em.topic == "bpm":
            assert at > registered[em.key]


def test_chaos_is_off_by_default(calm_world: World) -> None:
    kinds = Counter(kind for _at, _em, kind in calm_world.timed_emissions(late_wave=True))
    assert set(kinds) == {"sql", "good"}
    assert [b.reason for b in calm_world.bad_records()] == ["invalid_session"] * len(calm_world.bad_records())
    assert calm_world.counts()["kafka_messages_total"] == kinds["good"]


def test_every_bad_record_breaks_the_contract_as_its_truth_says(
    world: World, stream: list[tuple[int, Any, str]]
) -> None:
    bad = world.bad_records()
    reasons = Counter(b.reason for b in bad)
    assert reasons == {
        "schema_violation": 34,
        "malformed_json": 14,
        "future": 6,
        "late": 20,
        "invalid_session": 2,
    }
    kinds = {(b.topic, b.kind, b.field) for b in bad if b.reason == "schema_violation"}
    assert len(kinds) == 17, "every schema-violation variant appears"
    main = [(em, kind) for _at, em, kind in stream if isinstance(em, KafkaEmission) and kind != "late"]
    good = [em for em, kind in main if kind in ("good", "duplicate")]
    top = {t: max(_event_us(t, em.value) for em in good if em.topic == t) for t in TOPICS}
    late_age = round(CHAOS.late_age_minutes * 60 * US)
    sent = Counter((em.topic, em.key, em.value, em.timestamp_ms) for em, _kind in main)
    late_sent = Counter((em.topic, em.key, em.value, em.timestamp_ms) for _a, em, k in stream if k == "late")
    for b in bad:
        coords = (b.topic, b.key, b.value, b.timestamp_ms)
        if b.reason in ("malformed_json", "schema_violation"):
            reason, fld = _classify(b.topic, b.value)
            assert (reason, fld) == (b.reason, b.field), b
            assert sent[coords] == 1
        elif b.reason == "future":
            assert _classify(b.topic, b.value) == (None, None)
            assert _event_us(b.topic, b.value) - b.timestamp_ms * 1000 > 10 * 60 * US
            assert sent[coords] == 1
        elif b.reason == "late":
            assert _classify(b.topic, b.value) == (None, None)
            assert _event_us(b.topic, b.value) < top[b.topic] - late_age
            assert late_sent[coords] == 1
            assert b.timestamp_ms * 1000 > max(at for at, _em, k in stream if k != "late")
        else:
            assert b.reason == "invalid_session"
            obj = json.loads(b.value)
            assert obj["action"] == "stop"
            assert sent[coords] == 1
    assert sum(late_sent.values()) == 20


def test_rate_chaos_is_sparse_on_every_topic() -> None:
    world = build_world(GeneratorConfig(seed=42, users=50, days=1, chaos=ChaosConfig.on(0.001)))
    counts = world.counts()
    good = {
        "bpm": counts["readings"],
        "user_info": len(world.profile_changes),
        "workout": sum(1 + (s.stop_value is not None) for s in world.sessions),
    }
    bad = world.bad_records()
    # Invalid sessions are part of the simulation (members misusing the app), not injected chaos.
    chaos_bad = Counter(b.topic for b in bad if b.reason != "invalid_session")
    extra = Counter(b.topic for b in bad if b.injected and b.reason != "late")
    for topic, n in good.items():
        assert n > 0, topic
        assert 1 <= chaos_bad[topic] <= 0.01 * n + 1, (topic, chaos_bad[topic], n)
        duplicates = counts["kafka_messages"][topic] - n - extra[topic]
        assert 0 <= duplicates <= 0.001 * n + 1, (topic, duplicates, n)
    reasons = Counter((b.topic, b.reason) for b in bad)
    for reason in ("late", "malformed_json", "schema_violation", "future"):
        assert reasons[("bpm", reason)] == int(0.001 * good["bpm"] + 0.5), reason
    # The small topics each get their one record, drawn from their own messages.
    assert reasons[("user_info", "schema_violation")] == reasons[("workout", "schema_violation")] == 1
    complete = [s for s in world.sessions if s.status == "complete"]
    late_values = {b.value for b in world.late_records() if b.topic == "workout"}
    in_main = [s for s in complete if s.stop_delivery == "main" and s.stop_value not in late_values]
    assert len(complete) >= 20
    assert len(in_main) >= 0.9 * len(complete)


def test_explicit_counts_cover_every_topic_but_hold_back_few_stops(world: World) -> None:
    late = Counter(b.topic for b in world.late_records())
    assert set(late) == set(TOPICS), "an explicit count reaches every topic"
    assert sum(late.values()) == 20, "what the small topics cannot take goes to the readings"
    complete = [s for s in world.sessions if s.status == "complete"]
    held = [s for s in complete if s.stop_delivery == "late"]
    assert late["workout"] == len(held) <= max(1, len(complete) // 10)
    assert late["user_info"] <= max(1, len(world.profile_changes) // 10)
    bad = Counter(b.topic for b in world.bad_records() if b.reason in ("malformed_json", "schema_violation"))
    assert set(bad) == set(TOPICS)


def test_duplicates_and_shuffled_delivery(stream: list[tuple[int, Any, str]]) -> None:
    main = [(at, em, kind) for at, em, kind in stream if kind != "late"]
    dups = [em for _at, em, kind in main if kind == "duplicate"]
    assert len(dups) == 30
    counts = Counter(em for _at, em, kind in main if kind in ("good", "duplicate"))
    assert all(counts[em] == 2 for em in dups), "a duplicate is an exact copy: key, value, timestamp"
    kafka_times = [at for at, _em, kind in main if kind != "sql"]
    inversions = sum(1 for a, b in itertools.pairwise(kafka_times) if b < a)
    assert inversions > 0, "out-of-order delivery"
    window = 20 * US
    assert all(b // window >= a // window for a, b in itertools.pairwise(kafka_times))


def test_late_wave_only_when_asked(world: World, stream: list[tuple[int, Any, str]]) -> None:
    assert all(kind != "late" for _at, _em, kind in world.timed_emissions(since_us=world.end_us - 3600 * US))
    only_late = list(world.timed_emissions(main=False, late_wave=True))
    assert [kind for _at, _em, kind in only_late] == ["late"] * 20
    assert only_late == [item for item in stream if item[2] == "late"]
    assert stream[-20:] == only_late


def test_slices_add_up_to_the_whole(calm_world: World) -> None:
    small = calm_world.config.model_copy(update={"chaos": CHAOS.model_copy(update={"shuffle_window_seconds": 0})})
    ordered = build_world(small)
    whole = list(ordered.timed_emissions())
    half = ordered.start_us + 7 * 3600 * US + 123_456
    first = list(ordered.timed_emissions(until_us=half))
    rest = list(ordered.timed_emissions(since_us=half))
    assert first + rest == whole
    assert first
    assert rest
    late = len(ordered.late_records())
    assert ordered.estimate_emissions(None, None, main=True, late_wave=True) == len(whole) + late
    # The shuffled stream splits the same way, up to the order inside the window at the cut.
    shuffled = build_world(small.model_copy(update={"chaos": CHAOS}))
    parts = list(shuffled.timed_emissions(until_us=half)) + list(shuffled.timed_emissions(since_us=half))
    assert Counter(parts) == Counter(shuffled.timed_emissions())
    assert parts != whole


# --- sinks -------------------------------------------------------------------------------------


def _straddling_visit(world: World) -> tuple[Any, int]:
    for v in world.visits:
        if v.logout_us is not None:
            cut = v.login_us + (v.logout_us - v.login_us) // 2
            return v, cut - cut % US
    raise AssertionError("no closed visit")


@pytest.mark.parametrize("timestamps", ["timestamp", "epoch"])
def test_sqlite_sink_round_trip(tmp_path: Path, calm_world: World, timestamps: str) -> None:
    visit, cut = _straddling_visit(calm_world)
    conn = sqlite3.connect(tmp_path / "source.db")
    sink = SqlSink(conn, timestamps=timestamps)  # type: ignore[arg-type]  # parametrized literal
    first = emit(calm_world, [sink], until=from_us(cut))
    assert first.sql_statements > 0

    def ts(us: int) -> Any:
        if timestamps == "epoch":
            return us // US if us % US == 0 else float(Decimal(us) / US)
        return from_us(us).strftime("%Y-%m-%d %H:%M:%S.%f")

    key = (visit.mac_address, visit.gym, ts(visit.login_us))
    rows = conn.execute("SELECT mac_address, gym, login, logout FROM gym_logins").fetchall()
    assert (*key, None) in rows, "the visit is open after the first half"
    emit(calm_world, [sink], since=from_us(cut))
    rows = conn.execute("SELECT mac_address, gym, login, logout FROM gym_logins").fetchall()
    expected_visits = {
        (v.mac_address, v.gym, ts(v.login_us), None if v.logout_us is None else ts(v.logout_us))
        for v in calm_world.visits
    }
    assert set(rows) == expected_visits
    assert len(rows) == len(expected_visits)
    users = conn.execute("SELECT user_id, device_id, mac_address, registration_timestamp FROM registered_users")
    latest: dict[int, Any] = {}
    for r in calm_world.registrations:
        latest[r.row.user_id] = r.row
    assert set(users.fetchall()) == {
        (r.user_id, r.device_id, r.mac_address, ts(r.registration_us)) for r in latest.values()
    }
    assert [
        row[0]
        for row in conn.execute("SELECT typeof(login) FROM gym_logins")
        if row[0] not in ("text", "integer", "real")
    ] == []
    conn.close()


def test_sql_sink_refuses_an_update_without_its_row(tmp_path: Path, calm_world: World) -> None:
    visit, cut = _straddling_visit(calm_world)
    sink = SqlSink(sqlite3.connect(tmp_path / "fresh.db"))
    logout = next(
        em
        for em in calm_world.emissions()
        if isinstance(em, SqlEmission) and em.op == "update_visit_logout" and em.row.login_us == visit.login_us  # type: ignore[union-attr]  # a VisitRow
    )
    with pytest.raises(SourceError, match="matched 0 rows"):
        sink.write(logout)
    with pytest.raises(SourceError, match="table name"):
        SqlSink(sqlite3.connect(":memory:"), gym_logins_table="gym; DROP TABLE x")
    assert cut > 0


def test_connect_sql_opens_sqlite_and_rejects_other_urls(tmp_path: Path) -> None:
    conn, dialect = connect_sql(f"jdbc:sqlite:{tmp_path / 'sub' / 'source.db'}")
    assert dialect == "sqlite"
    SqlSink(conn)
    assert {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")} == {
        "registered_users",
        "gym_logins",
    }
    conn.close()
    with pytest.raises(SourceError, match="unsupported JDBC URL"):
        connect_sql("jdbc:sqlserver://db.example:1433;databaseName=x")


def _read_landing(directory: Path) -> list[dict[str, Any]]:
    lines: list[dict[str, Any]] = []
    for path in sorted(directory.glob("part-*.jsonl")):
        lines.extend(json.loads(line, parse_float=Decimal) for line in path.read_text("utf-8").splitlines())
    return lines


def test_landing_files_round_trip(tmp_path: Path, calm_world: World) -> None:
    out = tmp_path / "landing"
    _visit, cut = _straddling_visit(calm_world)
    first = emit(calm_world, [LandingSink(out, partitions=3, records_per_file=5_000)], until=from_us(cut))
    # A new sink (a new process) continues the offsets and file numbers.
    second = emit(calm_world, [LandingSink(out, partitions=3, records_per_file=5_000)], since=from_us(cut))
    records = _read_landing(out)
    kafka = [em for em in calm_world.emissions() if isinstance(em, KafkaEmission)]
    assert len(records) == len(kafka) == first.kafka_messages + second.kafka_messages
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")], "no half-written files"
    assert len(list(out.glob("part-*.jsonl"))) >= 2
    offsets: dict[tuple[str, int], list[int]] = defaultdict(list)
    for rec, em in zip(records, kafka, strict=True):
        assert set(rec) == {"key", "value", "topic", "partition", "offset", "timestamp"}
        assert (rec["key"], rec["value"], rec["topic"]) == (em.key, em.value, em.topic)
        assert rec["partition"] == partition_for_key(em.key, 3)
        assert rec["timestamp"] == Decimal(em.timestamp_ms) / 1000
        offsets[(rec["topic"], rec["partition"])].append(rec["offset"])
    for coord, seen in offsets.items():
        assert seen == list(range(len(seen))), coord
    assert [d.offset for d in first.deliveries + second.deliveries] == [r["offset"] for r in records]


class _FakeMessage:
    def __init__(self, topic: str, key: bytes, partition: int, offset: int) -> None:
        self._t, self._k, self._p, self._o = topic, key, partition, offset

    def topic(self) -> str:
        return self._t

    def key(self) -> bytes:
        return self._k

    def partition(self) -> int:
        return self._p

    def offset(self) -> int:
        return self._o


class _FakeProducer:
    """Stands in for confluent_kafka.Producer: queues, partitions with murmur2, reports on poll/flush."""

    def __init__(self, conf: dict[str, Any], *, fail_topic: str | None = None, full_every: int = 0) -> None:
        self.conf = conf
        self.fail_topic = fail_topic
        self.full_every = full_every
        self.calls = 0
        self.queue: list[tuple[Any, _FakeMessage]] = []
        self.offsets: Counter[tuple[str, int]] = Counter()
        self.produced: list[dict[str, Any]] = []

    def produce(self, topic: str, **kwargs: Any) -> None:
        self.calls += 1
        if self.full_every and self.calls % self.full_every == 0:
            raise BufferError("queue full")
        partition = kwargs.get("partition", partition_for_key(kwargs["key"], 3))
        offset = self.offsets[(topic, partition)]
        self.offsets[(topic, partition)] += 1
        self.produced.append({"topic": topic, **kwargs})
        self.queue.append((kwargs["on_delivery"], _FakeMessage(topic, kwargs["key"], partition, offset)))

    def poll(self, timeout: float = 0) -> int:
        queue, self.queue = self.queue, []
        for callback, msg in queue:
            callback("Broker: Unknown topic" if msg.topic() == self.fail_topic else None, msg)
        return len(queue)

    def flush(self, timeout: float = 0) -> int:
        self.poll()
        return 0


def test_kafka_sink_reports_deliveries(calm_world: World) -> None:
    fakes: list[_FakeProducer] = []

    def factory(conf: dict[str, Any]) -> _FakeProducer:
        fakes.append(_FakeProducer(conf, full_every=7))
        return fakes[-1]

    sink = KafkaSink("localhost:9092", producer_factory=factory)
    result = emit(calm_world, [sink], until=from_us(calm_world.start_us + 6 * 3600 * US))
    fake = fakes[0]
    assert fake.conf["partitioner"] == "murmur2_random"
    assert fake.conf["bootstrap.servers"] == "localhost:9092"
    assert len(result.deliveries) == result.kafka_messages == len(fake.produced) > 0
    for d, p in zip(result.deliveries, fake.produced, strict=True):
        assert (d.topic, d.timestamp_ms) == (p["topic"], p["timestamp"])
        assert d.partition == partition_for_key(p["key"], 3)
        assert isinstance(p["key"], bytes)
        assert isinstance(p["value"], bytes)


def test_kafka_sink_can_skip_delivery_reports_for_big_runs(calm_world: World) -> None:
    sink = KafkaSink("localhost:9092", keep_deliveries=False, producer_factory=_FakeProducer)
    result = emit(calm_world, [sink], until=from_us(calm_world.start_us + 6 * 3600 * US))
    assert result.kafka_messages > 0
    assert result.deliveries == []


def test_kafka_sink_raises_source_error_on_failed_delivery(calm_world: World) -> None:
    sink = KafkaSink("localhost:9092", producer_factory=lambda conf: _FakeProducer(conf, fail_topic="workout"))
    with pytest.raises(SourceError, match="failed delivery"):
        emit(calm_world, [sink])


# --- emit: pacing and progress ---------------------------------------------------------------


class _FakeClock:
    def __init__(self) -> None:
        self.now = 1_000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds > 0
        self.slept.append(seconds)
        self.now += seconds


def test_realtime_pacing_uses_the_injected_clock(calm_world: World) -> None:
    clock = _FakeClock()
    since = from_us(calm_world.start_us + 8 * 3600 * US)
    until = since + timedelta(minutes=10)
    reports: list[Progress] = []
    result = emit(
        calm_world,
        [],
        since=since,
        until=until,
        pace="realtime",
        speed=2.0,
        clock=clock,
        sleep=clock.sleep,
        progress=reports.append,
        progress_every=100,
    )
    assert result.emitted > 0
    # Ten simulated minutes at twice the speed take five minutes of the fake wall clock.
    assert 200 < clock.now - 1_000.0 <= 300
    assert clock.slept
    assert reports[-1].done
    assert reports[-1].emitted == result.emitted
    assert all(not r.done for r in reports[:-1])


def test_emit_validates_its_knobs(calm_world: World) -> None:
    with pytest.raises(InvalidConfigError, match="since"):
        emit(calm_world, [], since=datetime(2025, 3, 3))  # the naive datetime under test
    with pytest.raises(InvalidConfigError, match="before until"):
        emit(calm_world, [], since=START + timedelta(hours=2), until=START + timedelta(hours=1))
    with pytest.raises(InvalidConfigError, match="pace"):
        emit(calm_world, [], pace="slow")  # type: ignore[arg-type]  # the wrong literal under test


def test_realtime_start_rounds_down_to_the_minute() -> None:
    assert realtime_start(datetime(2025, 5, 1, 10, 17, 42, 5, tzinfo=UTC)) == datetime(2025, 5, 1, 10, 17, tzinfo=UTC)


# --- ground truth -------------------------------------------------------------------------------


def test_truth_files_describe_the_world(tmp_path: Path, calm_world: World) -> None:
    world = build_world(calm_world.config.model_copy(update={"chaos": CHAOS}))
    stream = list(world.timed_emissions(main=True, late_wave=True))
    manifest = write_truth(world, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(TRUTH_FILES)

    def lines(name: str) -> list[dict[str, Any]]:
        return [json.loads(x) for x in (tmp_path / name).read_text("utf-8").splitlines()]

    messages = lines("messages.jsonl")
    kafka = [(em, kind) for _at, em, kind in stream if isinstance(em, KafkaEmission)]
    assert [(m["topic"], m["key"], m["value"], m["timestamp_ms"], m["kind"]) for m in messages] == [
        (em.topic, em.key, em.value, em.timestamp_ms, kind) for em, kind in kafka
    ]
    assert manifest["counts"]["messages"] == len(messages) == manifest["counts"]["kafka_messages_total"]
    assert json.loads((tmp_path / "manifest.json").read_text("utf-8")) == manifest
    assert manifest["config"]["seed"] == 5
    assert manifest["start"] == iso(to_us(START))
    final = lines("registered_users.jsonl")
    assert len(final) == 6
    assert len(lines("registrations.jsonl")) == 6 + manifest["counts"]["reregistrations"]
    assert {(r["user_id"], r["device_id"]) for r in final} == {
        (r.row.user_id, r.row.device_id)
        for r in world.registrations
        if r.op == "update" or not any(u.op == "update" and u.row.user_id == r.row.user_id for u in world.registrations)
    }
    visits = lines("visits.jsonl")
    assert sum(1 for v in visits if v["logout"] is None) == manifest["counts"]["open_visits"] > 0
    sessions = lines("sessions.jsonl")
    assert Counter(s["status"] for s in sessions) == Counter(manifest["counts"]["sessions"])
    assert sum(1 for s in sessions if s["stop_delivery"] == "late") == sum(
        1 for b in world.late_records() if b.topic == "workout"
    )
    profiles = lines("profile_changes.jsonl")
    assert all(re.fullmatch(r"\d{5}", p["profile"]["zip"]) for p in profiles if p["profile"])
    readings = lines("readings.jsonl")
    assert len(readings) == manifest["counts"]["readings"]
    assert any(r["heartrate"] is None for r in readings)
    bad = lines("bad_records.jsonl")
    assert Counter(b["reason"] for b in bad) == Counter(b.reason for b in world.bad_records())
    assert all(b["field"] for b in bad if b["reason"] == "schema_violation")
