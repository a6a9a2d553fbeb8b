"""The local platform's configuration logic, without starting a broker or a database server."""

from __future__ import annotations

from pathlib import Path

import pytest

from fitbit_stream.config import load_config
from fitbit_stream.errors import PlatformError
from fitbit_stream.platform.kafka import KafkaBroker
from fitbit_stream.platform.postgres import PostgresServer


def test_broker_from_config_derives_address_and_state_dir(tmp_path: Path) -> None:
    config = load_config(
        None,
        [
            "kafka.bootstrap_servers=localhost:19092,localhost:19094",
            f"platform_dir={tmp_path / 'platform'}",
            f"jars_dir={tmp_path / 'jars'}",
            "kafka.partitions=2",
        ],
    )
    broker = KafkaBroker.from_config(config)
    assert (broker.host, broker.port, broker.controller_port) == ("127.0.0.1", 19092, 19093)
    assert broker.bootstrap_servers == "127.0.0.1:19092"
    assert broker.state_dir == tmp_path / "platform" / "kafka"
    assert broker.jars_dir == tmp_path / "jars" / "kafka"
    assert broker.partitions == 2


def test_broker_relative_state_dir_is_resolved_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    broker = KafkaBroker.from_config(load_config(None, ["platform_dir=data/platform"]))
    assert broker.state_dir == tmp_path / "data" / "platform" / "kafka"


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "kafka.example.com", ""])
def test_broker_refuses_non_loopback_hosts(tmp_path: Path, host: str) -> None:
    with pytest.raises(PlatformError, match="loopback only"):
        KafkaBroker(tmp_path, host=host)


def test_broker_refuses_one_port_for_both_listeners(tmp_path: Path) -> None:
    with pytest.raises(PlatformError, match="must differ, both are 9092"):
        KafkaBroker(tmp_path, port=9092, controller_port=9092)


def test_stale_pid_files_are_cleaned(tmp_path: Path) -> None:
    broker = KafkaBroker(tmp_path / "kafka", port=29092, controller_port=29093)
    broker.state_dir.mkdir()
    # A live process that is not this broker (pid reuse after a crash) must not count as running.
    broker.pid_file.write_text("1\n", encoding="ascii")
    status = broker.status()
    assert (status.running, status.pid, status.ready, status.topics) == (False, None, False, ())
    assert not broker.pid_file.exists()
    broker.pid_file.write_text("not a pid\n", encoding="ascii")
    assert broker.stop() is False
    assert not broker.pid_file.exists()


def test_postgres_addresses(tmp_path: Path) -> None:
    server = PostgresServer(tmp_path / "pg", port=25432)
    assert server.jdbc_url("fitbit") == "jdbc:postgresql://127.0.0.1:25432/fitbit"
    assert server.conninfo("fitbit") == "host=127.0.0.1 port=25432 dbname=fitbit user=postgres"
    assert server.conninfo("it's mine") == r"host=127.0.0.1 port=25432 dbname='it\'s mine' user=postgres"
    assert not server.status().running


@pytest.mark.parametrize(
    ("url", "port"),
    [
        ("jdbc:postgresql://127.0.0.1:55433/fitbit", 55433),
        ("jdbc:postgresql://localhost/fitbit", 5432),
        ("jdbc:postgresql://db.example.com:6543/fitbit", 55432),  # not ours to start: default
        ("jdbc:sqlite:data/source.db", 55432),
    ],
)
def test_postgres_from_config_takes_a_local_port_from_the_sql_url(tmp_path: Path, url: str, port: int) -> None:
    config = load_config(None, [f"sql.url={url}", f"platform_dir={tmp_path}"])
    server = PostgresServer.from_config(config)
    assert (server.port, server.state_dir) == (port, tmp_path / "postgres")
