"""The idempotent MERGE patterns: first row wins, scopes replaced atomically, replays change nothing."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest
from chispa import assert_df_equality
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from fitbit_stream.config import Config, load_config
from fitbit_stream.io.merge import insert_if_absent, replace_scopes, with_conflict_retry
from fitbit_stream.io.tables import Tables

SCHEMA = "device_id bigint, time timestamp, heartrate double, seq int"
T0 = datetime(2025, 3, 3, 10, 0, 0)
T1 = datetime(2025, 3, 3, 10, 0, 1)


@pytest.fixture
def tables(tmp_path: Path, spark_config: Config) -> Tables:
    return Tables(load_config(None, [f"storage.root={tmp_path}", f"jars_dir={spark_config.jars_dir}"]))


def _versions(spark: SparkSession, tables: Tables, name: str) -> int:
    return int(tables.delta(spark, tables.ref(name, layer="silver")).history().count())


def test_insert_if_absent_first_ingested_wins_and_replay_is_a_no_op(spark: SparkSession, tables: Tables) -> None:
    from pyspark.sql.types import StructType

    schema = StructType.fromDDL(SCHEMA)
    assert isinstance(schema, StructType)  # fromDDL is typed as returning any DataType
    ref = tables.ensure(spark, "hr", schema=schema, layer="silver")
    batch1 = spark.createDataFrame(
        [(7, T0, 61.0, 2), (7, T0, 99.0, 1), (7, T1, None, 3), (8, T0, 70.0, 4)],  # duplicate key, NULL value
        SCHEMA,
    )
    insert_if_absent(spark, tables, ref, batch1, keys=["device_id", "time"], order_by=[F.col("seq")], prune_on="time")
    # a later batch repeats a key with another value: the stored (first) row stays
    batch2 = spark.createDataFrame([(7, T0, 10.0, 9)], SCHEMA)
    insert_if_absent(spark, tables, ref, batch2, keys=["device_id", "time"], order_by=[F.col("seq")], prune_on="time")
    before = _versions(spark, tables, "hr")
    insert_if_absent(spark, tables, ref, batch1, keys=["device_id", "time"], order_by=[F.col("seq")], prune_on="time")
    expected = spark.createDataFrame([(7, T0, 99.0, 1), (7, T1, None, 3), (8, T0, 70.0, 4)], SCHEMA)
    assert_df_equality(tables.read(spark, ref), expected, ignore_row_order=True, ignore_nullable=True)
    # the replay either commits nothing or commits a merge that inserted nothing
    history = tables.delta(spark, ref).history().orderBy(F.desc("version")).first()
    assert history is not None
    assert _versions(spark, tables, "hr") == before or history["operationMetrics"]["numTargetRowsInserted"] == "0"


@pytest.mark.parametrize("pruned", [False, True], ids=["whole-target", "time-bounded"])
def test_replace_scopes_diffs_inserts_updates_deletes_atomically(
    spark: SparkSession, tables: Tables, pruned: bool
) -> None:
    from pyspark.sql.types import StructType

    schema = "user_id bigint, session_id int, time timestamp, heartrate double"
    struct = StructType.fromDDL(schema)
    assert isinstance(struct, StructType)  # fromDDL is typed as returning any DataType
    ref = tables.ensure(spark, "wb", schema=struct, layer="silver")
    tables.append(
        spark.createDataFrame(
            [
                (1, 1, T0, 60.0),  # scope (1,1): kept as is
                (1, 1, T1, 61.0),  # scope (1,1): updated
                (1, 2, T0, 62.0),  # scope (1,2): deleted (no longer in the new rows)
                (2, 1, T0, 63.0),  # scope (2,1): not replaced, untouched
                (None, 1, T0, 1.0),  # NULL key in an untouched scope
            ],
            schema,
        ),
        ref,
    )
    new_rows = spark.createDataFrame(
        [(1, 1, T0, 60.0), (1, 1, T1, 65.0), (1, 3, T0, 64.0), (2, 1, T1, 99.0)],  # (2,1) outside scopes
        schema,
    )
    scopes = spark.createDataFrame([(1, 1), (1, 2), (1, 3), (1, 3)], "user_id bigint, session_id int")

    def replace() -> None:
        replace_scopes(
            spark,
            tables,
            ref,
            new_rows,
            scopes=scopes,
            scope_keys=["user_id", "session_id"],
            keys=["user_id", "session_id", "time"],
            # every row of the replaced scopes, current and new, lies in [T0, T1]
            prune_on="time" if pruned else None,
            prune_bounds=(str(T0), str(T1)) if pruned else None,
        )

    replace()
    first = tables.delta(spark, ref).history().orderBy(F.desc("version")).first()
    assert first is not None
    assert [
        first["operationMetrics"][m] for m in ("numTargetRowsInserted", "numTargetRowsUpdated", "numTargetRowsDeleted")
    ] == ["1", "1", "1"]
    replace()  # a replay: the diff is empty, so nothing is committed
    expected = spark.createDataFrame(
        [(1, 1, T0, 60.0), (1, 1, T1, 65.0), (1, 3, T0, 64.0), (2, 1, T0, 63.0), (None, 1, T0, 1.0)], schema
    )
    assert_df_equality(tables.read(spark, ref), expected, ignore_row_order=True, ignore_nullable=True)
    last = tables.delta(spark, ref).history().orderBy(F.desc("version")).first()
    assert last is not None
    assert last["version"] == first["version"]


def test_insert_if_absent_with_known_bounds_and_unique_rows(spark: SparkSession, tables: Tables) -> None:
    from pyspark.sql.types import StructType

    schema = StructType.fromDDL(SCHEMA)
    assert isinstance(schema, StructType)  # fromDDL is typed as returning any DataType
    ref = tables.ensure(spark, "hr_bounds", schema=schema, layer="silver")
    tables.append(spark.createDataFrame([(7, T0, 61.0, 1)], SCHEMA), ref)
    # one row per key already (the caller reduced them); the range is the rows' own
    batch = spark.createDataFrame([(7, T0, 99.0, 2), (7, T1, None, 3), (8, T1, 70.0, 4)], SCHEMA)
    for _ in range(2):  # the second time is a replay
        insert_if_absent(
            spark,
            tables,
            ref,
            batch,
            keys=["device_id", "time"],
            prune_on="time",
            prune_bounds=(str(T0), str(T1)),
            unique=True,
        )
    expected = spark.createDataFrame([(7, T0, 61.0, 1), (7, T1, None, 3), (8, T1, 70.0, 4)], SCHEMA)
    assert_df_equality(tables.read(spark, ref), expected, ignore_row_order=True, ignore_nullable=True)


def test_conflict_retry_retries_only_conflicts() -> None:
    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("io.delta.exceptions.ConcurrentAppendException: Files were added")
        return "ok"

    assert with_conflict_retry(flaky, what="test") == "ok"
    assert len(calls) == 3

    def broken() -> None:
        raise ValueError("not a conflict")

    with pytest.raises(ValueError, match="not a conflict"):
        with_conflict_retry(broken, what="test")
