"""The pure half of the benchmark: figures from literal progress JSON, percentiles, ratios, the rate
search's decisions, the soak's windows, the report's rows and the JSON's keys."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import pytest

from fitbit_stream.bench.cli import build_parser, options_from_args, parse_scales
from fitbit_stream.bench.incremental import parse_run_output
from fitbit_stream.bench.options import PHASES, BenchOptions
from fitbit_stream.bench.report import (
    BASELINE_COPY,
    BASELINE_HANDWRITTEN,
    BASELINE_NOOP,
    STAGE_ALONE,
    BenchResult,
    CommandRun,
    IncrementalFigures,
    LatencyStats,
    QueryFigures,
    RateStep,
    ScalePoint,
    SeriesPoint,
    SoakFigures,
    SteadyFigures,
    SustainedFigures,
    figures_from_progress,
    format_report,
    job_window,
    latency_from_aggregates,
    latency_stats,
    parse_time,
    peak_memory,
    percentile,
    ratio,
    scaling_growth,
    state_growth_per_minute,
)
from fitbit_stream.bench.search import (
    backlog_ends,
    judge_step,
    load_warning,
    next_rate,
    nice_rate,
    seconds_per_million,
    settle,
    soak_windows,
    sustained_rate,
    window_p95,
)
from fitbit_stream.bench.sparkui import job_profile, query_of, sql_label, sql_profile
from fitbit_stream.bench.steady import ProgressWatch, aggregate_latency, kafka_end_offsets
from fitbit_stream.errors import InvalidConfigError

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

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
        "p99 event->silver at 2,000 events/s: 6.20 s (target <= 5 s) NOT MET",
        "p99 event->gold at 2,000 events/s: n/a (target <= 30 s) UNKNOWN",  # 1 of 151 missing: no p99
        "catch-up after production stops at 2,000 events/s: 12.5 s (target <= 10 s) NOT MET",
        # 1M rows in 250 s elapsed vs 1M rows in 12.5 s elapsed
        "full drain rows/s vs raw Kafka->Delta copy: 0.050x (target >= 0.25x) NOT MET",
        "silver_bpm rows/s vs hand-written PySpark: 0.50x (target >= 0.95x) NOT MET",
        "streaming state rows growth per minute: 0.00 (target <= 0) MET",
    ]
    assert [t.key for t in _result(with_steady=False).targets()] == ["drain_vs_copy", "handwritten"]


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
    targets = lines[lines.index("targets:") + 1 :]
    assert targets[0].split() == ["figure", "measured", "target", "status"]
    assert targets[-1].split() == ["streaming", "state", "rows", "growth", "per", "minute", "0.00", "<=", "0", "MET"]
    assert targets[4].split()[-7:] == ["12.5", "s", "<=", "10", "s", "NOT", "MET"]  # catch-up
    assert targets[3].split()[-5:] == ["n/a", "<=", "30", "s", "UNKNOWN"]  # gold p99 unknown


def test_result_json_carries_ratios_and_target_verdicts() -> None:
    data = _result().to_json()
    assert data["stage_ratios"]["silver_bpm"]["vs_handwritten"] == 0.5
    assert data["pipeline_rows_per_elapsed_second"] == 4000.0
    assert data["baselines"][BASELINE_COPY]["rows_per_elapsed_second"] == 80_000.0
    assert [(t["key"], t["met"]) for t in data["targets"]] == [
        ("steady_p99_silver", False),
        ("steady_p99_gold", None),
        ("catch_up", False),
        ("drain_vs_copy", False),
        ("handwritten", False),
        ("state_growth", True),
    ]
    # the keys the issue's bar names
    assert data["steady"]["event_to_silver"]["p99_ms"] == 6200.0
    assert data["steady"]["event_to_gold"]["p99_ms"] is None
    assert data["steady"]["catch_up_seconds"] == 12.5
    assert (data["sustained"], data["incremental"], data["soak"], data["scaling"]) == (None, None, None, None)


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


# --- the sustained-rate search -------------------------------------------------------------------


def step(rate: float, holds: bool, why: str = "") -> RateStep:
    return RateStep(rate, rate, 300, 1000.0 if holds else 9000.0, 0, 100.0, 100.0, holds, why)


def nxt(steps: list[RateStep], *, max_rate: float = 64000.0, max_steps: int = 12) -> float | None:
    """The search of the defaults: start 1,000, floor 125, bisect to 12.5%."""
    return next_rate(steps, start=1000.0, max_rate=max_rate, min_rate=125.0, resolution=0.125, max_steps=max_steps)


def test_the_search_doubles_while_steps_hold_then_bisects_until_within_the_resolution() -> None:
    steps: list[RateStep] = []
    assert nxt(steps) == 1000
    steps += [step(1000, True)]
    assert nxt(steps) == 2000
    steps += [step(2000, True), step(4000, True)]
    assert nxt(steps) == 8000
    steps += [step(8000, False)]
    assert nxt(steps) == 6000  # between 4,000 (held) and 8,000 (failed)
    steps += [step(6000, True)]
    assert nxt(steps) == 7000
    steps += [step(7000, False)]
    assert nxt(steps) == 6500
    steps += [step(6500, True)]
    # 6,500 held, 7,000 failed: 7,000 <= 6,500 x 1.125, close enough
    assert nxt(steps) is None
    assert sustained_rate(steps, max_rate=64000) == (6500, "bracketed")


def test_the_search_halves_when_the_first_step_fails_and_stops_at_the_floor() -> None:
    steps = [step(1000, False)]
    assert nxt(steps) == 500
    steps += [step(500, False), step(250, False), step(125, False)]
    assert nxt(steps) is None  # 62.5 is below the floor
    assert sustained_rate(steps, max_rate=64000) == (None, "below_min")
    steps = [step(1000, False), step(500, True)]
    assert nxt(steps) == 750
    assert sustained_rate(steps, max_rate=64000) == (500, "bracketed")


def test_the_search_stops_at_the_cap_and_when_the_producer_cannot_keep_up() -> None:
    steps = [step(1000, True), step(2000, True)]
    assert nxt(steps, max_rate=3000.0) == 3000  # doubling clipped to the cap
    steps += [step(3000, True)]
    assert nxt(steps, max_rate=3000.0) is None
    assert sustained_rate(steps, max_rate=3000) == (3000, "max_rate")
    producer = [step(1000, True), step(2000, False, "producer reached only 1,700/s of 2,000/s")]
    assert producer[1].producer_bound
    assert nxt(producer) is None
    assert sustained_rate(producer, max_rate=64000) == (1000, "producer")


def test_the_search_ignores_a_hold_above_a_failure_and_respects_the_step_budget() -> None:
    # noise: 4,000 failed but 6,000 held later; the bracket is [2,000, 4,000]
    steps = [step(1000, True), step(2000, True), step(4000, False), step(6000, True)]
    assert nxt(steps) == 3000
    assert sustained_rate(steps, max_rate=64000) == (2000, "bracketed")
    steps = [step(1000, True), step(2000, True)]
    assert nxt(steps, max_steps=2) is None
    assert sustained_rate(steps, max_rate=64000, max_steps=2) == (2000, "max_steps")


def test_a_bisection_rate_is_rounded_to_two_significant_figures() -> None:
    assert nice_rate(5250) == 5200  # round half to even
    assert nice_rate(937.5) == 940
    assert nice_rate(12_345) == 12_000
    assert nice_rate(3) == 3


def test_a_step_holds_with_the_rate_reached_a_p99_under_the_bar_and_a_flat_backlog() -> None:
    assert judge_step(2000, 1990, 4200.0, 900.0, 2500.0) == (True, "")  # grew 1,600 <= 2,000 (1 s)
    assert judge_step(2000, 1800, 1000.0, 0.0, 0.0) == (False, "producer reached only 1,800/s of 2,000/s")
    assert judge_step(2000, 2000, None, 0.0, 0.0)[1].startswith("p99 unknown")
    assert judge_step(2000, 2000, 5001.0, 0.0, 0.0) == (False, "p99 5.00 s > 5 s")
    assert judge_step(2000, 2000, 3000.0, 1000.0, 3500.0) == (
        False,
        "backlog grew by 2,500 records (allowed 2,000)",
    )
    assert judge_step(2000, 2000, 3000.0, None, 10.0) == (False, "no backlog samples in the window")
    assert judge_step(4, 4, 100.0, 0.0, 9.0) == (True, "")  # at least 10 records of slack
    assert judge_step(2000, 2000, 6000.0, 0.0, 0.0, p99_bound_ms=10_000) == (True, "")


def test_backlog_ends_are_means_over_the_first_and_last_fifth_of_the_window() -> None:
    # a sawtooth 0, 100, 200 repeating, then growing at the end
    samples = [(float(t), float((t % 3) * 100)) for t in range(100, 200)]
    samples += [(float(t), 1000.0) for t in range(180, 200)]
    first, last = backlog_ends(samples, window_start=100, window_end=200)
    assert first == pytest.approx(sum((t % 3) * 100 for t in range(100, 121)) / 21)
    assert last is not None
    assert last > 500
    assert backlog_ends([], window_start=100, window_end=200) == (None, None)
    assert backlog_ends(samples, window_start=200, window_end=100) == (None, None)
    assert backlog_ends([(100.0, 5.0), (200.0, 7.0)], window_start=100, window_end=200, probe=10) == (5.0, 7.0)


# --- soak, scale sweep, load ---------------------------------------------------------------------


def test_soak_windows_follow_the_warm_up_and_end_with_production_without_overlapping() -> None:
    assert soak_windows(1000.0, 2800.0, warmup=30, window=300) == ((1030.0, 1330.0), (2500.0, 2800.0))
    # a 2-minute smoke soak: two windows of 45 s
    assert soak_windows(0.0, 120.0, warmup=30, window=300) == ((30.0, 75.0), (75.0, 120.0))


def test_window_p95_compares_each_query_last_window_with_its_first() -> None:
    first, last = (0.0, 100.0), (200.0, 300.0)
    batches = {
        # (start s, rows, ms, state): idle batches (0 rows) and batches outside the windows are left out
        "bronze_kafka_multiplex": [(float(t), 10, 1000, 0) for t in range(0, 100, 10)]
        + [(float(t), 10, 1100 + t, 0) for t in range(200, 300, 10)]
        + [(150.0, 10, 99_000, 0), (210.0, 0, 50_000, 0)],
        "derived_gym_occupancy": [(5.0, 1, 400, 0), (250.0, 1, 800, 0)],
    }
    p95 = window_p95(batches, first, last)
    bronze = p95["bronze_kafka_multiplex"]
    assert (bronze["first_batches"], bronze["last_batches"], bronze["first_p95_ms"]) == (10, 10, 1000.0)
    assert bronze["last_p95_ms"] == pytest.approx(1385.5)  # 1,300..1,390: rank 8.55 of 0..9
    assert bronze["ratio"] == pytest.approx(1.3855)
    assert p95["derived_gym_occupancy"]["ratio"] is None  # one batch per window: too few for a p95


def test_seconds_per_million_and_the_scale_sweeps_largest_over_smallest() -> None:
    assert seconds_per_million(30.0, 60_000) == 500.0
    assert seconds_per_million(None, 60_000) is None
    assert seconds_per_million(30.0, 0) is None
    points = [
        ScalePoint(1.0, 1_200_000, 240.0, 200.0),
        ScalePoint(0.05, 60_000, 30.0, 500.0),
        ScalePoint(0.25, 300_000, 75.0, 250.0),
    ]
    growth, small, large = scaling_growth(points)
    assert (growth, small, large) == (0.4, points[1], points[0])
    assert scaling_growth(points[:1]) == (None, None, None)


def test_a_phase_starting_on_a_loaded_machine_prints_a_warning() -> None:
    assert load_warning(1.5, phase="steady") is None
    assert load_warning(4.25, phase="steady") == (
        "WARNING: 1-minute load average 4.25 > 1.5 at the start of steady: a figure from a loaded machine is not a "
        "figure"
    )


def test_a_phase_waits_for_the_load_an_earlier_phase_left_to_fall_but_not_forever() -> None:
    loads = iter([3.4, 2.6, 1.9, 1.4, 0.9])
    slept: list[float] = []
    assert settle(lambda: next(loads), bound=1.5, limit_seconds=60, sleep=slept.append) == (15.0, 1.4)
    assert slept == [5.0, 5.0, 5.0]
    # already quiet: no wait at all
    slept.clear()
    assert settle(lambda: 0.4, bound=1.5, limit_seconds=60, sleep=slept.append) == (0.0, 0.4)
    assert slept == []
    # a machine that stays busy: the limit, then the phase starts (and warns)
    assert settle(lambda: 4.0, bound=1.5, limit_seconds=12, sleep=slept.append) == (12.0, 4.0)
    assert slept == [5.0, 5.0, 2.0]
    # 0 turns the wait off
    assert settle(lambda: 4.0, bound=1.5, limit_seconds=0, sleep=slept.append) == (0.0, 4.0)


# --- progress, incremental run, options ----------------------------------------------------------


def test_progress_watch_keeps_the_kafka_offsets_read_and_the_end_of_the_last_work() -> None:
    watch = ProgressWatch()

    def event(batch: int, at: str, rows: int, ms: int, end: object) -> Any:
        p = {
            "id": "q1",
            "name": "bronze_kafka_multiplex",
            "batchId": batch,
            "timestamp": at,
            "numInputRows": rows,
            "durationMs": {"triggerExecution": ms},
            "sources": [{"endOffset": end}],
        }
        return SimpleNamespace(progress=SimpleNamespace(json=json.dumps(p)))

    watch.onQueryProgress(event(0, "2026-11-28T10:00:00.000Z", 5, 1500, {"bpm": {"0": 10, "1": 4}}))
    watch.onQueryProgress(event(1, "2026-11-28T10:00:02.000Z", 0, 100, '{"bpm": {"0": 12}}'))  # JSON text
    assert watch.end_offsets("bronze_kafka_multiplex") == {("bpm", 0): 12, ("bpm", 1): 4}
    assert watch.end_offsets("silver_users") == {}
    assert watch.last_work_end() == datetime(2026, 11, 28, 10, 0, 1, 500000, tzinfo=UTC).timestamp()
    assert kafka_end_offsets({"sources": [{"endOffset": {"logOffset": 3}}]}) == {}  # a Delta source


def test_the_incremental_runs_figures_come_from_its_output() -> None:
    output = "\n".join(
        [
            "[run] sources ok: kafka 127.0.0.1:5000; sql jdbc:sqlite:/x/source.db",
            "stage                             rows   seconds",
            "bronze_kafka_bpm                   900       4.2",
            "bronze_kafka_user_info_workout     100       3.1",
            "bronze_sql                           0       0.3",
            "[run] drained in 12.5s",
        ]
    )
    # realtime mode reads Kafka with two queries: the records are their sum
    assert parse_run_output(output) == (12.5, 1000)
    layered = "bronze_kafka_multiplex             700       4.2\n[run] drained in 9.0s"
    assert parse_run_output(layered, mode="layered") == (9.0, 700)
    assert parse_run_output(layered) == (9.0, None)
    assert parse_run_output("fitbit-stream: error: no broker") == (None, None)


def test_bench_flags_build_the_options_and_all_runs_every_phase() -> None:
    args = build_parser().parse_args(
        ["--phases", "steady", "--rate", "2000", "--sustain-seconds", "20", "--scales", "0.05,0.25,1.0"]
    )
    options = options_from_args(args)
    assert (options.phases, options.rate, options.sustain_seconds, options.scales) == (
        ("steady",),
        2000.0,
        20.0,
        (0.05, 0.25, 1.0),
    )
    assert options_from_args(build_parser().parse_args([])).phases == PHASES
    assert PHASES == ("drain", "incremental", "steady", "sustained", "soak", "scaling")
    assert (BenchOptions().sustain_seconds, BenchOptions().soak_seconds) == (300, 1800)
    assert BenchOptions(sustain_start_rate=1000).sustain_min_rate == 125


def test_bench_options_refuse_what_cannot_be_measured() -> None:
    with pytest.raises(InvalidConfigError, match="choose from"):
        BenchOptions(phases=("ramp",))
    with pytest.raises(InvalidConfigError, match="sustain seconds"):
        BenchOptions(sustain_seconds=20, warmup_seconds=30)
    assert BenchOptions(phases=("steady",), sustain_seconds=20).sustain_seconds == 20  # not run: not checked
    with pytest.raises(InvalidConfigError, match="sustain rates"):
        BenchOptions(sustain_start_rate=2000, sustain_max_rate=1000)
    with pytest.raises(InvalidConfigError, match="scale"):
        BenchOptions(scales=(0.05, 0.0))
    with pytest.raises(InvalidConfigError, match="scales"):
        parse_scales("0.05,big")
    with pytest.raises(InvalidConfigError, match="settle seconds"):
        BenchOptions(settle_seconds=-1)


# --- the load phases in the report and the JSON --------------------------------------------------


def _full_result() -> BenchResult:
    result = _result()
    result.sustained = {
        "pipeline": SustainedFigures(
            "pipeline",
            6500.0,
            "bracketed",
            [step(1000, True), step(8000, False, "p99 9.00 s > 5 s")],
            300,
            30,
            5000,
            1000,
            64000,
        ),
        BASELINE_COPY: SustainedFigures(
            BASELINE_COPY, 32000.0, "producer", [step(32000, True)], 300, 30, 5000, 1000, 64000
        ),
    }
    result.incremental = IncrementalFigures(
        ["fitbit-stream", "run", "--once"],
        [CommandRun("nothing new", 0, 21.5, 0, 6.0, 0), CommandRun("1,000 new records", 1000, 27.25, 0, 11.0, 1000)],
    )
    result.soak = SoakFigures(
        rate_per_second=2000,
        duration_seconds=1800,
        warmup_seconds=30,
        produced=3_600_000,
        achieved_rate_per_second=2000.0,
        first_window=(30.0, 330.0),
        last_window=(1500.0, 1800.0),
        batch_p95={
            "bronze_kafka_multiplex": {
                "first_batches": 90,
                "last_batches": 88,
                "first_p95_ms": 2000.0,
                "last_p95_ms": 2300.0,
                "ratio": 1.15,
            }
        },
        batch_p95_ratio=1.15,
        batch_p95_query="bronze_kafka_multiplex",
        files={"heart_rate": {"start": 40, "end": 52}},
        backlog_first=1500.0,
        backlog_last=1600.0,
        catch_up_seconds=4.0,
    )
    result.scaling = [ScalePoint(0.05, 60_000, 30.0, 500.0, 3.0, 50.0), ScalePoint(1.0, 1_200_000, 240.0, 200.0)]
    result.phase_load = {
        "steady": {"before": [0.4, 0.5, 0.6], "after": [1.9, 1.0, 0.7]},
        "incremental": {"before": [1.4, 2.5, 0.9], "after": [2.3, 2.5, 1.0], "settled_seconds": 65.0},
    }
    return result


def test_every_figure_of_the_issue_is_a_row_with_its_target() -> None:
    rows = {t.key: (t.value, t.bar(), t.verdict) for t in _full_result().targets()}
    assert rows == {
        "sustained_rate": (6500.0, ">= 5,000 ev/s", "MET"),
        "sustained_copy_rate": (32000.0, "-", "-"),
        "sustained_vs_copy": (6500 / 32000, "-", "-"),
        "steady_p99_silver": (6.2, "<= 5 s", "NOT MET"),
        "steady_p99_gold": (None, "<= 30 s", "UNKNOWN"),
        "catch_up": (12.5, "<= 10 s", "NOT MET"),
        "drain_vs_copy": (0.05, ">= 0.25x", "NOT MET"),
        "incremental_nothing_new": (21.5, "<= 25 s", "MET"),
        "incremental_new": (27.25, "-", "-"),
        "soak_batch_p95": (1.15, "<= 1.2x", "MET"),
        "scaling_seconds_per_million": (0.4, "<= 1x", "MET"),
        "handwritten": (0.5, ">= 0.95x", "NOT MET"),
        "state_growth": (0.0, "<= 0", "MET"),
    }
    names = {t.key: t.name for t in _full_result().targets()}
    assert names["sustained_copy_rate"] == "raw Kafka->Delta copy's sustained rate, producer-bound: at least"
    assert names["scaling_seconds_per_million"] == "drain s/M records at scale 1 / at 0.05"
    nothing_held = _full_result()
    nothing_held.sustained["pipeline"] = SustainedFigures(
        "pipeline", None, "max_steps", [step(1000, False), step(500, False)], 300, 30, 5000, 1000, 64000
    )
    first = nothing_held.targets()[0]
    assert (first.value, first.verdict) == (0.0, "NOT MET")  # nothing held is a rate of 0, not an unknown
    assert first.name.endswith("backlog flat), nothing held down to 500 ev/s")
    failed = _full_result()
    failed.incremental = IncrementalFigures(["x"], [CommandRun("nothing new", 0, 3.0, 1)])
    assert next(t for t in failed.targets() if t.key == "incremental_nothing_new").value is None


def test_the_report_prints_the_search_steps_the_runs_the_soak_and_the_sweep() -> None:
    text = format_report(_full_result())
    assert "load (1 min) per phase: steady 0.40 -> 1.90, incremental 1.40 -> 2.30 (after 65s settling)" in text
    assert "sustained rate, pipeline: 6,500 events/s (bracketed; steps of 300s, warm-up 30s" in text
    steps = text.split("sustained rate, pipeline")[1].splitlines()[2:4]
    assert [row.split()[:3] for row in steps] == [["1,000", "1,000", "1.00"], ["8,000", "8,000", "9.00"]]
    assert steps[0].endswith("holds")
    assert steps[1].endswith("fails: p99 9.00 s > 5 s")
    assert "  nothing new            wall    21.5s, exit 0, drained in 6.0s after start-up, Kafka query read 0" in text
    assert "soak: 3,600,000 records at 2,000/s (asked 2,000/s) for 1800s; first window [30, 330) s" in text
    assert "Delta files: heart_rate 40->52" in text
    sweep = [line.split() for line in text.splitlines() if line.strip().startswith(("0.05 ", "1 "))]
    assert sweep == [["0.05", "60,000", "30.0", "500.0", "3.0", "50.0"], ["1", "1,200,000", "240.0", "200.0", "-", "-"]]


def test_the_json_has_every_phase_under_its_key() -> None:
    data = json.loads(json.dumps(_full_result().to_json(), default=str))
    assert data["sustained"]["pipeline"]["rate_per_second"] == 6500.0
    assert data["sustained"]["pipeline"]["steps"][1]["why"] == "p99 9.00 s > 5 s"
    assert data["sustained"][BASELINE_COPY]["lower_bound"] is True
    assert data["sustained"]["ratio_to_copy"] == pytest.approx(0.203125)
    assert data["incremental"]["runs"][0] == {
        "label": "nothing new",
        "new_records": 0,
        "wall_seconds": 21.5,
        "exit_code": 0,
        "drained_seconds": 6.0,
        "ingested_rows": 0,
    }
    assert data["soak"]["batch_p95_ratio"] == 1.15
    assert data["soak"]["files"] == {"heart_rate": {"start": 40, "end": 52}}
    assert data["scaling"]["largest_over_smallest"] == 0.4
    assert (data["scaling"]["smallest_scale"], data["scaling"]["largest_scale"]) == (0.05, 1.0)
    assert data["phase_load"]["steady"] == {"before": [0.4, 0.5, 0.6], "after": [1.9, 1.0, 0.7]}
    assert data["phase_load"]["incremental"]["settled_seconds"] == 65.0
    assert {t["key"] for t in data["targets"]} >= {"sustained_rate", "incremental_nothing_new", "soak_batch_p95"}


def test_latency_from_aggregates_keeps_the_one_percent_rule() -> None:
    assert latency_from_aggregates(100, 1, 50.5, 99.01, 100.0) == LatencyStats(100, 1, 50.5, 99.01, 100.0)
    assert latency_from_aggregates(100, 2, 50.5, 99.01, 100.0) == LatencyStats(100, 2, 50.5, None, 100.0)
    assert latency_from_aggregates(0, 5, None, None, None) == LatencyStats(0, 5, None, None, None)


def test_spark_aggregates_the_same_percentiles_as_python(spark: SparkSession) -> None:
    values = [float(v) for v in (40, 10, 20, 30, 1000, 15, 25)]
    frame = spark.createDataFrame([(v,) for v in values] + [(None,)], "latency_ms double")
    # one null (never arrived) and 2 expected that bronze never held: 3 missing of 10
    stats = aggregate_latency(frame, expected=10)
    assert stats == latency_from_aggregates(7, 3, percentile(values, 0.5), percentile(values, 0.99), 1000.0)
    assert stats.p99_ms is None  # 30% missing
    assert aggregate_latency(frame.where("latency_ms < 500")) == latency_stats([v for v in values if v < 500])
