"""A throwaway world for whole-pipeline tests: a SQLite source, a landing directory, a config over
``tmp_path``, records by topic, and time helpers. One place, so tests do not rebuild it each."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pyspark.sql import DataFrame, SparkSession

from fitbit_stream.config import Config, load_config
from fitbit_stream.io.tables import Tables
from fitbit_stream.schemas import TABLES

#: A record as a test writes it: (topic, key, value (JSON-able or raw text), Kafka timestamp).
Record = tuple[str, str | None, object, datetime]

#: Columns a run fills from the wall clock: left out when two runs' tables are compared.
WALL_CLOCK = frozenset({"load_time", "quarantined_at"})


def at(h: int, m: int = 0, s: int = 0, day: int = 3) -> datetime:
    """An instant of March 2025 (UTC, naive, as Spark hands timestamps back in the suite's UTC)."""
    return datetime(2025, 3, day, h, m, s)


def epoch(ts: datetime) -> int:
    return int(ts.replace(tzinfo=UTC).timestamp())


def sqlite_source(path: Path) -> Path:
    """The SQL source with user 1 (device 101) registered and one closed visit 10:00-11:30."""
    with sqlite3.connect(path) as conn:
        conn.execute(
            "CREATE TABLE registered_users "
            "(user_id BIGINT, device_id BIGINT, mac_address TEXT, registration_timestamp TIMESTAMP)"
        )
        conn.execute("CREATE TABLE gym_logins (mac_address TEXT, gym BIGINT, login TIMESTAMP, logout TIMESTAMP)")
        conn.execute("INSERT INTO registered_users VALUES (1, 101, 'aa:bb:cc:dd:ee:01', '2025-03-01 08:00:00')")
        conn.execute(
            "INSERT INTO gym_logins VALUES ('aa:bb:cc:dd:ee:01', 1, '2025-03-03 10:00:00', '2025-03-03 11:30:00')"
        )
    return path


def world_config(root: Path, jars_dir: str, *, mode: str = "realtime", extra: tuple[str, ...] = ()) -> Config:
    """Landing files and SQLite under ``root`` (Kafka off), tables and checkpoints there too."""
    (root / "landing").mkdir(parents=True, exist_ok=True)
    db = root / "source.db"
    if not db.exists():
        sqlite_source(db)
    return load_config(
        None,
        [
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
        ],
    )


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
            text = value if isinstance(value, str) else json.dumps(value)
            record = {"key": key, "value": text, "topic": topic, "partition": 0, "offset": offset}
            lines.append(json.dumps({**record, "timestamp": epoch(ts)}))
        (self.path / f"part-{self.files:05d}.json").write_text("\n".join(lines) + "\n", encoding="utf-8")
        self.files += 1


def bpm(device: int, ts: datetime, hr: float | None) -> Record:
    return ("bpm", str(device), {"device_id": device, "time": epoch(ts), "heartrate": hr}, ts)


def workout(user: int, wid: int, sid: int, ts: datetime, action: str) -> Record:
    payload = {"user_id": user, "workout_id": wid, "session_id": sid, "timestamp": epoch(ts), "action": action}
    return ("workout", str(user), payload, ts)


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
