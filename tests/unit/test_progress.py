"""Query progress as rows of the ops table: figures read from Spark's own progress JSON."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from pyspark.sql import SparkSession

from fitbit_stream.config import Config, load_config
from fitbit_stream.io.progress import QUERY_PROGRESS, ProgressRecord, ProgressRecorder, backlog_of, record_of
from fitbit_stream.io.tables import Tables

KAFKA_PROGRESS = {
    "id": "5a1c0c1e-0000-4000-8000-000000000001",
    "runId": "5a1c0c1e-0000-4000-8000-000000000002",
    "name": "bronze_kafka_multiplex",
    "timestamp": "2026-11-28T10:00:00.123Z",
    "batchId": 4,
    "numInputRows": 1500,
    "inputRowsPerSecond": "NaN",
    "processedRowsPerSecond": 750.0,
    "durationMs": {"addBatch": 1800, "triggerExecution": 2000},
    "stateOperators": [],
    "sources": [
        {
            "description": "KafkaV2[Subscribe[bpm, workout]]",
            "startOffset": {"bpm": {"0": 100, "1": 50}, "workout": {"0": 7}},
            "endOffset": {"bpm": {"0": 900, "1": 750}, "workout": {"0": 7}},
            "latestOffset": {"bpm": {"0": 1000, "1": 760}, "workout": {"0": 9}},
            "numInputRows": 1500,
            "metrics": {"avgOffsetsBehindLatest": "37.3", "maxOffsetsBehindLatest": "100"},
        }
    ],
    "sink": {"description": "DeltaSink[/lake/bronze/kafka_multiplex_bz]", "numOutputRows": 1500},
}

DELTA_PROGRESS = {
    **KAFKA_PROGRESS,
    "name": "silver_bpm",
    "batchId": 0,
    "numInputRows": 3,
    "processedRowsPerSecond": 1.5,
    "stateOperators": [{"numRowsTotal": 4}, {"numRowsTotal": 6}],
    "sources": [
        {
            "description": "DeltaSource[file:/lake/bronze/kafka_multiplex_bz]",
            "startOffset": None,
            "endOffset": {"sourceVersion": 1, "reservoirVersion": 3, "index": -1, "isStartingVersion": False},
            "latestOffset": None,
            "numInputRows": 3,
            "metrics": {"numBytesOutstanding": "2048", "numFilesOutstanding": "2"},
        }
    ],
}


def test_kafka_backlog_is_latest_minus_end_offset_summed_over_partitions() -> None:
    # bpm: (1000-900) + (760-750); workout: 9-7
    assert backlog_of(KAFKA_PROGRESS["sources"]) == (112, None, None)  # type: ignore[arg-type]


def test_a_progress_becomes_one_row() -> None:
    record = record_of(DELTA_PROGRESS)
    assert record == ProgressRecord(
        query_name="silver_bpm",
        query_id="5a1c0c1e-0000-4000-8000-000000000001",
        run_id="5a1c0c1e-0000-4000-8000-000000000002",
        batch_id=0,
        timestamp=datetime(2026, 11, 28, 10, 0, 0, 123000),
        num_input_rows=3,
        input_rows_per_second=None,  # Spark's NaN is no figure
        processed_rows_per_second=1.5,
        batch_duration_ms=2000,
        backlog_offsets=None,
        backlog_files=2,
        backlog_bytes=2048,
        state_rows=10,
        progress_json=json.dumps(DELTA_PROGRESS, sort_keys=True, separators=(",", ":")),
    )
    assert record.line() == "silver_bpm batch 0: 3 rows, 2 rows/s, 2.0s, backlog 2 files/2048 bytes"


def test_offsets_given_as_json_text_read_the_same() -> None:
    as_text = {
        **KAFKA_PROGRESS,
        "sources": [
            {
                **KAFKA_PROGRESS["sources"][0],  # type: ignore[index]
                "endOffset": json.dumps({"bpm": {"0": 900, "1": 750}, "workout": {"0": 7}}),
                "latestOffset": json.dumps({"bpm": {"0": 1000, "1": 760}, "workout": {"0": 9}}),
            }
        ],
    }
    assert record_of(as_text).backlog_offsets == 112


def test_the_recorder_shows_each_batch_once_and_keeps_the_latest_copy() -> None:
    shown: list[str] = []
    recorder = ProgressRecorder(show=shown.append)
    recorder.add(KAFKA_PROGRESS)
    recorder.add_all([KAFKA_PROGRESS, DELTA_PROGRESS])
    recorder.add(KAFKA_PROGRESS)
    assert shown == ["bronze_kafka_multiplex batch 4: 1500 rows, 750 rows/s, 2.0s, backlog 112 offsets"]


def test_the_recorder_hands_every_listener_copy_to_on_progress() -> None:
    # The live view reads the same events: each copy the listener delivers (a later copy of a batch
    # may carry later figures), not the recentProgress ones the caller already knows.
    seen: list[tuple[str, int]] = []
    recorder = ProgressRecorder(show=lambda _: None, on_progress=lambda r: seen.append((r.query_name, r.batch_id)))
    recorder.add(KAFKA_PROGRESS)
    recorder.add(KAFKA_PROGRESS)
    recorder.add_all([DELTA_PROGRESS])
    recorder.add(DELTA_PROGRESS)
    assert seen == [("bronze_kafka_multiplex", 4), ("bronze_kafka_multiplex", 4), ("silver_bpm", 0)]


def test_flush_appends_each_batch_once_with_its_first_flushed_copy(
    spark: SparkSession, spark_config: Config, tmp_path: Path
) -> None:
    tables = Tables(load_config(None, [f"storage.root={tmp_path}", f"jars_dir={spark_config.jars_dir}"]))
    ref = tables.ensure(spark, "_query_progress", schema=QUERY_PROGRESS, layer="ops")
    recorder = ProgressRecorder(show=lambda _: None)
    recorder.add(KAFKA_PROGRESS)
    recorder.add_all([DELTA_PROGRESS])
    assert recorder.flush(spark, tables, ref) == 2
    # a later copy of a written batch (its figures moved on) is not written again; a new batch is
    later = {**KAFKA_PROGRESS, "numInputRows": 9}
    recorder.add(later)
    recorder.add({**KAFKA_PROGRESS, "batchId": 5})
    assert recorder.flush(spark, tables, ref) == 1
    assert recorder.flush(spark, tables, ref) == 0
    rows = tables.read(spark, ref).select("query_name", "batch_id", "num_input_rows").orderBy("query_name", "batch_id")
    assert [tuple(r) for r in rows.collect()] == [
        ("bronze_kafka_multiplex", 4, 1500),
        ("bronze_kafka_multiplex", 5, 1500),
        ("silver_bpm", 0, 3),
    ]
