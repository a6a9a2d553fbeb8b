"""Rows written per table, from the Delta log's commit metrics (no Spark)."""

from __future__ import annotations

import json
from pathlib import Path

from fitbit_stream.io.commits import Written, caught_up, latest_version, written_since
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


def _table(root: Path, name: str, table_id: str, versions: int) -> TableRef:
    log = root / name / "_delta_log"
    log.mkdir(parents=True)
    (log / f"{0:020d}.json").write_text(json.dumps({"metaData": {"id": table_id}}) + "\n", encoding="utf-8")
    for v in range(1, versions):
        _commit(log, v, "WRITE", numOutputRows=1)
    return TableRef("silver", name, str(root / name), None)


def _checkpoint(root: Path, batch: int, sources: list[dict[str, object]], *, committed: bool) -> str:
    (root / "offsets").mkdir(parents=True, exist_ok=True)
    (root / "commits").mkdir(parents=True, exist_ok=True)
    lines = ["v1", json.dumps({"batchWatermarkMs": 0}), *(json.dumps(s) for s in sources)]
    (root / "offsets" / str(batch)).write_text("\n".join(lines), encoding="utf-8")
    if committed:
        (root / "commits" / str(batch)).write_text("v1\n{}", encoding="utf-8")
    return str(root)


def test_caught_up_only_when_every_delta_input_was_read_to_its_latest_version(tmp_path: Path) -> None:
    users = _table(tmp_path, "users", "id-users", versions=3)  # versions 0..2
    logs = _table(tmp_path, "gym_logs", "id-logs", versions=2)  # versions 0..1
    done = [
        {"sourceVersion": 1, "reservoirId": "id-users", "reservoirVersion": 3, "index": -1, "isStartingVersion": False},
        {"sourceVersion": 1, "reservoirId": "id-logs", "reservoirVersion": 2, "index": -1, "isStartingVersion": False},
    ]
    assert caught_up(_checkpoint(tmp_path / "a", 4, done, committed=True), [users, logs])
    # the last planned batch is not committed: it runs again
    assert not caught_up(_checkpoint(tmp_path / "b", 4, done, committed=False), [users, logs])
    # a version written since
    _commit(tmp_path / "users" / "_delta_log", 3, "WRITE", numOutputRows=1)
    assert not caught_up(str(tmp_path / "a"), [users, logs])
    # a version read part way, a source that is not one of the inputs, no checkpoint, a URI
    partial = [{**done[1], "reservoirVersion": 1, "index": 4}]
    assert not caught_up(_checkpoint(tmp_path / "c", 0, partial, committed=True), [logs])
    assert not caught_up(_checkpoint(tmp_path / "d", 0, [done[0]], committed=True), [logs])
    assert not caught_up(str(tmp_path / "none"), [logs])
    assert not caught_up("abfss://c@a.dfs.core.windows.net/chk/q", [logs])
