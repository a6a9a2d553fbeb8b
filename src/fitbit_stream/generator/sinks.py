"""Where emissions go: a Kafka broker, landing files (CONTRACT.md §1.3) or the SQL source database.

Every sink takes the whole stream and ignores what is not for it (Kafka sinks skip SQL statements
and the other way round), so one ``emit`` call can feed several sinks in a single pass.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sqlite3
from collections.abc import Callable, Mapping
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any, Literal, NamedTuple, Protocol, cast
from urllib.parse import parse_qs, urlsplit

from fitbit_stream.errors import SourceError
from fitbit_stream.generator.model import (
    Emission,
    KafkaEmission,
    RegistrationRow,
    SqlEmission,
    VisitRow,
    epoch_ms_text,
    epoch_text,
    from_us,
)
from fitbit_stream.generator.murmur2 import partition_for_key

__all__ = [
    "Delivery",
    "KafkaSink",
    "LandingSink",
    "Sink",
    "SqlDialect",
    "SqlSink",
    "TimestampStorage",
    "connect_sql",
]

SqlDialect = Literal["sqlite", "postgresql"]
TimestampStorage = Literal["timestamp", "epoch"]


class Delivery(NamedTuple):
    """Where a Kafka record landed: the coordinates bronze will carry."""

    sink: str
    topic: str
    partition: int
    offset: int
    timestamp_ms: int


class Sink(Protocol):
    """A destination of emissions. ``finish`` ends one ``emit`` call; ``close`` releases it."""

    name: str

    def write(self, emission: Emission) -> None: ...

    def flush(self) -> None:
        """Make what was written so far visible to readers (called while pacing in real time)."""
        ...

    def finish(self) -> list[Delivery]:
        """Deliver everything written since the last call and report where Kafka records landed."""
        ...

    def close(self) -> None: ...


# --- Kafka ---------------------------------------------------------------------------------------


class _Producer(Protocol):
    def produce(self, topic: str, **kwargs: Any) -> None: ...

    def poll(self, timeout: float = ...) -> int: ...

    def flush(self, timeout: float = ...) -> int: ...


def _confluent_producer(conf: dict[str, Any]) -> _Producer:
    from confluent_kafka import Producer

    return cast(_Producer, Producer(conf))


class KafkaSink:
    """Produce Kafka emissions with confluent_kafka, keyed and timestamped as simulated.

    The partitioner is ``murmur2_random``: the Java client's, so a key lands on the partition a
    Java/Spark producer (and :class:`LandingSink`) would pick. Creating topics is not done here.
    """

    name = "kafka"

    def __init__(
        self,
        bootstrap_servers: str,
        *,
        options: Mapping[str, Any] | None = None,
        flush_timeout_seconds: float = 120.0,
        keep_deliveries: bool = True,
        producer_factory: Callable[[dict[str, Any]], _Producer] | None = None,
    ) -> None:
        conf: dict[str, Any] = {
            "bootstrap.servers": bootstrap_servers,
            "partitioner": "murmur2_random",
            "linger.ms": 20,
            "batch.num.messages": 10_000,
            "queue.buffering.max.messages": 1_000_000,
            "queue.buffering.max.kbytes": 1_048_576,
            "compression.type": "lz4",
            # Retries must not reorder a partition: the sink's order is the simulated order.
            "enable.idempotence": True,
            # librdkafka's own messages (broker not up yet, ...) go to logging, not to stderr.
            "logger": logging.getLogger(f"{__name__}.librdkafka"),
        }
        conf.update(options or {})
        self._servers = bootstrap_servers
        self._timeout = flush_timeout_seconds
        try:
            self._producer = (producer_factory or _confluent_producer)(conf)
        except Exception as exc:  # confluent_kafka raises KafkaException/ValueError for bad settings
            raise SourceError(f"cannot create a Kafka producer for {bootstrap_servers!r}: {exc}") from exc
        self._keep = keep_deliveries
        self._deliveries: list[Delivery | None] = []
        self._sent = 0
        self._acked = 0
        self._errors: list[str] = []

    def _on_delivery(self, index: int, timestamp_ms: int, err: Any, msg: Any) -> None:
        if err is not None:
            self._errors.append(f"{msg.topic()}[key={msg.key()!r}]: {err}")
            return
        self._acked += 1
        if self._keep:
            self._deliveries[index] = Delivery(self.name, msg.topic(), msg.partition(), msg.offset(), timestamp_ms)

    def write(self, emission: Emission) -> None:
        if not isinstance(emission, KafkaEmission):
            return
        index = self._sent
        self._sent += 1
        if self._keep:
            self._deliveries.append(None)
        kwargs: dict[str, Any] = {
            "value": emission.value.encode("utf-8"),
            "key": emission.key.encode("utf-8"),
            "timestamp": emission.timestamp_ms,
            "on_delivery": partial(self._on_delivery, index, emission.timestamp_ms),
        }
        if emission.partition is not None:
            kwargs["partition"] = emission.partition
        while True:
            try:
                self._producer.produce(emission.topic, **kwargs)
                break
            except BufferError:
                # The local queue is full: serve delivery reports until there is room again.
                self._producer.poll(0.1)
            except Exception as exc:  # KafkaException: unknown topic, message too large, ...
                raise SourceError(f"cannot produce to Kafka topic {emission.topic!r}: {exc}") from exc
        if index % 10_000 == 0:
            self._producer.poll(0)

    def flush(self) -> None:
        self._producer.poll(0)

    def finish(self) -> list[Delivery]:
        remaining = self._producer.flush(self._timeout)
        total, acked, errors = self._sent, self._acked, self._errors
        done = [d for d in self._deliveries if d is not None]
        self._deliveries, self._sent, self._acked, self._errors = [], 0, 0, []
        if remaining > 0:
            raise SourceError(
                f"{remaining} of {total} Kafka messages not delivered within {self._timeout:g} s: "
                f"is a broker listening at {self._servers!r}?"
            )
        if errors:
            raise SourceError(f"{len(errors)} of {total} Kafka messages failed delivery; first: {errors[0]}")
        if acked != total:
            raise SourceError(f"{total - acked} of {total} Kafka messages got no delivery report")
        return done

    def close(self) -> None:
        """Deliver what is queued and let the producer go (its threads end with it)."""
        self._producer.flush(self._timeout)
        del self._producer


# --- landing files -------------------------------------------------------------------------------

# The C string quoter behind json.dumps(..., ensure_ascii=False), without building an encoder per call.
_quote: Callable[[str], str] = json.encoder.encode_basestring
_STATE_FILE = "_generator_state.json"
_PART = re.compile(r"^part-(\d{6,})\.jsonl$")


class LandingSink:
    """JSON-lines landing files: one Kafka record per line, as ADF / Kafka Connect would land them.

    The sink plays the broker: partitions come from Kafka's murmur2 on the key, offsets from
    per-(topic, partition) counters. A file is written under a hidden name and renamed when done,
    so a streaming file source never reads half a file. Counters survive across ``emit`` calls and
    processes (``_generator_state.json``, ignored by Spark like every name starting with ``_``).
    """

    name = "landing"

    def __init__(
        self,
        directory: str | Path,
        *,
        partitions: int | Mapping[str, int] = 3,
        records_per_file: int = 10_000,
        file_span_seconds: float | None = None,
        keep_deliveries: bool = True,
    ) -> None:
        if records_per_file < 1:
            raise SourceError(f"records_per_file must be >= 1, got {records_per_file}")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._partitions = partitions
        self._per_file = records_per_file
        self._span_ms = None if file_span_seconds is None else round(file_span_seconds * 1000)
        self._offsets: dict[tuple[str, int], int] = {}
        # Keys repeat (a device id per reading): hash each once.
        self._partition_cache: dict[tuple[str, str], int] = {}
        self._next_file = 0
        self._load_state()
        self._file: Any = None
        self._file_count = 0
        self._file_first_ms = 0
        self._keep = keep_deliveries
        self._deliveries: list[Delivery] = []

    def _partition_count(self, topic: str) -> int:
        if isinstance(self._partitions, int):
            return self._partitions
        try:
            return self._partitions[topic]
        except KeyError:
            raise SourceError(f"landing sink: no partition count for topic {topic!r}") from None

    def _load_state(self) -> None:
        state_path = self.directory / _STATE_FILE
        if state_path.is_file():
            state = json.loads(state_path.read_text(encoding="utf-8"))
            self._next_file = int(state["next_file"])
            self._offsets = {
                (topic, int(p)): int(n) for topic, parts in state["offsets"].items() for p, n in parts.items()
            }
            return
        # No state file: resume after whatever part files are there.
        for path in sorted(self.directory.iterdir()):
            m = _PART.match(path.name)
            if not m:
                continue
            self._next_file = max(self._next_file, int(m.group(1)) + 1)
            with path.open(encoding="utf-8") as fh:
                for line in fh:
                    rec = json.loads(line)
                    key = (rec["topic"], int(rec["partition"]))
                    self._offsets[key] = max(self._offsets.get(key, 0), int(rec["offset"]) + 1)

    def _save_state(self) -> None:
        offsets: dict[str, dict[str, int]] = {}
        for (topic, p), n in sorted(self._offsets.items()):
            offsets.setdefault(topic, {})[str(p)] = n
        tmp = self.directory / f".{_STATE_FILE}.tmp"
        tmp.write_text(json.dumps({"next_file": self._next_file, "offsets": offsets}, indent=1), encoding="utf-8")
        os.replace(tmp, self.directory / _STATE_FILE)

    def _final_path(self, index: int) -> Path:
        return self.directory / f"part-{index:06d}.jsonl"

    def _hidden_path(self, index: int) -> Path:
        return self.directory / f".part-{index:06d}.jsonl.inprogress"

    def _roll(self) -> None:
        if self._file is None:
            return
        self._file.close()
        index = self._next_file
        os.replace(self._hidden_path(index), self._final_path(index))
        self._file = None
        self._next_file = index + 1
        self._save_state()

    def write(self, emission: Emission) -> None:
        if not isinstance(emission, KafkaEmission):
            return
        topic = emission.topic
        p = emission.partition
        if p is None:
            cache_key = (topic, emission.key)
            p = self._partition_cache.get(cache_key)
            if p is None:
                p = partition_for_key(emission.key, self._partition_count(topic))
                self._partition_cache[cache_key] = p
        coord = (topic, p)
        offset = self._offsets.get(coord, 0)
        self._offsets[coord] = offset + 1
        ts = emission.timestamp_ms
        if self._file is not None and (
            self._file_count >= self._per_file
            or (self._span_ms is not None and ts >= self._file_first_ms + self._span_ms)
        ):
            self._roll()
        if self._file is None:
            self._file = self._hidden_path(self._next_file).open("w", encoding="utf-8", newline="\n")
            self._file_count = 0
            self._file_first_ms = ts
        # timestamp: exact epoch seconds of the millisecond record timestamp (a JSON number).
        quote = _quote
        self._file.write(
            f'{{"key":{quote(emission.key)},"value":{quote(emission.value)},"topic":{quote(topic)},'
            f'"partition":{p},"offset":{offset},"timestamp":{epoch_ms_text(ts)}}}\n'
        )
        self._file_count += 1
        if self._keep:
            self._deliveries.append(Delivery(self.name, topic, p, offset, ts))

    def flush(self) -> None:
        self._roll()

    def finish(self) -> list[Delivery]:
        self._roll()
        self._save_state()
        done, self._deliveries = self._deliveries, []
        return done

    def close(self) -> None:
        self.finish()


# --- SQL source ----------------------------------------------------------------------------------

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$")


def _dialect_of(connection: Any) -> SqlDialect:
    module = type(connection).__module__
    if module.startswith("sqlite3"):
        return "sqlite"
    if module.startswith("psycopg"):
        return "postgresql"
    raise SourceError(f"SQL sink: cannot tell the dialect of a {type(connection).__qualname__} from {module!r}")


class SqlSink:
    """Apply SQL emissions to the source tables (``registered_users``, ``gym_logins``).

    ``registered_users`` is keyed by user_id (CONTRACT.md §1.2): a re-registration with a new
    device UPDATEs the member's row in place (device_id, mac_address, registration_timestamp), so
    the table always holds the latest registration and bronze sees each version once. A visit is
    INSERTed at login with a NULL logout and UPDATEd in place at logout.

    Timestamps are SQL timestamps by default: ``TIMESTAMPTZ`` in PostgreSQL, ISO text
    ``YYYY-MM-DD HH:MM:SS.ffffff`` (UTC) in SQLite, which has no timestamp type. With
    ``timestamps="epoch"`` they are epoch seconds: ``NUMERIC(20,6)`` in PostgreSQL (exact), a
    NUMERIC column in SQLite, which stores fractions as REAL (exact once rounded to 6 decimals).
    """

    name = "sql"

    def __init__(
        self,
        connection: Any,
        *,
        dialect: SqlDialect | None = None,
        timestamps: TimestampStorage = "timestamp",
        registered_users_table: str = "registered_users",
        gym_logins_table: str = "gym_logins",
        create_tables: bool = True,
        commit_every: int = 1_000,
    ) -> None:
        for table in (registered_users_table, gym_logins_table):
            if not _IDENTIFIER.match(table):
                raise SourceError(f"SQL sink: {table!r} is not a plain [schema.]table name")
        if timestamps not in ("timestamp", "epoch"):
            raise SourceError(f"SQL sink: timestamps must be 'timestamp' or 'epoch', got {timestamps!r}")
        self._conn = connection
        self.dialect: SqlDialect = dialect or _dialect_of(connection)
        self._error: type[BaseException] = _driver_error(self.dialect)
        self._timestamps = timestamps
        self._users = registered_users_table
        self._logins = gym_logins_table
        self._commit_every = max(1, commit_every)
        self._uncommitted = 0
        ph = "?" if self.dialect == "sqlite" else "%s"
        users, logins = self._users, self._logins
        self._sql = {
            "insert_registration": (
                f"INSERT INTO {self._users} (user_id, device_id, mac_address, registration_timestamp) "
                f"VALUES ({ph}, {ph}, {ph}, {ph})"
            ),
            "update_registration": (
                f"UPDATE {users} SET device_id = {ph}, mac_address = {ph}, "
                f"registration_timestamp = {ph} WHERE user_id = {ph}"
            ),
            "insert_visit": (f"INSERT INTO {logins} (mac_address, gym, login, logout) VALUES ({ph}, {ph}, {ph}, NULL)"),
            "update_visit_logout": (
                f"UPDATE {logins} SET logout = {ph} WHERE mac_address = {ph} AND gym = {ph} AND login = {ph}"
            ),
        }
        if create_tables:
            self.create_tables()

    def ddl(self) -> list[str]:
        """CREATE TABLE IF NOT EXISTS statements of the two source tables."""
        if self._timestamps == "epoch":
            ts = "NUMERIC(20,6)" if self.dialect == "postgresql" else "NUMERIC"
        else:
            ts = "TIMESTAMPTZ" if self.dialect == "postgresql" else "TIMESTAMP"
        return [
            f"CREATE TABLE IF NOT EXISTS {self._users} ("
            "user_id BIGINT NOT NULL PRIMARY KEY, device_id BIGINT NOT NULL, "
            f"mac_address VARCHAR(17) NOT NULL, registration_timestamp {ts} NOT NULL)",
            f"CREATE TABLE IF NOT EXISTS {self._logins} ("
            f"mac_address VARCHAR(17) NOT NULL, gym BIGINT NOT NULL, login {ts} NOT NULL, logout {ts}, "
            "PRIMARY KEY (mac_address, gym, login))",
        ]

    def create_tables(self) -> None:
        try:
            cur = self._conn.cursor()
            for statement in self.ddl():
                cur.execute(statement)
            self._conn.commit()
        except self._error as exc:
            raise SourceError(f"SQL sink: cannot create the source tables: {exc}") from exc

    def _ts(self, us: int) -> Any:
        if self._timestamps == "epoch":
            text = epoch_text(us)
            # SQLite converts the text to INTEGER or REAL itself; PostgreSQL gets an exact NUMERIC.
            return Decimal(text) if self.dialect == "postgresql" else text
        if self.dialect == "postgresql":
            return from_us(us)
        return from_us(us).strftime("%Y-%m-%d %H:%M:%S.%f")

    def write(self, emission: Emission) -> None:
        if not isinstance(emission, SqlEmission):
            return
        row = emission.row
        op = emission.op
        if isinstance(row, RegistrationRow):
            ts = self._ts(row.registration_us)
            if op == "insert_registration":
                params: tuple[Any, ...] = (row.user_id, row.device_id, row.mac_address, ts)
            else:
                params = (row.device_id, row.mac_address, ts, row.user_id)
        else:
            assert isinstance(row, VisitRow)
            login = self._ts(row.login_us)
            if op == "insert_visit":
                params = (row.mac_address, row.gym, login)
            else:
                assert row.logout_us is not None
                params = (self._ts(row.logout_us), row.mac_address, row.gym, login)
        try:
            cur = self._conn.cursor()
            cur.execute(self._sql[op], params)
            updated = cur.rowcount
        except self._error as exc:
            raise SourceError(f"SQL sink: {op} {params!r} failed: {exc}") from exc
        if op.startswith("update") and updated != 1:
            raise SourceError(
                f"SQL sink: {op} {params!r} matched {updated} rows, expected 1: was the earlier part of the "
                "stream emitted into this database?"
            )
        self._uncommitted += 1
        if self._uncommitted >= self._commit_every:
            self.flush()

    def flush(self) -> None:
        if self._uncommitted:
            try:
                self._conn.commit()
            except self._error as exc:
                raise SourceError(f"SQL sink: commit failed: {exc}") from exc
            self._uncommitted = 0

    def finish(self) -> list[Delivery]:
        self.flush()
        return []

    def close(self) -> None:
        self.flush()
        self._conn.close()


def _driver_error(dialect: SqlDialect) -> type[BaseException]:
    if dialect == "sqlite":
        return sqlite3.Error
    import psycopg

    error: type[BaseException] = psycopg.Error
    return error


def connect_sql(url: str, *, user: str | None = None, password: str | None = None) -> tuple[Any, SqlDialect]:
    """Open a DB-API connection for a JDBC URL of the config (``jdbc:sqlite:…``, ``jdbc:postgresql://…``)."""
    if url.startswith("jdbc:sqlite:"):
        path = url[len("jdbc:sqlite:") :]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        try:
            return sqlite3.connect(path or ":memory:"), "sqlite"
        except sqlite3.Error as exc:
            raise SourceError(f"cannot open SQLite database {path!r}: {exc}") from exc
    if url.startswith("jdbc:postgresql://"):
        import psycopg

        parts = urlsplit(url[len("jdbc:") :])
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        kwargs: dict[str, Any] = {
            "host": parts.hostname or "localhost",
            "port": parts.port or 5432,
            "dbname": parts.path.lstrip("/") or None,
            "user": user or query.get("user"),
        }
        if password is not None:
            kwargs["password"] = password
        try:
            return psycopg.connect(**{k: v for k, v in kwargs.items() if v is not None}), "postgresql"
        except psycopg.Error as exc:
            # The message of psycopg never carries the password.
            raise SourceError(f"cannot connect to PostgreSQL at {parts.hostname}:{parts.port or 5432}: {exc}") from exc
    raise SourceError(f"SQL sink: unsupported JDBC URL {url.split('?')[0]!r} (sqlite and postgresql only)")
