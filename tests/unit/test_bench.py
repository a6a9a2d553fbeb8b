"""The pure half of the benchmark: figures from literal progress JSON, percentiles, ratios, report."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from fitbit_stream.bench.report import (
    BASELINE_COPY,
    BASELINE_HANDWRITTEN,
    BASELINE_NOOP,
    STAGE_ALONE,
    BenchResult,
    LatencyStats,
    QueryFigures,
    SeriesPoint,
    SteadyFigures,
    figures_from_progress,
    format_report,
    job_window,
    latency_stats,
    parse_time,
    peak_memory,
    percentile,
    ratio,
    state_growth_per_minute,
)
from fitbit_stream.bench.sparkui import job_profile, query_of, sql_label, sql_profile
from fitbit_stream.errors import InvalidConfigError

MB = 1024 * 1024


def progress(batch: int, at: str, rows: int, trigger_ms: int, state: list[int] | None = None) -> dict[str, object]:
    return {
        "id": "q",
        "runId": "r",
        "name": "silver_bpm",
        "batchId": batch,
        "timestamp": at,
        "numInputRows": rows,
        "durationMs": {"addBatch": trigger_ms - 100, "latestOffset": 40, "triggerExecution": trigger_ms},
        "stateOperators": [{"numRowsTotal": n} for n in state or []],
    }


# --- percentiles and ratios ----------------------------------------------------------------------


def test_percentile_interpolates_between_closest_ranks_like_numpy() -> None:
    values = [40.0, 10.0, 20.0, 30.0]  # any order
    assert percentile(values, 0.0) == 10.0
    assert percentile(values, 0.5) == 25.0
    assert percentile(values, 0.99) == pytest.approx(39.7)
    assert percentile(values, 1.0) == 40.0
    assert percentile([7.0], 0.99) == 7.0
    assert percentile([], 0.5) is None


def test_percentile_rejects_a_quantile_outside_zero_one() -> None:
    with pytest.raises(InvalidConfigError, match="between 0 and 1"):
        percentile([1.0], 99)


def test_ratio_is_none_when_a_figure_is_missing_or_the_denominator_is_not_positive() -> None:
    assert ratio(50.0, 200.0) == 0.25
    assert ratio(None, 200.0) is None
    assert ratio(50.0, None) is None
    assert ratio(50.0, 0.0) is None


def test_latency_stats_gives_no_p99_when_more_than_one_percent_never_arrived() -> None:
    arrived = [float(ms) for ms in range(1, 101)]  # 1..100 ms
    one_missing = latency_stats(arrived, missing=1)
    assert one_missing == LatencyStats(100, 1, 50.5, one_missing.p99_ms, 100.0)
    assert one_missing.p99_ms == pytest.approx(99.01)
    late = latency_stats(arrived, missing=2)
    assert (late.p50_ms, late.p99_ms, late.missing) == (50.5, None, 2)
    assert latency_stats([]) == LatencyStats(0, 0, None, None, None)


def test_times_from_progress_json_and_the_ui_rest_api_read_the_same() -> None:
    assert parse_time("2026-11-28T10:00:00.123Z") == datetime(2026, 11, 28, 10, 0, 0, 123000, tzinfo=UTC)
    assert parse_time("2026-11-28T10:00:00.123GMT") == datetime(2026, 11, 28, 10, 0, 0, 123000, tzinfo=UTC)


# --- per-query figures ---------------------------------------------------------------------------


def test_figures_sum_rows_and_phases_and_span_first_batch_start_to_last_batch_end() -> None:
    reports = [  # out of order, as a listener may deliver them
        progress(1, "2026-11-28T10:00:05.000Z", 600, 3000, state=[4, 6]),
        progress(0, "2026-11-28T10:00:00.000Z", 400, 2000, state=[3]),
        progress(2, "2026-11-28T10:00:09.000Z", 0, 500),
    ]
    figures = figures_from_progress("silver_bpm", reports, elapsed_seconds=12.0)
    assert figures == QueryFigures(
        name="silver_bpm",
        rows=1000,
        batches=3,
        wall_seconds=9.5,  # 10:00:00 -> 10:00:09 + 0.5 s
        elapsed_seconds=12.0,
        durations_ms={"addBatch": 5200, "latestOffset": 120, "triggerExecution": 5500},
        state_rows=10,
        first_batch_start="2026-11-28T10:00:00+00:00",
        last_batch_end="2026-11-28T10:00:09.500000+00:00",
    )
    assert figures.rows_per_second == pytest.approx(1000 / 9.5)
    assert figures.rows_per_elapsed_second == pytest.approx(1000 / 12.0)
    assert job_window(figures) == (
        datetime(2026, 11, 28, 10, 0, 0, tzinfo=UTC),
        datetime(2026, 11, 28, 10, 0, 9, 500000, tzinfo=UTC),
    )


def test_a_query_without_progress_has_no_rate() -> None:
    figures = figures_from_progress("idle", [], elapsed_seconds=3.0)
    assert (figures.rows, figures.batches, figures.wall_seconds, figures.rows_per_second) == (0, 0, None, None)


def test_peak_memory_takes_the_stages_submitted_in_the_window() -> None:
    stages: list[dict[str, Any]] = [
        {"submissionTime": "2026-11-28T09:59:59.000GMT", "peakExecutorMetrics": {"JVMHeapMemory": 900 * MB}},
        {
            "submissionTime": "2026-11-28T10:00:01.000GMT",
            "peakExecutorMetrics": {"JVMHeapMemory": 300 * MB, "ProcessTreeJVMRSSMemory": 700 * MB},
        },
        {
            "submissionTime": "2026-11-28T10:00:04.000GMT",
            "peakExecutorMetrics": {"JVMHeapMemory": 500 * MB, "ProcessTreeJVMRSSMemory": 0},
        },
        {"submissionTime": None, "peakExecutorMetrics": {"JVMHeapMemory": 990 * MB}},  # never ran
        {"submissionTime": "2026-11-28T10:00:06.000GMT"},  # no metrics reported
    ]
    since, until = datetime(2026, 11, 28, 10, 0, 0, tzinfo=UTC), datetime(2026, 11, 28, 10, 0, 5, tzinfo=UTC)
    assert peak_memory(stages, since=since, until=until) == (500 * MB, 700 * MB)
    assert peak_memory([], since=since, until=until) == (None, None)


HEADER = "silver_bpm\nid = 5a1c\nrunId = 9f2e\nbatch = 12"
START = "start at NativeMethodAccessorImpl.java"


def test_job_profile_ranks_job_kinds_by_summed_duration_inside_the_window() -> None:
    jobs = [
        {
            "name": "start at NativeMethodAccessorImpl.java:0",
            "description": f"{HEADER} - MERGE operation - writing new files for only inserts",
            "submissionTime": "2026-11-28T10:00:01.000GMT",
            "completionTime": "2026-11-28T10:00:03.500GMT",
        },
        {
            "name": "start at NativeMethodAccessorImpl.java:0",
            "description": f"{HEADER} - MERGE operation - writing new files for only inserts",
            "submissionTime": "2026-11-28T10:00:04.000GMT",
            "completionTime": "2026-11-28T10:00:05.000GMT",
        },
        {
            "name": "start at NativeMethodAccessorImpl.java:0",
            "description": f"Delta: {HEADER} - MERGE operation: Compute snapshot for version: 41",
            "submissionTime": "2026-11-28T10:00:02.000GMT",
            "completionTime": "2026-11-28T10:00:02.250GMT",
        },
        {
            "name": "call at /venv/py4j/clientserver.py:644",
            "description": HEADER,
            "submissionTime": "2026-11-28T10:00:06.000GMT",
            "completionTime": "2026-11-28T10:00:06.250GMT",
        },
        {  # outside the window
            "name": "collect at x",
            "submissionTime": "2026-11-28T10:01:00.000GMT",
            "completionTime": "2026-11-28T10:01:30.000GMT",
        },
        {"name": "running", "submissionTime": "2026-11-28T10:00:04.000GMT"},  # not finished
    ]
    profile = job_profile(
        jobs, since=datetime(2026, 11, 28, 10, 0, tzinfo=UTC), until=datetime(2026, 11, 28, 10, 0, 30, tzinfo=UTC)
    )
    assert profile == {
        "jobs": 4,
        "job_seconds": 4.0,
        "top": [
            {
                "what": f"MERGE operation - writing new files for only inserts | {START}:N",
                "count": 2,
                "seconds": 3.5,
            },
            {
                "what": f"Delta: MERGE operation: Compute snapshot for version: N | {START}:N",
                "count": 1,
                "seconds": 0.25,
            },
            {"what": "micro-batch | call at /venv/py4j/clientserver.py:N", "count": 1, "seconds": 0.25},
        ],
    }


def test_sql_executions_are_named_by_operation_plan_root_and_tables_read() -> None:
    executions: list[dict[str, Any]] = [
        {
            "description": HEADER,
            "submissionTime": "2026-11-28T10:00:01.000GMT",
            "duration": 1500,
            "planDescription": "== Physical Plan ==\nAdaptiveSparkPlan (12)\n+- HashAggregate (4)\n"
            "   +- FileScan parquet [query#1] Location: TahoeLogFileIndex(file:/data/bench/r1/lake/ops/"
            "_event_time_state)",
        },
        {
            "description": f"{HEADER} - MERGE operation - writing new files for only inserts",
            "submissionTime": "2026-11-28T10:00:03.000GMT",
            "duration": 4000,
            "planDescription": "== Physical Plan ==\nExecute MergeIntoCommand (1)\n   +- MergeIntoCommand (2)",
        },
        {"description": HEADER, "submissionTime": "2026-11-28T10:00:05.000GMT"},  # still running
    ]
    assert sql_label(executions[0]) == "micro-batch | AdaptiveSparkPlan [ops._event_time_state]"
    assert sql_profile(executions) == {
        "executions": 2,
        "execution_seconds": 5.5,
        "top": [
            {
                "what": "MERGE operation - writing new files for only inserts | Execute MergeIntoCommand",
                "count": 1,
                "seconds": 4.0,
            },
            {"what": "micro-batch | AdaptiveSparkPlan [ops._event_time_state]", "count": 1, "seconds": 1.5},
        ],
    }


def test_state_growth_is_the_slope_per_minute_after_the_warm_up() -> None:
    series = [
        SeriesPoint(0, 10, 1.0, 2.0, state_rows=500, event_time_state_rows=1),  # warm-up: left out
        SeriesPoint(30, 10, 1.0, 2.0, state_rows=100, event_time_state_rows=10),
        SeriesPoint(60, 10, 1.0, 2.0, state_rows=100, event_time_state_rows=20),
        SeriesPoint(90, 10, 1.0, 2.0, state_rows=100, event_time_state_rows=30),
    ]
    assert state_growth_per_minute(series, after_seconds=30) == 0.0
    assert state_growth_per_minute(series, after_seconds=30, ops=True) == 20.0
    assert state_growth_per_minute(series[:2], after_seconds=30) is None


# --- the result and its report -------------------------------------------------------------------


def _figures(name: str, rows: int, wall: float, elapsed: float | None = None, **kw: object) -> QueryFigures:
    return QueryFigures(name=name, rows=rows, batches=1, wall_seconds=wall, elapsed_seconds=elapsed, **kw)  # type: ignore[arg-type]


def _result(with_steady: bool = True) -> BenchResult:
    steady = SteadyFigures(
        rate_per_second=2000,
        duration_seconds=180,
        warmup_seconds=30,
        trigger_seconds=1,
        produced=360_000,
        achieved_rate_per_second=1999.5,
        event_to_silver=LatencyStats(300_000, 0, 2500.0, 6200.0, 9000.0),
        event_to_gold=LatencyStats(150, 1, 8000.0, None, 12000.0),
        event_to_completed_workout=LatencyStats(150, 0, 3000.0, 4000.0, 4100.0),
        series=[SeriesPoint(30, 20_000, 2400.0, 6000.0, 0, 40)],
        session_seconds=60,
        catch_up_seconds=12.5,
        state_growth_per_minute=0.0,
        ops_state_growth_per_minute=120.0,
        batch_ms={"silver_bpm": {"batches": 60, "p50_ms": 2000.0, "p99_ms": 4000.0}},
        heap_peak_bytes=1024 * MB,
        rss_peak_bytes=2048 * MB,
    )
    return BenchResult(
        machine={"cpu": "Test CPU", "cores": 2, "memory_gb": 8.0, "load_before": [1.0], "load_after": [2.0]},
        settings={"scale": 1.0, "partitions": 3, "shuffle_partitions": 4, "seed": 42},
        backlog={"kafka_records": 1_000_000, "readings": 995_000, "sql_statements": 500, "seconds": 20.0},
        stages=[
            _figures("bronze_kafka_multiplex", 1_000_000, 40.0, 45.0, heap_peak_bytes=512 * MB),
            _figures("silver_bpm", 995_000, 99.5, 110.0, state_rows=0),
        ],
        pipeline=_figures("pipeline", 1_000_000, 250.0, 250.0),
        baselines={
            BASELINE_NOOP: _figures(BASELINE_NOOP, 1_000_000, 5.0, 8.0),
            BASELINE_COPY: _figures(BASELINE_COPY, 1_000_000, 10.0, 12.5),
            BASELINE_HANDWRITTEN: _figures(BASELINE_HANDWRITTEN, 995_000, 49.75, 55.0),
        },
        steady=steady if with_steady else None,
    )


def test_stage_ratios_divide_rows_per_second_by_each_baseline() -> None:
    ratios = _result().stage_ratios()
    assert ratios["bronze_kafka_multiplex"] == {"vs_noop": 0.125, "vs_copy": 0.25, "vs_handwritten": None}
    assert ratios["silver_bpm"] == {"vs_noop": 0.05, "vs_copy": 0.1, "vs_handwritten": 0.5}


def test_targets_compare_elapsed_drain_with_elapsed_copy_and_the_stage_with_the_hand_written_one() -> None:
    lines = [t.line() for t in _result().targets()]
    assert lines == [
        # 1M rows in 250 s elapsed vs 1M rows in 12.5 s elapsed
        "full drain rows/s vs raw Kafka->Delta copy: 0.05x (target >= 0.5x) NOT MET",
        "silver_bpm rows/s vs hand-written PySpark: 0.50x (target >= 0.95x) NOT MET",
        "p99 event->silver at 2000 events/s: 6.20 s (target <= 5 s) NOT MET",
        "streaming state rows growth per minute: 0.00 (target <= 0) MET",
    ]
    assert [t.line() for t in _result(with_steady=False).targets()][2:] == []


def test_the_stage_run_alone_is_what_the_hand_written_one_is_compared_with() -> None:
    result = _result(with_steady=False)
    # in the drain silver_bpm shared the cores (99.5 s); alone it took 52 s for the same rows
    result.baselines[STAGE_ALONE] = _figures(STAGE_ALONE, 995_000, 52.0, 60.0)
    assert [t.line() for t in result.targets()][1] == (
        "silver_bpm (alone) rows/s vs hand-written PySpark: 0.96x (target >= 0.95x) MET"
    )


def test_report_shows_stages_ratios_baselines_steady_phase_and_targets() -> None:
    text = format_report(_result())
    lines = text.splitlines()
    assert lines[0] == "machine: Test CPU, 2 cores, 8.0 GB RAM; load [1.0] -> [2.0]"
    assert lines[1] == "settings: scale=1.0, partitions=3, shuffle_partitions=4, seed=42"
    assert lines[2] == "backlog: 1,000,000 Kafka records (995,000 readings), 500 SQL rows, produced in 20.0s"
    header = lines[3].split()
    assert header[:5] == ["stage", "rows", "batches", "wall", "s"]
    silver = next(line for line in lines if line.startswith("silver_bpm"))
    assert silver.split() == ["silver_bpm", "995,000", "1", "99.5", "10,000", "0.050", "0.100", "0.500", "-", "-", "0"]
    bronze = next(line for line in lines if line.startswith("bronze_kafka_multiplex"))
    assert bronze.split()[-3:] == ["512", "-", "0"]
    pipeline = next(line for line in lines if line.startswith("pipeline (elapsed, all)"))
    assert pipeline.split()[3:7] == ["1,000,000", "1", "250.0", "4,000"]
    assert "  event->silver heart_rate           p50    2.50s  p99    6.20s  max    9.00s" in text
    assert "(150 records, 1 missing)" in text  # gold: its p99 is unknown, shown as "-"
    assert "p99       -s" in text
    assert text.rstrip().endswith("streaming state rows growth per minute: 0.00 (target <= 0) MET")


def test_result_json_carries_ratios_and_target_verdicts() -> None:
    data = _result().to_json()
    assert data["stage_ratios"]["silver_bpm"]["vs_handwritten"] == 0.5
    assert data["pipeline_rows_per_elapsed_second"] == 4000.0
    assert data["baselines"][BASELINE_COPY]["rows_per_elapsed_second"] == 80_000.0
    assert [t["met"] for t in data["targets"]] == [False, False, False, True]
    assert data["steady"]["event_to_silver"]["p99_ms"] == 6200.0


def test_steady_profiles_group_by_the_query_a_job_ran_for() -> None:
    assert query_of(f"Delta: {HEADER} - MERGE operation") == "silver_bpm"
    assert query_of("save at NativeMethodAccessorImpl.java:0") == "-"
    jobs = [
        {
            "description": HEADER,
            "submissionTime": "2026-11-28T10:00:01.000GMT",
            "completionTime": "2026-11-28T10:00:02.000GMT",
        },
        {
            "description": f"Delta: {HEADER} - MERGE operation",
            "submissionTime": "2026-11-28T10:00:03.000GMT",
            "completionTime": "2026-11-28T10:00:03.500GMT",
        },
        {
            "description": "bronze_kafka_multiplex\nid = 1\nrunId = 2\nbatch = 7",
            "submissionTime": "2026-11-28T10:00:01.000GMT",
            "completionTime": "2026-11-28T10:00:01.250GMT",
        },
    ]
    assert job_profile(jobs, by_query=True)["top"] == [
        {"what": "silver_bpm", "count": 2, "seconds": 1.5},
        {"what": "bronze_kafka_multiplex", "count": 1, "seconds": 0.25},
    ]
