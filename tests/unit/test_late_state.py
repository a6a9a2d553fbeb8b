"""The late rule's state: the maximum below a batch, the same on a replay, a few rows per query."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from chispa import assert_df_equality
from pyspark.sql import SparkSession

from fitbit_stream.config import Config, load_config
from fitbit_stream.io.silver import EVENT_TIME_STATE, LateState
from fitbit_stream.io.tables import Tables

T0 = datetime(2025, 3, 3, 10, 0, 0, tzinfo=UTC)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _micros(at: datetime) -> int:
    return (at - EPOCH) // timedelta(microseconds=1)


@pytest.fixture
def tables(tmp_path: Path, spark_config: Config) -> Tables:
    return Tables(load_config(None, [f"storage.root={tmp_path}", f"jars_dir={spark_config.jars_dir}"]))


def test_previous_max_is_the_maximum_of_earlier_batches_and_a_replay_sees_the_same(
    spark: SparkSession, tables: Tables
) -> None:
    state = LateState(tables, spark)
    assert state.previous_max(spark, "q", 0) is None
    state.record(spark, "q", 0, _micros(T0))
    assert state.previous_max(spark, "q", 1) == T0
    state.record(spark, "q", 1, None)  # nothing accepted: no row, the maximum stays
    assert state.previous_max(spark, "q", 2) == T0
    state.record(spark, "q", 2, _micros(T0 - timedelta(hours=1)))  # a lower maximum: no row
    state.record(spark, "q", 3, _micros(T0 + timedelta(seconds=5)))
    # another query's state is its own
    state.record(spark, "other", 0, _micros(T0 + timedelta(days=1)))
    # a restarted query (a new object) replays batch 3 after its row was committed: same threshold,
    # nothing written twice
    again = LateState(tables, spark)
    assert again.previous_max(spark, "q", 3) == T0
    again.record(spark, "q", 3, _micros(T0 + timedelta(seconds=5)))
    assert again.previous_max(spark, "q", 4) == T0 + timedelta(seconds=5)
    # the maximum of everything (how the tombstone purge asks)
    assert LateState(tables, spark).previous_max(spark, "q", 2**62) == T0 + timedelta(seconds=5)
    expected = spark.createDataFrame(
        [
            ("q", 0, T0.replace(tzinfo=None)),
            ("q", 3, (T0 + timedelta(seconds=5)).replace(tzinfo=None)),
            ("other", 0, (T0 + timedelta(days=1)).replace(tzinfo=None)),
        ],
        EVENT_TIME_STATE,
    )
    assert_df_equality(tables.read(spark, state.ref), expected, ignore_row_order=True, ignore_nullable=True)


def test_rows_are_folded_so_the_table_stays_small_and_replays_keep_their_threshold(
    spark: SparkSession, tables: Tables
) -> None:
    state = LateState(tables, spark)
    state.FOLD_AFTER = 3
    for batch_id in range(10):  # every batch raises the maximum: each would leave a row
        state.record(spark, "q", batch_id, _micros(T0 + timedelta(seconds=batch_id)))
    rows = tables.read(spark, state.ref).where("query = 'q'")
    assert rows.count() <= state.FOLD_AFTER
    # a replay of the last batch (its row committed, the checkpoint not) reads the same threshold
    replay = LateState(tables, spark)
    assert replay.previous_max(spark, "q", 9) == T0 + timedelta(seconds=8)
    replay.record(spark, "q", 9, _micros(T0 + timedelta(seconds=9)))
    assert replay.previous_max(spark, "q", 10) == T0 + timedelta(seconds=9)
    assert LateState(tables, spark).previous_max(spark, "q", 10) == T0 + timedelta(seconds=9)


def test_several_queries_record_in_one_commit_and_a_replay_writes_nothing(spark: SparkSession, tables: Tables) -> None:
    state = LateState(tables, spark)
    state.record_many(spark, [("k/bpm", 0, _micros(T0)), ("k/workout", 0, _micros(T0 - timedelta(minutes=5)))])
    first = tables.version(spark, state.ref)
    # one topic raises its maximum, two have nothing accepted: one row, one commit
    state.record_many(
        spark,
        [
            ("k/bpm", 1, _micros(T0 + timedelta(seconds=10))),
            ("k/workout", 1, None),
            ("k/user_info", 1, None),
        ],
    )
    assert tables.version(spark, state.ref) == (first or 0) + 1
    # nothing new for any topic: no commit
    state.record_many(spark, [("k/bpm", 2, _micros(T0)), ("k/workout", 2, None)])
    assert tables.version(spark, state.ref) == (first or 0) + 1
    # a restarted query replays batch 1: the same thresholds, nothing written
    replay = LateState(tables, spark)
    assert replay.previous_max(spark, "k/bpm", 1) == T0
    assert replay.previous_max(spark, "k/workout", 1) == T0 - timedelta(minutes=5)
    replay.record_many(spark, [("k/bpm", 1, _micros(T0 + timedelta(seconds=10))), ("k/workout", 1, None)])
    assert tables.version(spark, state.ref) == (first or 0) + 1
    assert replay.previous_max(spark, "k/bpm", 2) == T0 + timedelta(seconds=10)
    expected = spark.createDataFrame(
        [
            ("k/bpm", 0, T0.replace(tzinfo=None)),
            ("k/workout", 0, (T0 - timedelta(minutes=5)).replace(tzinfo=None)),
            ("k/bpm", 1, (T0 + timedelta(seconds=10)).replace(tzinfo=None)),
        ],
        EVENT_TIME_STATE,
    )
    assert_df_equality(tables.read(spark, state.ref), expected, ignore_row_order=True, ignore_nullable=True)


def test_a_query_folded_in_a_shared_commit_keeps_the_other_queries_rows(spark: SparkSession, tables: Tables) -> None:
    state = LateState(tables, spark)
    state.FOLD_AFTER = 2
    for batch_id in range(4):  # both raise their maximum every batch; "a" from batch 2 on folds
        state.record_many(
            spark,
            [
                ("a", batch_id, _micros(T0 + timedelta(seconds=batch_id))),
                ("b", batch_id, _micros(T0 + timedelta(minutes=batch_id))) if batch_id < 2 else ("b", batch_id, None),
            ],
        )
    expected = spark.createDataFrame(
        [
            ("a", 2, (T0 + timedelta(seconds=2)).replace(tzinfo=None)),
            ("a", 3, (T0 + timedelta(seconds=3)).replace(tzinfo=None)),
            ("b", 0, T0.replace(tzinfo=None)),
            ("b", 1, (T0 + timedelta(minutes=1)).replace(tzinfo=None)),
        ],
        EVENT_TIME_STATE,
    )
    assert_df_equality(tables.read(spark, state.ref), expected, ignore_row_order=True, ignore_nullable=True)
    # a restarted query reads the same thresholds after the folds
    again = LateState(tables, spark)
    assert again.previous_max(spark, "a", 3) == T0 + timedelta(seconds=2)
    assert again.previous_max(spark, "a", 4) == T0 + timedelta(seconds=3)
    assert again.previous_max(spark, "b", 4) == T0 + timedelta(minutes=1)
