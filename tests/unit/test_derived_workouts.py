"""The ``realtime`` derived query's writer: ``workout_bpm`` and then its summary from one
micro-batch of change rows (CONTRACT.md §2.2 workout_bpm, §2.3 workout_bpm_summary), on literal rows.

A reading's change reaches both tables in the same batch; a profile change alone corrects the
summary's demographics and leaves ``workout_bpm`` as it was; a replayed batch commits nothing.
"""

from __future__ import annotations

from datetime import date, datetime
from pathlib import Path

import pytest
from pyspark.sql import DataFrame, SparkSession

from fitbit_stream.config import Config
from fitbit_stream.io.derived import _project, derived_writer
from fitbit_stream.io.tables import Tables
from fitbit_stream.schemas import COMPLETED_WORKOUTS, HEART_RATE, USER_PROFILE_HISTORY, USERS
from support.world import at, table, world_config

START, END = at(10, 10), at(10, 40)


def version(city: str, valid_from: datetime, valid_to: datetime | None) -> tuple[object, ...]:
    return (1, date(1985, 6, 1), "M", "F", "Sam", "Roe", "2 Elm St", city, "TX", "73301", valid_from, valid_to)


@pytest.fixture
def world(spark: SparkSession, tmp_path: Path, spark_config: Config) -> tuple[Config, Tables]:
    config = world_config(tmp_path, spark_config.jars_dir)
    tables = Tables(config)
    for name in (
        "users",
        "heart_rate",
        "completed_workouts",
        "user_profile_history",
        "workout_bpm",
        "workout_bpm_summary",
    ):
        tables.ensure(spark, name)
    tables.append(spark.createDataFrame([(1, 101, "aa:bb:cc:dd:ee:01", at(9))], USERS), tables.ref("users"))
    tables.append(spark.createDataFrame([(1, 5, 1, START, END)], COMPLETED_WORKOUTS), tables.ref("completed_workouts"))
    tables.append(
        spark.createDataFrame([version("Austin", at(0, day=2), None)], USER_PROFILE_HISTORY),
        tables.ref("user_profile_history"),
    )
    return config, tables


def changes(spark: SparkSession, source: str, rows: list[tuple[object, ...]], schema: object) -> DataFrame:
    """A micro-batch of the derived query's source: ``rows`` as change rows of table ``source``."""
    return _project(spark.createDataFrame(rows, schema), source)  # type: ignore[arg-type]


def versions(spark: SparkSession, tables: Tables) -> dict[str, int]:
    return {
        name: tables.delta(spark, tables.ref(name)).history().count() for name in ("workout_bpm", "workout_bpm_summary")
    }


def test_a_reading_reaches_workout_bpm_and_the_summary_in_one_batch_and_a_profile_change_corrects_the_summary(
    spark: SparkSession, world: tuple[Config, Tables]
) -> None:
    config, tables = world
    write = derived_writer(("workout_bpm", "workout_bpm_summary")).make_writer(tables)
    readings = [(101, at(10, 20), 100.0, True), (101, at(10, 40), 120.0, True), (101, at(10, 50), 130.0, True)]
    tables.append(spark.createDataFrame(readings, HEART_RATE), tables.ref("heart_rate"))

    # the readings' changes and the session's, in one batch
    batch = changes(spark, "heart_rate", readings, HEART_RATE).unionByName(
        changes(spark, "completed_workouts", [(1, 5, 1, START, END)], COMPLETED_WORKOUTS)
    )
    write(batch, 0)
    # 10:20 and 10:40 (end_time included) are in the session, 10:50 is not
    assert sorted(tuple(r) for r in table(spark, config, "workout_bpm").collect()) == [
        (1, 5, 1, at(10, 20), START, END, 100.0),
        (1, 5, 1, at(10, 40), START, END, 120.0),
    ]
    summary = ["user_id", "workout_id", "session_id", "date", "age", "city", "min_bpm", "avg_bpm", "max_bpm"]
    summary += ["num_recordings"]
    assert [tuple(r) for r in table(spark, config, "workout_bpm_summary").select(*summary).collect()] == [
        (1, 5, 1, date(2025, 3, 3), "35-45", "Austin", 100.0, 110.0, 120.0, 2)
    ]

    # replayed: nothing is committed to either table
    before = versions(spark, tables)
    write(batch, 0)
    assert versions(spark, tables) == before

    # the user moved before the session started: only the profile history changed
    history = tables.delta(spark, tables.ref("user_profile_history"))
    history.update("city = 'Austin'", {"valid_to": "TIMESTAMP'2025-03-03 08:00:00'"})
    moved = version("Dallas", at(8), None)
    tables.append(spark.createDataFrame([moved], USER_PROFILE_HISTORY), tables.ref("user_profile_history"))
    write(changes(spark, "user_profile_history", [moved], USER_PROFILE_HISTORY), 1)
    after = versions(spark, tables)
    assert after["workout_bpm"] == before["workout_bpm"]  # its rows did not change: no commit
    assert after["workout_bpm_summary"] == before["workout_bpm_summary"] + 1
    rows = table(spark, config, "workout_bpm_summary").select("city", "num_recordings").collect()
    assert [tuple(r) for r in rows] == [("Dallas", 2)]


def test_one_batch_empties_a_session_whose_member_changed_device_and_corrects_another_members_profile(
    spark: SparkSession, world: tuple[Config, Tables]
) -> None:
    config, tables = world
    write = derived_writer(("workout_bpm", "workout_bpm_summary")).make_writer(tables)
    # a second member (device 102) with a session of her own, both members with two readings in theirs
    tables.append(spark.createDataFrame([(2, 102, "aa:bb:cc:dd:ee:02", at(9))], USERS), tables.ref("users"))
    tables.append(spark.createDataFrame([(2, 7, 1, START, END)], COMPLETED_WORKOUTS), tables.ref("completed_workouts"))
    tables.append(
        spark.createDataFrame([(2, *version("Austin", at(0, day=2), None)[1:])], USER_PROFILE_HISTORY),
        tables.ref("user_profile_history"),
    )
    readings = [
        (101, at(10, 20), 100.0, True),
        (101, at(10, 30), 110.0, True),
        (102, at(10, 20), 90.0, True),
        (102, at(10, 30), 80.0, True),
    ]
    tables.append(spark.createDataFrame(readings, HEART_RATE), tables.ref("heart_rate"))
    sessions = [(1, 5, 1, START, END), (2, 7, 1, START, END)]
    write(changes(spark, "completed_workouts", sessions, COMPLETED_WORKOUTS), 0)
    summary = ["user_id", "workout_id", "city", "min_bpm", "max_bpm", "num_recordings"]
    assert sorted(tuple(r) for r in table(spark, config, "workout_bpm_summary").select(*summary).collect()) == [
        (1, 5, "Austin", 100.0, 110.0, 2),
        (2, 7, "Austin", 80.0, 90.0, 2),
    ]

    # a reading of a device with no completed session around it: nothing to recompute, no commit
    before = versions(spark, tables)
    stray = [(101, at(12), 70.0, True)]
    tables.append(spark.createDataFrame(stray, HEART_RATE), tables.ref("heart_rate"))
    write(changes(spark, "heart_rate", stray, HEART_RATE), 1)
    assert versions(spark, tables) == before

    # one batch: member 1 now wears device 999 (no readings: her session loses its rows and its
    # summary row), member 2 moved to Dallas before her session (only her profile history changed)
    tables.delta(spark, tables.ref("users")).update("user_id = 1", {"device_id": "999"})
    history = tables.delta(spark, tables.ref("user_profile_history"))
    history.update("user_id = 2", {"valid_to": "TIMESTAMP'2025-03-03 08:00:00'"})
    moved = (2, *version("Dallas", at(8), None)[1:])
    tables.append(spark.createDataFrame([moved], USER_PROFILE_HISTORY), tables.ref("user_profile_history"))
    batch = changes(spark, "users", [(1, 999, "aa:bb:cc:dd:ee:01", at(9))], USERS).unionByName(
        changes(spark, "user_profile_history", [moved], USER_PROFILE_HISTORY)
    )
    write(batch, 2)
    assert sorted(tuple(r) for r in table(spark, config, "workout_bpm").collect()) == [
        (2, 7, 1, at(10, 20), START, END, 90.0),
        (2, 7, 1, at(10, 30), START, END, 80.0),
    ]
    assert [tuple(r) for r in table(spark, config, "workout_bpm_summary").select(*summary).collect()] == [
        (2, 7, "Dallas", 80.0, 90.0, 2)
    ]
