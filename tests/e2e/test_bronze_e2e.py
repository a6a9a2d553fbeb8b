"""Issue 2's bar: generate -> Kafka + PostgreSQL -> `run --once` -> bronze holds every record exactly once.

The oracle for Kafka is the broker itself: the delivery report of every produced record gives its
(topic, partition, offset), zipped with the key and value the generator sent. The oracle for the SQL
tables is the source database read directly (psycopg) after each emission: bronze must hold every
row version that was there when a run polled it, and nothing else.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from pyspark.sql import SparkSession

from fitbit_stream.config import Config, load_config
from fitbit_stream.generator import GeneratorConfig, KafkaEmission, KafkaSink, SqlSink, build_world, emit
from fitbit_stream.io.tables import Tables
from fitbit_stream.pipeline import Pipeline
from fitbit_stream.platform.kafka import KafkaBroker
from fitbit_stream.platform.postgres import PostgresServer

pytestmark = pytest.mark.e2e

START = datetime(2025, 3, 3, tzinfo=UTC)
MID = START + timedelta(hours=13)


def _snapshot(conninfo: str) -> tuple[set[tuple[object, ...]], set[tuple[object, ...]]]:
    def naive(ts: datetime | None) -> datetime | None:
        return None if ts is None else ts.astimezone(UTC).replace(tzinfo=None)

    with psycopg.connect(conninfo) as conn:
        users: set[tuple[object, ...]] = {
            (r[0], r[1], r[2], naive(r[3]))
            for r in conn.execute(
                "SELECT user_id, device_id, mac_address, registration_timestamp FROM registered_users"
            ).fetchall()
        }
        visits: set[tuple[object, ...]] = {
            (r[0], r[1], naive(r[2]), naive(r[3]))
            for r in conn.execute("SELECT mac_address, gym, login, logout FROM gym_logins").fetchall()
        }
    return users, visits


def test_bronze_lands_every_kafka_record_and_sql_row_version_exactly_once(
    spark: SparkSession,
    spark_config: Config,
    kafka_broker: KafkaBroker,
    postgres: PostgresServer,
    tmp_path: Path,
) -> None:
    suffix = uuid.uuid4().hex[:8]
    database = f"source_{suffix}"
    postgres.create_database(database)
    config = load_config(
        None,
        [
            f"storage.root={tmp_path / 'lake'}",
            f"storage.checkpoint_root={tmp_path / 'checkpoints'}",
            f"jars_dir={spark_config.jars_dir}",
            f"kafka.bootstrap_servers={kafka_broker.bootstrap_servers}",
            f"kafka.topics.user_info=user_info_{suffix}",
            f"kafka.topics.bpm=bpm_{suffix}",
            f"kafka.topics.workout=workout_{suffix}",
            f"sql.url={postgres.jdbc_url(database)}",
            "sql.user=postgres",
        ],
    )
    kafka_broker.ensure_topics(config.kafka.topics.names(), 3)
    # 14.4 hours: 15k records (a whole day is 39k); two gym visits are open at MID and close after it
    world = build_world(GeneratorConfig(seed=11, users=3, days=0.6, start=START, topics=config.kafka.topics))
    pipeline = Pipeline(spark, config)

    produced: list[tuple[object, ...]] = []
    observed_users: set[tuple[object, ...]] = set()
    observed_visits: set[tuple[object, ...]] = set()
    with psycopg.connect(postgres.conninfo(database), autocommit=True) as conn:
        for since, until in ((None, MID), (MID, None)):
            kafka_sink = KafkaSink(kafka_broker.bootstrap_servers)
            result = emit(world, [kafka_sink, SqlSink(conn, dialect="postgresql")], since=since, until=until)
            sent = [
                e
                for e in world.emissions(
                    since_us=None if since is None else int(since.timestamp() * 1e6),
                    until_us=None if until is None else int(until.timestamp() * 1e6),
                )
                if isinstance(e, KafkaEmission)
            ]
            assert len(sent) == len(result.deliveries) > 0
            produced += [
                (e.key, e.value, d.topic, d.partition, d.offset) for e, d in zip(sent, result.deliveries, strict=True)
            ]
            users, visits = _snapshot(postgres.conninfo(database))
            observed_users |= users
            observed_visits |= visits
            pipeline.run_once(layers="bronze")

    tables = Tables(config)

    def rows(name: str, columns: list[str]) -> list[tuple[object, ...]]:
        return [tuple(r) for r in tables.read(spark, tables.ref(name)).select(*columns).collect()]

    bronze = rows("kafka_multiplex_bz", ["key", "value", "topic", "partition", "offset"])
    assert len(bronze) == len(produced)  # exactly once: no duplicates
    assert sorted(bronze, key=repr) == sorted(produced, key=repr)

    # a third run with nothing new adds nothing anywhere
    pipeline.run_once(layers="bronze")
    assert len(rows("kafka_multiplex_bz", ["offset"])) == len(produced)

    bronze_users = rows("registered_users_bz", ["user_id", "device_id", "mac_address", "registration_timestamp"])
    bronze_visits = rows("gym_logins_bz", ["mac_address", "gym", "login", "logout"])
    assert sorted(bronze_users, key=repr) == sorted(observed_users, key=repr)
    assert sorted(bronze_visits, key=repr) == sorted(observed_visits, key=repr)
    assert len(bronze_visits) == len(set(bronze_visits))
    # at least one visit was open at the first run and its logout arrived afterwards: both versions
    reopened = {(m, g, login) for m, g, login, logout in bronze_visits if logout is None} & {
        (m, g, login) for m, g, login, logout in bronze_visits if logout is not None
    }
    assert reopened, "the world should have a visit spanning the first run"
    # bronze date/week_part derive from the Kafka record timestamp (2025-03-03 is a Monday: US week 10)
    calendar = tables.read(spark, tables.ref("kafka_multiplex_bz")).select("date", "week_part").distinct().collect()
    assert {(r["date"].isoformat(), r["week_part"]) for r in calendar} >= {("2025-03-03", "2025-10")}
