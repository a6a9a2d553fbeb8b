"""The pure half of the benchmark: figures from progress JSON, percentiles, ratios, targets, report.

Nothing here touches Spark, Kafka or the clock: every function takes figures (progress JSON dicts as
Spark writes them, Spark UI REST rows, latencies in milliseconds) and returns figures or text, so
the arithmetic behind every printed ratio is unit-tested on literal numbers.

Definitions used throughout (``bench/README.md`` explains why):

- ``rows`` of a query: the sum of ``numInputRows`` over its progress reports.
- ``wall_seconds``: from the start of its first micro-batch (progress ``timestamp``) to the end of
  its last one (``timestamp`` + ``durationMs.triggerExecution``): the time spent draining, start-up
  excluded. ``rows_per_second`` is ``rows / wall_seconds``.
- ``elapsed_seconds``: the clock around the whole query (start-up, drain, termination), measured by
  the caller; the whole-pipeline and the raw-copy figures of the first target compare this one.
- percentiles: linear interpolation between the closest ranks (numpy's default, Spark's
  ``percentile``), so figures computed here and in Spark SQL agree.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from fitbit_stream.errors import InvalidConfigError

__all__ = [
    "BASELINE_COPY",
    "BASELINE_HANDWRITTEN",
    "BASELINE_NOOP",
    "STAGE_ALONE",
    "BenchResult",
    "LatencyStats",
    "QueryFigures",
    "SeriesPoint",
    "SteadyFigures",
    "Target",
    "figures_from_progress",
    "format_report",
    "job_window",
    "latency_stats",
    "parse_time",
    "peak_memory",
    "percentile",
    "ratio",
    "state_growth_per_minute",
    "targets",
]

BASELINE_NOOP = "kafka_to_noop"
BASELINE_COPY = "kafka_to_delta_copy"
BASELINE_HANDWRITTEN = "handwritten_heart_rate"
#: The library stage the hand-written baseline re-implements.
HANDWRITTEN_STAGE = "silver_bpm"
#: That stage run alone over the same bronze, as the hand-written one runs (in a drain it shares the
#: cores with the queries running beside it, so its wall time is not its own).
STAGE_ALONE = "silver_bpm_alone"

_MB = 1024 * 1024


def parse_time(text: str) -> datetime:
    """A timestamp as Spark writes it in progress JSON (``...Z``) or the UI REST API (``...GMT``)."""
    cleaned = text.strip().replace("GMT", "+00:00").replace("Z", "+00:00")
    value = datetime.fromisoformat(cleaned)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) by linear interpolation between closest ranks; None when empty."""
    if not 0.0 <= q <= 1.0:
        raise InvalidConfigError(f"percentile: q must be between 0 and 1, got {q!r}")
    if not values:
        return None
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    lo, hi = math.floor(position), math.ceil(position)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (position - lo)


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """``numerator / denominator``; None when either is unknown or the denominator is not positive."""
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return numerator / denominator


# --- per-query figures ---------------------------------------------------------------------------


@dataclass(frozen=True)
class QueryFigures:
    """What one streaming query (or the whole pipeline) did, from its progress reports."""

    name: str
    rows: int
    batches: int
    wall_seconds: float | None
    elapsed_seconds: float | None = None
    #: ``durationMs`` summed per phase over the batches (addBatch, latestOffset, walCommit, ...)
    durations_ms: dict[str, int] = field(default_factory=dict)
    #: greatest total of ``stateOperators[].numRowsTotal`` over the batches
    state_rows: int = 0
    first_batch_start: str | None = None
    last_batch_end: str | None = None
    heap_peak_bytes: int | None = None
    rss_peak_bytes: int | None = None

    @property
    def rows_per_second(self) -> float | None:
        return ratio(self.rows, self.wall_seconds)

    @property
    def rows_per_elapsed_second(self) -> float | None:
        return ratio(self.rows, self.elapsed_seconds)

    def with_memory(self, heap: int | None, rss: int | None) -> QueryFigures:
        return QueryFigures(**{**asdict(self), "heap_peak_bytes": heap, "rss_peak_bytes": rss})

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "rows_per_second": self.rows_per_second}


def figures_from_progress(
    name: str, progresses: Iterable[Mapping[str, Any]], *, elapsed_seconds: float | None = None
) -> QueryFigures:
    """One query's figures from its ``StreamingQueryProgress`` JSON dicts (any order, no repeats)."""
    reports = sorted(progresses, key=lambda p: int(p["batchId"]))
    if not reports:
        return QueryFigures(name, 0, 0, None, elapsed_seconds)
    durations: dict[str, int] = {}
    starts, ends = [], []
    state_rows = 0
    for p in reports:
        phases = {k: int(v) for k, v in (p.get("durationMs") or {}).items()}
        for phase, ms in phases.items():
            durations[phase] = durations.get(phase, 0) + ms
        start = parse_time(str(p["timestamp"]))
        starts.append(start)
        ends.append(start.timestamp() + phases.get("triggerExecution", 0) / 1000)
        state_rows = max(state_rows, sum(int(op.get("numRowsTotal", 0)) for op in p.get("stateOperators") or []))
    first, last_end = min(starts), max(ends)
    return QueryFigures(
        name=name,
        rows=sum(int(p.get("numInputRows", 0)) for p in reports),
        batches=len(reports),
        wall_seconds=round(last_end - first.timestamp(), 3),
        elapsed_seconds=elapsed_seconds,
        durations_ms=dict(sorted(durations.items())),
        state_rows=state_rows,
        first_batch_start=first.isoformat(),
        last_batch_end=datetime.fromtimestamp(last_end, UTC).isoformat(),
    )


def job_window(figures: QueryFigures) -> tuple[datetime | None, datetime | None]:
    """The instants between which a query's Spark jobs and stages were submitted (its batches)."""
    since = parse_time(figures.first_batch_start) if figures.first_batch_start else None
    until = parse_time(figures.last_batch_end) if figures.last_batch_end else None
    return since, until


def peak_memory(
    stages: Iterable[Mapping[str, Any]], *, since: datetime | None = None, until: datetime | None = None
) -> tuple[int | None, int | None]:
    """(JVM heap, JVM resident set) peaks in bytes over the Spark stages submitted in [since, until].

    ``stages`` are rows of the UI REST API's ``/stages``: each carries ``peakExecutorMetrics``,
    the executors' peak while the stage ran (in local mode the driver is the only executor).
    """
    heap: int | None = None
    rss: int | None = None
    for stage in stages:
        submitted = stage.get("submissionTime")
        if submitted is None:
            continue
        at = parse_time(str(submitted))
        if (since is not None and at < since) or (until is not None and at > until):
            continue
        metrics = stage.get("peakExecutorMetrics") or {}
        if "JVMHeapMemory" in metrics:
            heap = max(heap or 0, int(metrics["JVMHeapMemory"]))
        if int(metrics.get("ProcessTreeJVMRSSMemory", 0)) > 0:
            rss = max(rss or 0, int(metrics["ProcessTreeJVMRSSMemory"]))
    return heap, rss


# --- steady state --------------------------------------------------------------------------------


@dataclass(frozen=True)
class LatencyStats:
    """Latencies in milliseconds of the records that arrived (``missing``: never arrived in time)."""

    count: int
    missing: int
    p50_ms: float | None
    p99_ms: float | None
    max_ms: float | None


def latency_stats(latencies_ms: Sequence[float], *, missing: int = 0) -> LatencyStats:
    """p50/p99/max of ``latencies_ms``; a p99 is only given when at most 1% of the records are missing
    (otherwise the true p99 is "longer than the wait" and no number would be honest)."""
    total = len(latencies_ms) + missing
    p99 = percentile(latencies_ms, 0.99) if total and missing <= 0.01 * total else None
    return LatencyStats(
        count=len(latencies_ms),
        missing=missing,
        p50_ms=percentile(latencies_ms, 0.5),
        p99_ms=p99,
        max_ms=max(latencies_ms) if latencies_ms else None,
    )


@dataclass(frozen=True)
class SeriesPoint:
    """One window of the steady phase (``t_seconds``: its start, from the start of production)."""

    t_seconds: float
    records: int
    silver_p50_ms: float | None
    silver_p99_ms: float | None
    #: streaming state rows (stateOperators) of all queries at the end of the window
    state_rows: int
    #: rows of the library's own state table behind the late rule (``_event_time_state``)
    event_time_state_rows: int | None = None


def state_growth_per_minute(series: Sequence[SeriesPoint], *, after_seconds: float, ops: bool = False) -> float | None:
    """Growth of the state rows (streaming, or with ``ops`` the late-rule table) per minute over
    the points at or after ``after_seconds`` (least squares slope); None with fewer than 2 points."""
    points: list[tuple[float, float]] = []
    for p in series:
        value = p.event_time_state_rows if ops else p.state_rows
        if p.t_seconds >= after_seconds and value is not None:
            points.append((p.t_seconds, float(value)))
    if len(points) < 2:
        return None
    mean_t = sum(t for t, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    var = sum((t - mean_t) ** 2 for t, _ in points)
    if var == 0:
        return None
    slope = sum((t - mean_t) * (y - mean_y) for t, y in points) / var
    return round(slope * 60, 3)


@dataclass(frozen=True)
class SteadyFigures:
    rate_per_second: float
    duration_seconds: float
    warmup_seconds: float
    trigger_seconds: float
    produced: int
    #: produced records per second actually achieved by the producer
    achieved_rate_per_second: float
    event_to_silver: LatencyStats
    event_to_gold: LatencyStats
    event_to_completed_workout: LatencyStats
    series: list[SeriesPoint]
    #: how long a workout session lasts (its stop completes it)
    session_seconds: float
    #: from the end of production until every query was idle again (None: the grace ran out)
    catch_up_seconds: float | None
    #: streaming state rows per minute after the warm-up (flat: 0)
    state_growth_per_minute: float | None
    #: rows per minute of ``_event_time_state`` (the late rule's per-batch maxima)
    ops_state_growth_per_minute: float | None
    #: per query: batches, p50/p99 of ``triggerExecution`` in ms
    batch_ms: dict[str, dict[str, float | int | None]]
    heap_peak_bytes: int | None = None
    rss_peak_bytes: int | None = None


# --- result, targets, report ---------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    name: str
    value: float | None
    bound: float
    #: ">=" or "<="
    op: str
    unit: str = ""

    @property
    def met(self) -> bool | None:
        if self.value is None:
            return None
        return self.value >= self.bound if self.op == ">=" else self.value <= self.bound

    def line(self) -> str:
        shown = "n/a" if self.value is None else f"{self.value:,.2f}{self.unit}"
        verdict = {True: "MET", False: "NOT MET", None: "UNKNOWN"}[self.met]
        return f"{self.name}: {shown} (target {self.op} {self.bound:g}{self.unit}) {verdict}"


@dataclass
class BenchResult:
    machine: dict[str, Any]
    settings: dict[str, Any]
    backlog: dict[str, Any] | None = None
    stages: list[QueryFigures] = field(default_factory=list)
    pipeline: QueryFigures | None = None
    baselines: dict[str, QueryFigures] = field(default_factory=dict)
    steady: SteadyFigures | None = None
    #: per stage: where the time went (durationMs phases, top Spark jobs)
    profile: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def stage_ratios(self) -> dict[str, dict[str, float | None]]:
        """Each stage's rows/s over each baseline's rows/s (the hand-written one: its own stage only)."""
        noop, copy, hand = (self.baselines.get(k) for k in (BASELINE_NOOP, BASELINE_COPY, BASELINE_HANDWRITTEN))
        out: dict[str, dict[str, float | None]] = {}
        for stage in self.stages:
            rate = stage.rows_per_second
            out[stage.name] = {
                "vs_noop": ratio(rate, noop.rows_per_second if noop else None),
                "vs_copy": ratio(rate, copy.rows_per_second if copy else None),
                "vs_handwritten": ratio(rate, hand.rows_per_second if hand else None)
                if stage.name == HANDWRITTEN_STAGE
                else None,
            }
        return out

    def targets(self) -> list[Target]:
        return targets(self)

    def to_json(self) -> dict[str, Any]:
        return {
            "machine": self.machine,
            "settings": self.settings,
            "backlog": self.backlog,
            "stages": [s.to_json() for s in self.stages],
            "pipeline": self.pipeline.to_json() if self.pipeline else None,
            "pipeline_rows_per_elapsed_second": self.pipeline.rows_per_elapsed_second if self.pipeline else None,
            "baselines": {
                k: {**v.to_json(), "rows_per_elapsed_second": v.rows_per_elapsed_second}
                for k, v in self.baselines.items()
            },
            "stage_ratios": self.stage_ratios(),
            "steady": asdict(self.steady) if self.steady else None,
            "targets": [{**asdict(t), "met": t.met} for t in self.targets()],
            "profile": self.profile,
            "notes": self.notes,
        }


def targets(result: BenchResult) -> list[Target]:
    """The four bars of the benchmark issue, as far as this result has the figures."""
    out: list[Target] = []
    copy = result.baselines.get(BASELINE_COPY)
    hand = result.baselines.get(BASELINE_HANDWRITTEN)
    if result.pipeline is not None or copy is not None:
        out.append(
            Target(
                "full drain rows/s vs raw Kafka->Delta copy",
                ratio(
                    result.pipeline.rows_per_elapsed_second if result.pipeline else None,
                    copy.rows_per_elapsed_second if copy else None,
                ),
                0.5,
                ">=",
                "x",
            )
        )
    alone = result.baselines.get(STAGE_ALONE)
    stage = alone or next((s for s in result.stages if s.name == HANDWRITTEN_STAGE), None)
    if stage is not None or hand is not None:
        out.append(
            Target(
                f"{HANDWRITTEN_STAGE}{' (alone)' if alone else ''} rows/s vs hand-written PySpark",
                ratio(stage.rows_per_second if stage else None, hand.rows_per_second if hand else None),
                0.95,
                ">=",
                "x",
            )
        )
    steady = result.steady
    if steady is not None:
        p99 = steady.event_to_silver.p99_ms
        out.append(
            Target(
                f"p99 event->silver at {steady.rate_per_second:g} events/s",
                None if p99 is None else p99 / 1000,
                5.0,
                "<=",
                " s",
            )
        )
        out.append(Target("streaming state rows growth per minute", steady.state_growth_per_minute, 0.0, "<=", ""))
    return out


def _num(value: float | None, fmt: str = ",.0f") -> str:
    return "-" if value is None else format(value, fmt)


def _mb(value: int | None) -> str:
    return "-" if value is None else f"{value / _MB:,.0f}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value / 1000:,.2f}"


def format_report(result: BenchResult) -> str:
    """The short table: per stage and baseline rows, seconds, rows/s, ratios, memory, state."""
    lines: list[str] = []
    m = result.machine
    lines.append(
        f"machine: {m.get('cpu', '?')}, {m.get('cores', '?')} cores, {m.get('memory_gb', '?')} GB RAM; "
        f"load {m.get('load_before', '?')} -> {m.get('load_after', '?')}"
    )
    s = result.settings
    lines.append(
        "settings: " + ", ".join(f"{k}={s[k]}" for k in ("scale", "partitions", "shuffle_partitions", "seed") if k in s)
    )
    if result.backlog:
        b = result.backlog
        lines.append(
            f"backlog: {b.get('kafka_records', 0):,} Kafka records ({b.get('readings', 0):,} readings), "
            f"{b.get('sql_statements', 0):,} SQL rows, produced in {b.get('seconds', 0):.1f}s"
        )
    ratios = result.stage_ratios()
    header = (
        f"{'stage':<34} {'rows':>10} {'batches':>7} {'wall s':>8} {'rows/s':>9} {'x noop':>7} {'x copy':>7} "
        f"{'x hand':>7} {'heap MB':>8} {'rss MB':>7} {'state':>6}"
    )
    rows = [header, "-" * len(header)]

    def row(q: QueryFigures, r: Mapping[str, float | None] | None = None) -> str:
        r = r or {}
        return (
            f"{q.name:<34} {q.rows:>10,} {q.batches:>7} {_num(q.wall_seconds, ',.1f'):>8} "
            f"{_num(q.rows_per_second):>9} {_num(r.get('vs_noop'), '.3f'):>7} {_num(r.get('vs_copy'), '.3f'):>7} "
            f"{_num(r.get('vs_handwritten'), '.3f'):>7} {_mb(q.heap_peak_bytes):>8} {_mb(q.rss_peak_bytes):>7} "
            f"{q.state_rows:>6}"
        )

    rows += [row(stage, ratios.get(stage.name)) for stage in result.stages]
    if result.pipeline is not None:
        p = result.pipeline
        copy = result.baselines.get(BASELINE_COPY)
        rows.append("-" * len(header))
        rows.append(
            f"{'pipeline (elapsed, all)':<34} {p.rows:>10,} {p.batches:>7} {_num(p.elapsed_seconds, ',.1f'):>8} "
            f"{_num(p.rows_per_elapsed_second):>9} {'':>7} "
            f"{_num(ratio(p.rows_per_elapsed_second, copy.rows_per_elapsed_second if copy else None), '.3f'):>7} "
            f"{'':>7} {_mb(p.heap_peak_bytes):>8} {_mb(p.rss_peak_bytes):>7} {p.state_rows:>6}"
        )
    if result.baselines:
        rows.append("-" * len(header))
        rows += [row(q) for q in result.baselines.values()]
        copy = result.baselines.get(BASELINE_COPY)
        if copy is not None and copy.elapsed_seconds is not None:
            rows.append(
                f"{'  copy incl. start-up':<34} {copy.rows:>10,} {'':>7} {_num(copy.elapsed_seconds, ',.1f'):>8} "
                f"{_num(copy.rows_per_elapsed_second):>9}"
            )
    if result.stages or result.baselines or result.pipeline:
        lines += rows
    steady = result.steady
    if steady is not None:
        lines.append("")
        lines.append(
            f"steady: {steady.produced:,} records at {steady.achieved_rate_per_second:,.0f}/s "
            f"(asked {steady.rate_per_second:g}/s) for {steady.duration_seconds:g}s, trigger "
            f"{steady.trigger_seconds:g}s, warm-up {steady.warmup_seconds:g}s excluded, sessions of "
            f"{steady.session_seconds:.1f}s; caught up "
            + ("never (grace ran out)" if steady.catch_up_seconds is None else f"{steady.catch_up_seconds:.1f}s after")
        )
        for label, stats in (
            ("event->silver heart_rate", steady.event_to_silver),
            ("event->silver completed_workouts", steady.event_to_completed_workout),
            ("event->gold workout_bpm_summary", steady.event_to_gold),
        ):
            lines.append(
                f"  {label:<34} p50 {_ms(stats.p50_ms):>7}s  p99 {_ms(stats.p99_ms):>7}s  max {_ms(stats.max_ms):>7}s"
                f"  ({stats.count:,} records, {stats.missing:,} missing)"
            )
        lines.append(
            f"  state rows growth/min: streaming {_num(steady.state_growth_per_minute, '.1f')}, "
            f"_event_time_state {_num(steady.ops_state_growth_per_minute, '.1f')}; "
            f"heap peak {_mb(steady.heap_peak_bytes)} MB, rss peak {_mb(steady.rss_peak_bytes)} MB"
        )
        lines.append(f"  {'t (s)':>7} {'records':>8} {'p50 s':>7} {'p99 s':>7} {'state':>6} {'ops state':>9}")
        for point in steady.series:
            lines.append(
                f"  {point.t_seconds:>7.0f} {point.records:>8,} {_ms(point.silver_p50_ms):>7} "
                f"{_ms(point.silver_p99_ms):>7} {point.state_rows:>6} {_num(point.event_time_state_rows):>9}"
            )
    checks = result.targets()
    if checks:
        lines.append("")
        lines.append("targets:")
        lines += [f"  {t.line()}" for t in checks]
    return "\n".join(lines)
