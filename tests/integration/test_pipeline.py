"""The whole pipeline on a small literal world: bronze rows in, every silver and gold table out.

Two runs: the first drains a session with its readings, profile, registration and visit; the second
brings a reading that arrives after the session was summarised (within the lateness horizon), a
profile update that changes the session's demographics, and a reading beyond the horizon (late).
Gold must be corrected by the second run, and nothing may wait for a later event.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

import pytest
from chispa import assert_df_equality
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from fitbit_stream.config import Config
from fitbit_stream.errors import PipelineError
from fitbit_stream.io.tables import Tables
from fitbit_stream.pipeline import Pipeline, waves
from fitbit_stream.topology import ALL_JOBS, QuerySpec
from support.world import Bronze, Record, at, bpm, profile_change, table, workout, world_config

#: One load_time for every bronze append in this file: ingestion order falls to (partition, offset).
LOAD_TIME = datetime(2025, 3, 3)


@pytest.fixture
def world(tmp_path: Path, spark_config: Config) -> Config:
    # records are written to bronze directly: the topic queries read them into silver
    return world_config(tmp_path, spark_config.jars_dir, mode="layered")


def session_with_a_reading() -> list[Record]:
    """User 1's session 10:10-10:40 and device 101's reading at 10:20, sent twice."""
    reading = bpm(101, at(10, 20), 100.0)
    return [workout(1, 5, 1, at(10, 10), "start"), workout(1, 5, 1, at(10, 40), "stop"), reading, reading]


# --- the end-to-end world: two runs with literal rows, then a third with nothing new

RUN_1: list[Record] = [
    profile_change(1, "new", at(0, day=2)),
    workout(1, 5, 1, at(10, 10), "start"),
    workout(1, 5, 1, at(10, 40), "stop"),
    # a device clock a day ahead: quarantined as future, and it must not make others late
    workout(1, 6, 2, at(10, 0, day=4), "start", record_time=at(10, 0)),
    bpm(101, at(10, 10), 90.0),  # at start_time: excluded from the session
    bpm(101, at(10, 20), 100.0),
    bpm(101, at(10, 20), 55.0),  # duplicate key: the first ingested wins
    bpm(101, at(10, 30), None),  # NULL: invalid
    bpm(101, at(10, 35), 300.0),  # out of range: invalid
    bpm(101, at(10, 40), 120.0),  # at end_time: included
    bpm(101, at(10, 50), 130.0),  # after the session
    ("bpm", "101", "not json", at(10, 51)),
]
# a reading after the summary, a reading beyond the horizon, a profile change
RUN_2: list[Record] = [
    bpm(101, at(10, 25), 110.0),  # older than the max (10:50) but within the 60 min horizon
    bpm(101, at(9, 0), 70.0),  # more than 60 min before 10:50: late
    profile_change(
        1, "update", at(10, 5), address={"street_address": "2 Elm St", "city": "Dallas", "state": "TX", "zip": "75201"}
    ),
]

FIRST_RUN_TABLES = (
    "heart_rate",
    "completed_workouts",
    "quarantine",
    "workout_bpm_summary",
    "gym_summary",
    "gym_occupancy",
    "user_bins",
    "user_profile",
    "date_lookup",
)
SECOND_RUN_TABLES = ("workout_bpm_summary", "quarantine", "user_profile_history")
COUNTED_TABLES = ("heart_rate", "workout_bpm", "quarantine", "gym_summary")

SUMMARY_SCHEMA = (
    "user_id bigint, workout_id int, session_id int, date date, age string, sex string, gender string, "
    "city string, state string, min_bpm double, avg_bpm double, max_bpm double, num_recordings bigint"
)


@dataclass(frozen=True)
class EndToEnd:
    """The end-to-end world's tables as each run left them (copies: a later run changes the tables)."""

    first: dict[str, DataFrame]  # after run 1
    second: dict[str, DataFrame]  # after run 2
    counts_before: dict[str, int]  # row counts before run 3, which brings nothing new
    counts_after: dict[str, int]  # and after it


def _copies(spark: SparkSession, config: Config, names: tuple[str, ...]) -> dict[str, DataFrame]:
    """The tables' rows as they are now, in DataFrames of the same schema that no later run changes."""
    copies = {}
    for name in names:
        df = table(spark, config, name)
        copies[name] = spark.createDataFrame(df.collect(), df.schema)
    return copies


@pytest.fixture(scope="module")
def end_to_end(spark: SparkSession, spark_config: Config, tmp_path_factory: pytest.TempPathFactory) -> EndToEnd:
    """Runs the end-to-end world once for the module's tests: run 1, run 2, and run 3 (nothing new)."""
    config = world_config(tmp_path_factory.mktemp("end_to_end"), spark_config.jars_dir, mode="layered")
    bronze = Bronze(spark, config)
    pipeline = Pipeline(spark, config)
    bronze.add(RUN_1, LOAD_TIME)
    pipeline.run_once(as_of=date(2025, 6, 1))
    first = _copies(spark, config, FIRST_RUN_TABLES)
    bronze.add(RUN_2, LOAD_TIME)
    pipeline.run_once(as_of=date(2025, 6, 1))
    second = _copies(spark, config, SECOND_RUN_TABLES)
    before = {name: table(spark, config, name).count() for name in COUNTED_TABLES}
    pipeline.run_once(as_of=date(2025, 6, 1))
    after = {name: table(spark, config, name).count() for name in COUNTED_TABLES}
    return EndToEnd(first, second, before, after)


def test_first_run_writes_the_silver_readings_sessions_and_quarantine(
    spark: SparkSession, end_to_end: EndToEnd
) -> None:
    tables = end_to_end.first
    assert_df_equality(
        tables["heart_rate"],
        spark.createDataFrame(
            [
                (101, at(10, 10), 90.0, True),
                (101, at(10, 20), 100.0, True),
                (101, at(10, 30), None, False),
                (101, at(10, 35), 300.0, False),
                (101, at(10, 40), 120.0, True),
                (101, at(10, 50), 130.0, True),
            ],
            "device_id bigint, time timestamp, heartrate double, valid boolean",
        ),
        ignore_row_order=True,
        ignore_nullable=True,
        ignore_column_order=True,
    )
    assert_df_equality(
        tables["completed_workouts"],
        spark.createDataFrame(
            [(1, 5, 1, at(10, 10), at(10, 40))],
            "user_id bigint, workout_id int, session_id int, start_time timestamp, end_time timestamp",
        ),
        ignore_row_order=True,
        ignore_nullable=True,
        ignore_column_order=True,
    )
    quarantine = tables["quarantine"].select("topic", "offset", "reason").collect()
    assert sorted(tuple(r) for r in quarantine) == [("bpm", 7, "malformed_json"), ("workout", 2, "future")]


def test_first_run_writes_the_gold_summaries(spark: SparkSession, end_to_end: EndToEnd) -> None:
    tables = end_to_end.first
    assert_df_equality(
        tables["workout_bpm_summary"],
        spark.createDataFrame(
            [(1, 5, 1, date(2025, 3, 3), "35-45", "M", "M", "Austin", "TX", 100.0, 110.0, 120.0, 2)], SUMMARY_SCHEMA
        ),
        ignore_row_order=True,
        ignore_nullable=True,
        ignore_column_order=True,
    )
    assert_df_equality(
        tables["gym_summary"],
        spark.createDataFrame(
            [(1, "aa:bb:cc:dd:ee:01", at(10), date(2025, 3, 3), at(11, 30), [5], 1, 90.0, 30.0)],
            "gym bigint, mac_address string, login timestamp, date date, logout timestamp, workouts array<int>, "
            "num_sessions int, minutes_in_gym double, minutes_exercising double",
        ),
        ignore_row_order=True,
        ignore_nullable=True,
        ignore_column_order=True,
    )
    assert_df_equality(
        tables["gym_occupancy"],
        spark.createDataFrame(
            [(1, at(10), 1, 1.0, 1), (1, at(11), 1, 0.5, 1)],
            "gym bigint, hour timestamp, visitors bigint, avg_occupancy double, peak_occupancy bigint",
        ),
        ignore_row_order=True,
        ignore_nullable=True,
        ignore_column_order=True,
    )


def test_first_run_writes_the_user_bins_profile_and_date_lookup(spark: SparkSession, end_to_end: EndToEnd) -> None:
    tables = end_to_end.first
    assert_df_equality(
        tables["user_bins"],
        spark.createDataFrame(
            [(1, "35-45", "M", "Austin", "TX")], "user_id bigint, age string, gender string, city string, state string"
        ),
        ignore_row_order=True,
        ignore_nullable=True,
        ignore_column_order=True,
    )
    profile = tables["user_profile"].select("user_id", "zip", "updated").collect()
    assert [tuple(r) for r in profile] == [(1, "08701", at(0, day=2))]
    years = tables["date_lookup"].agg(F.count("*"), F.min("date"), F.max("date")).first()
    assert tuple(years) == (365, date(2025, 1, 1), date(2025, 12, 31))


def test_second_run_corrects_gold_with_a_later_reading_and_a_profile_change(
    spark: SparkSession, end_to_end: EndToEnd
) -> None:
    tables = end_to_end.second
    assert_df_equality(
        tables["workout_bpm_summary"],
        spark.createDataFrame(
            [(1, 5, 1, date(2025, 3, 3), "35-45", "M", "M", "Dallas", "TX", 100.0, 110.0, 120.0, 3)], SUMMARY_SCHEMA
        ),
        ignore_row_order=True,
        ignore_nullable=True,
        ignore_column_order=True,
    )
    history = tables["user_profile_history"].select("user_id", "city", "valid_from", "valid_to").collect()
    assert sorted(tuple(r) for r in history) == [(1, "Austin", at(0, day=2), at(10, 5)), (1, "Dallas", at(10, 5), None)]


def test_second_run_quarantines_the_reading_beyond_the_horizon_as_late(end_to_end: EndToEnd) -> None:
    quarantine = end_to_end.second["quarantine"].select("topic", "offset", "reason").collect()
    assert sorted(tuple(r) for r in quarantine) == [
        ("bpm", 7, "malformed_json"),
        ("bpm", 9, "late"),
        ("workout", 2, "future"),
    ]


def test_a_third_run_with_nothing_new_changes_nothing(end_to_end: EndToEnd) -> None:
    assert end_to_end.counts_after == end_to_end.counts_before


def test_layers_run_in_order_and_progress_is_persisted(spark: SparkSession, world: Config) -> None:
    bronze = Bronze(spark, world)
    pipeline = Pipeline(spark, world)
    bronze.add([*session_with_a_reading(), bpm(101, at(10, 30), None)], LOAD_TIME)
    shown: list[str] = []
    pipeline.run_once(as_of=date(2025, 6, 1), layers="bronze", progress=shown.append)
    assert table(spark, world, "registered_users_bz").count() == 1
    assert table(spark, world, "heart_rate").count() == 0

    pipeline.run_once(as_of=date(2025, 6, 1), layers=["silver"], progress=shown.append)
    assert sorted(tuple(r) for r in table(spark, world, "workout_bpm").select("time", "heartrate").collect()) == [
        (at(10, 20), 100.0)
    ]
    assert table(spark, world, "workout_bpm_summary").count() == 0

    pipeline.run_once(as_of=date(2025, 6, 1), layers=["gold"], progress=shown.append)
    summary = table(spark, world, "workout_bpm_summary").select("min_bpm", "max_bpm", "num_recordings").collect()
    assert [tuple(r) for r in summary] == [(100.0, 100.0, 1)]

    tables = Tables(world)
    progress = tables.read(spark, tables.ref("_query_progress", layer="ops"))
    rows = {
        r["query_name"]: (r["batches"], r["rows"])
        for r in progress.groupBy("query_name")
        .agg(F.count("*").alias("batches"), F.sum("num_input_rows").alias("rows"))
        .collect()
    }
    # bronze bpm rows: 3 (duplicate included); workout rows: 2; one SQL registration and one visit
    assert rows["silver_bpm"] == (1, 3)
    assert rows["silver_workout"] == (1, 2)
    assert rows["silver_users"] == (1, 1)
    assert rows["silver_gym_logs"] == (1, 1)
    assert set(rows) >= {"derived_workout_bpm", "derived_workout_bpm_summary", "derived_gym_summary"}
    # one line per query: rows read, rows each table gained
    assert any(line.startswith("silver_bpm: read 3 rows; wrote heart_rate +2 (") for line in shown), shown
    assert any(line.startswith("silver_users: read 1 rows; wrote users +1 (") for line in shown), shown
    # a run with nothing new adds progress rows but never duplicates one (key: run_id, batch_id)
    assert progress.count() == progress.select("run_id", "batch_id").distinct().count()
    with pytest.raises(PipelineError, match="unknown layer"):
        pipeline.run_once(layers=["platinum"])


def test_tombstones_older_than_the_retention_are_purged_and_stay_effective(spark: SparkSession, world: Config) -> None:
    bronze = Bronze(spark, world)
    pipeline = Pipeline(spark, world)
    jan1, jan2, mar3 = datetime(2025, 1, 1), datetime(2025, 1, 2), at(12)

    # user 1 is deleted 60 days before the newest change; user 3 only 1 hour before it
    bronze.add(
        [
            profile_change(1, "new", jan1),
            profile_change(1, "delete", jan2),
            profile_change(3, "new", at(10)),
            profile_change(3, "delete", at(11)),
        ],
        LOAD_TIME,
    )
    bronze.add([profile_change(2, "new", mar3)], LOAD_TIME)
    pipeline.run_once(as_of=date(2025, 6, 1))
    tables = Tables(world)
    changes = tables.read(spark, tables.ref("_user_profile_changes", layer="silver"))
    # threshold = 12:00 - 60 min horizon; retention 30 days: only user 1's log is forgotten
    assert sorted({r["user_id"] for r in changes.select("user_id").collect()}) == [2, 3]
    history = table(spark, world, "user_profile_history").select("user_id", "valid_from", "valid_to").collect()
    assert sorted(tuple(r) for r in history) == [(1, jan1, jan2), (2, mar3, None), (3, at(10), at(11))]
    assert [r["user_id"] for r in table(spark, world, "user_profile").collect()] == [2]

    # a stale update of user 1 can no longer be hidden by the purged tombstone: it is late
    bronze.add([profile_change(1, "update", datetime(2025, 1, 1, 12))], LOAD_TIME)
    pipeline.run_once(as_of=date(2025, 6, 1))
    assert [r["user_id"] for r in table(spark, world, "user_profile").collect()] == [2]
    late = table(spark, world, "quarantine").filter("topic = 'user_info'").select("key", "reason").collect()
    assert [tuple(r) for r in late] == [("1", "late")]


def test_a_failed_query_surfaces_as_a_pipeline_error(spark: SparkSession, tmp_path: Path) -> None:
    from fitbit_stream.queries import await_query

    source = str(tmp_path / "source")
    spark.createDataFrame([(1,)], "n int").write.format("delta").save(source)

    def explode(batch: DataFrame, batch_id: int) -> None:
        raise ValueError("poison batch 7")

    query = (
        spark.readStream.format("delta")
        .load(source)
        .writeStream.queryName("doomed")
        .foreachBatch(explode)
        .option("checkpointLocation", str(tmp_path / "cp"))
        .trigger(availableNow=True)
        .start()
    )
    try:
        with pytest.raises(PipelineError, match=r"(?s)query 'doomed' failed: .*poison batch 7") as info:
            await_query(query)
        assert "JVM stacktrace" not in str(info.value)
    finally:
        query.stop()


def test_a_query_that_fails_to_start_is_the_error_even_with_others_ready_beside_it(
    spark: SparkSession, world: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    # two queries of the same round (as the two Kafka queries are): the first cannot start
    from pyspark.sql.streaming import StreamingQuery

    from fitbit_stream.pipeline import _Step

    started: list[str] = []

    def refuse() -> StreamingQuery:
        raise PipelineError("kafka data loss: topic 'bpm' partition 0: offsets 10..14")

    def start_other() -> StreamingQuery:
        started.append("other")
        raise AssertionError("a query started after another failed to start")

    steps = [_Step("first", (), ("heart_rate",), start=refuse), _Step("second", (), ("workouts",), start=start_other)]
    pipeline = Pipeline(spark, world)
    monkeypatch.setattr(pipeline, "_steps", lambda *args: steps)
    with pytest.raises(PipelineError, match="kafka data loss"):
        pipeline.run_once(as_of=date(2025, 6, 1))
    assert started == []


def test_a_drain_runs_independent_queries_side_by_side_and_never_before_their_inputs(
    spark: SparkSession, world: Config
) -> None:
    config = world.model_copy(update={"kafka": world.kafka.model_copy(update={"enabled": True})})
    pipeline = Pipeline(spark, config)
    once = {"availableNow": True}
    assert waves(pipeline._steps(ALL_JOBS, once, None)) == [
        ["bronze_kafka_multiplex", "bronze_sql"],
        ["bronze_landing_multiplex", "silver_users", "silver_gym_logs"],
        ["silver_user_info", "silver_bpm", "silver_workout", "derived_gym_occupancy"],
        ["user_bins+date_lookup+tombstones", "derived_gym_summary", "derived_workout_bpm"],
        ["derived_workout_bpm_summary"],
    ]
    # a layer alone waits for nothing outside it
    assert waves(pipeline._steps(("gold",), once, None)) == [
        ["derived_gym_summary", "derived_gym_occupancy", "derived_workout_bpm_summary"]
    ]


def test_date_lookup_reads_only_the_rows_written_since_it_last_looked(
    spark: SparkSession, world: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    bronze = Bronze(spark, world)
    pipeline = Pipeline(spark, world)
    bronze.add([bpm(101, at(10, 20), 100.0)], LOAD_TIME)
    pipeline.run_once(as_of=date(2025, 6, 1))

    def years() -> list[int]:
        return sorted(r["year"] for r in table(spark, world, "date_lookup").select("year").distinct().collect())

    assert years() == [2025]
    new_year = datetime(2026, 1, 2, 3, 4)
    bronze.add([bpm(101, new_year, 90.0)], LOAD_TIME)
    read, changes = [], []
    tables = pipeline.tables
    real_read, real_changes = tables.read, tables.read_changes
    monkeypatch.setattr(tables, "read", lambda s, ref: read.append(ref.name) or real_read(s, ref))
    monkeypatch.setattr(
        tables, "read_changes", lambda s, ref, **v: changes.append((ref.name, v)) or real_changes(s, ref, **v)
    )
    pipeline.tail.refresh_date_lookup()
    # bronze changed (one append): only its change feed is read, every other input is unchanged
    assert [name for name, _ in changes] == ["kafka_multiplex_bz"]
    assert changes[0][1]["through"] == changes[0][1]["after"] + 1
    assert "kafka_multiplex_bz" not in read
    assert "heart_rate" not in read
    assert years() == [2025, 2026]
    assert table(spark, world, "date_lookup").filter(F.col("date") == new_year.date()).count() == 1


def test_run_continuously_reaches_gold_with_its_own_derived_trigger_and_stops_cleanly(
    spark: SparkSession, world: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = world.model_copy(
        update={
            "streaming": world.streaming.model_copy(
                update={
                    "trigger_interval_seconds": 1.0,
                    "derived_trigger_interval_seconds": 3.0,
                    "query_trigger_seconds": {"silver_workout": 2.0, "derived_gym_summary": 5.0},
                }
            ),
            "sql": world.sql.model_copy(update={"poll_interval_seconds": 1.0}),
        }
    )
    Bronze(spark, config).add(session_with_a_reading(), LOAD_TIME)
    pipeline = Pipeline(spark, config)
    triggers: dict[str, object] = {}
    started = pipeline.queries.start

    def record(spec: QuerySpec, trigger: dict[str, object], **kwargs: object) -> object:
        triggers[spec.name] = trigger
        return started(spec, trigger, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(pipeline.queries, "start", record)
    stop, failures = threading.Event(), []

    def run() -> None:
        try:
            pipeline.run_continuously(stop, as_of=date(2025, 6, 1))
        except Exception as exc:  # surfaced by the assertion below
            failures.append(exc)

    runner = threading.Thread(target=run)
    runner.start()
    try:
        summary = table(spark, config, "workout_bpm_summary")
        deadline = time.monotonic() + 600
        while not failures and time.monotonic() < deadline and summary.count() == 0:
            stop.wait(1.0)  # polls the condition; not a fixed sleep
    finally:
        stop.set()
        runner.join(timeout=300)
    assert failures == []
    assert not runner.is_alive()
    assert spark.streams.active == []
    rows = table(spark, config, "workout_bpm_summary").select("min_bpm", "max_bpm", "num_recordings").collect()
    assert [tuple(r) for r in rows] == [(100.0, 100.0, 1)]
    assert triggers["silver_bpm"] == {"processingTime": "1.0 seconds"}
    assert triggers["derived_workout_bpm"] == {"processingTime": "3.0 seconds"}
    assert triggers["derived_gym_occupancy"] == {"processingTime": "3.0 seconds"}
    # a query's own trigger wins over both
    assert triggers["silver_workout"] == {"processingTime": "2.0 seconds"}
    assert triggers["derived_gym_summary"] == {"processingTime": "5.0 seconds"}
