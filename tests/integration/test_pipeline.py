"""The whole pipeline on a small literal world: bronze rows in, every silver and gold table out.

Two runs: the first drains a session with its readings, profile, registration and visit; the second
brings a reading that arrives after the session was summarised (within the lateness horizon), a
profile update that changes the session's demographics, and a reading beyond the horizon (late).
Gold must be corrected by the second run, and nothing may wait for a later event.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from chispa import assert_df_equality
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from fitbit_stream.config import Config, load_config
from fitbit_stream.errors import PipelineError
from fitbit_stream.io.tables import Tables
from fitbit_stream.pipeline import Pipeline, waves
from fitbit_stream.schemas import KAFKA_MULTIPLEX_BZ
from fitbit_stream.topology import ALL_JOBS, QuerySpec
from fitbit_stream.transforms.dates import week_part

D = datetime(2025, 3, 3)


def at(h: int, m: int = 0, s: int = 0, day: int = 3) -> datetime:
    return datetime(2025, 3, day, h, m, s)


def epoch(ts: datetime) -> int:
    return int(ts.replace(tzinfo=UTC).timestamp())


@pytest.fixture
def world(tmp_path: Path, spark_config: Config) -> Config:
    db = tmp_path / "source.db"
    with sqlite3.connect(db) as conn:
        conn.execute(
            "CREATE TABLE registered_users "
            "(user_id BIGINT, device_id BIGINT, mac_address TEXT, registration_timestamp TIMESTAMP)"
        )
        conn.execute("CREATE TABLE gym_logins (mac_address TEXT, gym BIGINT, login TIMESTAMP, logout TIMESTAMP)")
        conn.execute("INSERT INTO registered_users VALUES (1, 101, 'aa:bb:cc:dd:ee:01', '2025-03-01 08:00:00')")
        conn.execute(
            "INSERT INTO gym_logins VALUES ('aa:bb:cc:dd:ee:01', 1, '2025-03-03 10:00:00', '2025-03-03 11:30:00')"
        )
    (tmp_path / "landing").mkdir()
    return load_config(
        None,
        [
            f"storage.root={tmp_path / 'lake'}",
            f"storage.checkpoint_root={tmp_path / 'chk'}",
            f"jars_dir={spark_config.jars_dir}",
            "kafka.enabled=false",
            "landing.enabled=true",
            f"landing.path={tmp_path / 'landing'}",
            f"sql.url=jdbc:sqlite:{db}",
            "streaming.shuffle_partitions=1",
            # records are written to bronze directly: the topic queries read them into silver
            "streaming.mode=layered",
        ],
    )


class Bronze:
    """Appends literal Kafka records to kafka_multiplex_bz, with increasing offsets per topic."""

    def __init__(self, spark: SparkSession, config: Config) -> None:
        self.spark, self.tables, self.offsets = spark, Tables(config), {"user_info": 0, "bpm": 0, "workout": 0}

    def add(self, records: list[tuple[str, str, object, datetime]]) -> None:
        rows = []
        for topic, key, value, ts in records:
            text = value if isinstance(value, str) else json.dumps(value)
            rows.append((key, text, topic, 0, self.offsets[topic], ts, ts.date(), None, D))
            self.offsets[topic] += 1
        df = self.spark.createDataFrame(rows, KAFKA_MULTIPLEX_BZ).withColumn("week_part", week_part("date"))
        self.tables.append(df, self.tables.ensure(self.spark, "kafka_multiplex_bz"))


def bpm(device: int, ts: datetime, hr: float | None) -> tuple[str, str, object, datetime]:
    return ("bpm", str(device), {"device_id": device, "time": epoch(ts), "heartrate": hr}, ts)


def session_with_a_reading() -> list[tuple[str, str, object, datetime]]:
    """User 1's session 10:10-10:40 and device 101's reading at 10:20, sent twice."""

    def event(action: str, ts: datetime) -> tuple[str, str, object, datetime]:
        payload = {"user_id": 1, "workout_id": 5, "session_id": 1, "timestamp": epoch(ts), "action": action}
        return ("workout", "1", payload, ts)

    reading = bpm(101, at(10, 20), 100.0)
    return [event("start", at(10, 10)), event("stop", at(10, 40)), reading, reading]


def table(spark: SparkSession, config: Config, name: str) -> DataFrame:
    tables = Tables(config)
    return tables.read(spark, tables.ref(name))


PROFILE = {
    "dob": "01/15/1990",
    "sex": "M",
    "gender": "M",
    "first_name": "Ann",
    "last_name": "Lee",
    "address": {"street_address": "1 Main St", "city": "Austin", "state": "TX", "zip": 8701},
}


def test_pipeline_end_to_end_on_literal_rows(spark: SparkSession, world: Config) -> None:
    bronze = Bronze(spark, world)
    pipeline = Pipeline(spark, world)
    bronze.add(
        [
            (
                "user_info",
                "1",
                {"user_id": 1, "update_type": "new", "timestamp": epoch(at(0, day=2)), **PROFILE},
                at(0, day=2),
            ),
            (
                "workout",
                "1",
                {"user_id": 1, "workout_id": 5, "session_id": 1, "timestamp": epoch(at(10, 10)), "action": "start"},
                at(10, 10),
            ),
            (
                "workout",
                "1",
                {"user_id": 1, "workout_id": 5, "session_id": 1, "timestamp": epoch(at(10, 40)), "action": "stop"},
                at(10, 40),
            ),
            # a device clock a day ahead: quarantined as future, and it must not make others late
            (
                "workout",
                "1",
                {
                    "user_id": 1,
                    "workout_id": 6,
                    "session_id": 2,
                    "timestamp": epoch(at(10, 0, day=4)),
                    "action": "start",
                },
                at(10, 0),
            ),
            bpm(101, at(10, 10), 90.0),  # at start_time: excluded from the session
            bpm(101, at(10, 20), 100.0),
            bpm(101, at(10, 20), 55.0),  # duplicate key: the first ingested wins
            bpm(101, at(10, 30), None),  # NULL: invalid
            bpm(101, at(10, 35), 300.0),  # out of range: invalid
            bpm(101, at(10, 40), 120.0),  # at end_time: included
            bpm(101, at(10, 50), 130.0),  # after the session
            ("bpm", "101", "not json", at(10, 51)),
        ]
    )
    pipeline.run_once(as_of=date(2025, 6, 1))

    assert_df_equality(
        table(spark, world, "heart_rate"),
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
        table(spark, world, "completed_workouts"),
        spark.createDataFrame(
            [(1, 5, 1, at(10, 10), at(10, 40))],
            "user_id bigint, workout_id int, session_id int, start_time timestamp, end_time timestamp",
        ),
        ignore_row_order=True,
        ignore_nullable=True,
        ignore_column_order=True,
    )
    quarantine = table(spark, world, "quarantine").select("topic", "offset", "reason").collect()
    assert sorted(tuple(r) for r in quarantine) == [("bpm", 7, "malformed_json"), ("workout", 2, "future")]
    summary_schema = (
        "user_id bigint, workout_id int, session_id int, date date, age string, sex string, gender string, "
        "city string, state string, min_bpm double, avg_bpm double, max_bpm double, num_recordings bigint"
    )
    assert_df_equality(
        table(spark, world, "workout_bpm_summary"),
        spark.createDataFrame(
            [(1, 5, 1, date(2025, 3, 3), "35-45", "M", "M", "Austin", "TX", 100.0, 110.0, 120.0, 2)], summary_schema
        ),
        ignore_row_order=True,
        ignore_nullable=True,
        ignore_column_order=True,
    )
    assert_df_equality(
        table(spark, world, "gym_summary"),
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
        table(spark, world, "gym_occupancy"),
        spark.createDataFrame(
            [(1, at(10), 1, 1.0, 1), (1, at(11), 1, 0.5, 1)],
            "gym bigint, hour timestamp, visitors bigint, avg_occupancy double, peak_occupancy bigint",
        ),
        ignore_row_order=True,
        ignore_nullable=True,
        ignore_column_order=True,
    )
    assert_df_equality(
        table(spark, world, "user_bins"),
        spark.createDataFrame(
            [(1, "35-45", "M", "Austin", "TX")], "user_id bigint, age string, gender string, city string, state string"
        ),
        ignore_row_order=True,
        ignore_nullable=True,
        ignore_column_order=True,
    )
    profile = table(spark, world, "user_profile").select("user_id", "zip", "updated").collect()
    assert [tuple(r) for r in profile] == [(1, "08701", at(0, day=2))]
    years = table(spark, world, "date_lookup").agg(F.count("*"), F.min("date"), F.max("date")).first()
    assert tuple(years) == (365, date(2025, 1, 1), date(2025, 12, 31))

    # --- second run: a reading after the summary, a profile change, a reading beyond the horizon
    bronze.add(
        [
            bpm(101, at(10, 25), 110.0),  # older than the max (10:50) but within the 60 min horizon
            bpm(101, at(9, 0), 70.0),  # more than 60 min before 10:50: late
            (
                "user_info",
                "1",
                {
                    "user_id": 1,
                    "update_type": "update",
                    "timestamp": epoch(at(10, 5)),
                    **PROFILE,
                    "address": {"street_address": "2 Elm St", "city": "Dallas", "state": "TX", "zip": "75201"},
                },
                at(10, 5),
            ),
        ]
    )
    pipeline.run_once(as_of=date(2025, 6, 1))
    assert_df_equality(
        table(spark, world, "workout_bpm_summary"),
        spark.createDataFrame(
            [(1, 5, 1, date(2025, 3, 3), "35-45", "M", "M", "Dallas", "TX", 100.0, 110.0, 120.0, 3)], summary_schema
        ),
        ignore_row_order=True,
        ignore_nullable=True,
        ignore_column_order=True,
    )
    quarantine = table(spark, world, "quarantine").select("topic", "offset", "reason").collect()
    assert sorted(tuple(r) for r in quarantine) == [
        ("bpm", 7, "malformed_json"),
        ("bpm", 9, "late"),
        ("workout", 2, "future"),
    ]
    history = table(spark, world, "user_profile_history").select("user_id", "city", "valid_from", "valid_to").collect()
    assert sorted(tuple(r) for r in history) == [(1, "Austin", at(0, day=2), at(10, 5)), (1, "Dallas", at(10, 5), None)]

    # --- a third run with nothing new changes nothing
    before = {
        name: table(spark, world, name).count() for name in ("heart_rate", "workout_bpm", "quarantine", "gym_summary")
    }
    pipeline.run_once(as_of=date(2025, 6, 1))
    assert {name: table(spark, world, name).count() for name in before} == before


def test_layers_run_in_order_and_progress_is_persisted(spark: SparkSession, world: Config) -> None:
    bronze = Bronze(spark, world)
    pipeline = Pipeline(spark, world)
    bronze.add([*session_with_a_reading(), bpm(101, at(10, 30), None)])
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

    def change(user: int, kind: str, ts: datetime) -> tuple[str, str, object, datetime]:
        profile = {} if kind == "delete" else PROFILE
        return ("user_info", str(user), {"user_id": user, "update_type": kind, "timestamp": epoch(ts), **profile}, ts)

    # user 1 is deleted 60 days before the newest change; user 3 only 1 hour before it
    bronze.add(
        [change(1, "new", jan1), change(1, "delete", jan2), change(3, "new", at(10)), change(3, "delete", at(11))]
    )
    bronze.add([change(2, "new", mar3)])
    pipeline.run_once(as_of=date(2025, 6, 1))
    tables = Tables(world)
    changes = tables.read(spark, tables.ref("_user_profile_changes", layer="silver"))
    # threshold = 12:00 - 60 min horizon; retention 30 days: only user 1's log is forgotten
    assert sorted({r["user_id"] for r in changes.select("user_id").collect()}) == [2, 3]
    history = table(spark, world, "user_profile_history").select("user_id", "valid_from", "valid_to").collect()
    assert sorted(tuple(r) for r in history) == [(1, jan1, jan2), (2, mar3, None), (3, at(10), at(11))]
    assert [r["user_id"] for r in table(spark, world, "user_profile").collect()] == [2]

    # a stale update of user 1 can no longer be hidden by the purged tombstone: it is late
    bronze.add([change(1, "update", datetime(2025, 1, 1, 12))])
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
        ["derived_workout_bpm", "user_bins+date_lookup+tombstones", "derived_gym_summary"],
        ["derived_workout_bpm_summary"],
    ]
    # a layer alone waits for nothing outside it
    assert waves(pipeline._steps(("gold",), once, None)) == [
        ["derived_workout_bpm_summary", "derived_gym_summary", "derived_gym_occupancy"]
    ]


def test_date_lookup_reads_only_the_rows_written_since_it_last_looked(
    spark: SparkSession, world: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    bronze = Bronze(spark, world)
    pipeline = Pipeline(spark, world)
    bronze.add([bpm(101, at(10, 20), 100.0)])
    pipeline.run_once(as_of=date(2025, 6, 1))

    def years() -> list[int]:
        return sorted(r["year"] for r in table(spark, world, "date_lookup").select("year").distinct().collect())

    assert years() == [2025]
    new_year = datetime(2026, 1, 2, 3, 4)
    bronze.add([bpm(101, new_year, 90.0)])
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
                update={"trigger_interval_seconds": 1.0, "derived_trigger_interval_seconds": 3.0}
            ),
            "sql": world.sql.model_copy(update={"poll_interval_seconds": 1.0}),
        }
    )
    Bronze(spark, config).add(session_with_a_reading())
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
