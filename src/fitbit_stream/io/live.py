"""Live progress in a terminal: one row per query, updated in place; plain lines anywhere else.

:class:`LiveProgress` is fed the same ``StreamingQueryProgress`` events as the ops table
(:class:`~fitbit_stream.io.progress.ProgressRecorder`'s ``on_progress`` hook) and keeps, per query:
the latest batch id, the batches and input rows of this run, the last batch's rows/s, duration and
backlog, and (ingest queries in ``realtime`` mode) the event->silver latency of the last batch. The
quarantine's counts by reason come from one small aggregate over the ``quarantine`` table, re-read
on a thread of its own at most every few seconds, and only when the table has a new Delta version.

On a terminal (``live=True``) the view is a ``rich`` table that redraws in place
(``rich.live.Live``); lines printed meanwhile (``print``, logging) appear above it. Elsewhere (CI,
log files, Databricks job output) it is plain lines: one per micro-batch, as before, with the
latency appended, and one when the quarantine counts change. ``rich`` is an optional dependency
(the ``local`` and ``dev`` extras, not the wheel's requirements: a cluster's output is no
terminal), imported by name (:func:`_rich`) only when the live table is shown.

Event->silver latency: the ingest writer (:mod:`fitbit_stream.io.ingest`) reads each batch's least
and greatest Kafka record timestamp per topic in the same action that lists the batch's topics, and
once the batch's silver writes have committed it publishes ``now - least`` (the oldest record's wait)
and ``now - greatest`` (the newest's) to :data:`LATENCY`, a registry in this process. A Kafka
timestamp is the producer's (CreateTime) unless the topic says otherwise, so the figure includes
time spent in Kafka before the query read it: records produced long ago show their age.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC
from types import ModuleType
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from fitbit_stream.config import Config
    from fitbit_stream.io.progress import ProgressRecord

__all__ = [
    "COLUMNS",
    "LATENCY",
    "Latency",
    "LatencyRegistry",
    "LiveProgress",
    "duration_text",
    "live_wanted",
    "quarantine_counter",
]

log = logging.getLogger(__name__)

#: the live table's columns (and the order of :meth:`LiveProgress.rows`)
COLUMNS: tuple[str, ...] = (
    "query",
    "batch",
    "batches",
    "rows",
    "rows/s",
    "backlog",
    "last batch",
    "event→silver",
)

_NONE = "-"


def _rich(module: str) -> ModuleType:
    """A module of ``rich``, the optional dependency of the live table.

    Imported by name, on purpose: no job needs it (a job's output on a cluster is no terminal, and
    without ``rich`` a terminal gets the plain lines, see :func:`live_wanted`), so it is not among
    the wheel's requirements, and the scan of what the jobs import
    (``tests/unit/test_databricks.py``) must not count it as one.
    """
    return importlib.import_module(f"rich.{module}")


def duration_text(seconds: float) -> str:
    """A duration as people read it: ``0.4s``, ``12s``, ``4m05s``, ``3h12m``, ``2d04h``."""
    seconds = max(0.0, seconds)
    if seconds < 10:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def _bytes_text(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


# --- event->silver latency -----------------------------------------------------------------------


@dataclass(frozen=True)
class Latency:
    """Event->silver latency of one ingest micro-batch, measured when its silver writes committed."""

    batch_id: int
    #: seconds from the oldest record's Kafka timestamp to the commit
    oldest: float
    #: seconds from the newest record's Kafka timestamp to the commit
    newest: float
    #: when it was measured (``time.time()``)
    at: float
    #: the same per topic: (oldest, newest)
    topics: Mapping[str, tuple[float, float]] = field(default_factory=dict)

    def text(self) -> str:
        """``newest-oldest``, e.g. ``0.4s-1.3s`` (one figure when they read the same)."""
        newest, oldest = duration_text(self.newest), duration_text(self.oldest)
        return newest if newest == oldest else f"{newest}-{oldest}"


class LatencyRegistry:
    """The latest :class:`Latency` per ingest query; written by the ingest writer, read by the view.

    In-process and thread-safe: ``foreachBatch`` runs on the driver, in the pipeline's process.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._latest: dict[str, Latency] = {}

    def publish(
        self,
        query: str,
        batch_id: int,
        bounds: Mapping[str, tuple[int | None, int | None]],
        *,
        now: float | None = None,
    ) -> Latency | None:
        """Record batch ``batch_id`` of ``query``: ``bounds`` is, per topic, the least and greatest
        record timestamp in unix microseconds (None: the topic's records have none)."""
        at = time.time() if now is None else now
        topics = {
            topic: (at - lo / 1e6, at - hi / 1e6)
            for topic, (lo, hi) in sorted(bounds.items())
            if lo is not None and hi is not None
        }
        if not topics:
            return None
        latency = Latency(
            batch_id,
            oldest=max(old for old, _ in topics.values()),
            newest=min(new for _, new in topics.values()),
            at=at,
            topics=topics,
        )
        with self._lock:
            self._latest[query] = latency
        return latency

    def get(self, query: str) -> Latency | None:
        with self._lock:
            return self._latest.get(query)

    def clear(self) -> None:
        with self._lock:
            self._latest.clear()


#: the process's registry: :class:`~fitbit_stream.io.ingest.IngestWriter` publishes, the view reads
LATENCY = LatencyRegistry()


# --- the view -----------------------------------------------------------------------------------


@dataclass
class _Query:
    name: str
    last: ProgressRecord | None = None
    #: micro-batches and input rows seen during this view
    batches: int = 0
    rows: int = 0


def _backlog(record: ProgressRecord) -> str:
    parts = []
    if record.backlog_offsets is not None:
        parts.append(f"{record.backlog_offsets:,} offsets")
    if record.backlog_files is not None:
        parts.append(f"{record.backlog_files:,} files, {_bytes_text(record.backlog_bytes or 0)}")
    return "; ".join(parts) or _NONE


class LiveProgress:
    """Every query's progress: a table redrawn in place (``live``) or plain lines through ``say``.

    ``queries`` lists the queries the run will start, shown as ``waiting`` until their first batch
    (the listener also reports any other query of the session). ``quarantine`` returns the
    quarantine's counts by reason, or None when they cannot have changed (see
    :func:`quarantine_counter`); :meth:`showing` calls it on a thread of its own every
    ``quarantine_every`` seconds. ``clock`` is ``time.time`` (tests pass their own).
    """

    def __init__(
        self,
        queries: Iterable[str] = (),
        *,
        say: Callable[[str], None] = print,
        live: bool = False,
        console: Any = None,
        quarantine: Callable[[], Mapping[str, int] | None] | None = None,
        quarantine_every: float = 5.0,
        latency: LatencyRegistry = LATENCY,
        title: str = "fitbit_stream",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.live = live
        self.title = title
        self._say = say
        self._console = console
        self._quarantine = quarantine
        self._quarantine_every = quarantine_every
        self._latency = latency
        self._clock = clock
        self._started = clock()
        self._lock = threading.Lock()
        self._queries: dict[str, _Query] = {name: _Query(name) for name in queries}
        self._counts: dict[str, int] | None = None
        self._baseline: dict[str, int] | None = None

    # --- input -------------------------------------------------------------------------------------

    def on_progress(self, record: ProgressRecord) -> None:
        """One query progress (a listener event): a new batch, or a later copy of the last one."""
        with self._lock:
            query = self._queries.setdefault(record.query_name, _Query(record.query_name))
            last = query.last
            fresh = last is None or record.run_id != last.run_id or record.batch_id > last.batch_id
            if fresh:
                query.batches += 1
                query.rows += record.num_input_rows
            elif last is not None and record.batch_id < last.batch_id:
                return  # an older batch's copy: the row shows the latest
            query.last = record
        if fresh and not self.live:
            self._say(self.line(record))

    def set_quarantine(self, counts: Mapping[str, int]) -> None:
        """The quarantine's counts by reason now (the first call is the baseline of ``+n``)."""
        with self._lock:
            before = self.quarantine_text()
            self._counts = dict(counts)
            if self._baseline is None:
                self._baseline = dict(counts)
            after = self.quarantine_text()
        if after != before and not self.live:
            self._say(after)

    # --- output ------------------------------------------------------------------------------------

    def _latency_of(self, name: str, batch_id: int | None = None) -> Latency | None:
        latency = self._latency.get(name)
        if latency is None or latency.at < self._started:  # an earlier run's, in this process
            return None
        if batch_id is not None and latency.batch_id != batch_id:
            return None
        return latency

    def line(self, record: ProgressRecord) -> str:
        """The plain line of one micro-batch: the ops line, plus event->silver latency when known."""
        latency = self._latency_of(record.query_name, record.batch_id)
        suffix = f", event->silver {latency.text()}" if latency is not None else ""
        return record.line() + suffix

    def rows(self, now: float | None = None) -> list[tuple[str, ...]]:
        """The table's rows (:data:`COLUMNS`), one per query in the order they became known."""
        now = self._clock() if now is None else now
        out: list[tuple[str, ...]] = []
        with self._lock:
            queries = list(self._queries.values())
        for query in queries:
            record = query.last
            if record is None:
                out.append((query.name, _NONE, "0", "0", _NONE, _NONE, "waiting", _NONE))
                continue
            seconds = (record.batch_duration_ms or 0) / 1000
            ended = record.timestamp.replace(tzinfo=UTC).timestamp() + seconds
            rate = record.processed_rows_per_second
            latency = self._latency_of(query.name)
            out.append(
                (
                    query.name,
                    str(record.batch_id),
                    f"{query.batches:,}",
                    f"{query.rows:,}",
                    _NONE if rate is None else f"{rate:,.0f}",
                    _backlog(record),
                    f"{duration_text(seconds)}, {duration_text(now - ended)} ago",
                    _NONE if latency is None else latency.text(),
                )
            )
        return out

    def quarantine_text(self) -> str:
        """``quarantine: late 3 (+1), malformed_json 2`` (``+n``: since the view started)."""
        counts, baseline = self._counts, self._baseline or {}
        if counts is None:
            return "quarantine: not read yet"
        if not counts:
            return "quarantine: empty"
        parts = []
        for reason, count in sorted(counts.items()):
            new = count - baseline.get(reason, 0)
            parts.append(f"{reason} {count:,}" + (f" (+{new:,})" if new > 0 else ""))
        return "quarantine: " + ", ".join(parts)

    def table(self, now: float | None = None) -> Any:
        """The ``rich.table.Table`` of :meth:`rows`, titled with the elapsed time, the quarantine below."""
        now = self._clock() if now is None else now
        table = _rich("table").Table(
            box=_rich("box").SIMPLE_HEAD,
            title=f"{self.title} · {duration_text(now - self._started)}",
            title_justify="left",
            caption=self.quarantine_text(),
            caption_justify="left",
        )
        for name in COLUMNS:
            table.add_column(name, justify="left" if name in ("query", "backlog", "last batch") else "right")
        for row in self.rows(now):
            table.add_row(*row)
        return table

    def renderable(self) -> Any:
        return self.table()

    # --- running -----------------------------------------------------------------------------------

    def _poll(self, stop: threading.Event) -> None:
        assert self._quarantine is not None
        wait = 0.0
        while not stop.wait(wait):
            wait = self._quarantine_every
            try:
                counts = self._quarantine()
            except Exception:  # a figure we cannot read must never disturb the run
                log.debug("could not count the quarantine", exc_info=True)
                continue
            if counts is not None:
                self.set_quarantine(counts)

    @contextmanager
    def showing(self, *, refresh_per_second: float = 2.0) -> Iterator[LiveProgress]:
        """Show progress while inside: the live table (``live``) and the quarantine poll."""
        self._started = self._clock()
        stop = threading.Event()
        poller = None
        if self._quarantine is not None:
            poller = threading.Thread(target=self._poll, args=(stop,), name="live-progress-quarantine", daemon=True)
            poller.start()
        try:
            if self.live:
                with (
                    _rich("live").Live(
                        console=self._console,
                        get_renderable=self.renderable,
                        refresh_per_second=refresh_per_second,
                        redirect_stdout=True,
                        redirect_stderr=True,
                    ),
                    _logging_above_live(),
                ):
                    yield self
            else:
                yield self
        finally:
            stop.set()
            if poller is not None:
                poller.join(timeout=30)


@contextmanager
def _logging_above_live() -> Iterator[None]:
    """Point the root logger's console handlers at the live view's stdout/stderr proxies.

    A ``StreamHandler`` keeps the stream it was given (``sys.stderr`` when logging was configured);
    writing there directly would tear through the table. ``rich.live.Live`` replaces ``sys.stdout``
    and ``sys.stderr`` with proxies that print above it: the handlers use those while it runs.
    """
    moved: list[tuple[logging.StreamHandler[IO[str]], IO[str]]] = []
    real = {id(sys.__stdout__): sys.stdout, id(sys.__stderr__): sys.stderr}
    for handler in logging.getLogger().handlers:
        if type(handler) is logging.StreamHandler and id(handler.stream) in real:
            proxy = real[id(handler.stream)]
            old = handler.setStream(proxy)
            if old is not None:
                moved.append((handler, old))
    try:
        yield
    finally:
        for handler, old in moved:
            handler.setStream(old)


def live_wanted(stream: IO[str], *, no_live: bool = False, say: Callable[[str], None] | None = None) -> bool:
    """Whether to show the live table: ``stream`` is a terminal, ``--no-live`` was not given, and
    ``rich`` is installed (otherwise ``say`` is told why not, and the plain lines stand in)."""
    if no_live:
        return False
    try:
        terminal = stream.isatty()
    except (AttributeError, ValueError):  # a closed or unusual stream
        return False
    if not terminal:
        return False
    if importlib.util.find_spec("rich") is None:
        if say is not None:
            say("live view off: the 'rich' package is not installed (pip install 'fitbit-stream[local]')")
        return False
    return True


def quarantine_counter(spark: SparkSession, config: Config) -> Callable[[], dict[str, int] | None]:
    """The quarantine's counts by reason: one small aggregate, only when the table has a new version.

    Returns a function for :class:`LiveProgress` (None: the version has not moved since the last
    count). The version comes from the Delta log on a local path (no Spark job), else from the
    table's latest history entry.
    """
    from fitbit_stream.io.commits import latest_version
    from fitbit_stream.io.tables import Tables

    tables = Tables(config)
    ref = tables.ref("quarantine")
    seen: list[int | None] = []

    def version() -> int | None:
        local = latest_version(ref)
        if local is not None:
            return local
        row = tables.delta(spark, ref).history(1).select("version").first()
        return None if row is None else int(row["version"])

    def count() -> dict[str, int] | None:
        current = version()
        if seen and current is not None and seen[-1] == current:
            return None
        rows = tables.read(spark, ref).groupBy("reason").count().collect()
        seen[:] = [current]
        return {str(row["reason"]): int(row["count"]) for row in rows}

    return count
