"""The local platform for real: a KRaft broker and a PostgreSQL server in temporary state directories,
on free ports (so a broker started by `make platform-up` on 9092 is never touched), read back
through the clients the pipeline uses (confluent-kafka, psycopg, Spark's Kafka and JDBC sources)."""

from __future__ import annotations

import json
import socket
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from chispa import assert_df_equality
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import IntegerType, LongType, StringType, StructField, StructType

from fitbit_stream.errors import PlatformError
from fitbit_stream.generator.murmur2 import partition_for_key
from fitbit_stream.platform.kafka import KafkaBroker
from fitbit_stream.platform.postgres import PostgresServer

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
PARTITIONS = 3


def _free_ports(count: int) -> list[int]:
    # All sockets stay open until every port is chosen, so the ports differ.
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[KafkaBroker]:
    port, controller_port = _free_ports(2)
    kafka = KafkaBroker(
        tmp_path / "platform" / "kafka",
        port=port,
        controller_port=controller_port,
        jars_dir=ROOT / ".cache" / "jars" / "kafka",
        partitions=PARTITIONS,
    )
    try:
        yield kafka
    finally:
        kafka.stop()


@pytest.fixture
def postgres(tmp_path: Path) -> Iterator[PostgresServer]:
    (port,) = _free_ports(1)
    server = PostgresServer(tmp_path / "platform" / "postgres", port=port)
    try:
        yield server
    finally:
        server.stop()


# Three users' records with event times in 2023: retention must never treat them as expired.
# The keys hash (murmur2) to partitions 0, 1 and 2.
RECORDS = [
    ("1001", {"user_id": 1001, "update_type": "new"}, datetime(2023, 1, 2, 8, 30, tzinfo=UTC)),
    ("1003", {"user_id": 1003, "update_type": "update"}, datetime(2023, 6, 15, 12, 0, 1, tzinfo=UTC)),
    ("1005", {"user_id": 1005, "update_type": "delete"}, datetime(2023, 12, 31, 23, 59, 59, tzinfo=UTC)),
]
RECORDS_MS = [(key, json.dumps(value), int(ts.timestamp() * 1000)) for key, value, ts in RECORDS]


def _produce(bootstrap: str, topic: str) -> dict[str, int]:
    from confluent_kafka import KafkaError, Message, Producer

    # murmur2_random is the Java clients' partitioner: a key lands in the same partition whichever
    # client wrote it (librdkafka's default, consistent_random, would differ).
    producer = Producer({"bootstrap.servers": bootstrap, "partitioner": "murmur2_random", "acks": "all"})
    delivered: dict[str, int] = {}
    errors: list[str] = []

    def on_delivery(err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            errors.append(str(err))
        else:
            delivered[msg.key().decode()] = msg.partition()

    for key, value, ts_ms in RECORDS_MS:
        producer.produce(topic, key=key, value=value, timestamp=ts_ms, on_delivery=on_delivery)
    assert producer.flush(30) == 0
    assert errors == []
    return delivered


def _consume(bootstrap: str, topic: str, expected: int) -> list[tuple[str, str, int, int]]:
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"test-platform-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
        }
    )
    rows: list[tuple[str, str, int, int]] = []
    try:
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
        deadline = time.monotonic() + 30
        while len(rows) < expected and time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=10, timeout=1.0):
                assert msg.error() is None, msg.error()
                _, ts_ms = msg.timestamp()
                rows.append((msg.key().decode(), msg.value().decode(), ts_ms, msg.partition()))
    finally:
        consumer.close()
    return sorted(rows)


def _read_with_spark(spark: SparkSession, bootstrap: str, topic: str) -> DataFrame:
    return (
        spark.read.format("kafka")
        .option("kafka.bootstrap.servers", bootstrap)
        .option("subscribe", topic)
        .option("startingOffsets", "earliest")
        .option("endingOffsets", "latest")
        .load()
        .select(
            F.col("key").cast("string").alias("key"),
            F.col("value").cast("string").alias("value"),
            F.unix_millis("timestamp").alias("ts_ms"),
            "partition",
            "offset",
        )
    )


def test_kafka_broker_lifecycle(broker: KafkaBroker, spark: SparkSession) -> None:
    topic = "user_info"
    assert not broker.status().running

    first = broker.start(timeout=90)
    assert (first.running, first.ready, first.started) == (True, True, True)
    assert first.bootstrap_servers == f"127.0.0.1:{broker.port}" == broker.bootstrap_servers
    again = broker.start()
    assert (again.pid, again.started, again.running) == (first.pid, False, True)
    props = broker.properties_file.read_text(encoding="latin-1").splitlines()
    assert "log.retention.ms=-1" in props
    assert f"listeners=PLAINTEXT://127.0.0.1:{broker.port},CONTROLLER://127.0.0.1:{broker.controller_port}" in props

    assert broker.ensure_topics([topic], PARTITIONS) == [topic]
    assert broker.ensure_topics([topic], PARTITIONS) == []  # idempotent
    _assert_topic_keeps_records_forever(broker.bootstrap_servers, topic)

    delivered = _produce(broker.bootstrap_servers, topic)
    expected_partition = {key: partition_for_key(key, PARTITIONS) for key, _, _ in RECORDS_MS}
    assert delivered == expected_partition

    consumed = _consume(broker.bootstrap_servers, topic, expected=len(RECORDS_MS))
    assert consumed == [(key, value, ts, expected_partition[key]) for key, value, ts in RECORDS_MS]

    schema = StructType(
        [
            StructField("key", StringType()),
            StructField("value", StringType()),
            StructField("ts_ms", LongType()),
            StructField("partition", IntegerType()),
            StructField("offset", LongType()),
        ]
    )
    # One record per key, each first in its partition (the three keys hash to distinct partitions).
    assert sorted(expected_partition.values()) == list(range(PARTITIONS))
    expected = spark.createDataFrame(
        [(key, value, ts, expected_partition[key], 0) for key, value, ts in RECORDS_MS], schema
    )
    assert_df_equality(
        _read_with_spark(spark, broker.bootstrap_servers, topic),
        expected,
        ignore_row_order=True,
        ignore_nullable=True,
    )

    running = broker.status()
    assert (running.running, running.ready, running.pid, running.topics) == (True, True, first.pid, (topic,))

    # A restart (what the fault tests do mid-run) keeps topics and records.
    restarted = broker.restart(timeout=90)
    assert (restarted.running, restarted.started) == (True, True)
    assert restarted.pid != first.pid
    assert restarted.topics == (topic,)
    assert _consume(broker.bootstrap_servers, topic, expected=len(RECORDS_MS)) == consumed

    assert broker.delete_topics([topic, "never_created"]) == [topic]
    assert broker.status().topics == ()

    assert broker.stop() is True
    stopped = broker.status()
    assert (stopped.running, stopped.pid, stopped.topics) == (False, None, ())
    assert not broker.pid_file.exists()
    assert broker.stop() is False  # stopping a stopped broker is fine
    assert "Kafka Server started" in broker.log_file.read_text(encoding="utf-8")


def _assert_topic_keeps_records_forever(bootstrap: str, topic: str) -> None:
    from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType

    resource = ConfigResource(ResourceType.TOPIC, topic)
    admin = AdminClient({"bootstrap.servers": bootstrap})  # must outlive the future
    configs = admin.describe_configs([resource])[resource].result(30)
    assert (configs["retention.ms"].value, configs["retention.bytes"].value) == ("-1", "-1")


def test_kafka_start_refuses_a_busy_port(broker: KafkaBroker) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", broker.port))
        busy.listen()
        with pytest.raises(PlatformError, match=rf"127\.0\.0\.1:{broker.port} is already in use"):
            broker.start(timeout=30)
    assert not broker.status().running


def test_postgres_lifecycle(postgres: PostgresServer, spark: SparkSession) -> None:
    import psycopg

    assert not postgres.status().running
    first = postgres.start(timeout=60)
    assert (first.running, first.started, first.port) == (True, True, postgres.port)
    again = postgres.start()
    assert (again.pid, again.started) == (first.pid, False)

    assert postgres.create_database("fitbit_e2e") is True
    assert postgres.create_database("fitbit_e2e") is False  # idempotent

    with psycopg.connect(postgres.conninfo("fitbit_e2e")) as conn:
        conn.execute(
            "CREATE TABLE registered_users (user_id BIGINT PRIMARY KEY, mac_address VARCHAR(17), "
            "registration_timestamp TIMESTAMP)"
        )
        conn.execute(
            "INSERT INTO registered_users VALUES (14, 'aa:bb:cc:dd:ee:01', '2023-01-02 08:30:00'), (15, NULL, NULL)"
        )

    actual = (
        spark.read.format("jdbc")
        .option("url", postgres.jdbc_url("fitbit_e2e"))
        .option("driver", "org.postgresql.Driver")
        .option("user", postgres.user)
        .option("dbtable", "registered_users")
        .load()
        .select("user_id", "mac_address", F.unix_seconds("registration_timestamp").alias("registered_s"))
    )
    expected = spark.createDataFrame(
        [(14, "aa:bb:cc:dd:ee:01", int(datetime(2023, 1, 2, 8, 30, tzinfo=UTC).timestamp())), (15, None, None)],
        "user_id BIGINT, mac_address STRING, registered_s BIGINT",
    )
    # ignore_metadata: the JDBC source annotates columns with their database types.
    assert_df_equality(actual, expected, ignore_row_order=True, ignore_nullable=True, ignore_metadata=True)

    assert postgres.stop() is True
    assert not postgres.status().running
    assert postgres.stop() is False
