"""``realtime`` mode: the ingest query writes silver's topic tables and bronze from one micro-batch.

The same records through ``realtime`` and through ``layered`` (bronze, then one query per topic
reading it back) leave every table equal; the boundary cases of the ``late`` rule (a record exactly
at the threshold, one just past it, a future record) and a replayed batch are pinned with literal
rows; rebuild in ``realtime`` mode derives the same tables again and records the ``late`` state
where the ingest query's next batch finds it.
"""

from __future__ import annotations

from datetime import UTC, date
from pathlib import Path

import pytest
from pyspark.sql import SparkSession

from fitbit_stream.config import Config
from fitbit_stream.errors import PreflightError
from fitbit_stream.io.ingest import IngestWriter, state_key
from fitbit_stream.io.silver import LateState
from fitbit_stream.pipeline import Pipeline
from fitbit_stream.rebuild import rebuild
from fitbit_stream.topology import ALL_JOBS, waves
from fitbit_stream.verify import verify
from support.world import Landing, at, bpm, profile_change, snapshot, table, workout, world_config

AS_OF = date(2025, 6, 1)


def _records() -> list:  # type: ignore[type-arg]
    return [
        profile_change(1, "new", at(0, day=2)),
        workout(1, 5, 1, at(10, 10), "start"),
        workout(1, 5, 1, at(10, 40), "stop"),
        bpm(101, at(10, 20), 100.0),
        bpm(101, at(10, 20), 100.0),  # a duplicate: one row
        bpm(101, at(10, 30), None),  # no heart rate: kept, not valid
        ("bpm", "101", "not json", at(10, 31)),  # malformed: quarantined
    ]


def test_a_drain_writes_silver_from_the_ingest_batch_and_equals_the_layered_pipeline(
    spark: SparkSession, tmp_path: Path, spark_config: Config
) -> None:
    realtime = world_config(tmp_path / "realtime", spark_config.jars_dir)
    layered = world_config(tmp_path / "layered", spark_config.jars_dir, mode="layered")
    for config in (realtime, layered):
        Landing(config).add(_records())

    pipeline = Pipeline(spark, realtime)
    pipeline.run_once(as_of=AS_OF, layers="bronze")
    # the bronze job alone: the readings are in silver already, bronze holds every record
    readings = table(spark, realtime, "heart_rate").select("device_id", "time", "heartrate", "valid")
    assert sorted(tuple(r) for r in readings.collect()) == [
        (101, at(10, 20), 100.0, True),
        (101, at(10, 30), None, False),
    ]
    assert [tuple(r) for r in table(spark, realtime, "completed_workouts").collect()] == [
        (1, 5, 1, at(10, 10), at(10, 40))
    ]
    assert [r["city"] for r in table(spark, realtime, "user_profile").collect()] == ["Austin"]
    bad = table(spark, realtime, "quarantine").select("topic", "offset", "reason").collect()
    assert [tuple(r) for r in bad] == [("bpm", 3, "malformed_json")]
    assert table(spark, realtime, "kafka_multiplex_bz").count() == 7

    pipeline.run_once(as_of=AS_OF)
    Pipeline(spark, layered).run_once(as_of=AS_OF)
    summary = table(spark, realtime, "workout_bpm_summary").select("min_bpm", "max_bpm", "num_recordings").collect()
    assert [tuple(r) for r in summary] == [(100.0, 100.0, 1)]
    assert snapshot(spark, realtime) == snapshot(spark, layered)

    # a second drain with nothing new changes nothing
    before = snapshot(spark, realtime)
    pipeline.run_once(as_of=AS_OF)
    assert snapshot(spark, realtime) == before


def test_the_late_rule_at_its_boundary_and_a_replayed_batch(
    spark: SparkSession, tmp_path: Path, spark_config: Config
) -> None:
    config = world_config(tmp_path, spark_config.jars_dir, extra=("rules.lateness_horizon_minutes=60",))
    landing = Landing(config)
    pipeline = Pipeline(spark, config)
    landing.add([bpm(101, at(12), 90.0)])
    pipeline.run_once(as_of=AS_OF, layers="bronze")
    # the greatest accepted event time so far is 12:00, so the threshold is 11:00
    landing.add(
        [
            bpm(101, at(11), 91.0),  # exactly at the threshold: not older, accepted
            bpm(101, at(10, 59, 59), 92.0),  # one second older: late
            ("bpm", "101", {"device_id": 101, "time": 1_741_003_200 + 3600, "heartrate": 93.0}, at(12, 49)),
        ]
    )
    pipeline.run_once(as_of=AS_OF, layers="bronze")
    readings = table(spark, config, "heart_rate").select("time", "heartrate").collect()
    assert sorted(tuple(r) for r in readings) == [(at(11), 91.0), (at(12), 90.0)]
    reasons = table(spark, config, "quarantine").select("offset", "reason").collect()
    # the 13:00 reading was sent at 12:49: more than the 10 minutes of clock skew ahead, future
    assert sorted(tuple(r) for r in reasons) == [(2, "late"), (3, "future")]

    # batch 1 replayed (a crash after its silver commits, before bronze and the checkpoint): the
    # same threshold (12:00 - 1 h, from the batches below 1), the same rows, nothing twice; bronze
    # appends nothing the second time (its txnVersion 1 is recorded)
    state = LateState(pipeline.tables, spark)
    assert state.previous_max(spark, state_key("bronze_landing_multiplex", "bpm"), 1) == at(12).replace(tzinfo=UTC)
    before = snapshot(spark, config)
    replayed = table(spark, config, "kafka_multiplex_bz").filter("offset >= 1")
    IngestWriter(spark, config, "bronze_landing_multiplex")(replayed, 1)
    assert snapshot(spark, config) == before


def test_rebuild_in_realtime_mode_derives_the_same_tables_and_keeps_judging_lateness(
    spark: SparkSession, tmp_path: Path, spark_config: Config
) -> None:
    config = world_config(tmp_path, spark_config.jars_dir)
    landing = Landing(config)
    landing.add(_records())
    Pipeline(spark, config).run_once(as_of=AS_OF)
    landing.add([bpm(101, at(8), 70.0)])  # more than an hour older than 10:30: late
    Pipeline(spark, config).run_once(as_of=AS_OF)
    drained = snapshot(spark, config)
    assert ("bpm", 4) in {(r["topic"], r["offset"]) for r in table(spark, config, "quarantine").collect()}

    report = rebuild(spark, config, as_of=AS_OF)
    assert report.kept_late == 1
    assert snapshot(spark, config) == drained
    assert verify(spark, config, as_of=AS_OF).ok
    # the ingest query's next batch judges lateness against everything bronze held
    landing.add([bpm(101, at(9), 71.0), bpm(101, at(10, 45), 72.0)])
    Pipeline(spark, config).run_once(as_of=AS_OF)
    late = table(spark, config, "quarantine").filter("reason = 'late'").select("offset").collect()
    assert sorted(r["offset"] for r in late) == [4, 5]
    assert (101, at(10, 45)) in {(r["device_id"], r["time"]) for r in table(spark, config, "heart_rate").collect()}


def test_realtime_drain_plan_has_no_second_hop_to_silver(
    spark: SparkSession, tmp_path: Path, spark_config: Config
) -> None:
    config = world_config(tmp_path, spark_config.jars_dir, extra=("kafka.enabled=true",))
    pipeline = Pipeline(spark, config)
    assert waves(pipeline._steps(ALL_JOBS, {"availableNow": True}, None)) == [
        ["bronze_kafka_bpm", "bronze_kafka_user_info_workout", "bronze_sql"],
        ["bronze_landing_multiplex", "silver_users", "silver_gym_logs"],
        [
            "user_bins+date_lookup+tombstones",
            "derived_gym_summary",
            "derived_gym_occupancy",
            "derived_workout_bpm_and_summary",
        ],
    ]


def test_a_source_gone_mid_run_stops_with_one_line_and_a_restart_resumes(
    spark: SparkSession, tmp_path: Path, spark_config: Config
) -> None:
    config = world_config(tmp_path, spark_config.jars_dir)
    Landing(config).add(_records())
    source = tmp_path / "source.db"
    moved = tmp_path / "away.db"
    source.rename(moved)  # the database goes away after the run was checked and started
    with pytest.raises(PreflightError) as info:
        Pipeline(spark, config).run_once(as_of=AS_OF)
    message = str(info.value)
    assert "\n" not in message
    assert f"sql.url=jdbc:sqlite:{source}" in message
    assert "nothing is lost, run it again once the source is back" in message
    # what the run had written stays; the restart completes it
    assert table(spark, config, "heart_rate").count() == 2
    moved.rename(source)
    Pipeline(spark, config).run_once(as_of=AS_OF)
    summary = table(spark, config, "workout_bpm_summary").select("min_bpm", "max_bpm", "num_recordings").collect()
    assert [tuple(r) for r in summary] == [(100.0, 100.0, 1)]
    assert [tuple(r) for r in table(spark, config, "users").select("user_id", "device_id").collect()] == [(1, 101)]
