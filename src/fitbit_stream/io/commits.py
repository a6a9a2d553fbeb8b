"""What a run wrote to each table, read from the Delta log's commit metrics (no Spark job).

A query's progress counts the rows it *read*; users want the rows each table *gained*. Every Delta
commit records its operation's metrics (``numOutputRows`` of an append, ``numTargetRowsInserted``
/ ``Updated`` / ``Deleted`` of a MERGE, ``numDeletedRows`` of a DELETE) in its ``commitInfo``. For a
table on a path Python can read, the versions before and after a run bound the commits to sum.
Tables only Spark reaches (Unity Catalog names, URIs) are left out: no figure rather than a job.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from fitbit_stream.io.tables import TableRef, is_uri

__all__ = ["Written", "caught_up", "latest_version", "table_id", "written_since"]


@dataclass(frozen=True)
class Written:
    """Rows a table gained, changed and lost over some commits."""

    inserted: int = 0
    updated: int = 0
    deleted: int = 0

    def __add__(self, other: Written) -> Written:
        return Written(self.inserted + other.inserted, self.updated + other.updated, self.deleted + other.deleted)

    def __bool__(self) -> bool:
        return bool(self.inserted or self.updated or self.deleted)

    def text(self) -> str:
        parts = [f"+{self.inserted:,}"]
        parts += [f"~{self.updated:,}"] if self.updated else []
        parts += [f"-{self.deleted:,}"] if self.deleted else []
        return " ".join(parts)


def _log(ref: TableRef) -> Path | None:
    if ref.path is None or is_uri(ref.path):
        return None
    return Path(ref.path) / "_delta_log"


def latest_version(ref: TableRef) -> int | None:
    """The table's latest committed version (None: no table, or not on a local path)."""
    log = _log(ref)
    if log is None or not log.is_dir():
        return None
    versions = [int(p.name[:-5]) for p in log.glob("*.json") if p.name[:-5].isdigit()]
    return max(versions, default=None)


def _metrics(commit: Path) -> Written:
    for line in commit.read_text(encoding="utf-8").splitlines():
        info = json.loads(line).get("commitInfo") if line.startswith('{"commitInfo"') else None
        if info is None:
            continue
        m = {k: int(v) for k, v in (info.get("operationMetrics") or {}).items() if str(v).isdigit()}
        operation = info.get("operation", "")
        if operation == "MERGE":
            return Written(
                m.get("numTargetRowsInserted", 0), m.get("numTargetRowsUpdated", 0), m.get("numTargetRowsDeleted", 0)
            )
        if operation == "DELETE":
            return Written(deleted=m.get("numDeletedRows", 0))
        return Written(inserted=m.get("numOutputRows", 0))
    return Written()


def written_since(ref: TableRef, version: int | None) -> Written | None:
    """What the commits after ``version`` (None: since the table was created) did to the table;
    None when the log is not readable from here."""
    log = _log(ref)
    latest = latest_version(ref)
    if log is None or latest is None:
        return None
    start = -1 if version is None else version
    total = Written()
    for v in range(start + 1, latest + 1):
        commit = log / f"{v:020d}.json"
        if commit.is_file():
            total += _metrics(commit)
    return total


def table_id(ref: TableRef) -> str | None:
    """The table's Delta id (``metaData.id`` of its first commit; None when not readable here)."""
    log = _log(ref)
    first = None if log is None else log / f"{0:020d}.json"
    if first is None or not first.is_file():
        return None
    for line in first.read_text(encoding="utf-8").splitlines():
        meta = json.loads(line).get("metaData") if '"metaData"' in line else None
        if meta is not None:
            return str(meta.get("id"))
    return None


def caught_up(checkpoint: str, inputs: list[TableRef]) -> bool:
    """Whether the streaming query with this checkpoint has read every committed version of its
    Delta ``inputs`` (so an available-now run of it would find nothing to do).

    True only when it is certain: the checkpoint's last planned batch is committed and each of its
    Delta source offsets names one of ``inputs`` (by table id) at the version after that table's
    latest (``index`` -1: the version read whole). Anything else (no checkpoint, a URI, a source
    that is not one of the inputs, an unreadable file) is False: the query runs.
    """
    if is_uri(checkpoint):
        return False
    root = Path(checkpoint)
    try:
        offsets = [int(p.name) for p in (root / "offsets").iterdir() if p.name.isdigit()]
        commits = {int(p.name) for p in (root / "commits").iterdir() if p.name.isdigit()}
        if not offsets or max(offsets) not in commits:
            return False
        lines = (root / "offsets" / str(max(offsets))).read_text(encoding="utf-8").splitlines()
        by_id = {table_id(ref): ref for ref in inputs}
        sources = [json.loads(line) for line in lines[2:] if line.strip()]
        if not sources or len(sources) != len(inputs):
            return False
        for source in sources:
            ref = by_id.get(source.get("reservoirId"))
            latest = None if ref is None else latest_version(ref)
            if latest is None or source.get("index") != -1 or source.get("reservoirVersion") != latest + 1:
                return False
        return True
    except (OSError, ValueError, AttributeError):
        return False
