"""Per-query progress: shown while queries run, and kept in the ops Delta table ``_query_progress``.

Figures come from Spark's own ``StreamingQueryProgress`` (never from wall clocks of ours): input
rows, rows/s, batch duration, and the input backlog each source reports: offsets behind the latest
for Kafka (latest minus end offset, summed over partitions), outstanding files and bytes for a Delta
source. The table is keyed by (run_id, batch_id), so recording the same progress twice (from the
listener and from ``recentProgress``) keeps one row.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pyspark.sql.streaming.listener import StreamingQueryListener
from pyspark.sql.types import (
    DoubleType,
    LongType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

if TYPE_CHECKING:
    from pyspark.sql import SparkSession
    from pyspark.sql.streaming.listener import (
        QueryIdleEvent,
        QueryProgressEvent,
        QueryStartedEvent,
        QueryTerminatedEvent,
    )
    from pyspark.sql.streaming.query import StreamingQuery

    from fitbit_stream.io.tables import TableRef, Tables

__all__ = [
    "QUERY_PROGRESS",
    "ProgressRecord",
    "ProgressRecorder",
    "backlog_of",
    "record_of",
    "stop_between_batches",
]

log = logging.getLogger(__name__)

#: how many (run_id, batch_id) keys the recorder remembers as shown
_SHOWN_KEPT = 4096
#: The batches whose progress ``flush`` remembers having written (a day of 1-s batches of 8 queries
#: would be 700,000; copies of a batch arrive within seconds).
_FLUSHED_KEPT = 65536


def _remember(seen: dict[tuple[str, int], None], keys: Iterable[tuple[str, int]], *, kept: int) -> None:
    """Add ``keys`` to ``seen`` (an insertion-ordered set), keeping only the latest ``kept``."""
    seen.update(dict.fromkeys(keys))
    while len(seen) > kept:
        del seen[next(iter(seen))]


QUERY_PROGRESS = StructType(
    [
        StructField("query_name", StringType()),
        StructField("query_id", StringType()),
        StructField("run_id", StringType()),
        StructField("batch_id", LongType()),
        StructField("timestamp", TimestampType()),
        StructField("num_input_rows", LongType()),
        StructField("input_rows_per_second", DoubleType()),
        StructField("processed_rows_per_second", DoubleType()),
        StructField("batch_duration_ms", LongType()),
        StructField("backlog_offsets", LongType()),
        StructField("backlog_files", LongType()),
        StructField("backlog_bytes", LongType()),
        StructField("state_rows", LongType()),
        StructField("progress_json", StringType()),
    ]
)


@dataclass(frozen=True)
class ProgressRecord:
    query_name: str
    query_id: str
    run_id: str
    batch_id: int
    timestamp: datetime
    num_input_rows: int
    input_rows_per_second: float | None
    processed_rows_per_second: float | None
    batch_duration_ms: int | None
    backlog_offsets: int | None
    backlog_files: int | None
    backlog_bytes: int | None
    state_rows: int
    progress_json: str

    def line(self) -> str:
        backlog = []
        if self.backlog_offsets is not None:
            backlog.append(f"{self.backlog_offsets} offsets")
        if self.backlog_files is not None:
            backlog.append(f"{self.backlog_files} files/{self.backlog_bytes or 0} bytes")
        rate = self.processed_rows_per_second or 0.0
        duration = (self.batch_duration_ms or 0) / 1000
        return (
            f"{self.query_name} batch {self.batch_id}: {self.num_input_rows} rows, {rate:,.0f} rows/s, "
            f"{duration:.1f}s, backlog {', '.join(backlog) or 'n/a'}"
        )


def _offsets(text: object) -> dict[str, dict[str, int]] | None:
    """Kafka offsets as the progress JSON gives them: ``{"topic": {"0": 12, ...}}`` (maybe as text)."""
    if text is None:
        return None
    value = json.loads(text) if isinstance(text, str) else text
    if not isinstance(value, dict):
        return None
    out: dict[str, dict[str, int]] = {}
    for topic, partitions in value.items():
        if not isinstance(partitions, dict):
            return None
        out[str(topic)] = {str(p): int(o) for p, o in partitions.items()}
    return out


def backlog_of(sources: Iterable[Mapping[str, Any]]) -> tuple[int | None, int | None, int | None]:
    """(offsets behind latest, outstanding files, outstanding bytes) over a progress's sources."""
    offsets = files = size = None
    for source in sources:
        latest = _offsets(source.get("latestOffset"))
        end = _offsets(source.get("endOffset"))
        if latest is not None and end is not None and source.get("description", "").startswith("Kafka"):
            behind = sum(
                max(0, o - end.get(topic, {}).get(p, o)) for topic, parts in latest.items() for p, o in parts.items()
            )
            offsets = (offsets or 0) + behind
        metrics = source.get("metrics") or {}
        if "numFilesOutstanding" in metrics:
            files = (files or 0) + int(float(metrics["numFilesOutstanding"]))
        if "numBytesOutstanding" in metrics:
            size = (size or 0) + int(float(metrics["numBytesOutstanding"]))
    return offsets, files, size


def _timestamp(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).replace(tzinfo=None)


def record_of(progress: Mapping[str, Any]) -> ProgressRecord:
    """One ``StreamingQueryProgress`` (as its JSON dict) as a row of ``_query_progress``."""
    sources = progress.get("sources") or []
    offsets, files, size = backlog_of(sources)
    durations = progress.get("durationMs") or {}
    state_rows = sum(int(op.get("numRowsTotal", 0)) for op in progress.get("stateOperators") or [])

    def rate(key: str) -> float | None:
        value = progress.get(key)
        # Spark writes NaN (as "NaN" in JSON) for a rate it could not compute: that is no figure.
        number = None if value is None else float(value)
        return None if number is None or number != number else number

    return ProgressRecord(
        query_name=str(progress.get("name") or ""),
        query_id=str(progress["id"]),
        run_id=str(progress["runId"]),
        batch_id=int(progress["batchId"]),
        timestamp=_timestamp(str(progress["timestamp"])),
        num_input_rows=int(progress.get("numInputRows", 0)),
        input_rows_per_second=rate("inputRowsPerSecond"),
        processed_rows_per_second=rate("processedRowsPerSecond"),
        batch_duration_ms=int(durations["triggerExecution"]) if "triggerExecution" in durations else None,
        backlog_offsets=offsets,
        backlog_files=files,
        backlog_bytes=size,
        state_rows=state_rows,
        progress_json=json.dumps(progress, sort_keys=True, separators=(",", ":")),
    )


class ProgressRecorder(StreamingQueryListener):
    """Shows each query's progress as it happens and buffers it for ``flush`` to the ops table.

    Listener callbacks run on Spark's listener thread: they only format and buffer. Writing to Delta
    happens in ``flush``, called by the pipeline's own thread between or alongside queries.

    ``on_progress`` also receives every record the listener delivers (each copy, not only the first;
    not the ``recentProgress`` ones of :meth:`add_all`): the live view
    (:class:`~fitbit_stream.io.live.LiveProgress`) reads the same events.
    """

    def __init__(
        self,
        show: Callable[[str], None] = log.info,
        on_progress: Callable[[ProgressRecord], None] | None = None,
    ) -> None:
        self._show = show
        self._on_progress = on_progress
        self._lock = threading.Lock()
        self._pending: dict[tuple[str, int], ProgressRecord] = {}
        # The batches already written by ``flush``: a later copy of one is not written again. Only
        # the latest keys are kept; copies of a batch arrive within the query's run.
        self._flushed: dict[tuple[str, int], None] = {}
        # Shown apart from pending: the buffer is flushed once per run, and a batch's progress may
        # reach the listener after ``recentProgress`` buffered it unshown. Only the latest keys are
        # kept (insertion order), so a long run does not grow it.
        self._shown: dict[tuple[str, int], None] = {}

    # --- listener callbacks -----------------------------------------------------------------------

    def onQueryStarted(self, event: QueryStartedEvent) -> None:
        pass

    def onQueryProgress(self, event: QueryProgressEvent) -> None:
        try:
            self.add(event.progress)
        except Exception:  # a progress we cannot read must never disturb the query
            log.exception("could not record query progress")

    def onQueryIdle(self, event: QueryIdleEvent) -> None:
        pass

    def onQueryTerminated(self, event: QueryTerminatedEvent) -> None:
        pass

    # --- buffer -------------------------------------------------------------------------------------

    def add(self, progress: Mapping[str, Any], *, show: bool = True) -> None:
        # pyspark's StreamingQueryProgress is a dict whose nested offsets are JSON text; its ``json``
        # is the canonical form, the same as the listener's.
        json_text = getattr(progress, "json", None)
        record = record_of(json.loads(json_text) if isinstance(json_text, str) else progress)
        key = (record.run_id, record.batch_id)
        with self._lock:
            self._pending[key] = record
            fresh = show and key not in self._shown
            if fresh:
                _remember(self._shown, [key], kept=_SHOWN_KEPT)
        if fresh:
            self._show(record.line())
        if show and self._on_progress is not None:
            self._on_progress(record)

    def add_all(self, progresses: Iterable[Mapping[str, Any]]) -> None:
        """Progress already known to the caller (``query.recentProgress``): buffered, not shown again."""
        for progress in progresses:
            self.add(progress, show=False)

    def flush(self, spark: SparkSession, tables: Tables, ref: TableRef) -> int:
        """Append the buffered progress of batches not written before to ``ref``; return the count.

        One blind append, not a MERGE: a (run_id, batch_id) is one run of one query, which only this
        recorder sees, and it remembers what it wrote (the first copy of a batch stays).
        """
        with self._lock:
            fresh = [key for key in self._pending if key not in self._flushed]
            records = [self._pending[key] for key in fresh]
            self._pending.clear()
            _remember(self._flushed, fresh, kept=_FLUSHED_KEPT)
        if not records:
            return 0
        tables.append(spark.createDataFrame([asdict(r) for r in records], QUERY_PROGRESS), ref)
        return len(records)


def stop_between_batches(queries: Iterable[StreamingQuery], *, timeout: float = 30.0, poll: float = 0.1) -> None:
    """Stop each active query at a moment its status shows no micro-batch running, at most ``timeout``
    seconds after the call (then whatever still runs is stopped as it is).

    ``StreamingQuery.stop`` interrupts the batch in flight: a foreachBatch function then fails inside
    a py4j call, Spark logs the aborted Delta write and broadcast as errors, and it tells the
    interruption apart from a real failure only by a regex over the whole Python traceback. Between
    batches there is nothing to interrupt. Either way the checkpoint stays consistent: an
    interrupted batch is not committed and runs again on restart.
    """
    pending = [q for q in queries if q.isActive]
    deadline = time.monotonic() + timeout
    while pending:
        late = time.monotonic() >= deadline
        for query in list(pending):
            # A stopped query's status may be stale: stopping it again is harmless.
            if late or not query.isActive or not query.status.get("isTriggerActive", False):
                query.stop()
                pending.remove(query)
        if pending:
            time.sleep(poll)
