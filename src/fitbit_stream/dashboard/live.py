"""The live dashboard's state: the page's data, re-read only when a table's Delta version moved.

A page polls the server every few seconds; re-running the dataset queries on every poll would keep
Spark busy for nothing while the pipeline is idle, and two tabs would double it. Instead the
server asks each table for its latest Delta version (for a local table, a directory listing of its
``_delta_log``: no Spark job) at most once per ``min_interval`` seconds, and re-reads only the part
of the page (KPIs or pipeline health) whose tables moved. The versions, hashed, are the snapshot's
version: the ETag the page sends back, so an unchanged dashboard costs one 304.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from fitbit_stream.config import Config
from fitbit_stream.dashboard.datasets import DashboardData, kpi_tables, load_data, missing_tables
from fitbit_stream.dashboard.health import HEALTH_TABLES, PipelineHealth, load_health
from fitbit_stream.io.tables import TableRef, Tables, delta_table, table_exists

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

__all__ = ["LiveDashboard", "Snapshot", "live_dashboard", "local_version", "table_version", "version_tag"]

log = logging.getLogger(__name__)

#: A commit file of the Delta log; a writer's temporary file starts with a dot and never matches.
_COMMIT = re.compile(r"(\d{20})\.json")

#: A table's version by ``"layer.table"``; None while the table does not exist.
Versions = Mapping[str, int | None]


def local_version(path: Path) -> int | None:
    """The latest committed version of the Delta table at ``path``, from its log's file names."""
    try:
        with os.scandir(Path(path) / "_delta_log") as entries:
            versions = [int(m.group(1)) for e in entries if (m := _COMMIT.fullmatch(e.name))]
    except (FileNotFoundError, NotADirectoryError):
        return None
    return max(versions, default=None)


def _is_remote(location: str) -> bool:
    # abfss://, s3://, dbfs:/ ...: only Spark's file systems reach them, not os.scandir.
    return "://" in location or location.startswith("dbfs:")


def table_version(spark: SparkSession, ref: TableRef) -> int | None:
    """The table's latest Delta version, or None when it does not exist (yet)."""
    if ref.path and not _is_remote(ref.path):
        return local_version(Path(ref.path))
    if not table_exists(spark, ref):
        return None
    row = delta_table(spark, ref).history(1).select("version").first()
    return None if row is None else int(row[0])


def version_tag(versions: Versions) -> str:
    """A short, stable tag for a set of table versions (the page's ETag)."""
    text = json.dumps(sorted(versions.items()), separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Snapshot:
    """What the page shows at one set of table versions."""

    version: str
    versions: Versions
    data: DashboardData
    health: PipelineHealth
    #: KPI tables that do not exist yet (the page says so instead of showing zeros as figures).
    missing: tuple[str, ...]
    generated_at: datetime


class LiveDashboard:
    """The current :class:`Snapshot`, refreshed on demand, safe to call from many server threads.

    ``versions`` reads every table's version; ``load_kpis`` and ``load_health`` read the two parts
    of the page. ``kpi_tables`` and ``health_tables`` name the version keys each part depends on.
    A failed refresh keeps serving the last snapshot (a reader can meet a table mid-rewrite) and
    is retried at the next check; only the very first read raises.
    """

    def __init__(
        self,
        versions: Callable[[], Versions],
        load_kpis: Callable[[], tuple[DashboardData, tuple[str, ...]]],
        load_health: Callable[[], PipelineHealth],
        *,
        kpi_tables: Collection[str],
        health_tables: Collection[str],
        min_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._versions = versions
        self._load_kpis = load_kpis
        self._load_health = load_health
        self._kpi_tables = frozenset(kpi_tables)
        self._health_tables = frozenset(health_tables)
        self._min_interval = min_interval
        self._clock = clock
        self._now = now
        # One refresh at a time: the server's threads share one Spark session and one snapshot.
        self._lock = threading.Lock()
        self._current: Snapshot | None = None
        self._checked = 0.0
        #: How often each part was read, for the tests and the server's log.
        self.reads: Counter[str] = Counter()

    def snapshot(self) -> Snapshot:
        """The current snapshot, after a version check when the last one is ``min_interval`` old."""
        with self._lock:
            now = self._clock()
            if self._current is None:
                self._checked = now
                self._current = self._refresh(None)
            elif now - self._checked >= self._min_interval:
                self._checked = now
                try:
                    self._current = self._refresh(self._current)
                except Exception:
                    log.warning("dashboard: could not refresh, still showing the last read", exc_info=True)
            return self._current

    def _refresh(self, current: Snapshot | None) -> Snapshot:
        versions = dict(self._versions())
        if current is not None and versions == current.versions:
            return current
        old = current.versions if current is not None else {}
        moved = {k for k in versions.keys() | old.keys() if current is None or versions.get(k) != old.get(k)}
        if current is None or moved & self._kpi_tables:
            self.reads["kpis"] += 1
            data, missing = self._load_kpis()
        else:
            data, missing = current.data, current.missing
        if current is None or moved & self._health_tables:
            self.reads["health"] += 1
            health = self._load_health()
        else:
            health = current.health
        return Snapshot(version_tag(versions), versions, data, health, tuple(missing), self._now())


def _key(ref: TableRef) -> str:
    return f"{ref.layer}.{ref.name}"


def live_dashboard(spark: SparkSession, config: Config, *, min_interval: float = 1.0) -> LiveDashboard:
    """The live state over the tables of ``config``, read with ``spark``."""
    tables = Tables(config)
    kpi_refs = [tables.ref(table, layer=layer) for layer, table in kpi_tables()]
    health_refs = [tables.ref(table, layer=layer) for layer, table in HEALTH_TABLES]
    refs = {_key(ref): ref for ref in (*kpi_refs, *health_refs)}

    def versions() -> dict[str, int | None]:
        return {key: table_version(spark, ref) for key, ref in refs.items()}

    def kpis() -> tuple[DashboardData, tuple[str, ...]]:
        # Before the first run the page shows which tables it waits for, and fills in once they exist.
        missing = missing_tables(spark, config)
        if missing:
            return DashboardData.empty(), tuple(missing)
        return load_data(spark, config), ()

    return LiveDashboard(
        versions,
        kpis,
        lambda: load_health(spark, config),
        kpi_tables={_key(ref) for ref in kpi_refs},
        health_tables={_key(ref) for ref in health_refs},
        min_interval=min_interval,
    )
