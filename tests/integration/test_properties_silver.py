"""Property: silver does not depend on arrival order or micro-batch boundaries (CONTRACT.md §3.6).

Heart-rate readings and workout events (duplicates with other values, NULL and implausible
heartrates, invalid pairs, lone events, malformed records) arrive in a shuffled order, split into
arbitrary micro-batches. Each micro-batch goes through the silver ``TopicWriter`` of its topic, and
the ``workout_bpm`` query (the real one, over the change feeds) runs after each. Whatever the order
and split, heart_rate, workouts, completed_workouts, quarantine (minus quarantined_at) and
workout_bpm must equal the contract's rules applied to the *original* records alone.

Each duplicate is ingested after its original (a later micro-batch, or the same one at a later
Kafka position) and differs from it (another heartrate or time, or the same content at another
offset), so a writer that kept any copy but the first ingested, or pooled copies across batches,
fails the property. Every arrival is within the lateness horizon (set to a day here), so nothing
is late.
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, example, given, note, settings
from hypothesis import strategies as st
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.types import StructType

from fitbit_stream import topology
from fitbit_stream.config import Config
from fitbit_stream.io.derived import change_stream, derived_writer
from fitbit_stream.io.silver import TopicWriter
from fitbit_stream.io.tables import Tables
from fitbit_stream.schemas import (
    COMPLETED_WORKOUTS,
    HEART_RATE,
    KAFKA_MULTIPLEX_BZ,
    QUARANTINE,
    USERS,
    WORKOUT_BPM,
    WORKOUTS,
)
from fitbit_stream.transforms.dates import week_part
from fitbit_stream.transforms.workouts import format_duration
from support.world import assert_rows, world_config

BASE = datetime(2025, 3, 3, 10, 0)
LOAD = datetime(2025, 3, 3, 18, 0)
MAX_SESSION = timedelta(hours=3)
#: user -> device; device 303 belongs to nobody.
DEVICES = {1: 101, 2: 202}
HR_VALUES = (None, 20.0, 60.0, 95.5, 140.0, 300.0)


def minute(m: int) -> datetime:
    return BASE + timedelta(minutes=m)


def epoch(ts: datetime) -> int:
    return int(ts.replace(tzinfo=UTC).timestamp())


# --- scenarios -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reading:
    device: int
    minute: int
    heartrate: float | None
    #: heartrates of later copies of the same (device, time)
    copies: tuple[float | None, ...] = ()


@dataclass(frozen=True)
class Session:
    user: int
    workout: int
    session: int
    start: int | None  # minute, None: no start event
    stop: int | None
    #: minutes of later copies of the start / stop event
    start_copies: tuple[int, ...] = ()
    stop_copies: tuple[int, ...] = ()


@dataclass(frozen=True)
class Scenario:
    readings: tuple[Reading, ...]
    sessions: tuple[Session, ...]
    malformed: bool
    #: drives Kafka coordinates, arrival order and the cuts between micro-batches
    seed: int
    batches: int


@dataclass
class Rec:
    topic: str
    key: str
    value: str
    time: datetime
    #: the table key of the record's row (None for a malformed record)
    group: tuple[object, ...] | None
    original: bool
    heartrate: float | None = None
    partition: int = 0
    offset: int = 0

    @property
    def coords(self) -> tuple[int, int]:
        return (self.partition, self.offset)


def _reading_rec(device: int, m: int, hr: float | None, original: bool) -> Rec:
    value = json.dumps({"device_id": device, "time": epoch(minute(m)), "heartrate": hr})
    return Rec("bpm", str(device), value, minute(m), ("bpm", device, m), original, heartrate=hr)


def _event_rec(s: Session, action: str, m: int, original: bool) -> Rec:
    payload = {
        "user_id": s.user,
        "workout_id": s.workout,
        "session_id": s.session,
        "timestamp": epoch(minute(m)),
        "action": action,
    }
    group = ("workout", s.user, s.workout, s.session, action)
    return Rec("workout", str(s.user), json.dumps(payload), minute(m), group, original)


def records(s: Scenario) -> list[Rec]:
    recs: list[Rec] = []
    for r in s.readings:
        recs.append(_reading_rec(r.device, r.minute, r.heartrate, True))
        recs += [_reading_rec(r.device, r.minute, hr, False) for hr in r.copies]
    for w in s.sessions:
        for action, m, copies in (("start", w.start, w.start_copies), ("stop", w.stop, w.stop_copies)):
            if m is not None:
                recs.append(_event_rec(w, action, m, True))
                recs += [_event_rec(w, action, c, False) for c in copies]
    if s.malformed:
        recs += [Rec(topic, "1", "not json", minute(0), None, True) for topic in ("bpm", "workout")]
    return recs


def _first_in_group(recs: Sequence[Rec], slots: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """Reassign ``slots`` (one per record) so that each original holds the smallest of its group."""
    slots = list(slots)
    groups: dict[tuple[object, ...], list[int]] = {}
    for i, r in enumerate(recs):
        if r.group is not None:
            groups.setdefault(r.group, []).append(i)
    for members in groups.values():
        original = next(i for i in members if recs[i].original)
        best = min(members, key=lambda i: slots[i])
        slots[original], slots[best] = slots[best], slots[original]
    return slots


def arrivals(s: Scenario) -> list[list[Rec]]:
    """Kafka coordinates and arrival order for the scenario's records, cut into micro-batches."""
    rng = random.Random(s.seed)
    recs = records(s)
    for topic in ("bpm", "workout"):
        mine = [r for r in recs if r.topic == topic]
        order = rng.sample(range(len(mine)), len(mine))
        partitions = [rng.randrange(2) for _ in mine]
        counters = [0, 0]
        coords = [(0, 0)] * len(mine)
        for i in order:
            coords[i] = (partitions[i], counters[partitions[i]])
            counters[partitions[i]] += 1
        for r, c in zip(mine, _first_in_group(mine, coords), strict=True):
            r.partition, r.offset = c
    positions = _first_in_group(recs, [(p, 0) for p in rng.sample(range(len(recs)), len(recs))])
    arrived = [r for _, r in sorted(zip(positions, recs, strict=True), key=lambda pr: pr[0])]
    cuts = sorted(rng.sample(range(1, len(arrived)), max(0, min(s.batches - 1, len(arrived) - 1))))
    return [arrived[a:b] for a, b in zip([0, *cuts], [*cuts, len(arrived)], strict=True)]


readings_st = st.lists(
    st.builds(
        Reading,
        device=st.sampled_from((101, 202, 303)),
        minute=st.integers(0, 300),
        heartrate=st.sampled_from(HR_VALUES),
        copies=st.lists(st.sampled_from(HR_VALUES), max_size=2).map(tuple),
    ),
    min_size=1,
    max_size=6,
    unique_by=lambda r: (r.device, r.minute),
)


@st.composite
def sessions_st(draw: st.DrawFn) -> tuple[Session, ...]:
    keys = draw(
        st.lists(st.tuples(st.sampled_from((1, 2)), st.integers(1, 2), st.integers(1, 2)), max_size=4, unique=True)
    )
    out = []
    for user, workout, session in keys:
        start = draw(st.integers(0, 120))
        # completed (1 min .. 3 h), reversed or equal, too long, or one event missing
        length = draw(st.sampled_from(("ok", "ok", "reversed", "long", "start_only", "stop_only")))
        stop = {
            "ok": start + draw(st.integers(1, 180)),
            "reversed": start - draw(st.integers(0, 30)),
            "long": start + draw(st.integers(181, 240)),
            "start_only": None,
            "stop_only": start + 30,
        }[length]
        copies = st.lists(st.integers(0, 360), max_size=1).map(tuple)
        out.append(
            Session(
                user,
                workout,
                session,
                None if length == "stop_only" else start,
                stop,
                draw(copies),
                draw(copies),
            )
        )
    return tuple(out)


scenarios = st.builds(
    Scenario,
    readings=readings_st.map(tuple),
    sessions=sessions_st(),
    malformed=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
    batches=st.integers(1, 3),
)

# Differing copies of readings and of events, both in the batch of their original (at a later
# Kafka position) and in a later batch; an identical copy of an invalid pair's stop (the quarantine
# row must carry the original's coordinates); a lone start; malformed records. The seed places them
# so (test_explicit_example_covers_every_kind_of_copy checks it).
DIFFERING_DUPLICATES = Scenario(
    readings=(
        Reading(101, 20, 100.0, (55.0,)),
        Reading(101, 30, None, (90.0,)),
        Reading(101, 35, 120.0, (130.0,)),
        Reading(202, 50, 80.0, (80.0,)),
    ),
    sessions=(
        Session(1, 5, 1, 10, 40, (25,), (300,)),
        Session(2, 7, 1, 60, 55, (), (55,)),
        Session(2, 7, 2, 70, None),
    ),
    malformed=True,
    seed=41,
    batches=3,
)


# --- the rules on the originals ---------------------------------------------------------------------


Row = tuple[Any, ...]


@dataclass(frozen=True)
class Expected:
    heart_rate: list[Row]
    workouts: list[Row]
    completed: list[Row]
    quarantine: list[Row]
    workout_bpm: list[Row]


def _stamp(ts: datetime) -> str:
    return f"{ts:%Y-%m-%d %H:%M:%S}"


def expected(recs: Sequence[Rec]) -> Expected:
    """The contract's rules applied to the original records alone (duplicates never win)."""
    originals = [r for r in recs if r.original]
    readings = [r for r in originals if r.topic == "bpm" and r.group is not None]
    heart_rate: list[Row] = [
        (r.group[1], r.time, r.heartrate, r.heartrate is not None and 25.0 <= r.heartrate <= 250.0)
        for r in readings
        if r.group is not None
    ]
    events = {r.group: r for r in originals if r.topic == "workout" and r.group is not None}
    workouts: list[Row] = [(*g[1:], r.time) for g, r in events.items()]
    completed: list[Row] = []
    quarantine: list[Row] = []
    for g, start in events.items():
        if g[4] != "start" or (stop := events.get((*g[:4], "stop"))) is None:
            continue
        duration = stop.time - start.time
        if timedelta(0) < duration <= MAX_SESSION:
            completed.append((*g[1:4], start.time, stop.time))
            continue
        if duration <= timedelta(0):
            detail = f"end_time <= start_time (start_time {_stamp(start.time)}, end_time {_stamp(stop.time)})"
        else:
            detail = f"duration {format_duration(duration)} exceeds {format_duration(MAX_SESSION)}"
        quarantine.append(
            (stop.key, stop.value, "workout", stop.partition, stop.offset, stop.time, "invalid_session", detail)
        )
    quarantine += [
        (r.key, r.value, r.topic, r.partition, r.offset, r.time, "malformed_json", "value: not valid JSON")
        for r in originals
        if r.group is None
    ]
    workout_bpm: list[Row] = [
        (user, wid, sid, time, begin, end, hr)
        for user, wid, sid, begin, end in completed
        for device, time, hr, valid in heart_rate
        if valid and device == DEVICES.get(user) and begin < time <= end
    ]
    return Expected(heart_rate, workouts, completed, quarantine, workout_bpm)


# --- running the writers ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("properties")


def _bronze(spark: SparkSession, recs: Sequence[Rec], load_time: datetime) -> DataFrame:
    rows = [(r.key, r.value, r.topic, r.partition, r.offset, r.time, r.time.date(), None, load_time) for r in recs]
    return spark.createDataFrame(rows, KAFKA_MULTIPLEX_BZ).withColumn("week_part", week_part("date"))


def run_writers(spark: SparkSession, config: Config, batches: Sequence[Sequence[Rec]]) -> None:
    """Each batch: one bronze commit, the topic writers in a drawn order, then the workout_bpm query."""
    tables = Tables(config)
    # Pipeline() turns the change feed on for every table it creates; derived queries read it.
    spark.conf.set("spark.databricks.delta.properties.defaults.enableChangeDataFeed", "true")
    for name in ("users", "heart_rate", "completed_workouts", "workout_bpm"):
        tables.ensure(spark, name)
    users = spark.createDataFrame([(u, d, f"aa:bb:cc:dd:ee:0{u}", BASE) for u, d in DEVICES.items()], USERS)
    tables.append(users, tables.ref("users"))
    writers = {kind: TopicWriter(spark, config, kind, f"silver_{kind}") for kind in ("bpm", "workout")}
    batch_ids = {"bpm": 0, "workout": 0}
    spec = derived_writer(("workout_bpm",))
    rng = random.Random(len(batches))
    for i, batch in enumerate(batches):
        for kind in rng.sample(["bpm", "workout"], 2):
            mine = [r for r in batch if r.topic == kind]
            if mine:
                writers[kind](_bronze(spark, mine, LOAD + timedelta(minutes=i)), batch_ids[kind])
                batch_ids[kind] += 1
        query = (
            change_stream(spark, tables, topology.query("derived_workout_bpm").reads)
            .writeStream.queryName("derived_workout_bpm")
            .foreachBatch(spec.make_writer(tables))
            .option("checkpointLocation", tables.checkpoint("derived_workout_bpm"))
            .trigger(availableNow=True)
            .start()
        )
        try:
            query.awaitTermination()
        finally:
            query.stop()
        assert query.exception() is None


@settings(
    max_examples=8,
    deadline=None,
    derandomize=True,
    # A Spark example costs seconds: no shrinking (the failing scenario is printed by note()).
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(scenario=scenarios)
@example(scenario=DIFFERING_DUPLICATES)
def test_silver_tables_do_not_depend_on_arrival_order_or_batches(
    spark: SparkSession, spark_config: Config, roots: Path, scenario: Scenario
) -> None:
    batches = arrivals(scenario)
    note(f"batches: {[[(r.topic, r.partition, r.offset, r.value) for r in b] for b in batches]}")
    root = roots / f"example-{len(list(roots.iterdir()))}"
    # every arrival order of the scenarios' events (up to 6 h apart) is within the horizon
    config = world_config(root, spark_config.jars_dir, extra=("rules.lateness_horizon_minutes=1440",))
    run_writers(spark, config, batches)
    want = expected([r for b in batches for r in b])
    tables = Tables(config)

    def read(name: str) -> DataFrame:
        return tables.read(spark, tables.ref(name))

    assert_rows(read("heart_rate"), want.heart_rate, HEART_RATE)
    assert_rows(read("workouts"), want.workouts, WORKOUTS)
    assert_rows(read("completed_workouts"), want.completed, COMPLETED_WORKOUTS)
    quarantine_columns = [f for f in QUARANTINE.fields if f.name != "quarantined_at"]
    assert_rows(
        read("quarantine").select(*(f.name for f in quarantine_columns)),
        want.quarantine,
        StructType(quarantine_columns),
    )
    assert_rows(read("workout_bpm"), want.workout_bpm, WORKOUT_BPM)


def _copy_kinds(batches: Sequence[Sequence[Rec]]) -> set[tuple[str, str, str]]:
    """(topic, "same"/"other" content, "same"/"later" batch) of every copy, against its original."""
    batch_of = {id(r): i for i, b in enumerate(batches) for r in b}
    recs = [r for b in batches for r in b]
    kinds = set()
    for r in recs:
        if not r.original:
            first = next(o for o in recs if o.original and o.group == r.group)
            content = "same" if r.value == first.value else "other"
            batch = "same" if batch_of[id(r)] == batch_of[id(first)] else "later"
            kinds.add((r.topic, content, batch))
    return kinds


def test_scenarios_put_every_original_first() -> None:
    """Each original precedes its copies in ingestion order (batch, partition, offset)."""
    for seed in range(20):
        batches = arrivals(dataclasses.replace(DIFFERING_DUPLICATES, seed=seed))
        order = {id(r): (i, r.partition, r.offset) for i, b in enumerate(batches) for r in b}
        recs = [r for b in batches for r in b]
        for r in recs:
            if not r.original:
                first = next(o for o in recs if o.original and o.group == r.group)
                assert order[id(first)] < order[id(r)]


def test_explicit_example_covers_every_kind_of_copy() -> None:
    """Differing copies in the original's batch and in a later one, for both topics: a writer that
    let a later copy win within a batch, or across batches, fails the property on this example."""
    batches = arrivals(DIFFERING_DUPLICATES)
    assert len(batches) == 3
    kinds = _copy_kinds(batches)
    for topic in ("bpm", "workout"):
        assert {(topic, "other", "same"), (topic, "other", "later")} <= kinds
    assert ("workout", "same", "same") in kinds
