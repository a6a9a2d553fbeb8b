"""The start-up guards without Spark: the single-writer lock, reading a checkpoint, Kafka gaps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pyspark.sql import SparkSession

from fitbit_stream.config import Config, load_config
from fitbit_stream.errors import PipelineError
from fitbit_stream.io import guard
from fitbit_stream.io.bronze import KafkaGap, find_gaps
from fitbit_stream.io.tables import Tables, create_if_absent


def _config(tmp_path: Path) -> Config:
    return load_config(None, [f"storage.checkpoint_root={tmp_path / 'chk'}", f"storage.root={tmp_path / 'lake'}"])


def test_the_lock_refuses_a_second_holder_and_names_the_first(tmp_path: Path) -> None:
    config = _config(tmp_path)
    with guard.lock(config):
        owner = json.loads((tmp_path / "chk" / guard.LOCK_FILE).read_text())
        # flock conflicts between two open file descriptions, even in one process
        with pytest.raises(PipelineError, match=rf"another pipeline .*pid {owner['pid']} on host "), guard.lock(config):
            pass
    with guard.lock(config):  # released on exit: the next pipeline starts
        pass


def test_the_lock_skips_a_checkpoint_root_that_is_a_url(caplog: pytest.LogCaptureFixture) -> None:
    config = load_config(None, ["storage.checkpoint_root=abfss://c@account.dfs.core.windows.net/chk"])
    with guard.lock(config):
        pass
    assert "not locked" in caplog.text


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def test_read_checkpoint_finds_the_id_and_the_last_planned_and_committed_batch(tmp_path: Path) -> None:
    location = tmp_path / "q"
    _write(location / "metadata", '{"id":"5f0c"}')
    _write(location / "offsets" / "0", 'v1\n{"batchWatermarkMs":0}\n{"bpm":{"0":3,"1":0}}\n')
    _write(location / "offsets" / "1", 'v1\n{"batchWatermarkMs":0}\n{"bpm":{"0":7,"1":2}}\n')
    _write(location / "offsets" / ".1.crc", "")
    _write(location / "commits" / "0", 'v1\n{"nextBatchWatermarkMs":0}')
    _write(location / "sources" / "0" / "0", '\x00v1\n{"bpm":{"0":0,"1":0}}')
    info = guard.read_checkpoint(None, str(location))  # type: ignore[arg-type]  # local paths need no session
    assert info == guard.CheckpointInfo(str(location), True, "5f0c", 1, 0)
    assert guard.source_offsets(str(location), 0) == '{"bpm":{"0":3,"1":0}}'
    assert guard.initial_offsets(str(location)) == '{"bpm":{"0":0,"1":0}}'
    missing = guard.read_checkpoint(None, str(tmp_path / "none"))  # type: ignore[arg-type]
    assert missing == guard.CheckpointInfo(str(tmp_path / "none"), False, None, None, None)


def test_find_gaps_names_the_offsets_kafka_no_longer_holds() -> None:
    position = {("bpm", 0): 10, ("bpm", 1): 4, ("workout", 0): 0}
    earliest = {("bpm", 0): 15, ("bpm", 1): 4, ("workout", 0): 0, ("workout", 1): 9}  # a new partition: no gap
    assert find_gaps(position, earliest) == [KafkaGap("bpm", 0, 10, 14)]
    assert str(KafkaGap("bpm", 0, 10, 14)) == "topic 'bpm' partition 0: offsets 10..14"
    assert find_gaps(position, {}) == []


def test_entries_a_killed_run_began_and_never_finished_are_cleared_and_nothing_else(tmp_path: Path) -> None:
    location = tmp_path / "derived_gym_summary"
    _write(location / "metadata", '{"id":"5f0c"}')
    # killed while writing its first offset entry: Spark 4 would refuse this query on restart
    began = location / "offsets" / ".0.f5286af1-d58e-4f76-83a1-5b332038c775.tmp"
    began_crc = location / "offsets" / "..0.f5286af1-d58e-4f76-83a1-5b332038c775.tmp.crc"
    _write(began, 'v1\n{"batchWatermarkMs":0}\n')
    _write(began_crc, "")
    _write(location / "commits" / "3", "v1\n{}")
    _write(location / "commits" / ".3.crc", "")
    _write(location / "commits" / ".4.0b1c2d3e-0000-4000-8000-000000000000.tmp", "v1\n")
    removed = guard.clear_unfinished_writes(str(location))
    assert sorted(p.name for p in removed) == [
        "..0.f5286af1-d58e-4f76-83a1-5b332038c775.tmp.crc",
        ".0.f5286af1-d58e-4f76-83a1-5b332038c775.tmp",
        ".4.0b1c2d3e-0000-4000-8000-000000000000.tmp",
    ]
    assert sorted(p.name for p in (location / "offsets").iterdir()) == []
    assert sorted(p.name for p in (location / "commits").iterdir()) == [".3.crc", "3"]
    assert guard.clear_unfinished_writes(str(tmp_path / "none")) == []
    assert guard.clear_unfinished_writes("abfss://c@a.dfs.core.windows.net/chk/q") == []


def test_a_table_creation_a_killed_run_began_is_cleared_and_a_committed_log_is_kept(
    spark: SparkSession, tmp_path: Path
) -> None:
    """A SIGKILL between Delta 4 making ``_delta_log/_staged_commits`` and writing the first commit
    left a log Delta refused to create a table over (``DELTA_TABLE_NOT_FOUND``) on every restart
    (the fault suite hit it)."""
    tables = Tables(load_config(None, [f"storage.root={tmp_path / 'lake'}"]))
    ref = tables.ref("heart_rate")
    assert ref.path is not None
    log = Path(ref.path) / "_delta_log"
    (log / "_staged_commits").mkdir(parents=True)
    (log / ".00000000000000000000.json.5f0e.tmp").write_text("{", encoding="utf-8")  # never renamed
    tables.ensure(spark, "heart_rate")
    assert tables.read(spark, ref).isEmpty()
    assert tables.read(spark, ref).columns == ["device_id", "time", "heartrate", "valid"]
    # a log with a commit is a table: kept as it is
    rows = spark.createDataFrame([(101, None, 60.0, True)], tables.read(spark, ref).schema)
    tables.append(rows, ref)
    create_if_absent(spark, ref, rows.schema)
    assert tables.read(spark, ref).count() == 1
