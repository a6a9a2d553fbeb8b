"""Rows written per table, from the Delta log's commit metrics (no Spark)."""

from __future__ import annotations

import json
from pathlib import Path

from fitbit_stream.io.commits import Written, latest_version, written_since
from fitbit_stream.io.tables import TableRef


def _commit(log: Path, version: int, operation: str, **metrics: int) -> None:
    info = {"commitInfo": {"operation": operation, "operationMetrics": {k: str(v) for k, v in metrics.items()}}}
    lines = [json.dumps({"add": {"path": "part-0.parquet"}}), json.dumps(info)]
    (log / f"{version:020d}.json").write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_written_since_sums_the_commits_after_a_version(tmp_path: Path) -> None:
    log = tmp_path / "heart_rate" / "_delta_log"
    log.mkdir(parents=True)
    ref = TableRef("silver", "heart_rate", str(tmp_path / "heart_rate"), None)
    _commit(log, 0, "CREATE TABLE")
    assert latest_version(ref) == 0
    _commit(log, 1, "WRITE", numOutputRows=5)
    _commit(log, 2, "MERGE", numTargetRowsInserted=3, numTargetRowsUpdated=2, numTargetRowsDeleted=1)
    _commit(log, 3, "DELETE", numDeletedRows=4)
    (log / "00000000000000000003.checkpoint.parquet").write_bytes(b"")  # not a commit
    assert latest_version(ref) == 3
    assert written_since(ref, 0) == Written(inserted=8, updated=2, deleted=5)
    assert written_since(ref, 2) == Written(deleted=4)
    assert written_since(ref, 3) == Written()
    assert not written_since(ref, 3)
    assert Written(8, 2, 5).text() == "+8 ~2 -5"
    assert Written(1_234).text() == "+1,234"


def test_a_table_python_cannot_read_has_no_figure(tmp_path: Path) -> None:
    assert written_since(TableRef("silver", "t", None, "cat.silver.t"), 0) is None
    assert written_since(TableRef("silver", "t", "abfss://c@a.dfs.core.windows.net/t", None), 0) is None
    assert written_since(TableRef("silver", "t", str(tmp_path / "missing"), None), None) is None
