"""An ingest batch's topics share two writes: every topic's rejected records go to ``quarantine``
in one MERGE and every topic's greatest accepted event time to the late state in one commit; a
replayed batch writes neither again, a topic that fails before its records are parsed (or never
hands them over) leaves neither written, and every parsed batch is released."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest
from pyspark.sql import DataFrame, SparkSession

from fitbit_stream.config import Config
from fitbit_stream.errors import PipelineError
from fitbit_stream.io.ingest import SilverTopics
from fitbit_stream.io.tables import Tables
from fitbit_stream.schemas import KAFKA_MULTIPLEX_BZ
from fitbit_stream.topology import KINDS
from fitbit_stream.transforms.dates import week_part
from support.world import Record, as_json, at, bpm, workout, world_config

#: the landing query reads every topic: one batch can hold all three
QUERY = "bronze_landing_multiplex"
ALL_TOPICS = dict.fromkeys(KINDS, QUERY)


@pytest.fixture
def world(tmp_path: Path, spark_config: Config) -> Config:
    return world_config(tmp_path, spark_config.jars_dir)


def batch(spark: SparkSession, records: list[Record], load_time: datetime) -> DataFrame:
    rows = [
        (key, as_json(value), topic, 0, offset, ts, ts.date(), None, load_time)
        for offset, (topic, key, value, ts) in enumerate(records)
    ]
    return spark.createDataFrame(rows, KAFKA_MULTIPLEX_BZ).withColumn("week_part", week_part("date"))


RECORDS: list[Record] = [
    bpm(101, at(10, 20), 100.0),  # offset 0
    ("bpm", "101", "not json", at(10, 21)),  # offset 1: malformed_json
    workout(1, 5, 1, at(10, 10), "start"),  # offset 2
    ("workout", "1", '{"user_id": 1}', at(10, 11)),  # offset 3: schema_violation
]


def _cached(spark: SparkSession) -> int:
    """How many RDDs the session holds persisted, leaving out Delta's own cache of table states."""
    persisted = spark.sparkContext._jsc.getPersistentRDDs().values()  # type: ignore[union-attr]
    return sum(1 for rdd in persisted if not str(rdd.name() or "").startswith("Delta Table State"))


def _commits(world: Config, layer: str, name: str) -> int:
    return len(list((Path(world.storage.root) / layer / name / "_delta_log").glob("*.json")))


Row = tuple[object, ...]


def _rows(spark: SparkSession, world: Config, name: str, *columns: str, layer: str | None = None) -> list[Row]:
    tables = Tables(world)
    ref = tables.ref(name) if layer is None else tables.ref(name, layer=layer)
    return sorted(tuple(r) for r in tables.read(spark, ref).select(*columns).collect())


def test_the_topics_quarantine_and_late_state_commit_once_per_batch_and_a_replay_writes_nothing(
    spark: SparkSession, world: Config
) -> None:
    topics = SilverTopics(spark, world, ALL_TOPICS)
    rows = batch(spark, RECORDS, at(10, 30))
    quarantine_before = _commits(world, "silver", "quarantine")
    state_before = _commits(world, "ops", "_event_time_state")
    cached = _cached(spark)
    topics(rows, 0, present={"bpm", "workout"})
    assert _cached(spark) == cached  # the parsed batches are released once every write has ended
    assert _rows(spark, world, "quarantine", "topic", "offset", "reason") == [
        ("bpm", 1, "malformed_json"),
        ("workout", 3, "schema_violation"),
    ]
    assert _rows(spark, world, "_event_time_state", "query", "batch_id", "max_event_time", layer="ops") == [
        (f"{QUERY}/bpm", 0, at(10, 20)),
        (f"{QUERY}/workout", 0, at(10, 10)),
    ]
    # one commit each for both topics
    assert _commits(world, "silver", "quarantine") == quarantine_before + 1
    assert _commits(world, "ops", "_event_time_state") == state_before + 1
    assert _rows(spark, world, "heart_rate", "device_id", "time", "heartrate") == [(101, at(10, 20), 100.0)]

    # the same batch replayed (a restart before the checkpoint committed it): nothing new anywhere
    SilverTopics(spark, world, ALL_TOPICS)(rows, 0, present={"bpm", "workout"})
    assert _commits(world, "silver", "quarantine") == quarantine_before + 1
    assert _commits(world, "ops", "_event_time_state") == state_before + 1


def test_a_topic_that_fails_or_delivers_nothing_leaves_the_shared_writes_unwritten(
    spark: SparkSession, world: Config
) -> None:
    topics = SilverTopics(spark, world, ALL_TOPICS)
    rows = batch(spark, RECORDS, at(10, 30))

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("the workout writer broke")

    quarantine_before = _commits(world, "silver", "quarantine")
    state_before = _commits(world, "ops", "_event_time_state")
    cached = _cached(spark)
    topics.writers["workout"] = broken  # type: ignore[assignment]
    with pytest.raises(RuntimeError, match="the workout writer broke"):
        topics(rows, 0, present={"bpm", "workout"})
    topics.writers["workout"] = lambda *args, **kwargs: None  # type: ignore[assignment]
    with pytest.raises(PipelineError, match="the workout writer delivered nothing to share"):
        topics(rows, 0, present={"bpm", "workout"})
    assert _cached(spark) == cached  # the bpm batch it was given is released all the same
    # the bpm topic's own write went ahead; the shared ones waited for a workout batch that never came
    assert _rows(spark, world, "heart_rate", "device_id", "time", "heartrate") == [(101, at(10, 20), 100.0)]
    assert _commits(world, "silver", "quarantine") == quarantine_before
    assert _commits(world, "ops", "_event_time_state") == state_before


def test_a_topic_whose_thread_fails_before_its_writer_runs_does_not_leave_the_shared_step_waiting(
    spark: SparkSession, world: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fitbit_stream.io import parallel

    topics = SilverTopics(spark, world, ALL_TOPICS)
    workout_writer = topics.writers["workout"]
    real = parallel.inheritable_thread_target

    def failing_set_up(session: SparkSession) -> Callable[[Callable[[], None]], Callable[[], None]]:
        wrap = real(session)

        def target(step: Callable[[], None]) -> Callable[[], None]:
            if getattr(step, "func", None) is workout_writer:  # as when the context stops meanwhile

                def set_up_failed() -> None:
                    raise RuntimeError("the thread's set-up failed")

                return set_up_failed
            return wrap(step)  # type: ignore[no-any-return]

        return target

    monkeypatch.setattr(parallel, "inheritable_thread_target", failing_set_up)
    quarantine_before = _commits(world, "silver", "quarantine")
    with pytest.raises(RuntimeError, match="the thread's set-up failed"):
        topics(batch(spark, RECORDS, at(10, 30)), 0, present={"bpm", "workout"})
    assert _commits(world, "silver", "quarantine") == quarantine_before
