"""The CDC MERGE engine on real Delta tables: CONTRACT.md §3.1 cases, replay, retention, properties."""

from __future__ import annotations

import itertools
import random
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
from cdc_reference import CHANGES, NO_PROFILE, T0, Change, change_sets, changes_df, profile, reference
from chispa import assert_df_equality
from delta.tables import DeltaTable
from hypothesis import given, settings
from hypothesis import strategies as st
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from fitbit_stream.errors import PipelineError
from fitbit_stream.io.cdc_merge import CdcMergeEngine
from fitbit_stream.io.tables import TableRef
from fitbit_stream.schemas import USER_PROFILE, USER_PROFILE_HISTORY
from fitbit_stream.transforms.cdc import USER_PROFILE_CDC, CdcSpec

M = timedelta(minutes=1)
ANN, BEA, CAT = profile("Ann"), profile("Bea"), profile("Cat")
NULLS = profile(None, city=None, dob=None)


def _ref(base: Path, name: str) -> TableRef:
    return TableRef("silver", name, str(base / name), None)


def _engine(spark: SparkSession, base: Path, spec: CdcSpec = USER_PROFILE_CDC) -> CdcMergeEngine:
    return CdcMergeEngine(
        spec,
        spark,
        profile=_ref(base, "user_profile"),
        history=_ref(base, "user_profile_history"),
        changes=_ref(base, "_user_profile_changes"),
    )


def _read(spark: SparkSession, ref: TableRef) -> DataFrame:
    assert ref.path is not None
    return spark.read.format("delta").load(ref.path)


def _tables(spark: SparkSession, engine: CdcMergeEngine) -> tuple[DataFrame, DataFrame]:
    return _read(spark, engine.profile), _read(spark, engine.history)


def _assert_tables(
    spark: SparkSession,
    engine: CdcMergeEngine,
    profiles: list[tuple[object, ...]],
    history: list[tuple[object, ...]],
    *,
    users: DataFrame | None = None,
) -> None:
    actual_profiles, actual_history = _tables(spark, engine)
    if users is not None:
        actual_profiles = actual_profiles.join(users, "user_id", "left_semi")
        actual_history = actual_history.join(users, "user_id", "left_semi")
    # Exactly the contract schemas: no engine columns leak into the public tables.
    assert actual_profiles.schema.fieldNames() == USER_PROFILE.fieldNames()
    assert actual_history.schema.fieldNames() == USER_PROFILE_HISTORY.fieldNames()
    expected_profiles = spark.createDataFrame(profiles, USER_PROFILE)
    expected_history = spark.createDataFrame(history, USER_PROFILE_HISTORY)
    assert_df_equality(actual_profiles, expected_profiles, ignore_row_order=True, ignore_nullable=True)
    assert_df_equality(actual_history, expected_history, ignore_row_order=True, ignore_nullable=True)


# Batch 0 and batch 1 of the contract cases: one user per case.
BATCH0 = [
    # u1: delete and new at one instant (the update of that instant comes in batch 1) ...
    Change(1, "delete", T0, NO_PROFILE, offset=3),
    Change(1, "new", T0, ANN, offset=1),
    # u2: a delete arriving before the changes it follows
    Change(2, "delete", T0 + 2 * M, NO_PROFILE, offset=12),
    # u3: new and delete; the update between them comes late (stale)
    Change(3, "new", T0, ANN, offset=30),
    Change(3, "delete", T0 + 2 * M, NO_PROFILE, offset=32),
    # u4: a re-sent copy (offset 43) of a message (offset 41) arrives before the original; the
    # update at offset 42 lies between them, so counting the message twice would let Ann win
    Change(4, "update", T0 + M, ANN, offset=43),
    Change(4, "update", T0 + M, BEA, offset=42),
    Change(4, "new", T0, CAT, offset=40),
    # u5: several changes in one batch, the last one with NULL profile fields
    Change(5, "update", T0 + 2 * M, NULLS, offset=52),
    Change(5, "new", T0, ANN, offset=50),
    Change(5, "update", T0 + M, BEA, offset=51),
    # u7: same instant, type and offset in two partitions: the partition decides
    Change(7, "update", T0, ANN, offset=70, partition=1),
]
BATCH1 = [
    # u1: ... so no version survives the instant T0; re-created later
    Change(1, "update", T0, BEA, offset=2),
    Change(1, "new", T0 + 5 * M, CAT, offset=20),
    Change(2, "new", T0, ANN, offset=10),
    Change(2, "update", T0 + M, BEA, offset=11),
    Change(3, "update", T0 + M, BEA, offset=31),
    Change(4, "update", T0 + M, ANN, offset=41),
    Change(4, "update", T0 + M, BEA, offset=42),  # bronze duplicate (same coordinates)
    # u6: a new profile with NULL fields
    Change(6, "new", T0, NULLS, offset=60),
    Change(7, "update", T0, BEA, offset=70, partition=0),
]
EXPECTED_PROFILES = [
    (1, *CAT, T0 + 5 * M),
    (4, *BEA, T0 + M),
    (5, *NULLS, T0 + 2 * M),
    (6, *NULLS, T0),
    (7, *ANN, T0),
]
EXPECTED_HISTORY = [
    (1, *CAT, T0 + 5 * M, None),
    (2, *ANN, T0, T0 + M),
    (2, *BEA, T0 + M, T0 + 2 * M),
    (3, *ANN, T0, T0 + M),
    (3, *BEA, T0 + M, T0 + 2 * M),  # the stale update still takes its place in history
    (4, *CAT, T0, T0 + M),
    (4, *BEA, T0 + M, None),
    (5, *ANN, T0, T0 + M),
    (5, *BEA, T0 + M, T0 + 2 * M),
    (5, *NULLS, T0 + 2 * M, None),
    (6, *NULLS, T0, None),
    (7, *ANN, T0, None),
]


def _changed_rows(spark: SparkSession, ref: TableRef, after_version: int) -> list[tuple[int, str, int]]:
    """(version, operation, inserted + updated + deleted rows) of the commits after ``after_version``."""
    assert ref.path is not None
    out = []
    for row in DeltaTable.forPath(spark, ref.path).history().filter(F.col("version") > after_version).collect():
        metrics = row["operationMetrics"] or {}
        changed = sum(
            int(metrics.get(k, "0")) for k in ("numTargetRowsInserted", "numTargetRowsUpdated", "numTargetRowsDeleted")
        )
        out.append((row["version"], row["operation"], changed))
    return out


def _version(spark: SparkSession, ref: TableRef) -> int:
    assert ref.path is not None
    return int(DeltaTable.forPath(spark, ref.path).history(1).collect()[0]["version"])


def test_contract_cases_split_over_batches_replay_and_one_batch(spark: SparkSession, tmp_path: Path) -> None:
    split = _engine(spark, tmp_path / "split")
    split.apply(changes_df(spark, BATCH0), 0)
    batch1 = changes_df(spark, BATCH1)
    split.apply(batch1, 1)
    _assert_tables(spark, split, EXPECTED_PROFILES, EXPECTED_HISTORY)

    # foreachBatch is at-least-once: replaying batch 1 must change nothing in either table.
    before = {ref.name: _version(spark, ref) for ref in (split.profile, split.history)}
    split.apply(batch1, 1)
    _assert_tables(spark, split, EXPECTED_PROFILES, EXPECTED_HISTORY)
    for ref in (split.profile, split.history):
        assert all(changed == 0 for _, _, changed in _changed_rows(spark, ref, before[ref.name])), ref.name

    # The same changes in one micro-batch of a streaming query (another arrival order) give the
    # same tables: the engine is the foreachBatch function itself.
    source = tmp_path / "source"
    changes_df(spark, BATCH1[::-1] + BATCH0).write.parquet(str(source))
    one = _engine(spark, tmp_path / "one")
    query = (
        spark.readStream.schema(CHANGES)
        .parquet(str(source))
        .writeStream.foreachBatch(one.apply)
        .option("checkpointLocation", str(tmp_path / "checkpoint"))
        .start()
    )
    try:
        query.processAllAvailable()
    finally:
        query.stop()
    _assert_tables(spark, one, EXPECTED_PROFILES, EXPECTED_HISTORY)


def test_a_batch_whose_log_append_failed_is_completed_by_its_replay(
    spark: SparkSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The log append and the two MERGEs run side by side: the MERGEs derive the batch's keys from
    # the log plus the batch itself, so they commit the right rows even when the append fails.
    engine = _engine(spark, tmp_path)
    engine.apply(changes_df(spark, BATCH0), 0)
    batch1 = changes_df(spark, BATCH1)
    appended = engine._append_log

    def lost(changes: DataFrame) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(engine, "_append_log", lost)
    with pytest.raises(OSError, match="disk full"):
        engine.apply(batch1, 1)
    assert engine.changes.path is not None
    assert _read(spark, engine.changes).filter(F.col("_cdc_batch_id") == 1).isEmpty()
    _assert_tables(spark, engine, EXPECTED_PROFILES, EXPECTED_HISTORY)

    # the replay appends the changes and changes nothing in either table
    monkeypatch.setattr(engine, "_append_log", appended)
    before = {ref.name: _version(spark, ref) for ref in (engine.profile, engine.history)}
    engine.apply(batch1, 1)
    assert _read(spark, engine.changes).filter(F.col("_cdc_batch_id") == 1).count() == len(BATCH1)
    _assert_tables(spark, engine, EXPECTED_PROFILES, EXPECTED_HISTORY)
    for ref in (engine.profile, engine.history):
        assert all(changed == 0 for _, _, changed in _changed_rows(spark, ref, before[ref.name])), ref.name


def test_tombstones_block_stale_updates_until_purged_and_history_survives_the_purge(
    spark: SparkSession, tmp_path: Path
) -> None:
    spec = CdcSpec(
        keys=USER_PROFILE_CDC.keys,
        value_columns=USER_PROFILE_CDC.value_columns,
        profile_schema=USER_PROFILE,
        history_schema=USER_PROFILE_HISTORY,
        tombstone_retention=timedelta(days=1),
    )
    engine = _engine(spark, tmp_path, spec)
    day = timedelta(days=1)
    engine.apply(
        changes_df(
            spark,
            [
                Change(1, "new", T0, ANN, offset=1),
                Change(1, "delete", T0 + M, NO_PROFILE, offset=2),  # older than the retention: purged
                Change(2, "new", T0, ANN, offset=3),
                Change(2, "delete", T0 + day, NO_PROFILE, offset=4),  # within the retention: kept
            ],
        ),
        0,
        as_of=T0 + day + 2 * M,
    )
    assert engine.changes.path is not None
    log_users = {r["user_id"] for r in _read(spark, engine.changes).select("user_id").distinct().collect()}
    assert log_users == {2}
    engine.apply(
        changes_df(
            spark,
            [
                Change(1, "new", T0 + 2 * day, BEA, offset=5),  # re-created after the purge
                Change(2, "update", T0 + day - M, BEA, offset=6),  # stale: the tombstone holds it back
            ],
        ),
        1,
        as_of=T0 + day + 3 * M,
    )
    _assert_tables(
        spark,
        engine,
        [(1, *BEA, T0 + 2 * day)],
        [
            (1, *ANN, T0, T0 + M),  # written before the purge, kept
            (1, *BEA, T0 + 2 * day, None),
            (2, *ANN, T0, T0 + day - M),
            (2, *BEA, T0 + day - M, T0 + day),
        ],
    )


def test_empty_batch_changes_nothing_and_missing_columns_fail_clearly(spark: SparkSession, tmp_path: Path) -> None:
    engine = _engine(spark, tmp_path)
    engine.apply(spark.createDataFrame([], CHANGES), 0)
    _assert_tables(spark, engine, [], [])
    with pytest.raises(PipelineError, match="missing columns"):
        engine.apply(changes_df(spark, BATCH0).drop("offset"), 1)


# --- property: arrival order, micro-batch boundaries and replays do not matter ---------------------

_EXAMPLE = itertools.count()
_BATCH_IDS = itertools.count()


@pytest.fixture(scope="module")
def shared_engine(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> CdcMergeEngine:
    # One set of tables for every example (each example uses its own user ids): table creation is
    # the slow part of a Delta test, and users never interact.
    return _engine(spark, tmp_path_factory.mktemp("cdc_property"))


# Each example costs a few Delta MERGEs, so few examples, each with more users (they never interact).
@settings(max_examples=4, deadline=None)
@given(
    changes=change_sets(users=4, max_changes=10),
    seed=st.integers(min_value=0, max_value=2**16),
    batches=st.integers(min_value=1, max_value=3),
    replay=st.booleans(),
)
def test_any_arrival_order_and_batching_gives_the_reference_tables(
    spark: SparkSession, shared_engine: CdcMergeEngine, changes: list[Change], seed: int, batches: int, replay: bool
) -> None:
    base_user = 100 * (next(_EXAMPLE) + 1)
    changes = [replace(c, user_id=base_user + c.user_id) for c in changes]
    rng = random.Random(seed)
    arrived = list(changes)
    rng.shuffle(arrived)
    cuts = sorted(rng.sample(range(1, len(arrived)), min(batches - 1, len(arrived) - 1)))
    parts = [arrived[i:j] for i, j in itertools.pairwise([0, *cuts, len(arrived)])]
    replay_at = rng.randrange(len(parts)) if replay else -1
    for i, part in enumerate(parts):
        batch, batch_id = changes_df(spark, part), next(_BATCH_IDS)
        shared_engine.apply(batch, batch_id)
        if i == replay_at:  # at-least-once: the same micro-batch again
            shared_engine.apply(batch, batch_id)
    want_profiles, want_history = reference(changes)
    users = spark.createDataFrame([(base_user + u,) for u in range(1, 5)], "user_id long")
    _assert_tables(spark, shared_engine, want_profiles, want_history, users=users)
