"""Start-up guards: one pipeline per checkpoint root, and every query on the checkpoint that wrote
its tables.

Why they exist:

- A streaming query's checkpoint is the only record of what it has read. Started on a missing,
  replaced or foreign checkpoint, a query reads its input again from the start or from a wrong
  position, and Spark cannot tell: the Kafka bronze query would append every record a second time
  (the Delta sink's idempotence is keyed by the checkpoint's id, and a new checkpoint has a new
  id), and a checkpoint that belongs to other tables makes a query skip what they never received.
- Two pipelines on one checkpoint write the same batch ids and corrupt it.

**Registry.** The ops table ``_checkpoints`` (query, checkpoint_id, location, registered_at)
records the id of every query's checkpoint. For a query that never ran, the guard creates the
checkpoint's ``metadata`` file itself, in Spark's own format (``{"id":"<uuid>"}``; Spark adopts an
existing metadata file), and registers that id *before* the query starts: no query ever commits
output under an id the registry does not know. (Where Python cannot write the checkpoint location,
e.g. an ``abfss://`` URL, the checkpoint Spark creates is registered at the next start instead.)

**Rules at start, per query** (:func:`check`):

- registered id R and the checkpoint's id is R: start.
- registered id R, but the checkpoint is missing or has another id (deleted, moved, replaced,
  or copied from another pipeline): refuse with a :class:`PipelineError`, unless reset.
- not registered, checkpoint present: adopt it, unless the registry is empty, every output table
  of the pipeline is empty and the checkpoint has committed batches (the tables were deleted and
  the checkpoints kept: continuing would skip everything read before): refuse unless reset.
- not registered, no checkpoint: a new query, created and registered; unless the registry is
  empty and the query's output already holds rows (a lake from before the guard whose checkpoint
  was lost): refuse unless reset. Bronze queries are the exception: a new bronze checkpoint
  resumes after the records bronze already holds, so rows there are no reason to refuse it.

**Reset** (``fitbit-stream run --reset-checkpoints``) acts on the refused queries only. Their
checkpoint directory is moved aside to ``<name>.reset-<UTC time>`` (never deleted: it is the
evidence), and a new one is created and registered. What a new checkpoint reads:

- bronze Kafka: from the offsets after the records bronze already holds (per topic-partition,
  the greatest offset + 1; partitions bronze has never seen from the earliest), so nothing is
  appended twice and nothing is skipped (:mod:`fitbit_stream.io.bronze`);
- bronze landing: every landing file again, minus the records whose (topic, partition, offset)
  bronze already holds;
- silver and derived queries: their input from the start. Every silver and gold write is
  idempotent (insert-if-absent on the table key, or scope replacement from the current inputs),
  so the rows already written stay as they are and nothing is duplicated. The one thing a lost
  silver checkpoint takes with it is the micro-batch history behind the ``late`` rule: records
  re-read from the start are judged without it, so a record once quarantined as ``late`` may
  also be accepted. Where the input holds late records, follow a reset of silver queries with a
  full rebuild of silver and gold.

**Lock** (:func:`lock`): an exclusive ``flock`` on ``<checkpoint_root>/_pipeline.lock``, held for
the life of the pipeline; the file names the holder (pid, host, start time) for the error message.
The kernel releases the lock when its holder dies, even by SIGKILL, so a crashed pipeline never
leaves a stale lock behind. Where ``flock`` is not supported (some network file systems) the lock
falls back to creating the file exclusively, and a file left by a dead process of this host is
taken over. Checkpoint roots given as URLs are not locked (log warning): on Databricks a job's
``max_concurrent_runs: 1`` is the single-writer guarantee.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import socket
import uuid
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from pyspark.sql.types import StringType, StructField, StructType, TimestampType

from fitbit_stream.config import Config
from fitbit_stream.errors import PipelineError
from fitbit_stream.io.merge import replace_scopes
from fitbit_stream.io.tables import is_uri
from fitbit_stream.processes import pid_alive
from fitbit_stream.topology import ALL_QUERIES

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from fitbit_stream.io.tables import TableRef, Tables

__all__ = [
    "CHECKPOINT_REGISTRY",
    "LOCK_FILE",
    "QUERY_OUTPUTS",
    "REGISTRY_TABLE",
    "CheckpointInfo",
    "check",
    "checkpoint_id",
    "is_local",
    "lock",
    "read_checkpoint",
    "source_offsets",
]

log = logging.getLogger(__name__)

LOCK_FILE = "_pipeline.lock"
REGISTRY_TABLE = "_checkpoints"

#: ops table: the checkpoint id each query runs on.
CHECKPOINT_REGISTRY = StructType(
    [
        StructField("query", StringType()),
        StructField("checkpoint_id", StringType()),
        StructField("location", StringType()),
        StructField("registered_at", TimestampType()),
    ]
)

#: The tables a query's committed batches leave rows in (evidence that it ran before).
QUERY_OUTPUTS: Mapping[str, tuple[str, ...]] = {q.name: q.evidence for q in ALL_QUERIES if q.streaming}


def is_local(location: str) -> bool:
    """Whether Python's own file API reaches ``location`` (a path, not a URI such as abfss://)."""
    return not is_uri(location)


# --- reading a checkpoint ------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckpointInfo:
    """What a checkpoint directory holds. Batch ids are None when there are none (or, for a
    location Python cannot list, when unknown)."""

    location: str
    exists: bool
    checkpoint_id: str | None
    last_offsets: int | None
    last_commit: int | None


def _batch_ids(directory: Path) -> list[int]:
    # Spark's log files are named by batch id; ".<id>.<uuid>.tmp" and ".crc" files are not batches.
    try:
        return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())
    except FileNotFoundError:
        return []


def _parse_id(text: str) -> str | None:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return None
    found = value.get("id") if isinstance(value, dict) else None
    return str(found) if found else None


def checkpoint_id(spark: SparkSession, location: str) -> str | None:
    """The id in ``<location>/metadata`` (the query id Spark runs the checkpoint under), or None."""
    if is_local(location):
        try:
            return _parse_id(Path(location, "metadata").read_text(encoding="utf-8"))
        except (FileNotFoundError, NotADirectoryError):
            return None
    try:
        lines = [r[0] for r in spark.read.text(f"{location.rstrip('/')}/metadata").collect()]
    except Exception:  # a missing path raises AnalysisException (PATH_NOT_FOUND)
        return None
    return _parse_id("\n".join(lines))


def read_checkpoint(spark: SparkSession, location: str) -> CheckpointInfo:
    """The id and the last planned and committed batch of the checkpoint at ``location``."""
    ident = checkpoint_id(spark, location)
    if not is_local(location):
        return CheckpointInfo(location, ident is not None, ident, None, None)
    root = Path(location)
    offsets, commits = _batch_ids(root / "offsets"), _batch_ids(root / "commits")
    return CheckpointInfo(
        location,
        root.is_dir(),
        ident,
        offsets[-1] if offsets else None,
        commits[-1] if commits else None,
    )


#: A log entry Spark began and never renamed into place: ``.<batch>.<uuid>.tmp`` and its ``.crc``.
_UNFINISHED = re.compile(r"^\.\.?\d+\.[0-9a-f-]+\.tmp(\.crc)?$")


def clear_unfinished_writes(location: str) -> list[Path]:
    """Delete the log entries Spark began and never finished in a local checkpoint; return them.

    Spark writes each offset and commit entry to a hidden temporary file and renames it into place.
    A process killed between the two leaves the temporary file behind, and a query whose offset log
    holds no batch yet then refuses to start (Spark 4: "STATE_STORE_CHECKPOINT_LOCATION_NOT_EMPTY"),
    although nothing in the file was ever part of the checkpoint. Call it only while holding the
    checkpoint root's lock (no other writer can be mid-rename).
    """
    if not is_local(location):
        return []
    removed: list[Path] = []
    for log_dir in ("offsets", "commits"):
        try:
            entries = list(Path(location, log_dir).iterdir())
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            if _UNFINISHED.match(entry.name) and entry.is_file():
                entry.unlink(missing_ok=True)
                removed.append(entry)
    return removed


def source_offsets(location: str, batch_id: int, *, source: int = 0) -> str | None:
    """The end offsets (JSON text) of source ``source`` in batch ``batch_id`` of a local checkpoint.

    The offset log is ``v1``, the batch metadata, then one line per source (``-`` for none).
    """
    try:
        lines = Path(location, "offsets", str(batch_id)).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return None
    line = lines[2 + source] if len(lines) > 2 + source else "-"
    return None if line.strip() == "-" else line


def initial_offsets(location: str, *, source: int = 0) -> str | None:
    """The offsets a Kafka source started from (``sources/<i>/0``: a version line, then JSON)."""
    try:
        text = Path(location, "sources", str(source), "0").read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return None
    start = text.find("{")
    return text[start:].strip() if start >= 0 else None


# --- the registry ------------------------------------------------------------------------------


def _registry(spark: SparkSession, tables: Tables) -> tuple[TableRef, dict[str, tuple[str, str]]]:
    ref = tables.ensure(spark, REGISTRY_TABLE, schema=CHECKPOINT_REGISTRY, layer="ops")
    rows = tables.read(spark, ref).select("query", "checkpoint_id", "location").collect()
    return ref, {r["query"]: (r["checkpoint_id"], r["location"]) for r in rows}


def _register(spark: SparkSession, tables: Tables, ref: TableRef, entries: Mapping[str, tuple[str, str]]) -> None:
    if not entries:
        return
    now = datetime.now(UTC)
    rows = spark.createDataFrame(
        [(query, ident, location, now) for query, (ident, location) in sorted(entries.items())], CHECKPOINT_REGISTRY
    )
    replace_scopes(spark, tables, ref, rows, scopes=rows.select("query"), scope_keys=["query"], keys=["query"])


def _create_metadata(location: str) -> str | None:
    """Create ``<location>/metadata`` with a new id (atomically); None where Python cannot write."""
    if not is_local(location):
        return None
    root = Path(location)
    root.mkdir(parents=True, exist_ok=True)
    ident = str(uuid.uuid4())
    tmp = root / f".metadata.{ident}.tmp"
    tmp.write_text(json.dumps({"id": ident}, separators=(",", ":")), encoding="utf-8")
    os.replace(tmp, root / "metadata")
    return ident


def _move_aside(location: str) -> str | None:
    if not is_local(location) or not Path(location).exists():
        return None
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    target = f"{location.rstrip('/')}.reset-{stamp}"
    os.replace(location, target)
    return target


def _has_rows(spark: SparkSession, tables: Tables, name: str) -> bool:
    ref = tables.ref(name)
    return tables.exists(spark, ref) and not tables.read(spark, ref).limit(1).isEmpty()


# --- check ---------------------------------------------------------------------------------------


def check(
    spark: SparkSession,
    config: Config,
    tables: Tables,
    query_names: Collection[str],
    *,
    reset: bool = False,
) -> list[str]:
    """Verify (and create or register) the checkpoint of every query in ``query_names``.

    Raises :class:`PipelineError` naming every refused query and why, unless ``reset``; with
    ``reset`` the refused queries get new checkpoints (see the module docstring). Returns the
    names of the queries that were reset.
    """
    ref, registered = _registry(spark, tables)
    for name in query_names:
        for entry in clear_unfinished_writes(tables.checkpoint(name)):
            log.info("%s: removed %s, a checkpoint entry a killed run began and never finished", name, entry)
    infos = {name: read_checkpoint(spark, tables.checkpoint(name)) for name in query_names}
    outputs_cache: dict[str, bool] = {}

    def holds_output(query: str) -> bool:
        for table in QUERY_OUTPUTS.get(query, ()):
            if table not in outputs_cache:
                outputs_cache[table] = _has_rows(spark, tables, table)
            if outputs_cache[table]:
                return True
        return False

    lake_empty: bool | None = None
    problems: dict[str, str] = {}
    adopt: dict[str, tuple[str, str]] = {}
    create: list[str] = []
    for name, info in infos.items():
        known = registered.get(name)
        if known is not None:
            expected = known[0]
            if info.checkpoint_id == expected:
                if known[1] != info.location:  # the checkpoint root moved with its pipeline
                    adopt[name] = (expected, info.location)
                continue
            if info.checkpoint_id is None:
                problems[name] = (
                    f"its checkpoint {info.location} is missing (deleted or moved); its tables hold the "
                    f"output of checkpoint id {expected}"
                )
            else:
                problems[name] = (
                    f"its checkpoint {info.location} has id {info.checkpoint_id}, but its tables hold the "
                    f"output of checkpoint id {expected} (replaced, or copied from another pipeline)"
                )
            continue
        if info.checkpoint_id is not None:
            if not registered and info.last_commit is not None:
                if lake_empty is None:
                    lake_empty = not any(holds_output(q) for q in QUERY_OUTPUTS)
                if lake_empty:
                    problems[name] = (
                        f"its checkpoint {info.location} has committed batches 0..{info.last_commit}, but "
                        f"every output table is empty (tables deleted while the checkpoints were kept)"
                    )
                    continue
            adopt[name] = (info.checkpoint_id, info.location)
            continue
        # A new bronze checkpoint resumes after the records bronze holds (io/bronze.py): bronze
        # rows from an older pipeline or another writer are no reason to refuse it.
        if not registered and not name.startswith("bronze_") and holds_output(name):
            problems[name] = (
                f"its checkpoint {info.location} is missing, but its output tables "
                f"{', '.join(QUERY_OUTPUTS[name])} already hold rows"
            )
            continue
        create.append(name)

    if problems and not reset:
        listed = "\n".join(f"  - {name}: {why}" for name, why in sorted(problems.items()))
        raise PipelineError(
            "refusing to start: a query on a missing or foreign checkpoint would read its input again "
            f"(duplicates) or from a wrong position (gaps):\n{listed}\n"
            "Restore the checkpoint directories, or run with --reset-checkpoints to move them aside and "
            "start these queries on new checkpoints (bronze then resumes after the records it already holds)."
        )
    for name in sorted(problems):
        moved = _move_aside(infos[name].location)
        log.warning("reset checkpoint of %s (%s)", name, f"old one moved to {moved}" if moved else "none to move")
        create.append(name)
    for name in create:
        ident = _create_metadata(infos[name].location)
        if ident is not None:
            adopt[name] = (ident, infos[name].location)
    _register(spark, tables, ref, adopt)
    return sorted(problems)


# --- the single-writer lock ------------------------------------------------------------------------


def _owner_text() -> str:
    owner = {"pid": os.getpid(), "host": socket.gethostname(), "started_at": datetime.now(UTC).isoformat()}
    return json.dumps(owner)


def _describe(path: Path) -> str:
    try:
        owner = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, json.JSONDecodeError):
        return "another process"
    return f"pid {owner.get('pid', '?')} on host {owner.get('host', '?')} (since {owner.get('started_at', '?')})"


def _refused(root: str, path: Path) -> PipelineError:
    return PipelineError(
        f"another pipeline holds the checkpoints under {root}: {_describe(path)}. Two pipelines on one "
        f"checkpoint corrupt it; stop the other one first (its lock is {path})"
    )


@contextlib.contextmanager
def _exclusive_file(root: str, path: Path) -> Iterator[None]:
    """Fallback where flock is unsupported: create the file exclusively; take over a dead local holder."""
    for _ in range(2):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            try:
                owner = json.loads(path.read_text(encoding="utf-8") or "{}")
            except (OSError, json.JSONDecodeError):
                owner = {}
            if owner.get("host") == socket.gethostname() and not pid_alive(int(owner.get("pid", 0) or 0)):
                log.warning("taking over the stale lock %s of dead pid %s", path, owner.get("pid"))
                path.unlink(missing_ok=True)
                continue
            raise _refused(root, path) from None
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(_owner_text())
        try:
            yield
        finally:
            path.unlink(missing_ok=True)
        return
    raise _refused(root, path)


@contextlib.contextmanager
def lock(config: Config) -> Iterator[None]:
    """Hold the single-writer lock of ``config``'s checkpoint root for the duration of the block.

    Raises :class:`PipelineError` naming the holder when another live process holds it.
    """
    root = config.storage.checkpoint_root
    if not is_local(root):
        log.warning("checkpoint root %s is not a local path: not locked (rely on one job run at a time)", root)
        yield
        return
    directory = Path(root).absolute()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise _refused(str(directory), path) from None
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
            os.close(fd)
            fd = -1
            path.unlink(missing_ok=True)
            with _exclusive_file(str(directory), path.with_name(LOCK_FILE + ".excl")):
                yield
            return
        os.ftruncate(fd, 0)
        os.pwrite(fd, _owner_text().encode("utf-8"), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
    finally:
        if fd >= 0:
            os.close(fd)  # closing the descriptor releases the flock
