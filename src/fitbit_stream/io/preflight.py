"""Source checks made before any query starts: is every enabled source there, as configured?

Without them a wrong bootstrap server, a missing SQLite file or a stopped database surfaces only
after the JVM started and a query tried to read it: a minute later, as a long Java or Python trace
that names neither the setting nor the fix. :func:`check_sources` asks each enabled source the
cheapest question that fails the same way, with short timeouts, and raises a
:class:`~fitbit_stream.errors.PreflightError` whose message is one line: the setting and its value,
what is wrong, and what to do about it.

- Kafka: a TCP connection to each bootstrap server, then (with confluent-kafka installed) one
  metadata request through librdkafka that must list every configured topic.
- SQL: the JDBC scheme has a driver; a SQLite file exists and holds the source tables; a database
  host accepts a TCP connection; the credentials the dialect needs are configured and their
  environment variables set.
- Landing files: the directory exists and can be listed.

Nothing here imports Spark: the checks run before a session exists, where pyspark may be absent.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import sqlite3
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from fitbit_stream.config import Config, KafkaConfig, LandingConfig, SqlConfig
from fitbit_stream.errors import PreflightError

__all__ = [
    "JDBC_DRIVERS",
    "LIBRDKAFKA_OPTIONS",
    "Endpoint",
    "check_jdbc",
    "check_kafka",
    "check_landing",
    "check_sources",
    "jdbc_endpoints",
    "librdkafka_conf",
    "sqlite_path",
    "tcp_problem",
]

log = logging.getLogger(__name__)

#: The JDBC driver class of each supported scheme (the jars ``scripts/setup.sh`` resolves).
JDBC_DRIVERS = {
    "sqlite": "org.sqlite.JDBC",
    "postgresql": "org.postgresql.Driver",
    "sqlserver": "com.microsoft.sqlserver.jdbc.SQLServerDriver",
}

_DEFAULT_PORTS = {"postgresql": 5432, "sqlserver": 1433}

#: librdkafka settings that mean the same as the Java consumer's (the rest, e.g. a JAAS line, do not).
LIBRDKAFKA_OPTIONS = ("security.protocol", "sasl.mechanism", "client.id")

#: seconds one TCP connection attempt may take
CONNECT_TIMEOUT = 3.0
#: seconds the Kafka metadata request may take (after a server accepted the connection)
METADATA_TIMEOUT = 8.0

_LOCAL_BROKER_FIX = "start the local broker (fitbit-stream platform start --config conf/local.yaml)"


class _LibrdkafkaLog:
    """librdkafka's own log lines (connection retries, SASL failures) go to DEBUG: the check reports
    the outcome in one line of its own, and ``--debug`` shows what the client said on the way."""

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger

    def log(self, _level: int, msg: str, *args: object) -> None:
        self._logger.debug(msg, *args)


_RDKAFKA_LOG = _LibrdkafkaLog(logging.getLogger(f"{__name__}.librdkafka"))


def librdkafka_conf(kafka: KafkaConfig, auth: Mapping[str, str] | None = None) -> dict[str, Any]:
    """librdkafka settings for ``kafka``: the bootstrap servers, the options librdkafka shares with
    the Java consumer, and ``auth`` (:meth:`fitbit_stream.azure.AzureAuth.librdkafka_auth_settings`)."""
    conf: dict[str, Any] = {"bootstrap.servers": kafka.bootstrap_servers}
    conf.update({k: v for k, v in kafka.options.items() if k in LIBRDKAFKA_OPTIONS})
    # The Java consumer signs in with a JAAS line (PLAIN, SCRAM); librdkafka wants its username and
    # password as settings of their own.
    jaas_env = kafka.options_env.get("sasl.jaas.config")
    jaas = os.environ.get(jaas_env, "") if jaas_env else ""
    for field in ("username", "password"):
        found = re.search(rf'\b{field}\s*=\s*"([^"]*)"', jaas)
        if found:
            conf[f"sasl.{field}"] = found.group(1)
    conf.update(auth or {})
    return conf


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def _endpoint(text: str, default_port: int | None = None) -> Endpoint:
    text = text.strip()
    if text.startswith("["):  # [IPv6]:port
        host, _, rest = text[1:].partition("]")
        port_text = rest.removeprefix(":")
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        host, port_text = text, ""
    if port_text.isdigit():
        return Endpoint(host, int(port_text))
    if default_port is None:
        raise ValueError(f"no port in {text!r}")
    return Endpoint(host, default_port)


def tcp_problem(endpoint: Endpoint, timeout: float = CONNECT_TIMEOUT) -> str | None:
    """Why ``endpoint`` does not accept a TCP connection (``None`` when it does)."""
    try:
        with socket.create_connection((endpoint.host, endpoint.port), timeout=timeout):
            return None
    except socket.gaierror:
        return f"host name {endpoint.host!r} does not resolve"
    except ConnectionRefusedError:
        return "connection refused"
    except TimeoutError:
        return f"no answer within {timeout:g}s"
    except OSError as exc:
        return (exc.strerror or str(exc) or type(exc).__name__).lower()


def _is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


# --- Kafka ---------------------------------------------------------------------------------------


def check_kafka(
    kafka: KafkaConfig,
    *,
    auth: Mapping[str, str] | None = None,
    connect_timeout: float = CONNECT_TIMEOUT,
    metadata_timeout: float = METADATA_TIMEOUT,
) -> str:
    """Some bootstrap server accepts connections and every configured topic exists; what was checked."""
    servers = kafka.bootstrap_servers
    problems = []
    reachable = []
    for text in servers.split(","):
        endpoint = _endpoint(text)
        problem = tcp_problem(endpoint, connect_timeout)
        if problem is None:
            reachable.append(endpoint)
        else:
            problems.append(f"{endpoint}: {problem}" if "," in servers else problem)
    if not reachable:
        local = all(_is_loopback(_endpoint(text).host) for text in servers.split(","))
        fix = f"{_LOCAL_BROKER_FIX}, or set" if local else "check that the broker runs and the address, or set"
        raise PreflightError(
            f"kafka.bootstrap_servers={servers}: cannot connect ({'; '.join(problems)}); "
            f"{fix} kafka.bootstrap_servers to a reachable broker's host:port"
        )
    try:
        from confluent_kafka.admin import AdminClient
    except ImportError:
        # Spark's own client reports a missing topic much later; without librdkafka the TCP
        # connection is the check that can be made.
        log.info("kafka: topics not checked (confluent-kafka is not installed)")
        return f"kafka {servers} reachable (topics not checked: confluent-kafka is not installed)"
    conf = librdkafka_conf(kafka, auth)
    conf["logger"] = _RDKAFKA_LOG
    try:
        metadata = AdminClient(conf).list_topics(timeout=metadata_timeout)
    except Exception as exc:  # librdkafka raises KafkaException with its own error object
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PreflightError(
            f"kafka.bootstrap_servers={servers}: a connection was accepted but no broker answered a metadata "
            f"request within {metadata_timeout:g}s ({reason}); check that it is a Kafka broker and that "
            "kafka.options (security.protocol, sasl.*) or kafka.event_hubs match its listener"
        ) from None
    topics = kafka.topics.model_dump()
    missing = [
        f"kafka.topics.{field}={name}"
        for field, name in topics.items()
        if name not in metadata.topics or metadata.topics[name].error is not None
    ]
    if missing:
        noun = "topic does" if len(missing) == 1 else "topics do"
        raise PreflightError(
            f"{', '.join(missing)}: {noun} not exist on {servers}; create {'it' if len(missing) == 1 else 'them'} "
            "(fitbit-stream platform start creates the configured topics on the local broker), or set kafka.topics.* "
            "to existing topics"
        )
    return f"kafka {servers}: topics {', '.join(topics.values())}"


# --- JDBC ----------------------------------------------------------------------------------------


def _scheme(url: str) -> str:
    return url.split(":", 2)[1] if url.count(":") >= 1 else ""


def sqlite_path(url: str) -> str | None:
    """The database file of a ``jdbc:sqlite:`` URL (``None`` for an in-memory database)."""
    path = url.removeprefix("jdbc:sqlite:").removeprefix("file:").split("?", 1)[0]
    if not path or path == ":memory:" or path.startswith(":resource:"):
        return None
    return path


def _sqlserver_properties(url: str) -> tuple[str, dict[str, str]]:
    """``jdbc:sqlserver://host[\\instance][:port];k=v;...``: the server part and the properties."""
    rest = url.removeprefix("jdbc:sqlserver:").removeprefix("//")
    server, *pairs = rest.split(";")
    properties = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if sep:
            properties[key.strip().lower()] = value.strip()
    return server.strip(), properties


def jdbc_endpoints(url: str) -> list[Endpoint]:
    """The hosts a host-based JDBC URL connects to (empty when the driver finds the port itself)."""
    scheme = _scheme(url)
    if scheme == "postgresql":
        rest = url.removeprefix("jdbc:postgresql:")
        if not rest.startswith("//"):  # jdbc:postgresql:database
            return [Endpoint("localhost", 5432)]
        authority = rest[2:].split("/", 1)[0].split("?", 1)[0]
        return [_endpoint(part, 5432) for part in authority.split(",")] if authority else [Endpoint("localhost", 5432)]
    if scheme == "sqlserver":
        server, properties = _sqlserver_properties(url)
        server = server or properties.get("servername", "localhost")
        host_part, _, port_text = server.partition(":")
        host, _, instance = host_part.partition("\\")
        port_text = port_text or properties.get("portnumber", "")
        if instance and not port_text:
            return []  # a named instance's port comes from the SQL Server Browser (UDP 1434)
        return [Endpoint(host or "localhost", int(port_text) if port_text.isdigit() else 1433)]
    return []


def _check_sqlite(sql: SqlConfig, connect_timeout: float) -> str:
    url = sql.url
    path = sqlite_path(url)
    if path is None:
        raise PreflightError(
            f"sql.url={url}: an in-memory SQLite database holds no source tables; point sql.url at the "
            "database file (jdbc:sqlite:PATH)"
        )
    file = Path(path)
    parent = file.parent
    if not parent.is_dir():
        raise PreflightError(
            f"sql.url={url}: directory {str(parent)!r} does not exist; set sql.url=jdbc:sqlite:PATH to the source "
            "database file"
        )
    if not file.is_file():
        what = "is not a file" if file.exists() else "does not exist"
        raise PreflightError(
            f"sql.url={url}: database file {path!r} {what}; set sql.url=jdbc:sqlite:PATH to the source database, "
            "or run `fitbit-stream generate` to create the local one"
        )
    if not os.access(file, os.R_OK):
        raise PreflightError(f"sql.url={url}: database file {path!r} is not readable by this user; fix its permissions")
    wanted = {"sql.registered_users_table": sql.registered_users_table, "sql.gym_logins_table": sql.gym_logins_table}
    try:
        with sqlite3.connect(f"{file.resolve().as_uri()}?mode=ro", uri=True, timeout=connect_timeout) as db:
            rows = db.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')").fetchall()
        found = {str(r[0]).lower() for r in rows}
    except sqlite3.Error as exc:
        raise PreflightError(
            f"sql.url={url}: {path!r} cannot be read as a SQLite database ({exc}); point sql.url at the source database"
        ) from None
    missing = [f"{key}={name}" for key, name in wanted.items() if "." not in name and name.lower() not in found]
    if missing:
        raise PreflightError(
            f"{', '.join(missing)}: no such table in {path!r} (sql.url={url}); run `fitbit-stream generate` to fill "
            "the local source, or set the table names"
        )
    return f"sql {url}: tables {', '.join(wanted.values())}"


def _check_credentials(sql: SqlConfig) -> None:
    url, scheme = sql.url, _scheme(sql.url)
    if sql.auth == "azure_ad":
        return  # the access token is fetched and checked with the other credentials (AzureAuth.check)
    for key, env in (("sql.password_env", sql.password_env), ("sql.password_secret.env", _secret_env(sql))):
        if env is not None and not os.environ.get(env):
            state = "is empty" if env in os.environ else "is not set"
            raise PreflightError(
                f"{key}={env}: the environment variable {state}; export {env} with the database password"
            )
    has_password = sql.password_env is not None or sql.password_secret is not None
    lowered = url.lower()
    user_in_url = any(f"{sep}user{name}=" in lowered for sep in ("?", "&", ";") for name in ("", "name"))
    has_user = bool(sql.user) or user_in_url
    if scheme == "sqlserver":
        _, properties = _sqlserver_properties(url)
        if properties.get("integratedsecurity", "").lower() == "true" or "authentication" in properties:
            return  # the driver signs in by itself (Kerberos, NTLM, an Entra mode named in the URL)
        if not (has_user and has_password):
            lacking = " and ".join(
                k for k, ok in (("sql.user", has_user), ("sql.password_env", has_password)) if not ok
            )
            raise PreflightError(
                f"sql.url={url}: SQL Server sign-in with sql.auth=password needs {lacking}; set "
                f"{'them' if ' and ' in lacking else 'it'} (the password through an environment variable), "
                "or use sql.auth=azure_ad"
            )
    elif has_password and not has_user:
        raise PreflightError(
            f"sql.user is not set but a password is (sql.url={url}); set sql.user to the database user"
        )


def _secret_env(sql: SqlConfig) -> str | None:
    return None if sql.password_secret is None else sql.password_secret.env


def check_jdbc(sql: SqlConfig, *, connect_timeout: float = CONNECT_TIMEOUT) -> str:
    """The JDBC URL has a driver and points at something that answers; the credentials are configured."""
    url = sql.url
    scheme = _scheme(url)
    if scheme not in JDBC_DRIVERS:
        supported = ", ".join(f"jdbc:{s}:" for s in JDBC_DRIVERS)
        raise PreflightError(
            f"sql.url={url}: no JDBC driver for {scheme or 'this URL'!r} (supported: {supported}); use one of them, "
            "or set sql.enabled=false"
        )
    if scheme == "sqlite":
        return _check_sqlite(sql, connect_timeout)
    _check_credentials(sql)
    endpoints = jdbc_endpoints(url)
    problems = []
    for endpoint in endpoints:
        problem = tcp_problem(endpoint, connect_timeout)
        if problem is None:
            return f"sql {url}: {endpoint} accepts connections"
        problems.append(f"{endpoint}: {problem}")
    if problems:
        fix = (
            "start the database (fitbit-stream platform start --postgres for the local PostgreSQL)"
            if scheme == "postgresql"
            else "check the server name, port and firewall"
        )
        raise PreflightError(f"sql.url={url}: cannot connect ({'; '.join(problems)}); {fix}, or fix sql.url")
    return f"sql {url}: not checked (the driver looks the port up)"


# --- landing files -------------------------------------------------------------------------------


def check_landing(landing: LandingConfig) -> str:
    """The landing directory exists and can be listed (a URL is left to Spark's file system)."""
    path = landing.path
    if "://" in path or path.startswith("dbfs:"):
        return f"landing {path}: not checked (not a local path)"
    where = Path(path)
    if not where.exists():
        raise PreflightError(
            f"landing.path={path}: the directory does not exist; create it or point landing.path at the landing "
            "files, or set landing.enabled=false"
        )
    mode = os.R_OK | (os.X_OK if where.is_dir() else 0)
    if not os.access(where, mode):
        raise PreflightError(
            f"landing.path={path}: not readable by this user; fix its permissions or point landing.path elsewhere"
        )
    return f"landing {path}"


# --- all sources ---------------------------------------------------------------------------------


def check_sources(
    config: Config,
    *,
    kafka_auth: Mapping[str, str] | None = None,
    connect_timeout: float = CONNECT_TIMEOUT,
    metadata_timeout: float = METADATA_TIMEOUT,
) -> list[str]:
    """Check every enabled source; one line per source checked, or one :class:`PreflightError` naming
    every source that failed (their messages joined by `` | ``, still one line).

    ``kafka_auth`` holds librdkafka's sign-in settings (Event Hubs); the caller resolves them with
    the other credentials. Every wait is bounded: a TCP connection by ``connect_timeout``, the Kafka
    metadata request by ``metadata_timeout``.
    """
    started = time.monotonic()
    checks: list[Callable[[], str]] = []
    if config.kafka.enabled:
        checks.append(
            partial(
                check_kafka,
                config.kafka,
                auth=kafka_auth,
                connect_timeout=connect_timeout,
                metadata_timeout=metadata_timeout,
            )
        )
    if config.landing.enabled:
        checks.append(partial(check_landing, config.landing))
    if config.sql.enabled:
        checks.append(partial(check_jdbc, config.sql, connect_timeout=connect_timeout))
    lines, failures = [], []
    for check in checks:
        # Every source is checked: a user fixing one setting learns about the next one now, not on the next try.
        try:
            lines.append(check())
        except PreflightError as exc:
            failures.append(str(exc))
    if failures:
        raise PreflightError(" | ".join(failures))
    log.debug("sources checked in %.2fs: %s", time.monotonic() - started, "; ".join(lines))
    return lines
