"""The workout topic's silver writes: sessions paired from the stored events plus the batch's new
ones, written side by side, first ingested wins, and a replayed batch (whole or half committed)
leaves the same rows."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest
from pyspark.sql import DataFrame, SparkSession

from fitbit_stream.config import Config
from fitbit_stream.io.merge import insert_if_absent
from fitbit_stream.io.silver import TopicWriter
from fitbit_stream.io.tables import Tables
from fitbit_stream.schemas import KAFKA_MULTIPLEX_BZ
from fitbit_stream.transforms.dates import week_part
from support.world import Record, as_json, at, workout, world_config

Row = tuple[object, ...]


@pytest.fixture
def world(tmp_path: Path, spark_config: Config) -> Config:
    return world_config(tmp_path, spark_config.jars_dir)


class Batches:
    """Bronze-shaped micro-batches of literal records, offsets increasing on partition 0."""

    def __init__(self, spark: SparkSession) -> None:
        self.spark, self.offset = spark, 0

    def of(self, records: list[Record], load_time: datetime) -> DataFrame:
        rows = []
        for topic, key, value, ts in records:
            rows.append((key, as_json(value), topic, 0, self.offset, ts, ts.date(), None, load_time))
            self.offset += 1
        return self.spark.createDataFrame(rows, KAFKA_MULTIPLEX_BZ).withColumn("week_part", week_part("date"))


def _rows(spark: SparkSession, world: Config, name: str, *columns: str) -> list[Row]:
    tables = Tables(world)
    df = tables.read(spark, tables.ref(name, layer="silver"))
    return sorted(tuple(r) for r in df.select(*columns).collect())


def _commits(world: Config, name: str) -> int:
    return len(list((Path(world.storage.root) / "silver" / name / "_delta_log").glob("*.json")))


def test_sessions_pair_across_batches_first_ingested_wins_and_replays_change_nothing(
    spark: SparkSession, world: Config
) -> None:
    writer = TopicWriter(spark, world, "workout", "q/workout")
    batches = Batches(spark)
    first = batches.of(
        [
            workout(1, 5, 1, at(10), "start"),  # offset 0: session (1, 5, 1) starts
            workout(1, 5, 2, at(11), "stop"),  # offset 1: session (1, 5, 2) stops before it starts
        ],
        load_time=at(12),
    )
    writer(first, 0)
    assert _rows(spark, world, "completed_workouts", "user_id", "workout_id", "session_id") == []

    second = batches.of(
        [
            workout(1, 5, 1, at(10, 30), "stop"),  # offset 2: completes (1, 5, 1)
            workout(1, 5, 1, at(10, 45), "stop"),  # offset 3: a second stop, same key: not the first
            workout(1, 5, 1, at(10, 5), "start"),  # offset 4: a second start: the stored one wins
            workout(1, 5, 2, at(11, 30), "start"),  # offset 5: (1, 5, 2) is now a pair: invalid
        ],
        load_time=at(12, 1),
    )
    writer(second, 1)
    completed = [(1, 5, 1, at(10), at(10, 30))]
    events = [
        (1, 5, 1, "start", at(10)),
        (1, 5, 1, "stop", at(10, 30)),
        (1, 5, 2, "start", at(11, 30)),
        (1, 5, 2, "stop", at(11)),
    ]
    invalid = [("workout", 0, 1, "invalid_session")]
    event_columns = ("user_id", "workout_id", "session_id", "action", "time")
    quarantine_columns = ("topic", "partition", "offset", "reason")
    assert _rows(spark, world, "completed_workouts", "*") == completed
    assert _rows(spark, world, "workouts", *event_columns) == events
    assert _rows(spark, world, "_workout_events", *event_columns) == events
    assert _rows(spark, world, "quarantine", *quarantine_columns) == invalid

    # the same batch again (a replay after it committed): no table gains a commit
    commits = {name: _commits(world, name) for name in ("completed_workouts", "workouts", "_workout_events")}
    writer(second, 1)
    assert {name: _commits(world, name) for name in commits} == commits

    # a replay after a crash that left the events committed and the session not: the pair is made
    # from the stored events alone (the batch's own are no longer new)
    tables = Tables(world)
    tables.delta(spark, tables.ref("completed_workouts", layer="silver")).delete()
    TopicWriter(spark, world, "workout", "q/workout")(second, 1)
    assert _rows(spark, world, "completed_workouts", "*") == completed
    assert _rows(spark, world, "workouts", *event_columns) == events
    assert _rows(spark, world, "quarantine", *quarantine_columns) == invalid


def test_a_session_is_never_committed_before_its_events_and_a_failed_batch_frees_the_pairing(
    spark: SparkSession, world: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    batch = Batches(spark).of(
        [workout(1, 5, 1, at(10), "start"), workout(1, 5, 1, at(10, 30), "stop")], load_time=at(12)
    )
    real = insert_if_absent

    def failing(spark: SparkSession, tables: Tables, ref: object, *args: object, **kwargs: object) -> None:
        if str(ref).endswith("/_workout_events"):
            raise RuntimeError("the events MERGE fails")
        real(spark, tables, ref, *args, **kwargs)  # type: ignore[arg-type]

    with monkeypatch.context() as patch:
        patch.setattr("fitbit_stream.io.silver.insert_if_absent", failing)
        with pytest.raises(RuntimeError, match="the events MERGE fails"):
            TopicWriter(spark, world, "workout", "q/workout")(batch, 0)
    assert _rows(spark, world, "completed_workouts", "*") == []
    assert _rows(spark, world, "_workout_events", "action") == []
    # the replay (same process: the pairing lock was released by the failed batch) completes it
    TopicWriter(spark, world, "workout", "q/workout")(batch, 0)
    assert _rows(spark, world, "completed_workouts", "*") == [(1, 5, 1, at(10), at(10, 30))]
    assert _rows(spark, world, "_workout_events", "action") == [("start",), ("stop",)]
