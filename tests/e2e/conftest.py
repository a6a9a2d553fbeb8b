"""The real local platform for e2e tests: one Kafka broker and one PostgreSQL server per session, and
a Spark standalone cluster (a master and two one-core workers) for the tests that run on it."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from fitbit_stream.platform.cluster import SparkCluster
from fitbit_stream.platform.kafka import KafkaBroker
from fitbit_stream.platform.postgres import PostgresServer

ROOT = Path(__file__).resolve().parents[2]


def free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    port, controller = free_ports(2)
    broker = KafkaBroker(
        tmp_path_factory.mktemp("kafka"),
        port=port,
        controller_port=controller,
        jars_dir=ROOT / ".cache" / "jars" / "kafka",
    )
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    (port,) = free_ports(1)
    server = PostgresServer(tmp_path_factory.mktemp("postgres"), port=port)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")  # its daemons stop once the module that uses it is done
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SparkCluster]:
    port, web_port = free_ports(2)
    spark_cluster = SparkCluster(
        tmp_path_factory.mktemp("spark-cluster"), workers=2, cores=1, memory_mb=1536, port=port, web_port=web_port
    )
    spark_cluster.start()
    try:
        yield spark_cluster
    finally:
        spark_cluster.stop()
