"""The source checks made before any query starts (no Spark: sockets, files and SQLite only)."""

from __future__ import annotations

import socket
import sqlite3
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from fitbit_stream.config import Config, load_config
from fitbit_stream.errors import PreflightError, SourceError
from fitbit_stream.io.preflight import (
    Endpoint,
    check_jdbc,
    check_kafka,
    check_landing,
    check_sources,
    jdbc_endpoints,
    sqlite_path,
)


def closed_port() -> int:
    """A loopback port nothing listens on (bound once to get a free number, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@pytest.fixture
def listening() -> Iterator[int]:
    """A real TCP server on loopback that accepts connections and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    try:
        yield server.getsockname()[1]
    finally:
        server.close()


def source_db(path: Path, tables: tuple[str, ...] = ("registered_users", "gym_logins")) -> Path:
    with sqlite3.connect(path) as db:
        for table in tables:
            db.execute(f"CREATE TABLE {table} (x INTEGER)")
    return path


def config(*overrides: str) -> Config:
    return load_config(None, list(overrides))


class FakeAdmin:
    """What check_kafka asks of confluent-kafka's AdminClient: list_topics."""

    topics: dict[str, Any] = {}  # noqa: RUF012 - set per test
    conf: dict[str, Any] = {}  # noqa: RUF012

    def __init__(self, conf: dict[str, Any]) -> None:
        FakeAdmin.conf = conf

    def list_topics(self, timeout: float) -> SimpleNamespace:
        return SimpleNamespace(topics=self.topics)


@pytest.fixture
def fake_admin(monkeypatch: pytest.MonkeyPatch) -> type[FakeAdmin]:
    import confluent_kafka.admin

    monkeypatch.setattr(confluent_kafka.admin, "AdminClient", FakeAdmin)
    FakeAdmin.topics = {}
    return FakeAdmin


# --- Kafka ---------------------------------------------------------------------------------------


def test_kafka_on_a_closed_port_is_one_line_naming_the_server() -> None:
    port = closed_port()
    started = time.monotonic()
    with pytest.raises(PreflightError) as info:
        check_kafka(config(f"kafka.bootstrap_servers=127.0.0.1:{port}").kafka)
    assert str(info.value) == (
        f"kafka.bootstrap_servers=127.0.0.1:{port}: cannot connect (connection refused); start the local broker "
        "(fitbit-stream platform start --config conf/local.yaml), or set kafka.bootstrap_servers to a reachable "
        "broker's host:port"
    )
    assert time.monotonic() - started < 5
    assert isinstance(info.value, SourceError)


def test_kafka_names_each_unreachable_server_of_a_list() -> None:
    port = closed_port()
    servers = f"nohost.invalid:9092,127.0.0.1:{port}"
    with pytest.raises(PreflightError) as info:
        check_kafka(config(f"kafka.bootstrap_servers={servers}").kafka)
    assert str(info.value) == (
        f"kafka.bootstrap_servers={servers}: cannot connect (nohost.invalid:9092: host name 'nohost.invalid' does "
        f"not resolve; 127.0.0.1:{port}: connection refused); check that the broker runs and the address, or set "
        "kafka.bootstrap_servers to a reachable broker's host:port"
    )


def test_kafka_listening_server_with_every_topic_passes(listening: int, fake_admin: type[FakeAdmin]) -> None:
    fake_admin.topics = {name: SimpleNamespace(error=None) for name in ("user_info", "bpm", "workout", "other")}
    kafka = config(
        f"kafka.bootstrap_servers=127.0.0.1:{listening}", 'kafka.options."security.protocol"=PLAINTEXT'
    ).kafka
    assert check_kafka(kafka) == f"kafka 127.0.0.1:{listening}: topics user_info, bpm, workout"
    # the settings librdkafka shares with the Java consumer go along
    assert fake_admin.conf["bootstrap.servers"] == f"127.0.0.1:{listening}"
    assert fake_admin.conf["security.protocol"] == "PLAINTEXT"


def test_kafka_missing_topics_are_named_with_their_keys(listening: int, fake_admin: type[FakeAdmin]) -> None:
    fake_admin.topics = {"bpm": SimpleNamespace(error=None), "workout": SimpleNamespace(error="UNKNOWN_TOPIC")}
    with pytest.raises(PreflightError) as info:
        check_kafka(config(f"kafka.bootstrap_servers=127.0.0.1:{listening}").kafka)
    assert str(info.value) == (
        f"kafka.topics.user_info=user_info, kafka.topics.workout=workout: topics do not exist on "
        f"127.0.0.1:{listening}; create them (fitbit-stream platform start creates the configured topics on the "
        "local broker), or set kafka.topics.* to existing topics"
    )


def test_kafka_server_that_is_not_a_broker(listening: int) -> None:
    started = time.monotonic()
    with pytest.raises(PreflightError) as info:
        check_kafka(config(f"kafka.bootstrap_servers=127.0.0.1:{listening}").kafka, metadata_timeout=1.0)
    message = str(info.value)
    assert message.startswith(
        f"kafka.bootstrap_servers=127.0.0.1:{listening}: a connection was accepted but no broker answered a "
        "metadata request within 1s ("
    )
    assert message.endswith(
        "); check that it is a Kafka broker and that kafka.options (security.protocol, sasl.*) or "
        "kafka.event_hubs match its listener"
    )
    assert "\n" not in message
    assert time.monotonic() - started < 10


def test_kafka_without_confluent_kafka_checks_the_connection(listening: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "confluent_kafka.admin", None)  # the import fails
    kafka = config(f"kafka.bootstrap_servers=127.0.0.1:{listening}").kafka
    assert check_kafka(kafka) == (
        f"kafka 127.0.0.1:{listening} reachable (topics not checked: confluent-kafka is not installed)"
    )


# --- JDBC ----------------------------------------------------------------------------------------


def test_sqlite_in_a_missing_directory() -> None:
    with pytest.raises(PreflightError) as info:
        check_jdbc(config("sql.url=jdbc:sqlite:/nonexistent/dir/x.db").sql)
    assert str(info.value) == (
        "sql.url=jdbc:sqlite:/nonexistent/dir/x.db: directory '/nonexistent/dir' does not exist; "
        "set sql.url=jdbc:sqlite:PATH to the source database file"
    )


def test_sqlite_missing_file(tmp_path: Path) -> None:
    url = f"jdbc:sqlite:{tmp_path}/x.db"
    with pytest.raises(PreflightError) as info:
        check_jdbc(config(f"sql.url={url}").sql)
    assert str(info.value) == (
        f"sql.url={url}: database file '{tmp_path}/x.db' does not exist; set sql.url=jdbc:sqlite:PATH to the "
        "source database, or run `fitbit-stream generate` to create the local one"
    )
    assert not (tmp_path / "x.db").exists()  # the check never creates the file


def test_sqlite_without_the_source_tables(tmp_path: Path) -> None:
    db = source_db(tmp_path / "x.db", ("registered_users",))
    with pytest.raises(PreflightError) as info:
        check_jdbc(config(f"sql.url=jdbc:sqlite:{db}").sql)
    assert str(info.value) == (
        f"sql.gym_logins_table=gym_logins: no such table in '{db}' (sql.url=jdbc:sqlite:{db}); run "
        "`fitbit-stream generate` to fill the local source, or set the table names"
    )


def test_sqlite_file_that_is_not_a_database(tmp_path: Path) -> None:
    junk = tmp_path / "x.db"
    junk.write_text("not a database" * 100)
    with pytest.raises(PreflightError, match=r"cannot be read as a SQLite database \(file is not a database\)"):
        check_jdbc(config(f"sql.url=jdbc:sqlite:{junk}").sql)


def test_sqlite_with_the_source_tables(tmp_path: Path) -> None:
    db = source_db(tmp_path / "x.db")
    assert check_jdbc(config(f"sql.url=jdbc:sqlite:{db}").sql) == (
        f"sql jdbc:sqlite:{db}: tables registered_users, gym_logins"
    )


def test_database_host_on_a_closed_port() -> None:
    port = closed_port()
    url = f"jdbc:postgresql://127.0.0.1:{port}/fitbit"
    with pytest.raises(PreflightError) as info:
        check_jdbc(config(f"sql.url={url}").sql)
    assert str(info.value) == (
        f"sql.url={url}: cannot connect (127.0.0.1:{port}: connection refused); start the database "
        "(fitbit-stream platform start --postgres for the local PostgreSQL), or fix sql.url"
    )


def test_database_host_that_listens(listening: int) -> None:
    url = f"jdbc:postgresql://127.0.0.1:{listening}/fitbit"
    assert check_jdbc(config(f"sql.url={url}", "sql.user=postgres").sql) == (
        f"sql {url}: 127.0.0.1:{listening} accepts connections"
    )


def test_unknown_jdbc_scheme() -> None:
    with pytest.raises(PreflightError) as info:
        check_jdbc(config("sql.url=jdbc:mysql://db:3306/fitbit").sql)
    assert str(info.value) == (
        "sql.url=jdbc:mysql://db:3306/fitbit: no JDBC driver for 'mysql' (supported: jdbc:sqlite:, "
        "jdbc:postgresql:, jdbc:sqlserver:); use one of them, or set sql.enabled=false"
    )


def test_password_variable_not_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FITBIT_TEST_PREFLIGHT_PW", raising=False)
    sql = config(
        "sql.url=jdbc:postgresql://127.0.0.1:1/fitbit", "sql.user=u", "sql.password_env=FITBIT_TEST_PREFLIGHT_PW"
    ).sql
    with pytest.raises(PreflightError) as info:
        check_jdbc(sql)
    assert str(info.value) == (
        "sql.password_env=FITBIT_TEST_PREFLIGHT_PW: the environment variable is not set; export "
        "FITBIT_TEST_PREFLIGHT_PW with the database password"
    )


def test_sql_server_needs_user_and_password() -> None:
    url = "jdbc:sqlserver://db.example.com:1433;database=fitbit;encrypt=true"
    with pytest.raises(PreflightError) as info:
        check_jdbc(config(f"sql.url={url}").sql)
    assert str(info.value) == (
        f"sql.url={url}: SQL Server sign-in with sql.auth=password needs sql.user and sql.password_env; set them "
        "(the password through an environment variable), or use sql.auth=azure_ad"
    )


def test_password_without_user(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FITBIT_TEST_PREFLIGHT_PW", "x")
    url = "jdbc:postgresql://127.0.0.1:1/fitbit"
    with pytest.raises(PreflightError) as info:
        check_jdbc(config(f"sql.url={url}", "sql.password_env=FITBIT_TEST_PREFLIGHT_PW").sql)
    assert (
        str(info.value) == f"sql.user is not set but a password is (sql.url={url}); set sql.user to the database user"
    )


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("jdbc:postgresql://db:5433/fitbit", [Endpoint("db", 5433)]),
        ("jdbc:postgresql://db/fitbit?ssl=true", [Endpoint("db", 5432)]),
        ("jdbc:postgresql://a:1,b/fitbit", [Endpoint("a", 1), Endpoint("b", 5432)]),
        ("jdbc:postgresql://[::1]:6432/fitbit", [Endpoint("::1", 6432)]),
        ("jdbc:postgresql:fitbit", [Endpoint("localhost", 5432)]),
        ("jdbc:sqlserver://sql.example.com:1444;database=f", [Endpoint("sql.example.com", 1444)]),
        ("jdbc:sqlserver://sql.example.com;database=f", [Endpoint("sql.example.com", 1433)]),
        ("jdbc:sqlserver://;serverName=s;portNumber=1500", [Endpoint("s", 1500)]),
        ("jdbc:sqlserver://s\\inst;database=f", []),
    ],
)
def test_jdbc_endpoints(url: str, expected: list[Endpoint]) -> None:
    assert jdbc_endpoints(url) == expected


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("jdbc:sqlite:data/source.db", "data/source.db"),
        ("jdbc:sqlite:file:/tmp/x.db?mode=ro", "/tmp/x.db"),
        ("jdbc:sqlite::memory:", None),
        ("jdbc:sqlite:", None),
    ],
)
def test_sqlite_path(url: str, expected: str | None) -> None:
    assert sqlite_path(url) == expected


# --- landing files and all sources ---------------------------------------------------------------


def test_missing_landing_path(tmp_path: Path) -> None:
    path = tmp_path / "landing"
    with pytest.raises(PreflightError) as info:
        check_landing(config("landing.enabled=true", f"landing.path={path}").landing)
    assert str(info.value) == (
        f"landing.path={path}: the directory does not exist; create it or point landing.path at the landing "
        "files, or set landing.enabled=false"
    )
    path.mkdir()
    assert check_landing(config("landing.enabled=true", f"landing.path={path}").landing) == f"landing {path}"


def test_every_failing_source_is_named_on_one_line(tmp_path: Path) -> None:
    port = closed_port()
    landing = tmp_path / "landing"
    with pytest.raises(PreflightError) as info:
        check_sources(
            config(
                f"kafka.bootstrap_servers=127.0.0.1:{port}",
                "landing.enabled=true",
                f"landing.path={landing}",
                "sql.url=jdbc:sqlite:/nonexistent/dir/x.db",
            )
        )
    message = str(info.value)
    assert "\n" not in message
    parts = message.split(" | ")
    assert [p.split(":", 1)[0] for p in parts] == [
        "kafka.bootstrap_servers=127.0.0.1",
        f"landing.path={landing}",
        "sql.url=jdbc",
    ]


def test_only_enabled_sources_are_checked(tmp_path: Path) -> None:
    db = source_db(tmp_path / "x.db")
    assert check_sources(config("kafka.enabled=false", f"sql.url=jdbc:sqlite:{db}")) == [
        f"sql jdbc:sqlite:{db}: tables registered_users, gym_logins"
    ]


def test_librdkafka_signs_in_with_the_username_and_password_of_the_jaas_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from fitbit_stream.config import load_config
    from fitbit_stream.io.preflight import librdkafka_conf

    jaas = 'org.apache.kafka.common.security.scram.ScramLoginModule required username="reader" password="s3 cr=t";'
    monkeypatch.setenv("FITBIT_TEST_JAAS", jaas)
    config = load_config(
        None,
        [
            'kafka.options={"security.protocol": SASL_SSL, "sasl.mechanism": SCRAM-SHA-512}',
            'kafka.options_env={"sasl.jaas.config": FITBIT_TEST_JAAS}',
        ],
    )
    assert librdkafka_conf(config.kafka) == {
        "bootstrap.servers": "localhost:9092",
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "reader",
        "sasl.password": "s3 cr=t",
    }
