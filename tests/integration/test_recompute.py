"""The batch recomputation, ``verify`` and ``rebuild`` on a small literal world.

Two pipeline runs (the second brings a reading within the horizon, a reading beyond it, and a
profile change) give the clean state. verify must find no difference; a hand-made change to one
silver row and one gold row must be reported as exactly those tables and keys; rebuild (also after
an interruption, and run twice) must restore the literal clean rows; a forged ``late`` decision
must be reported as implausible.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from fitbit_stream import cli
from fitbit_stream.config import Config, load_config
from fitbit_stream.errors import PipelineError
from fitbit_stream.io.silver import TopicWriter
from fitbit_stream.io.tables import Tables
from fitbit_stream.pipeline import Pipeline
from fitbit_stream.rebuild import rebuild
from fitbit_stream.recompute import COMPARED_TABLES, recompute
from fitbit_stream.schemas import QUARANTINE
from fitbit_stream.verify import verify
from support.world import (
    PROFILE,
    REGISTERED,
    Bronze,
    Record,
    assert_rows,
    at,
    bpm,
    profile_change,
    table,
    workout,
    world_overrides,
)

AS_OF = date(2025, 6, 1)


@pytest.fixture
def overrides(tmp_path: Path, spark_config: Config) -> list[str]:
    # records are written to bronze directly: the topic queries read them into silver
    return world_overrides(
        tmp_path,
        spark_config.jars_dir,
        mode="layered",
        registered=[*REGISTERED, (2, 202, "aa:bb:cc:dd:ee:02", "2025-03-01 09:00:00")],
    )


@pytest.fixture
def world(overrides: list[str]) -> Config:
    return load_config(None, overrides)


RUN1: list[Record] = [
    profile_change(1, "new", at(0, day=2)),
    workout(1, 5, 1, at(10, 10), "start"),
    workout(1, 5, 1, at(10, 40), "stop"),
    workout(2, 7, 1, at(10, 30), "start"),
    workout(2, 7, 1, at(10, 20), "stop"),  # stop before start: invalid_session under this record
    workout(1, 6, 2, at(10, 0, day=4), "start", record_time=at(10, 0)),  # a day ahead: future
    bpm(101, at(10, 10), 90.0),  # at start_time: not in the session
    bpm(101, at(10, 20), 100.0),
    bpm(101, at(10, 20), 55.0),  # duplicate key: the first ingested wins
    bpm(101, at(10, 30), None),  # NULL: invalid
    bpm(101, at(10, 35), 300.0),  # out of range: invalid
    bpm(101, at(10, 40), 120.0),  # at end_time: in the session
    bpm(101, at(10, 50), 130.0),  # after the session
    ("bpm", "101", "not json", at(10, 51)),
]
RUN2: list[Record] = [
    bpm(101, at(10, 25), 110.0),  # older than the max (10:50), within the 60 min horizon
    bpm(101, at(9, 0), 70.0),  # more than 60 min before 10:50: late
    profile_change(1, "update", at(10, 5), address={**PROFILE["address"], "city": "Dallas"}),
]

HEART_RATE_ROWS = [
    (101, at(10, 10), 90.0, True),
    (101, at(10, 20), 100.0, True),
    (101, at(10, 25), 110.0, True),
    (101, at(10, 30), None, False),
    (101, at(10, 35), 300.0, False),
    (101, at(10, 40), 120.0, True),
    (101, at(10, 50), 130.0, True),
]
HEART_RATE_SCHEMA = "device_id bigint, time timestamp, heartrate double, valid boolean"
SUMMARY_ROWS = [(1, 5, 1, date(2025, 3, 3), "35-45", "M", "M", "Dallas", "TX", 100.0, 110.0, 120.0, 3)]
SUMMARY_SCHEMA = (
    "user_id bigint, workout_id int, session_id int, date date, age string, sex string, gender string, "
    "city string, state string, min_bpm double, avg_bpm double, max_bpm double, num_recordings bigint"
)
QUARANTINE_ROWS = [
    ("bpm", 0, 7, "malformed_json"),
    ("bpm", 0, 9, "late"),
    ("workout", 0, 3, "invalid_session"),
    ("workout", 0, 4, "future"),
]


def assert_clean(spark: SparkSession, config: Config) -> None:
    """The literal state two clean runs give (and every rebuild must restore)."""
    assert_rows(table(spark, config, "heart_rate"), HEART_RATE_ROWS, HEART_RATE_SCHEMA)
    assert_rows(table(spark, config, "workout_bpm_summary"), SUMMARY_ROWS, SUMMARY_SCHEMA)
    assert_rows(
        table(spark, config, "completed_workouts"),
        [(1, 5, 1, at(10, 10), at(10, 40))],
        "user_id bigint, workout_id int, session_id int, start_time timestamp, end_time timestamp",
    )
    assert_rows(
        table(spark, config, "workout_bpm"),
        [(1, 5, 1, t, at(10, 10), at(10, 40), hr) for t, hr in ((at(10, 20), 100.0), (at(10, 25), 110.0))]
        + [(1, 5, 1, at(10, 40), at(10, 10), at(10, 40), 120.0)],
        "user_id bigint, workout_id int, session_id int, time timestamp, start_time timestamp, "
        "end_time timestamp, heartrate double",
    )
    assert_rows(
        table(spark, config, "quarantine").select("topic", "partition", "offset", "reason"),
        QUARANTINE_ROWS,
        "topic string, partition int, offset bigint, reason string",
    )
    assert_rows(
        table(spark, config, "user_profile_history").select("user_id", "city", "valid_from", "valid_to"),
        [(1, "Austin", at(0, day=2), at(10, 5)), (1, "Dallas", at(10, 5), None)],
        "user_id bigint, city string, valid_from timestamp, valid_to timestamp",
    )
    assert_rows(
        table(spark, config, "gym_summary").select("gym", "mac_address", "login", "workouts", "minutes_exercising"),
        [(1, "aa:bb:cc:dd:ee:01", at(10), [5], 30.0)],
        "gym bigint, mac_address string, login timestamp, workouts array<int>, minutes_exercising double",
    )
    years = table(spark, config, "date_lookup").agg(F.count("*"), F.min("date"), F.max("date")).first()
    assert years is not None
    assert tuple(years) == (365, date(2025, 1, 1), date(2025, 12, 31))


def run_clean(spark: SparkSession, config: Config) -> None:
    bronze = Bronze(spark, config)
    pipeline = Pipeline(spark, config)
    bronze.add(RUN1)
    pipeline.run_once(as_of=AS_OF)
    bronze.add(RUN2)
    pipeline.run_once(as_of=AS_OF)


def test_verify_alter_rebuild(
    spark: SparkSession,
    world: Config,
    overrides: list[str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run_clean(spark, world)
    assert_clean(spark, world)

    # --- a clean run: the recomputation agrees everywhere, and the one late decision is plausible
    clean = verify(spark, world, as_of=AS_OF)
    assert clean.ok, clean.table()
    assert [t.table for t in clean.tables] == list(COMPARED_TABLES)
    assert (clean.late.checked, clean.late.implausible) == (1, 0)
    expected = recompute(spark, world, as_of=AS_OF)
    assert_rows(expected["heart_rate"], HEART_RATE_ROWS, HEART_RATE_SCHEMA)
    assert_rows(expected["workout_bpm_summary"], SUMMARY_ROWS, SUMMARY_SCHEMA)
    assert expected["quarantine"].schema.fieldNames() == QUARANTINE.fieldNames()

    # --- one silver value changed and one gold row deleted by hand: exactly those are reported
    tables = Tables(world)
    tables.delta(spark, tables.ref("heart_rate")).update(
        "device_id = 101 AND time = TIMESTAMP'2025-03-03 10:20:00'", {"heartrate": "99.0"}
    )
    tables.delta(spark, tables.ref("workout_bpm_summary")).delete("user_id = 1")
    altered = verify(spark, world, as_of=AS_OF, examples=3)
    assert not altered.ok
    assert set(altered.differences) == {"heart_rate", "workout_bpm_summary"}
    hr = altered.differences["heart_rate"]
    assert (hr.differing, hr.only_in_stream, hr.only_in_batch, hr.duplicate_keys) == (1, 0, 0, 0)
    assert dict(hr.examples) == {"differing": ((101, at(10, 20)),)}
    summary = altered.differences["workout_bpm_summary"]
    assert (summary.only_in_batch, summary.only_in_stream, summary.differing) == (1, 0, 0)
    assert (summary.stream_rows, summary.batch_rows) == (0, 1)
    assert dict(summary.examples) == {"only_in_batch": ((1, 5, 1),)}
    text = altered.table()
    assert "heart_rate differing (device_id, time): (101, 2025-03-03 10:20:00)" in text
    assert "workout_bpm_summary only_in_batch (user_id, workout_id, session_id): (1, 5, 1)" in text

    # --- rebuild, crashed half-way (silver_user_info re-derived, silver_bpm failing in its first
    # micro-batch): a second rebuild finishes the job
    class Crashing(TopicWriter):
        def __call__(self, batch: DataFrame, batch_id: int) -> None:
            if self.kind == "bpm":
                raise RuntimeError("crash in the middle of the rebuild")
            super().__call__(batch, batch_id)

    checkpoints = Path(world.storage.checkpoint_root)
    with monkeypatch.context() as patch:
        patch.setattr("fitbit_stream.queries.TopicWriter", Crashing)
        with pytest.raises(PipelineError, match="silver_bpm"):
            rebuild(spark, world, as_of=AS_OF)
    # the old checkpoints wait in the trash, bronze's stays, new ones have started
    assert (checkpoints / "_rebuild_trash" / "silver_bpm").is_dir()
    assert (checkpoints / "bronze_landing_multiplex").is_dir()
    assert (checkpoints / "silver_user_info").is_dir()
    assert table(spark, world, "heart_rate").isEmpty()

    report = rebuild(spark, world, as_of=AS_OF)
    assert report.kept_late == 1
    assert "quarantine" in report.tables_reset
    # the interrupted rebuild had registered new checkpoints for every silver and gold query before
    # starting any (the guard); this one moved all of them aside again, bronze's stayed
    assert set(report.checkpoints_reset) == set(Pipeline(spark, world).query_names(("silver", "gold")))
    assert (checkpoints / "bronze_landing_multiplex").is_dir()
    assert not (checkpoints / "_rebuild_trash").exists()
    assert_clean(spark, world)

    # --- rebuilding again is harmless, and the CLI's verify agrees (exit 0)
    again = rebuild(spark, world, as_of=AS_OF)
    assert {"silver_bpm", "silver_workout", "derived_workout_bpm"} <= set(again.checkpoints_reset)
    assert_clean(spark, world)
    monkeypatch.setattr("fitbit_stream.session.get_spark", lambda config, **kw: spark)
    args = ["verify", "--as-of", AS_OF.isoformat()]
    for item in overrides:
        args += ["--set", item]
    capsys.readouterr()
    assert cli.main(args) == 0
    assert "OK: every table equals its recomputation" in capsys.readouterr().out

    # --- a forged late decision for an accepted reading is implausible (nothing newer came before)
    forged = (
        table(spark, world, "kafka_multiplex_bz")
        .filter((F.col("topic") == "bpm") & (F.col("offset") == 6))
        .select(
            "key",
            "value",
            "topic",
            "partition",
            "offset",
            "timestamp",
            F.lit("late").alias("reason"),
            F.lit("forged").alias("detail"),
            F.lit(None).cast("timestamp").alias("quarantined_at"),
        )
    )
    tables.append(forged, tables.ref("quarantine"))
    report_late = verify(spark, world, as_of=AS_OF, tables=["heart_rate", "quarantine"])
    assert (report_late.late.checked, report_late.late.implausible) == (2, 1)
    assert report_late.late.examples == (("bpm", 0, 6),)
    # the batch takes the decision as given (same quarantine row) and leaves the reading out
    assert set(report_late.differences) == {"heart_rate"}
    assert dict(report_late.differences["heart_rate"].examples) == {"only_in_stream": ((101, at(10, 50)),)}


def test_rebuild_cli_needs_yes(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["rebuild"]) == 2
    assert "--yes" in capsys.readouterr().err


def test_verify_rejects_unknown_tables(spark: SparkSession, world: Config) -> None:
    with pytest.raises(PipelineError, match="unknown table"):
        verify(spark, world, as_of=AS_OF, tables=["kafka_multiplex_bz"])
