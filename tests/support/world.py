"""A throwaway world for whole-pipeline tests: a SQLite source, a landing directory, a config over
``tmp_path``, records by topic (written as landing files or straight into bronze), and time
helpers. One place, so tests do not rebuild it each."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from chispa import assert_df_equality
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.types import StructType

from fitbit_stream.config import Config, load_config
from fitbit_stream.io.tables import Tables
from fitbit_stream.schemas import KAFKA_MULTIPLEX_BZ, TABLES
from fitbit_stream.transforms.dates import week_part

#: A record as a test writes it: (topic, key, value (JSON-able or raw text), Kafka timestamp).
Record = tuple[str, str | None, object, datetime]

#: A row of a SQL source table, in the table's column order.
SqlRow = tuple[Any, ...]

#: The default registration: user 1 with device 101.
REGISTERED: tuple[SqlRow, ...] = ((1, 101, "aa:bb:cc:dd:ee:01", "2025-03-01 08:00:00"),)

#: The default visit: user 1's device at gym 1, closed, 10:00-11:30 on 3 March.
GYM_LOGINS: tuple[SqlRow, ...] = (("aa:bb:cc:dd:ee:01", 1, "2025-03-03 10:00:00", "2025-03-03 11:30:00"),)

#: Bronze's ``load_time`` of the first append when a test gives none (then one minute later per append).
LOAD = datetime(2025, 3, 3, 12, 0)

#: Columns a run fills from the wall clock: left out when two runs' tables are compared.
WALL_CLOCK = frozenset({"load_time", "quarantined_at"})


def at(h: int, m: int = 0, s: int = 0, day: int = 3) -> datetime:
    """An instant of March 2025 (UTC, naive, as Spark hands timestamps back in the suite's UTC)."""
    return datetime(2025, 3, day, h, m, s)


def epoch(ts: datetime) -> int:
    return int(ts.replace(tzinfo=UTC).timestamp())


def sqlite_source(
    path: Path, registered: Sequence[SqlRow] | None = None, gym_logins: Sequence[SqlRow] | None = None
) -> Path:
    """The SQL source: ``registered_users`` (user_id, device_id, mac_address, registration_timestamp)
    and ``gym_logins`` (mac_address, gym, login, logout) holding the given rows; by default user 1
    (device 101) registered and one closed visit 10:00-11:30."""
    with sqlite3.connect(path) as conn:
        conn.execute(
            "CREATE TABLE registered_users "
            "(user_id BIGINT, device_id BIGINT, mac_address TEXT, registration_timestamp TIMESTAMP)"
        )
        conn.execute("CREATE TABLE gym_logins (mac_address TEXT, gym BIGINT, login TIMESTAMP, logout TIMESTAMP)")
        conn.executemany(
            "INSERT INTO registered_users VALUES (?, ?, ?, ?)", REGISTERED if registered is None else registered
        )
        conn.executemany("INSERT INTO gym_logins VALUES (?, ?, ?, ?)", GYM_LOGINS if gym_logins is None else gym_logins)
    return path


def source_db(root: Path) -> Path:
    """The SQLite file of the world under ``root`` (a test may change its rows between runs)."""
    return root / "source.db"


def world_overrides(
    root: Path,
    jars_dir: str,
    *,
    mode: str = "realtime",
    extra: tuple[str, ...] = (),
    registered: Sequence[SqlRow] | None = None,
    gym_logins: Sequence[SqlRow] | None = None,
) -> list[str]:
    """The config overrides of :func:`world_config` (for a test that also passes them to the CLI);
    makes the landing directory and, unless it exists, the SQLite source with the given rows."""
    (root / "landing").mkdir(parents=True, exist_ok=True)
    db = source_db(root)
    if not db.exists():
        sqlite_source(db, registered, gym_logins)
    return [
        f"storage.root={root / 'lake'}",
        f"storage.checkpoint_root={root / 'chk'}",
        f"jars_dir={jars_dir}",
        "kafka.enabled=false",
        "landing.enabled=true",
        f"landing.path={root / 'landing'}",
        f"sql.url=jdbc:sqlite:{db}",
        "streaming.shuffle_partitions=1",
        f"streaming.mode={mode}",
        *extra,
    ]


def world_config(
    root: Path,
    jars_dir: str,
    *,
    mode: str = "realtime",
    extra: tuple[str, ...] = (),
    registered: Sequence[SqlRow] | None = None,
    gym_logins: Sequence[SqlRow] | None = None,
) -> Config:
    """Landing files and SQLite under ``root`` (Kafka off), tables and checkpoints there too.

    ``registered`` and ``gym_logins`` are the SQL source's rows (see :func:`sqlite_source`); they
    are written only when the source does not exist yet. In ``layered`` mode a test may write its
    records straight into bronze (:class:`Bronze`): the topic queries read them into silver."""
    overrides = world_overrides(root, jars_dir, mode=mode, extra=extra, registered=registered, gym_logins=gym_logins)
    return load_config(None, overrides)


def as_json(value: object) -> str:
    """A record's value as Kafka carries it: text as it is, anything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value)


def partition_zero(key: str | None) -> int:
    """Every key on partition 0."""
    return 0


class Bronze:
    """Appends literal Kafka records to kafka_multiplex_bz (one Delta commit per :meth:`add`),
    offsets increasing per (topic, partition).

    ``partition`` maps a record's key to its partition, ``encode`` its value to the text bronze
    holds. Each append has one ``load_time``: the one given, else ``LOAD`` plus one minute per
    earlier append (a later append is a later bronze commit)."""

    def __init__(
        self,
        spark: SparkSession,
        config: Config,
        *,
        partition: Callable[[str | None], int] = partition_zero,
        encode: Callable[[object], str | None] = as_json,
    ) -> None:
        self.spark, self.tables = spark, Tables(config)
        self.partition, self.encode = partition, encode
        self.offsets: dict[tuple[str, int], int] = {}
        self.appends = 0

    def add(self, records: Sequence[Record], load_time: datetime | None = None) -> None:
        if load_time is None:
            load_time = LOAD + timedelta(minutes=self.appends)
        self.appends += 1
        rows = []
        for topic, key, value, ts in records:
            partition = self.partition(key)
            offset = self.offsets.get((topic, partition), 0)
            self.offsets[(topic, partition)] = offset + 1
            rows.append((key, self.encode(value), topic, partition, offset, ts, ts.date(), None, load_time))
        df = self.spark.createDataFrame(rows, KAFKA_MULTIPLEX_BZ).withColumn("week_part", week_part("date"))
        self.tables.append(df, self.tables.ensure(self.spark, "kafka_multiplex_bz"))


class Landing:
    """Writes records as landing files (one file per call), offsets increasing per topic."""

    def __init__(self, config: Config) -> None:
        self.path = Path(config.landing.path)
        self.offsets: dict[str, int] = {}
        self.files = 0

    def add(self, records: list[Record]) -> None:
        lines = []
        for topic, key, value, ts in records:
            offset = self.offsets.get(topic, 0)
            self.offsets[topic] = offset + 1
            record = {"key": key, "value": as_json(value), "topic": topic, "partition": 0, "offset": offset}
            lines.append(json.dumps({**record, "timestamp": epoch(ts)}))
        (self.path / f"part-{self.files:05d}.json").write_text("\n".join(lines) + "\n", encoding="utf-8")
        self.files += 1


def bpm(device: int, ts: datetime, hr: float | None) -> Record:
    return ("bpm", str(device), {"device_id": device, "time": epoch(ts), "heartrate": hr}, ts)


def workout(user: int, wid: int, sid: int, ts: datetime, action: str, *, record_time: datetime | None = None) -> Record:
    """A workout event at ``ts``, sent (the Kafka timestamp) at ``record_time`` (default: ``ts``)."""
    payload = {"user_id": user, "workout_id": wid, "session_id": sid, "timestamp": epoch(ts), "action": action}
    return ("workout", str(user), payload, ts if record_time is None else record_time)


PROFILE: dict[str, Any] = {
    "dob": "01/15/1990",
    "sex": "M",
    "gender": "M",
    "first_name": "Ann",
    "last_name": "Lee",
    "address": {"street_address": "1 Main St", "city": "Austin", "state": "TX", "zip": 8701},
}


def profile_change(user: int, kind: str, ts: datetime, **changes: Any) -> Record:
    payload = {"user_id": user, "update_type": kind, "timestamp": epoch(ts)}
    if kind != "delete":
        payload |= {**PROFILE, **changes}
    return ("user_info", str(user), payload, ts)


def table(spark: SparkSession, config: Config, name: str) -> DataFrame:
    tables = Tables(config)
    return tables.read(spark, tables.ref(name))


def snapshot(spark: SparkSession, config: Config) -> dict[str, list[tuple[Any, ...]]]:
    """Every contract table's rows, sorted, without the wall-clock columns."""
    out = {}
    for name in TABLES:
        df = table(spark, config, name)
        columns = sorted(c for c in df.columns if c not in WALL_CLOCK)
        out[name] = sorted((tuple(r) for r in df.select(*columns).collect()), key=repr)
    return out


def assert_rows(actual: DataFrame, rows: Sequence[tuple[Any, ...]], schema: str | StructType) -> None:
    """``actual`` holds exactly ``rows`` (in any order; nullability and column order aside)."""
    assert_df_equality(
        actual,
        actual.sparkSession.createDataFrame(rows, schema),
        ignore_row_order=True,
        ignore_nullable=True,
        ignore_column_order=True,
    )
