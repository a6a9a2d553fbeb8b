"""Issue 7's fault suite: real broker, real Delta, seeded. Each fault ends with the tables equal to a
fault-free run of the same data, and each test proves its fault was injected (the kill hit a live
pipeline, the batch was replayed, the broker came back as a new process, the records were gone...).

One small generated world (three users, four hours, two completed workouts, two closed gym visits,
with malformed, schema-violating, duplicate and future records) plus hand-made poison records goes
to its own topics; the SQL source holds its final state from the start. The SIGKILL rounds drain
it into one lake; then a fault-free run drains the same topics and source into a second lake, the
reference the other scenarios are compared with. Comparisons leave out ``load_time`` and
``quarantined_at`` (wall-clock times of a run) and nothing else.

A full pipeline run costs minutes of CPU even on small data (every query and MERGE has a fixed
cost), so the scenarios share runs where they can: the poison records ride in the shared data (the
killed lake meets the second half of them after a restart), the replayed batches and the reset
checkpoints recover in one run, and the faults that only touch Kafka run the bronze layer alone.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from chispa import assert_df_equality
from confluent_kafka import Producer
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.window import Window

from fitbit_stream import topology
from fitbit_stream.config import Config, load_config
from fitbit_stream.errors import PipelineError
from fitbit_stream.generator import (
    ChaosConfig,
    GeneratorConfig,
    KafkaSink,
    RegistrationRow,
    SqlSink,
    World,
    build_world,
    connect_sql,
    emit,
)
from fitbit_stream.io import guard
from fitbit_stream.io.silver import TopicWriter
from fitbit_stream.io.tables import Tables
from fitbit_stream.pipeline import Pipeline, RunReport
from fitbit_stream.platform.kafka import KafkaBroker
from fitbit_stream.schemas import TABLES
from support.lake import batches, lake_commits, write_config

pytestmark = pytest.mark.e2e

SEED = 29  # three users, two completed workouts with readings, two closed visits in four hours
START = datetime(2025, 3, 3, 6, tzinfo=UTC)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
AS_OF = date(2026, 1, 1)  # user_bins' reference date, fixed so every run agrees
# Issue 7 asks for 10 SIGKILL rounds; fewer only to iterate on the other scenarios locally.
ROUNDS = int(os.environ.get("FITBIT_FAULT_ROUNDS", "10"))
IGNORED = frozenset({"load_time", "quarantined_at"})
# The stages of a drain in the order run --once can start them (it starts a query once the queries
# writing its inputs have ended, so some run side by side), each with tables it commits to. Round i
# kills after a commit to its stage's tables or to a later stage's (a stage that ran alongside an
# earlier one may be done already), so every round kills a live drain and makes progress (what it
# killed is replayed and completed by the next round on its way further) and the rounds cover it.
# ``mid_batch``: the stage's query writes more after these tables in the same micro-batch, so a kill
# right after their commit lands before the checkpoint records the batch. The three topic queries
# run side by side: a mid-batch round kills after the first commit to any of their tables, which no
# topic query's batch can end without.


#: the mid-batch rounds: a kill after a commit to a silver table of a Kafka ingest query's batch
MID_BATCH_ROUNDS = 3
#: ``realtime`` mode reads Kafka with two queries (the readings, and the other two topics)
KAFKA_QUERIES = tuple(name for name, _ in topology.KAFKA_INGEST_REALTIME)
BPM_QUERY = next(name for name, kinds in topology.KAFKA_INGEST_REALTIME if "bpm" in kinds)


def _stages() -> tuple[tuple[str, tuple[str, ...], bool], ...]:
    """(stage, "<layer>/<table>" it commits to, mid_batch) for every query of a drain, from the
    declared topology (``realtime`` mode, landing off), in the order the drain can start them.

    A Kafka ingest query commits its silver topic tables and then bronze in one micro-batch: it is
    a stage (a kill after any of its commits, bronze's included). After them come
    :data:`MID_BATCH_ROUNDS` mid-batch stages: a kill after a commit to a silver table of either
    Kafka query, before its bronze append and its checkpoint record the batch.
    """
    specs = [q for q in topology.queries("realtime") if q.source != "landing"]
    # bronze is every Kafka query's last commit: each one's stage keeps it
    shared = {t for q in specs for t in q.writes if sum(t in other.writes for other in specs) > 1}
    shared.discard("kafka_multiplex_bz")

    def paths(tables: list[str]) -> tuple[str, ...]:
        return tuple(f"{topology.INTERNAL_TABLES.get(t) or TABLES[t].layer}/{t}" for t in tables)

    order = [n for wave in topology.waves(specs) for n in wave]
    last_kafka = [n for n in order if topology.query(n).source == "kafka"][-1]
    out = []
    silver: list[str] = []
    for name in order:
        spec = topology.query(name)
        own = [t for t in spec.writes if t not in shared]
        # the SQL poll appends its two tables one after the other: kill between the two appends
        own = own[:1] if spec.source == "sql" else own
        # A derived query commits its tables side by side in a micro-batch (io/derived.py): one
        # stage, like an ingest query's; a kill after either commit leaves the batch to replay.
        out.append((name, paths(own), False))
        if spec.source == "kafka":
            silver += [t for t in own if t != "kafka_multiplex_bz"]
            if name == last_kafka:
                out += [("kafka ingest, mid-batch", paths(silver), True)] * MID_BATCH_ROUNDS
    return tuple(out)


STAGES = _stages()
#: the query that commits to each table (the mid-batch stages name no single query)
OWNER = {table: stage for stage, tables, mid in STAGES if not mid for table in tables}
#: the last stage that writes heart_rate: a round after it has the first poison records in silver
LAST_HEART_RATE_STAGE = max(i for i, (_, tables, _) in enumerate(STAGES) if "silver/heart_rate" in tables)
# The subprocess pipelines: C1 only and no code generation cost a quarter less CPU on
# data this small (and the results must not depend on it). C1 alone shrinks the JVM's default code
# cache from 240 MB to 48 MB, which a whole drain's generated code outgrows ("Out of space in
# CodeCache"): it gets the usual 240 MB back.
SUBPROCESS_SPARK_CONF = (
    "spark_conf={'spark.default.parallelism': '2', 'spark.driver.memory': '1g', "
    "'spark.sql.codegen.wholeStage': 'false', 'spark.sql.codegen.factoryMode': 'NO_CODEGEN', "
    "'spark.driver.extraJavaOptions': "
    "'-Duser.timezone=UTC -XX:TieredStopAtLevel=1 -XX:ReservedCodeCacheSize=240m -XX:+UseSerialGC'}"
)

Rows = dict[str, list[tuple[Any, ...]]]


# --- lakes and comparisons ---------------------------------------------------------------------------


def snapshot(spark: SparkSession, config: Config, *, names: tuple[str, ...] = (), every_column: bool = False) -> Rows:
    """Tables (default: every contract table), sorted; without the run's wall-clock columns."""
    tables = Tables(config)
    out: Rows = {}
    for name in names or tuple(TABLES):
        df = tables.read(spark, tables.ref(name))
        columns = sorted(c for c in df.columns if every_column or c not in IGNORED)
        out[name] = sorted((tuple(r) for r in df.select(*columns).collect()), key=repr)
    return out


def assert_same_tables(actual: Rows, expected: Rows) -> None:
    problems = []
    for name in sorted(expected):
        got, want = actual.get(name, []), expected[name]
        if got != want:
            extra = [r for r in got if r not in want][:3]
            missing = [r for r in want if r not in got][:3]
            problems.append(f"{name}: {len(got)} rows, expected {len(want)}; extra {extra}; missing {missing}")
    assert not problems, "tables differ from the fault-free run:\n" + "\n".join(problems)


def copy_lake(source: Config, target: Config) -> None:
    shutil.copytree(source.storage.root, target.storage.root)
    shutil.copytree(source.storage.checkpoint_root, target.storage.checkpoint_root)


def uncommitted(checkpoint_root: Path) -> dict[str, int]:
    """Queries whose last planned batch the checkpoint has not recorded as committed."""
    found = {}
    for query in sorted(p for p in checkpoint_root.iterdir() if p.is_dir()) if checkpoint_root.is_dir() else []:
        planned, done = batches(query / "offsets"), batches(query / "commits")
        if planned and (not done or planned[-1] > done[-1]):
            found[query.name] = planned[-1]
    return found


def delete_commit(query: Path, batch: int) -> None:
    """Delete a batch's commit file (and Hadoop's checksum of it, or the rewrite would collide)."""
    (query / "commits" / str(batch)).unlink()
    (query / "commits" / f".{batch}.crc").unlink(missing_ok=True)


def value(df: DataFrame) -> Any:
    """The single value of a one-row, one-column DataFrame."""
    row = df.first()
    assert row is not None, "expected a row"
    return row[0]


def rows_read(report: RunReport) -> dict[str, int]:
    return {s.name: s.rows for s in report.stages}


def _pause(seconds: float) -> None:
    # Polling the file system (for a kill trigger) needs a short wait between looks.
    threading.Event().wait(seconds)


# --- the shared world, with poison records -----------------------------------------------------------

T = datetime(2025, 3, 3, 9, 40, tzinfo=UTC)  # near the end of the world: nothing it sends is late
POISON_DEVICE = 990001  # no registration: readings land in heart_rate, nowhere downstream
NOT_UTF8_DEVICE = 990002  # its one reading has bytes that are not UTF-8 in an ignored field
POISON_USER = 990
ONE_MB = "x" * (1024 * 1024)


FINAL_SESSION = 9901  # the session of final_work()


def _epoch(at: datetime) -> int:
    return int((at - EPOCH).total_seconds())


def _us(at: datetime) -> int:
    return (at - EPOCH) // timedelta(microseconds=1)


def _ms(at: datetime) -> int:
    return int((at - EPOCH) / timedelta(milliseconds=1))


def reading(device: int, at: datetime, hr: float, **extra: object) -> bytes:
    return json.dumps({"device_id": device, "time": _epoch(at), "heartrate": hr, **extra}).encode()


def profile_change(kind: str, at: datetime, city: str) -> bytes:
    address = {"street_address": "1 Main St", "city": city, "state": "TX", "zip": 8701}
    body = {"user_id": POISON_USER, "update_type": kind, "timestamp": _epoch(at), "dob": "01/15/1990"}
    body |= {"sex": "F", "gender": "F", "first_name": "Ann", "last_name": "Lee", "address": address}
    return json.dumps(body).encode()


#: (name, topic kind, partition, value, record time): produced after the world's records.
POISON_FIRST: tuple[tuple[str, str, int, bytes | None, datetime], ...] = (
    ("original", "bpm", 0, reading(POISON_DEVICE, T, 61.0), T),
    ("invalid_json", "bpm", 0, b'{"device_id": 990001, "time": 17409', T),
    ("wrong_type", "bpm", 0, b'{"device_id": "990001", "time": 1740994800, "heartrate": 62}', T),
    (
        "not_utf8_in_a_string",
        "bpm",
        0,
        b'{"device_id": 990002, "time": 1740994801, "heartrate": 63, "n": "\xff\xfe"}',
        T,
    ),
    ("not_utf8", "bpm", 0, b'\xc3\x28{"device_id": 990001}', T),
    ("one_mb", "bpm", 0, reading(POISON_DEVICE, T + timedelta(seconds=2), 64.0, padding=ONE_MB), T),
    ("null_value", "bpm", 0, None, T),
    ("clock_a_day_ahead", "bpm", 0, reading(POISON_DEVICE, T + timedelta(days=1), 65.0), T + timedelta(seconds=3)),
    # one user's profile changes, over three partitions, the newest first
    ("update_last", "user_info", 2, profile_change("update", T - timedelta(minutes=10), "Dallas"), T),
    ("new", "user_info", 0, profile_change("new", T - timedelta(minutes=30), "Austin"), T),
)
#: Produced once the killed pipeline has read the first part (so after a restart): an older change
#: of the same user on a third partition, and duplicates of records it already processed.
POISON_SECOND: tuple[tuple[str, str, int, bytes | None, datetime], ...] = (
    ("update_older", "user_info", 1, profile_change("update", T - timedelta(minutes=20), "Houston"), T),
    ("new_again", "user_info", 0, profile_change("new", T - timedelta(minutes=30), "Austin"), T),
    ("original_again", "bpm", 0, reading(POISON_DEVICE, T, 61.0), T + timedelta(seconds=5)),
)


def final_work(world: World) -> tuple[tuple[tuple[str, str, int, bytes | None, datetime], ...], dict[str, str]]:
    """A completed session, with two readings, of a registered member, after the world's end, and
    the records' keys: produced just before the last SIGKILL round, so that the final stage (the
    derived query, whose work a round that ran beside it may have finished) has work in that round."""
    latest: dict[int, RegistrationRow] = {}
    for version in world.registrations:
        row = version.row
        if row.user_id not in latest or row.registration_us >= latest[row.user_id].registration_us:
            latest[row.user_id] = row
    member = latest[min(latest)]
    start = datetime(2025, 3, 3, 10, 20, tzinfo=UTC)  # the world ends at 10:00
    assert all(s.start_us < _us(start) for s in world.sessions)

    def event(action: str, at: datetime) -> bytes:
        body = {"user_id": member.user_id, "workout_id": 1, "session_id": FINAL_SESSION, "action": action}
        return json.dumps({**body, "timestamp": _epoch(at)}).encode()

    user, device = str(member.user_id), str(member.device_id)
    first, second = start + timedelta(minutes=1), start + timedelta(minutes=5)
    stop = start + timedelta(minutes=10)
    records = (
        ("final_start", "workout", 0, event("start", start), start),
        ("final_reading_1", "bpm", 0, reading(member.device_id, first, 101.0), first),
        ("final_reading_2", "bpm", 0, reading(member.device_id, second, 105.0), second),
        ("final_stop", "workout", 0, event("stop", stop), stop),
    )
    keys = {"final_start": user, "final_stop": user, "final_reading_1": device, "final_reading_2": device}
    return records, keys


POISON = {name: payload for name, _, _, payload, _ in POISON_FIRST + POISON_SECOND if payload is not None}
NOT_UTF8_IN_A_STRING = POISON["not_utf8_in_a_string"]


def at_coordinates(name: str, where: dict[str, tuple[str, int, int]]) -> Column:
    """Rows of the record produced as ``name`` (its topic, partition and offset)."""
    topic, partition, offset = where[name]
    return (F.col("topic") == topic) & (F.col("partition") == partition) & (F.col("offset") == offset)


@dataclass(frozen=True)
class Env:
    broker: KafkaBroker
    base: Path
    suffix: str
    sql_url: str
    jars_dir: str
    coordinates: dict[str, tuple[str, int, int]] = field(default_factory=dict)

    def topic(self, kind: str) -> str:
        return f"{kind}_{self.suffix}"

    def config(self, name: str, *overrides: str) -> Config:
        root = self.base / name
        return load_config(
            None,
            [
                f"storage.root={root / 'lake'}",
                f"storage.checkpoint_root={root / 'checkpoints'}",
                f"jars_dir={self.jars_dir}",
                f"kafka.bootstrap_servers={self.broker.bootstrap_servers}",
                *(f"kafka.topics.{kind}={self.topic(kind)}" for kind in ("user_info", "bpm", "workout")),
                f"sql.url={self.sql_url}",
                "streaming.shuffle_partitions=1",
                # The killed pipeline reads Kafka 2,500 offsets a micro-batch, the fault-free one all
                # at once. The ingest query judges lateness per micro-batch, so a partition whose
                # devices run hours ahead of another's would make the lagging readings "late" in the
                # one and not in the other. Those decisions are the contract's (test_realtime pins the
                # rule at its boundary); this world has no late records by design, and a horizon
                # longer than it spans keeps the comparison about exactly-once.
                "rules.lateness_horizon_minutes=600",
                *overrides,
            ],
        )

    def produce(
        self, records: tuple[tuple[str, str, int, bytes | None, datetime], ...], keys: dict[str, str] | None = None
    ) -> None:
        """Produce hand-made records (no compression: the 1 MB value travels as 1 MB), keyed by
        ``keys`` (by record name), else by the poison user or device."""
        producer = Producer(
            {
                "bootstrap.servers": self.broker.bootstrap_servers,
                "enable.idempotence": True,
                "message.max.bytes": 3 * 1024 * 1024,
            }
        )
        for name, kind, partition, payload, at in records:

            def delivered(err: Any, msg: Any, name: str = name) -> None:
                assert err is None, f"{name}: {err}"
                self.coordinates[name] = (msg.topic(), msg.partition(), msg.offset())

            key = (keys or {}).get(name, str(POISON_USER if kind == "user_info" else POISON_DEVICE)).encode()
            producer.produce(
                self.topic(kind), key=key, value=payload, partition=partition, timestamp=_ms(at), on_delivery=delivered
            )
            producer.poll(0)
        assert producer.flush(60) == 0


@pytest.fixture(scope="module")
def env(kafka_broker: KafkaBroker, tmp_path_factory: pytest.TempPathFactory, spark_config: Config) -> Env:
    base = tmp_path_factory.mktemp("faults")
    environment = Env(
        kafka_broker, base, uuid.uuid4().hex[:8], f"jdbc:sqlite:{base / 'source.db'}", spark_config.jars_dir
    )
    kafka_broker.ensure_topics([environment.topic("user_info"), environment.topic("workout")], 3)
    kafka_broker.ensure_topics([environment.topic("bpm")], 3, {"max.message.bytes": str(2 * 1024 * 1024)})
    return environment


@pytest.fixture(scope="module")
def world(env: Env) -> World:
    knobs = GeneratorConfig(
        seed=SEED,
        users=3,
        days=4 / 24,
        start=START,
        topics=env.config("topics").kafka.topics,
        chaos=ChaosConfig(malformed_json=2, schema_violations=2, duplicates=4, future=1, shuffle_window_seconds=20),
    )
    built = build_world(knobs)
    assert POISON_USER not in {r.row.user_id for r in built.registrations}
    assert POISON_DEVICE not in {r.row.device_id for r in built.registrations}
    connection, dialect = connect_sql(env.sql_url)
    try:
        emit(built, [SqlSink(connection, dialect=dialect)])  # the SQL source's final state, up front
    finally:
        connection.close()
    sink = KafkaSink(env.broker.bootstrap_servers, keep_deliveries=False)
    emit(built, [sink])
    env.produce(POISON_FIRST)
    return built


# --- one pipeline per checkpoint ------------------------------------------------------------------


def test_a_second_pipeline_on_the_same_checkpoints_is_refused(spark: SparkSession, drained: Drained) -> None:
    config = drained.killed  # a drained lake: its tables exist, a run that started would read and write
    lake = Path(config.storage.root)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from fitbit_stream.config import load_config; from fitbit_stream.io import guard\n"
            "with guard.lock(load_config(None, [f'storage.checkpoint_root={sys.argv[1]}'])):\n"
            "    print('locked', flush=True); sys.stdin.read()",
            config.storage.checkpoint_root,
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == b"locked\n"
        before = lake_commits(lake)
        refused = pytest.raises(PipelineError, match=f"another pipeline holds the checkpoints.*pid {holder.pid}")
        with refused:
            Pipeline(spark, config).run_once(as_of=AS_OF)
        with refused, guard.lock(config):
            pass
        assert lake_commits(lake) == before  # refused before any query or table write
        holder.kill()  # SIGKILL: no clean-up, the kernel releases the lock
        holder.wait(timeout=30)
        with guard.lock(config):
            owner = json.loads((Path(config.storage.checkpoint_root) / guard.LOCK_FILE).read_text())
            assert owner["pid"] == os.getpid()
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()


# --- data lost to Kafka retention, and a bronze checkpoint reset ----------------------------------------


def test_data_lost_to_retention_stops_the_pipeline_unless_accepted(spark: SparkSession, env: Env) -> None:
    suffix = uuid.uuid4().hex[:8]
    topics = {kind: f"{kind}_loss_{suffix}" for kind in ("user_info", "bpm", "workout")}
    env.broker.ensure_topics(list(topics.values()), 1)
    overrides = [*(f"kafka.topics.{kind}={topic}" for kind, topic in topics.items()), "sql.enabled=false"]
    config = env.config("loss", *overrides)
    tables = Tables(config)
    producer = Producer({"bootstrap.servers": env.broker.bootstrap_servers, "enable.idempotence": True})

    def send(first: int, count: int) -> None:
        for i in range(first, first + count):
            at = START + timedelta(seconds=i)
            producer.produce(topics["bpm"], key=b"1", value=reading(1, at, 60.0 + i), partition=0, timestamp=_ms(at))
        assert producer.flush(30) == 0

    def bronze_offsets() -> list[int]:
        return sorted(r["offset"] for r in tables.read(spark, tables.ref("kafka_multiplex_bz")).collect())

    pipelines: dict[bool, Pipeline] = {}

    def run(config: Config) -> int:
        # what the pipeline's start-up does: check (and register) the checkpoints, then drain
        guard.check(spark, config, Tables(config), [BPM_QUERY])
        pipeline = pipelines.setdefault(config.kafka.fail_on_data_loss, Pipeline(spark, config))
        return rows_read(pipeline.run_once(layers="bronze"))[BPM_QUERY]

    send(0, 10)
    assert run(config) == 10
    send(10, 10)
    assert env.broker.delete_records({(topics["bpm"], 0): 15}) == {(topics["bpm"], 0): 15}  # 10..14 gone unread

    with pytest.raises(PipelineError, match="kafka data loss") as lost:
        run(config)
    assert f"topic '{topics['bpm']}' partition 0: offsets 10..14" in str(lost.value)
    assert "kafka.fail_on_data_loss" in str(lost.value)
    assert bronze_offsets() == list(range(10))  # nothing skipped silently

    accepting = env.config("loss", *overrides, "kafka.fail_on_data_loss=false")
    assert run(accepting) == 5
    assert bronze_offsets() == [*range(10), *range(15, 20)]
    assert_df_equality(
        tables.read(spark, tables.ref("_kafka_gaps", layer="ops")).drop("detected_at"),
        spark.createDataFrame(
            [(BPM_QUERY, topics["bpm"], 0, 10, 14)],
            "query string, topic string, partition int, from_offset bigint, to_offset bigint",
        ),
        ignore_nullable=True,
    )

    # the bronze checkpoint is lost: refused; reset, it resumes after what bronze holds
    shutil.rmtree(Path(config.storage.checkpoint_root) / BPM_QUERY)
    with pytest.raises(PipelineError, match=f"{BPM_QUERY}: its checkpoint .* is missing"):
        run(config)
    assert guard.check(spark, config, tables, [BPM_QUERY], reset=True) == [BPM_QUERY]
    send(20, 3)
    assert run(config) == 3  # a new checkpoint reads nothing twice and skips nothing
    assert bronze_offsets() == [*range(10), *range(15, 23)]


# --- landing lines that are not records ---------------------------------------------------------


def test_landing_lines_that_are_not_records_are_quarantined(spark: SparkSession, env: Env) -> None:
    landing = env.base / "landing-files"
    (landing / "2025" / "03").mkdir(parents=True)
    config = env.config(
        "landing", "kafka.enabled=false", "sql.enabled=false", "landing.enabled=true", f"landing.path={landing}"
    )
    record = {"key": "2", "value": reading(2, T, 70.0).decode(), "topic": "bpm", "partition": 5, "offset": 0}
    lines = [
        json.dumps({**record, "timestamp": _epoch(T)}),
        "this line is not json",
        json.dumps({"key": "2", "value": "{}", "topic": "bpm"}),
        "[1, 2, 3]",
        "",
        json.dumps({**record, "offset": 1, "timestamp": "noon"}),
    ]
    (landing / "2025" / "03" / "part-0.json").write_text("\n".join(lines) + "\n", encoding="utf-8")
    tables = Tables(config)
    pipeline = Pipeline(spark, config)
    assert rows_read(pipeline.run_once(layers="bronze"))["bronze_landing_multiplex"] == len(lines)  # blank included

    bronze = tables.read(spark, tables.ref("kafka_multiplex_bz"))
    assert [tuple(r) for r in bronze.select("key", "value", "topic", "partition", "offset").collect()] == [
        ("2", record["value"], "bpm", 5, 0)
    ]
    quarantine = tables.read(spark, tables.ref("quarantine")).select(
        "value",
        "topic",
        "offset",
        "reason",
        F.regexp_replace("detail", r" \(file .*part-0\.json\)$", "").alias("detail"),
    )
    not_a_record = "landing line: not a JSON object with the landing record's fields and types"
    assert_df_equality(
        quarantine,
        spark.createDataFrame(
            [
                ("this line is not json", None, None, "malformed_json", not_a_record),
                ("[1, 2, 3]", None, None, "malformed_json", not_a_record),
                (lines[2], "bpm", None, "malformed_json", "landing line: missing partition, offset, timestamp"),
                (lines[5], "bpm", 1, "malformed_json", "landing line: timestamp is not epoch seconds"),
            ],
            "value string, topic string, offset bigint, reason string, detail string",
        ),
        ignore_row_order=True,
        ignore_nullable=True,
    )
    # read once: a second run reads nothing and adds nothing
    assert rows_read(pipeline.run_once(layers="bronze"))["bronze_landing_multiplex"] == 0
    assert tables.read(spark, tables.ref("quarantine")).count() == 4


# --- SIGKILL rounds ----------------------------------------------------------------------------------


@dataclass
class Kill:
    round: int
    stage: str
    mid_batch: bool
    trigger: str  # the commit the kill followed, e.g. "silver/heart_rate 00000000000000000001.json"
    delay: float  # seconds between that commit and the kill
    uncommitted: dict[str, int]


@dataclass
class Drained:
    killed: Config
    reference: Config
    expected: Rows
    kills: list[Kill]
    second_part_after_restart: bool


#: A round's pipeline: ``fitbit-stream run --once`` (the CLI's own entry point), whose Spark session
#: is built, and Delta's read and MERGE paths loaded on a table of its own, before its turn comes. A
#: cold JVM took 15-25 s of each round on two busy cores; started while the round before it runs, it
#: is ready when its turn comes. Nothing touches the lake or the checkpoints before ``go``.
_ROUND_PIPELINE = """
import sys, tempfile
from delta.tables import DeltaTable
from fitbit_stream import cli
from fitbit_stream.config import load_config
from fitbit_stream.session import get_spark
spark = get_spark(load_config(sys.argv[1]))
with tempfile.TemporaryDirectory() as warm:
    spark.range(3).write.format("delta").save(warm)
    target = DeltaTable.forPath(spark, warm).alias("t")
    target.merge(spark.range(5).alias("s"), "t.id = s.id").whenNotMatchedInsertAll().execute()
    spark.read.format("delta").load(warm).collect()
if sys.stdin.readline() == "go\\n":
    sys.exit(cli.main(["run", "--once", "--config", sys.argv[1]]))
"""


def _start_pipeline(config_file: Path, log: Path) -> subprocess.Popen[bytes]:
    """Start a round's pipeline, waiting for :func:`_go`."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-c", _ROUND_PIPELINE, str(config_file)],
            cwd=config_file.parent,
            stdin=subprocess.PIPE,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "TZ": "UTC", "PYTHONUNBUFFERED": "1"},
            start_new_session=True,  # its own process group: the kill takes the JVM too
        )


def _go(proc: subprocess.Popen[bytes]) -> subprocess.Popen[bytes]:
    assert proc.stdin is not None
    proc.stdin.write(b"go\n")
    proc.stdin.close()
    return proc


def _group_alive(pgid: int) -> bool:
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = stat.read_text().rpartition(")")[2].split()
            if fields[0] != "Z" and int(fields[2]) == pgid:
                return True
    return False


def _kill(proc: subprocess.Popen[bytes]) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    deadline = time.monotonic() + 30
    while _group_alive(proc.pid) and time.monotonic() < deadline:
        _pause(0.05)
    assert not _group_alive(proc.pid), "the pipeline's JVM survived the kill of its process group"


def _alive_for(proc: subprocess.Popen[bytes], seconds: float) -> bool:
    """Wait up to ``seconds``; False if the process exited meanwhile."""
    try:
        proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        return True
    return False


def _kill_after_commit(
    proc: subprocess.Popen[bytes], lake: Path, tables: tuple[str, ...], delay: float, seen: set[str]
) -> str:
    """SIGKILL the pipeline ``delay`` seconds after its first commit to one of ``tables`` that is not
    in ``seen`` (the commits before it started)."""
    # Only the target tables' logs, every 50 ms: a whole-lake listing every 10 ms took CPU from the
    # two-core pipeline it watches, and a topic batch's next commit comes a second after this one.
    deadline = time.monotonic() + 900
    while True:
        fresh = sorted(lake_commits(lake, tables) - seen)
        if fresh:
            break
        if time.monotonic() > deadline or not _alive_for(proc, 0.05):
            pytest.fail(f"the pipeline ended (exit {proc.poll()}) without a commit to {tables}")
    if delay and not _alive_for(proc, delay):
        pytest.fail(f"the pipeline ended within {delay:.2f}s of commit {fresh[0]}: no kill injected")
    _kill(proc)
    return fresh[0]


def _read_first_part(spark: SparkSession, config: Config) -> bool:
    """Whether the killed lake's silver has the first part of the poison records."""
    tables = Tables(config)
    with contextlib.suppress(Exception):  # tables not created yet
        readings = tables.read(spark, tables.ref("heart_rate")).where(F.col("device_id") == POISON_DEVICE)
        changes = tables.read(spark, tables.ref("user_profile_history")).where(F.col("user_id") == POISON_USER)
        return not readings.isEmpty() and not changes.isEmpty()
    return False


@pytest.fixture(scope="module")
def drained(spark: SparkSession, env: Env, world: World) -> Drained:
    rng = random.Random(SEED)
    killed = env.config("killed", SUBPROCESS_SPARK_CONF, "kafka.max_offsets_per_trigger=2500")
    logs = env.base / "killed-logs"
    logs.mkdir()
    config_file = write_config(killed, logs / "run.yaml")
    lake, checkpoints = Path(killed.storage.root), Path(killed.storage.checkpoint_root)
    kills = []
    second_part = False
    # The fault-free run drains the same data into its own lake, here, in a thread: it starts once
    # every record is in Kafka and overlaps the later rounds (the machine is idle while a round's
    # JVM starts and while the test watches for a commit).
    reference = env.config("reference")
    reference_failed: list[BaseException] = []
    final_records, final_keys = final_work(world)
    final_produced, abandoned = threading.Event(), threading.Event()

    def run_reference() -> None:
        try:
            # started before the last round's records are in Kafka, it drains them in a second run
            # (a run boundary changes no table)
            later = not final_produced.is_set()
            Pipeline(spark, reference).run_once(as_of=AS_OF)
            if later:
                final_produced.wait()
                if not abandoned.is_set():
                    Pipeline(spark, reference).run_once(as_of=AS_OF)
        except BaseException as exc:
            reference_failed.append(exc)

    referee = threading.Thread(target=run_reference, name="reference-run", daemon=True)
    # the mid-batch kills always, the other stages drawn, in drain order
    # gym_summary and gym_occupancy may have nothing to write when their turn comes (a batch that
    # changes no row commits nothing), so a round drawn there could not be sure to kill: not drawn.
    # Their commits still count as targets of the rounds before them.
    quiet = {"derived_gym_summary", "derived_gym_occupancy"}
    others = [i for i, (name, _, mid) in enumerate(STAGES) if not mid and name not in quiet]
    mids = [i for i, (_, _, mid) in enumerate(STAGES) if mid]
    drawn = sorted(mids[:ROUNDS] + rng.sample(others, max(0, ROUNDS - len(mids))))
    logs_of = [f"round-{number}.log" for number in range(len(drawn))] + ["final.log"]
    upcoming = _start_pipeline(config_file, logs / logs_of[0])
    try:
        for number, index in enumerate(drawn):
            _, _, mid_batch = STAGES[index]
            if mid_batch:
                targets = tuple(table for _, tables, mid in STAGES if mid for table in tables)
            else:
                # its stage or a later one; the final stage is left to the last round, which must
                # still find it with work to do
                last = number == len(drawn) - 1
                targets = tuple(
                    table
                    for at, (_, tables, mid) in enumerate(STAGES[index:], start=index)
                    if not mid and (last or at != len(STAGES) - 1)
                    for table in tables
                )
            passed_silver = number > 0 and drawn[number - 1] > LAST_HEART_RATE_STAGE
            if not second_part and passed_silver and _read_first_part(spark, killed):
                env.produce(POISON_SECOND)  # the killed pipeline meets these after a restart
                second_part = True
                referee.start()
            if number == len(drawn) - 1:
                env.produce(final_records, final_keys)
                final_produced.set()
            # right after the commit, or a random moment after it (never past the end of the drain)
            delay = 0.0 if mid_batch or index >= len(STAGES) - 2 else rng.uniform(0.0, 0.5)
            seen = lake_commits(lake, targets)
            proc = _go(upcoming)
            upcoming = _start_pipeline(config_file, logs / logs_of[number + 1])  # the next round's
            try:
                trigger = _kill_after_commit(proc, lake, targets, delay, seen)
            finally:
                if proc.poll() is None:
                    _kill(proc)
            stage = OWNER[trigger.split()[0]]
            kills.append(Kill(number, stage, mid_batch, trigger, delay, uncommitted(checkpoints)))
        after_restart = second_part
        if not second_part:
            env.produce(POISON_SECOND)
            referee.start()
        # restarted, it completes the drain (a subprocess like the killed ones)
        final = _go(upcoming)
        try:
            referee.join(timeout=1800)
        finally:
            assert final.wait(timeout=1800) == 0, f"the restarted pipeline failed: see {logs / 'final.log'}"
    finally:
        if not final_produced.is_set():  # the rounds failed: the fault-free run does not wait
            abandoned.set()
            final_produced.set()
        if upcoming.poll() is None:
            _kill(upcoming)
    assert not referee.is_alive(), "the fault-free run did not end"
    assert not reference_failed, f"the fault-free run failed: {reference_failed[0]!r}"
    # user_bins is as of the run's date: recompute the killed lake's as of the reference's
    Pipeline(spark, killed).tail.refresh_user_bins(AS_OF)
    return Drained(killed, reference, snapshot(spark, reference), kills, after_restart)


def test_sigkill_rounds_leave_every_table_as_a_fault_free_run(spark: SparkSession, drained: Drained) -> None:
    kills = drained.kills
    assert len(kills) == ROUNDS  # each killed a live pipeline (a round that could not fails the fixture)
    # the kills right after a silver commit inside the ingest query's micro-batch caught the batch
    # unrecorded
    inside = [k for k in kills if k.mid_batch]
    assert len(inside) == min(ROUNDS, MID_BATCH_ROUNDS)
    for kill in inside:
        assert kill.uncommitted.get(kill.stage) is not None, f"round {kill.round}: killed after {kill.trigger}: {kill}"
    # the rounds reached every layer of the drain
    if ROUNDS >= 10:
        assert {k.trigger.split("/")[0] for k in kills} == {"bronze", "silver", "gold"}, kills
    # ... and every batch caught in flight was replayed and committed by a later run
    checkpoints = Path(drained.killed.storage.checkpoint_root)
    for kill in kills:
        for query, batch in kill.uncommitted.items():
            assert batch in batches(checkpoints / query / "commits"), f"{query} batch {batch} was never committed"
    for name in ("kafka_multiplex_bz", "heart_rate", "quarantine", "workout_bpm_summary", "gym_summary"):
        assert drained.expected[name], f"the reference run left {name} empty"
    # the last round had the final stage's work: final_work's session, killed after a derived commit
    reference = Tables(drained.reference)
    summary = reference.read(spark, reference.ref("workout_bpm_summary"))
    assert summary.where(F.col("session_id") == FINAL_SESSION).count() == 1
    if ROUNDS >= 10:
        assert kills[-1].stage == STAGES[-1][0], kills[-1]
    assert_same_tables(snapshot(spark, drained.killed), drained.expected)


# --- poison records ------------------------------------------------------------------------------


def test_poison_records_are_quarantined_and_never_stop_the_pipeline(
    spark: SparkSession, env: Env, drained: Drained
) -> None:
    assert drained.second_part_after_restart, "the killed pipeline never read the first poison records"
    where = env.coordinates
    for config in (drained.reference, drained.killed):
        tables = Tables(config)

        def table(name: str, tables: Tables = tables) -> DataFrame:
            return tables.read(spark, tables.ref(name))

        bronze = table("kafka_multiplex_bz")

        def raw(name: str, df: DataFrame) -> Any:
            return value(df.where(at_coordinates(name, where)).select(F.hex(F.col("value").cast("binary"))))

        # bronze holds every record once, as it came: the 1 MB value whole, other bytes untouched
        sent = spark.createDataFrame(list(where.values()), "topic string, partition int, offset bigint")
        assert bronze.join(sent, ["topic", "partition", "offset"], "left_semi").count() == len(where)
        assert (
            raw("one_mb", bronze)
            == reading(POISON_DEVICE, T + timedelta(seconds=2), 64.0, padding=ONE_MB).hex().upper()
        )
        assert raw("not_utf8_in_a_string", bronze) == NOT_UTF8_IN_A_STRING.hex().upper()
        quarantine = table("quarantine")
        assert raw("not_utf8", quarantine) == POISON["not_utf8"].hex().upper()  # kept as they came

        expected = [
            ("invalid_json", "malformed_json", "value: not valid JSON"),
            ("wrong_type", "schema_violation", "device_id: expected integer, got string"),
            ("not_utf8", "malformed_json", "value: not valid UTF-8"),
            ("null_value", "malformed_json", "value: NULL"),
            (
                "clock_a_day_ahead",
                "future",
                "event_time: 2025-03-04 09:40:00 is more than 600 s ahead of the record timestamp 2025-03-03 09:40:03",
            ),
        ]
        others = sent.where(~at_coordinates("not_utf8_in_a_string", where))
        poisoned = quarantine.join(others, ["topic", "partition", "offset"], "left_semi")
        assert_df_equality(
            poisoned.select("topic", "partition", "offset", "reason", "detail"),
            spark.createDataFrame(
                [(*where[name], reason, detail) for name, reason, detail in expected],
                "topic string, partition int, offset bigint, reason string, detail string",
            ),
            ignore_row_order=True,
            ignore_nullable=True,
        )
        # the reading sent twice (before and after a restart) is one row; the 1 MB record is accepted
        assert_df_equality(
            table("heart_rate").where(F.col("device_id") == POISON_DEVICE),
            spark.createDataFrame(
                [
                    (POISON_DEVICE, datetime(2025, 3, 3, 9, 40, 0), 61.0, True),
                    (POISON_DEVICE, datetime(2025, 3, 3, 9, 40, 2), 64.0, True),
                ],
                "device_id bigint, time timestamp, heartrate double, valid boolean",
            ),
            ignore_row_order=True,
            ignore_nullable=True,
            ignore_column_order=True,
        )
        # changes over three partitions, out of order, partly after a restart: applied in time order
        at = datetime(2025, 3, 3, 9, 10)
        same = ("Ann", "Lee", "1 Main St", "TX", "08701")
        history = table("user_profile_history").where(F.col("user_id") == POISON_USER)
        assert_df_equality(
            history.select(
                "user_id", "valid_from", "valid_to", "city", "first_name", "last_name", "street_address", "state", "zip"
            ),
            spark.createDataFrame(
                [
                    (POISON_USER, at, at + timedelta(minutes=10), "Austin", *same),
                    (POISON_USER, at + timedelta(minutes=10), at + timedelta(minutes=20), "Houston", *same),
                    (POISON_USER, at + timedelta(minutes=20), None, "Dallas", *same),
                ],
                "user_id bigint, valid_from timestamp, valid_to timestamp, city string, first_name string, "
                "last_name string, street_address string, state string, zip string",
            ),
            ignore_row_order=True,
            ignore_nullable=True,
        )
        profile = table("user_profile").where(F.col("user_id") == POISON_USER).select("city", "updated").collect()
        assert [tuple(r) for r in profile] == [("Dallas", at + timedelta(minutes=20))]


def test_a_value_that_is_not_utf8_is_quarantined(spark: SparkSession, env: Env, drained: Drained) -> None:
    for config in (drained.reference, drained.killed):
        tables = Tables(config)
        quarantined = (
            tables.read(spark, tables.ref("quarantine"))
            .where(at_coordinates("not_utf8_in_a_string", env.coordinates))
            .select("reason", F.hex(F.col("value").cast("binary")))
            .collect()
        )
        assert [tuple(r) for r in quarantined] == [("malformed_json", NOT_UTF8_IN_A_STRING.hex().upper())]
        heart_rate = tables.read(spark, tables.ref("heart_rate")).where(F.col("device_id") == NOT_UTF8_DEVICE)
        assert heart_rate.isEmpty()


# --- a replayed micro-batch and reset checkpoints, recovered in one run ------------------------------

REPLACED = ("silver_users", "silver_gym_logs", "derived_gym_occupancy")


@dataclass
class Recovered:
    config: Config
    before: Rows
    replayed: dict[str, int]
    refused: str
    reset: list[str]
    report: RunReport
    names: list[str]


@pytest.fixture(scope="module")
def recovered(spark: SparkSession, env: Env, drained: Drained) -> Recovered:
    config = env.config("recovered")
    copy_lake(drained.killed, config)
    tables = Tables(config)
    checkpoints = Path(config.storage.checkpoint_root)
    names = sorted(p.name for p in checkpoints.iterdir() if p.is_dir())
    assert guard.check(spark, config, tables, names) == []  # an intact lake starts (and is registered)
    before = snapshot(spark, config, every_column=True)
    # the last commit of the other queries is lost: their last batch replays
    replayed = {}
    for name in names:
        done = batches(checkpoints / name / "commits")
        if name not in REPLACED and done:
            delete_commit(checkpoints / name, done[-1])
            replayed[name] = done[-1]
    # a checkpoint moved away, one replaced by another query's, one deleted
    (checkpoints / "silver_users").rename(checkpoints.parent / "silver_users.elsewhere")
    shutil.rmtree(checkpoints / "silver_gym_logs")
    shutil.copytree(checkpoints / "derived_gym_summary", checkpoints / "silver_gym_logs")
    shutil.rmtree(checkpoints / "derived_gym_occupancy")
    registry = tables.ref(guard.REGISTRY_TABLE, layer="ops")

    def registered() -> dict[str, str]:
        return {r["query"]: r["checkpoint_id"] for r in tables.read(spark, registry).collect()}

    ids_before = registered()
    # the pipeline refuses to start (before any query runs: the run below replays exactly what it would)
    with pytest.raises(PipelineError, match="refusing to start") as refused:
        Pipeline(spark, config).run_once(as_of=AS_OF)
    assert registered() == ids_before
    # told to reset, it starts the refused queries on new checkpoints (and replays the others' batch)
    report = Pipeline(spark, config, reset_checkpoints=True).run_once(as_of=AS_OF)
    ids_after = registered()
    reset = sorted(name for name in names if ids_after.get(name) != ids_before.get(name))
    return Recovered(config, before, replayed, str(refused.value), reset, report, names)


def test_a_replayed_micro_batch_changes_nothing(recovered: Recovered, spark: SparkSession) -> None:
    assert {*KAFKA_QUERIES, "derived_gym_summary", "derived_workout_bpm_and_summary"} <= recovered.replayed.keys()
    checkpoints = Path(recovered.config.storage.checkpoint_root)
    for name, batch in recovered.replayed.items():
        assert batch in batches(checkpoints / name / "commits"), f"{name}: batch {batch} was not replayed"
    rows = rows_read(recovered.report)
    # nothing new was produced: the rows read are the replayed batches' (the ingest query reads its
    # last batch's offsets again; its silver writes insert nothing and the bronze append is skipped
    # by its txnVersion)
    assert all(rows[name] > 0 for name in KAFKA_QUERIES)
    assert rows["derived_workout_bpm_and_summary"] > 0
    # every column, load_time and quarantined_at included: nothing was rewritten
    assert_same_tables(snapshot(spark, recovered.config, every_column=True), recovered.before)


def test_a_deleted_or_moved_checkpoint_is_refused_unless_reset(
    recovered: Recovered, drained: Drained, spark: SparkSession
) -> None:
    message = recovered.refused
    for query, why in (
        ("silver_users", "missing"),
        ("silver_gym_logs", "has id"),
        ("derived_gym_occupancy", "missing"),
    ):
        assert why in message.split(f"  - {query}: ")[1].splitlines()[0], message
    assert "derived_workout_bpm_and_summary:" not in message
    assert recovered.reset == sorted(REPLACED)
    checkpoints = Path(recovered.config.storage.checkpoint_root)
    assert len(list(checkpoints.glob("silver_gym_logs.reset-*"))) == 1  # moved aside, not deleted
    rows = rows_read(recovered.report)
    assert rows["silver_users"] > 0  # the new checkpoints read their input from the start...
    assert rows["silver_gym_logs"] > 0
    assert_same_tables(snapshot(spark, recovered.config), drained.expected)  # ... and changed nothing
    # and from now on the new checkpoints are the registered ones
    assert guard.check(spark, recovered.config, Tables(recovered.config), recovered.names) == []


# --- broker outage -------------------------------------------------------------------------------


def test_the_pipeline_rides_out_a_broker_restart(spark: SparkSession, env: Env, drained: Drained) -> None:
    # Only the Kafka query meets the outage: bronze equal to the fault-free run's is the whole check.
    # In layered mode the bronze job's Kafka query (the same source and bronze writer) writes bronze
    # only: the silver writes of a realtime batch would add a minute and nothing to this check.
    config = env.config("outage", "kafka.max_offsets_per_trigger=600", "sql.enabled=false", "streaming.mode=layered")
    bronze_log = Path(config.storage.root) / "bronze" / "kafka_multiplex_bz"
    pipeline = Pipeline(spark, config)
    created = lake_commits(bronze_log.parent.parent)
    failure: list[BaseException] = []

    def run() -> None:
        try:
            pipeline.run_once(layers="bronze")
        except BaseException as exc:
            failure.append(exc)

    def bronze_commits() -> set[str]:
        return {
            c for c in lake_commits(bronze_log.parent.parent) - created if c.startswith("bronze/kafka_multiplex_bz")
        }

    runner = threading.Thread(target=run)
    pid_before = env.broker.status().pid
    runner.start()
    try:
        while not bronze_commits():
            assert runner.is_alive(), f"the run ended before bronze committed anything: {failure}"
            _pause(0.05)
        before_outage = bronze_commits()
        status = env.broker.restart()
        after_restart = bronze_commits()
    finally:
        runner.join(timeout=900)
    assert not runner.is_alive()
    assert not failure, f"the run failed: {failure[0]!r}"
    assert status.started  # a new broker process, same data
    assert status.pid != pid_before
    # bronze was mid-drain at the outage and went on committing batches after it
    assert before_outage
    assert bronze_commits() - after_restart
    assert_same_tables(
        snapshot(spark, config, names=("kafka_multiplex_bz",)),
        {"kafka_multiplex_bz": drained.expected["kafka_multiplex_bz"]},
    )


# --- concurrent OPTIMIZE -----------------------------------------------------------------------------


def test_a_concurrent_optimize_during_silver_merges_is_retried_without_loss(
    spark: SparkSession, env: Env, drained: Drained, caplog: pytest.LogCaptureFixture
) -> None:
    config = env.config("optimized")
    tables = Tables(config)
    reference = Tables(drained.reference)
    bpm = config.kafka.topics.bpm
    bronze = tables.ensure(spark, "kafka_multiplex_bz")
    readings = reference.read(spark, reference.ref("kafka_multiplex_bz")).where(F.col("topic") == bpm)
    # bronze in six commits, in record-time order (so no reading is late), read one commit per
    # micro-batch: six MERGEs into heart_rate while OPTIMIZE compacts it
    sixths = readings.withColumn("_part", F.ntile(6).over(Window.orderBy("timestamp", "partition", "offset")))
    sixths = sixths.localCheckpoint()
    for part in range(1, 7):
        tables.append(sixths.where(F.col("_part") == part).drop("_part"), bronze)
    heart_rate = tables.ensure(spark, "heart_rate")
    stop = threading.Event()
    optimize_errors: list[BaseException] = []

    def optimize() -> None:
        while not stop.is_set():
            try:
                tables.delta(spark, heart_rate).optimize().executeCompaction()
            except BaseException as exc:
                optimize_errors.append(exc)
                return

    caplog.set_level("WARNING", logger="fitbit_stream.io.merge")
    compactor = threading.Thread(target=optimize)
    query = (
        tables.read_stream(spark, bronze, maxFilesPerTrigger="1")
        .where(F.col("topic") == bpm)
        .writeStream.foreachBatch(TopicWriter(spark, config, "bpm", "silver_bpm"))
        .option("checkpointLocation", tables.checkpoint("silver_bpm"))
        .trigger(availableNow=True)
        .start()
    )
    compactor.start()
    try:
        query.awaitTermination()
    finally:
        stop.set()
        compactor.join(timeout=300)
        if query.isActive:
            query.stop()
    assert query.exception() is None
    assert not optimize_errors, f"OPTIMIZE failed: {optimize_errors[0]!r}"
    history = tables.delta(spark, heart_rate).history().select("version", "operation").collect()
    operations = [r["operation"] for r in sorted(history, key=lambda r: r["version"])]
    merges = [i for i, op in enumerate(operations) if op == "MERGE"]
    assert len(merges) == 6, operations
    # OPTIMIZE committed between the first and the last MERGE: it ran during the merges
    assert "OPTIMIZE" in operations[merges[0] : merges[-1]], operations
    retries = [r for r in caplog.records if "concurrent commit conflict" in r.getMessage()]
    print(f"conflicts retried: {len(retries)}; heart_rate history: {operations}")
    actual = snapshot(spark, config, names=("heart_rate", "quarantine"))
    assert actual["heart_rate"] == drained.expected["heart_rate"]
    bpm_quarantine = [r for r in drained.expected["quarantine"] if bpm in r]
    assert [r for r in actual["quarantine"] if bpm in r] == bpm_quarantine
