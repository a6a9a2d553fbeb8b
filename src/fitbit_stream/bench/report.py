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

The targets are issue 13's (``targets``): sustained rate, latency and catch-up at 2,000 events/s,
drain against the copy, the incremental ``run --once``, the soak and the scale sweep; each printed
with its measured value and verdict (``format_report``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from fitbit_stream.errors import InvalidConfigError

__all__ = [
    "BASELINE_COPY",
    "BASELINE_HANDWRITTEN",
    "BASELINE_NOOP",
    "STAGE_ALONE",
    "BenchResult",
    "CommandRun",
    "IncrementalFigures",
    "LatencyStats",
    "Limit",
    "QueryFigures",
    "RateStep",
    "ScalePoint",
    "SeriesPoint",
    "SoakFigures",
    "SteadyFigures",
    "SustainedFigures",
    "Target",
    "figures_from_progress",
    "format_report",
    "job_window",
    "latency_from_aggregates",
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


def latency_from_aggregates(
    count: int, missing: int, p50_ms: float | None, p99_ms: float | None, max_ms: float | None
) -> LatencyStats:
    """:func:`latency_stats` from figures aggregated elsewhere (Spark's ``percentile`` interpolates
    between closest ranks too), with the same rule: no p99 with more than 1% missing."""
    total = count + missing
    return LatencyStats(
        count=count,
        missing=missing,
        p50_ms=p50_ms if count else None,
        p99_ms=p99_ms if count and missing <= 0.01 * total else None,
        max_ms=max_ms if count else None,
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
    #: the streaming queries that ran (``Pipeline.query_names()``): every one caught up for catch-up
    queries: list[str] = field(default_factory=list)
    #: mean Kafka backlog of the ingest query over the first and last fifth of the measured window
    backlog_start: float | None = None
    backlog_end: float | None = None


# --- the load phases: sustained rate, incremental run, soak, scale sweep ------------------------

#: Why a rate search ended where it did: ``bracketed`` (a rate held and a higher one failed, within
#: the resolution), ``max_rate`` (held at the cap: a lower bound), ``producer`` (the producer could
#: not reach a higher rate: a lower bound), ``below_min`` (nothing held down to the floor),
#: ``max_steps`` (the step budget ran out first).
Limit = Literal["bracketed", "max_rate", "producer", "below_min", "max_steps"]


@dataclass(frozen=True)
class RateStep:
    """One step of a rate search: production at ``rate`` events/s on a fresh pipeline or copy."""

    rate: float
    #: what the producer achieved over the whole step, events/s: the rate times the share of the
    #: plan's readings it produced
    achieved_rate: float
    #: seconds of production (warm-up included)
    seconds: float
    #: p99 event->silver (copy: event->copy table) of the readings produced after the warm-up
    p99_ms: float | None
    #: readings produced after the warm-up and not seen by the end of the wait
    missing: int
    #: mean Kafka backlog of the ingest query (records) over the first and last probe of the window
    backlog_start: float | None
    backlog_end: float | None
    holds: bool
    #: why it does not hold ("" when it does)
    why: str = ""
    #: the 1-minute load average when the step started
    load_before: float | None = None

    @property
    def producer_bound(self) -> bool:
        return self.why.startswith("producer")


@dataclass(frozen=True)
class SustainedFigures:
    """A search for the highest rate one system (the pipeline, or the copy) holds."""

    system: str
    #: the highest rate that held below the lowest that failed (None: nothing held)
    rate_per_second: float | None
    limit: Limit
    steps: list[RateStep]
    step_seconds: float
    warmup_seconds: float
    p99_bound_ms: float
    start_rate: float
    max_rate: float

    @property
    def lower_bound(self) -> bool:
        """The system held the rate and was not pushed past it (cap or producer): it may hold more."""
        return self.limit in ("max_rate", "producer")


@dataclass(frozen=True)
class CommandRun:
    """One ``fitbit-stream run --once`` as a subprocess, timed from spawn to exit."""

    label: str
    new_records: int
    wall_seconds: float
    exit_code: int
    #: the command's own "drained in" figure: after Spark started and the pipeline was set up
    drained_seconds: float | None = None
    #: the records its Kafka query read (from the run's stage table)
    ingested_rows: int | None = None


@dataclass(frozen=True)
class IncrementalFigures:
    command: list[str]
    runs: list[CommandRun]

    def with_new(self, records: int) -> CommandRun | None:
        return next((r for r in self.runs if r.new_records == records), None)


@dataclass(frozen=True)
class SoakFigures:
    rate_per_second: float
    duration_seconds: float
    warmup_seconds: float
    produced: int
    achieved_rate_per_second: float
    #: [start, end) seconds from the start of production of the first and the last window
    first_window: tuple[float, float]
    last_window: tuple[float, float]
    #: per query: batches and p95 batch duration in each window, and last over first
    batch_p95: dict[str, dict[str, float | int | None]]
    #: the greatest last/first ratio over the queries with enough batches, and that query
    batch_p95_ratio: float | None
    batch_p95_query: str | None
    #: per silver and gold table: Delta files at the start of the first window and the end of the last
    files: dict[str, dict[str, int | None]]
    #: mean Kafka backlog of the ingest query over the first and the last window
    backlog_first: float | None
    backlog_last: float | None
    event_to_silver_first: LatencyStats | None = None
    event_to_silver_last: LatencyStats | None = None
    catch_up_seconds: float | None = None


@dataclass(frozen=True)
class ScalePoint:
    """One drain of the scale sweep (seconds: the clock around ``run_once``, as in the drain phase)."""

    scale: float
    kafka_records: int
    seconds: float
    seconds_per_million: float | None
    copy_seconds: float | None = None
    copy_seconds_per_million: float | None = None


def scaling_growth(points: Sequence[ScalePoint]) -> tuple[float | None, ScalePoint | None, ScalePoint | None]:
    """Seconds per million records at the largest scale over the smallest (and those two points)."""
    known = sorted((p for p in points if p.seconds_per_million), key=lambda p: p.scale)
    if len(known) < 2:
        return None, None, None
    small, large = known[0], known[-1]
    return ratio(large.seconds_per_million, small.seconds_per_million), small, large


# --- result, targets, report ---------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """One figure of the issue with its bar (``bound`` None: a figure reported without a bar)."""

    key: str
    name: str
    value: float | None
    bound: float | None
    #: ">=" or "<="
    op: str = "<="
    unit: str = ""
    digits: int = 2

    @property
    def met(self) -> bool | None:
        if self.value is None or self.bound is None:
            return None
        return self.value >= self.bound if self.op == ">=" else self.value <= self.bound

    @property
    def verdict(self) -> str:
        if self.bound is None:
            return "-"
        return {True: "MET", False: "NOT MET", None: "UNKNOWN"}[self.met]

    def shown(self) -> str:
        return "n/a" if self.value is None else f"{self.value:,.{self.digits}f}{self.unit}"

    def bar(self) -> str:
        return "-" if self.bound is None else f"{self.op} {self.bound:,g}{self.unit}"

    def line(self) -> str:
        if self.bound is None:
            return f"{self.name}: {self.shown()}"
        return f"{self.name}: {self.shown()} (target {self.bar()}) {self.verdict}"

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "met": self.met}


@dataclass
class BenchResult:
    machine: dict[str, Any]
    settings: dict[str, Any]
    backlog: dict[str, Any] | None = None
    stages: list[QueryFigures] = field(default_factory=list)
    pipeline: QueryFigures | None = None
    baselines: dict[str, QueryFigures] = field(default_factory=dict)
    steady: SteadyFigures | None = None
    #: per system ("pipeline", the copy): the rate search
    sustained: dict[str, SustainedFigures] = field(default_factory=dict)
    incremental: IncrementalFigures | None = None
    soak: SoakFigures | None = None
    scaling: list[ScalePoint] = field(default_factory=list)
    #: per phase: the load average (1, 5, 15 min) before and after it, and the seconds it waited
    #: for the machine to settle first (``settled_seconds``)
    phase_load: dict[str, dict[str, Any]] = field(default_factory=dict)
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

    def sustained_ratio(self) -> float | None:
        """The pipeline's sustained rate over the copy's."""
        pipeline, copy = self.sustained.get("pipeline"), self.sustained.get(BASELINE_COPY)
        return ratio(
            pipeline.rate_per_second if pipeline else None,
            copy.rate_per_second if copy else None,
        )

    def targets(self) -> list[Target]:
        return targets(self)

    def to_json(self) -> dict[str, Any]:
        growth, small, large = scaling_growth(self.scaling)
        return {
            "machine": self.machine,
            "settings": self.settings,
            "phase_load": self.phase_load,
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
            "sustained": {
                **{k: {**asdict(v), "lower_bound": v.lower_bound} for k, v in self.sustained.items()},
                "ratio_to_copy": self.sustained_ratio(),
            }
            if self.sustained
            else None,
            "incremental": asdict(self.incremental) if self.incremental else None,
            "soak": asdict(self.soak) if self.soak else None,
            "scaling": {
                "points": [asdict(p) for p in self.scaling],
                "largest_over_smallest": growth,
                "smallest_scale": small.scale if small else None,
                "largest_scale": large.scale if large else None,
            }
            if self.scaling
            else None,
            "targets": [t.to_json() for t in self.targets()],
            "profile": self.profile,
            "notes": self.notes,
        }


def _sustained_name(figures: SustainedFigures, what: str) -> str:
    if figures.rate_per_second is None and figures.steps:
        lowest = min(s.rate for s in figures.steps)
        return f"{what}, nothing held down to {lowest:,g} ev/s"
    qualifier = {
        "bracketed": "",
        "max_rate": ", held at the cap: at least",
        "producer": ", producer-bound: at least",
        "below_min": ", nothing held",
        "max_steps": ", step budget ran out",
    }[figures.limit]
    return f"{what}{qualifier}"


def _held(figures: SustainedFigures) -> float | None:
    """The sustained rate; 0 when steps ran and none held (a rate of 0, not an unknown)."""
    if figures.rate_per_second is None and figures.steps and not any(s.holds for s in figures.steps):
        return 0.0
    return figures.rate_per_second


def targets(result: BenchResult) -> list[Target]:
    """Issue 13's bars (and the figures reported beside them), as far as this result has the figures;
    then the earlier benchmark's stage and state bars."""
    out: list[Target] = []
    pipeline_sus = result.sustained.get("pipeline")
    copy_sus = result.sustained.get(BASELINE_COPY)
    if pipeline_sus is not None:
        out.append(
            Target(
                "sustained_rate",
                _sustained_name(
                    pipeline_sus,
                    f"sustained rate (p99 event->silver <= {pipeline_sus.p99_bound_ms / 1000:g} s, backlog flat)",
                ),
                _held(pipeline_sus),
                5000.0,
                ">=",
                " ev/s",
                0,
            )
        )
    if copy_sus is not None:
        out.append(
            Target(
                "sustained_copy_rate",
                _sustained_name(copy_sus, "raw Kafka->Delta copy's sustained rate"),
                _held(copy_sus),
                None,
                unit=" ev/s",
                digits=0,
            )
        )
    if pipeline_sus is not None and copy_sus is not None:
        out.append(
            Target(
                "sustained_vs_copy",
                "sustained rate vs the copy's" + (" (at most: the copy may hold more)" if copy_sus.lower_bound else ""),
                result.sustained_ratio(),
                None,
                unit="x",
                digits=3,
            )
        )
    steady = result.steady
    if steady is not None:
        at = f"at {steady.rate_per_second:,g} events/s"
        for key, label, stats, bound in (
            ("steady_p99_silver", "p99 event->silver", steady.event_to_silver, 5.0),
            ("steady_p99_gold", "p99 event->gold", steady.event_to_gold, 30.0),
        ):
            p99 = stats.p99_ms
            out.append(Target(key, f"{label} {at}", None if p99 is None else p99 / 1000, bound, "<=", " s"))
        out.append(
            Target("catch_up", f"catch-up after production stops {at}", steady.catch_up_seconds, 10.0, "<=", " s", 1)
        )
    copy = result.baselines.get(BASELINE_COPY)
    if result.pipeline is not None or copy is not None:
        out.append(
            Target(
                "drain_vs_copy",
                "full drain rows/s vs raw Kafka->Delta copy",
                ratio(
                    result.pipeline.rows_per_elapsed_second if result.pipeline else None,
                    copy.rows_per_elapsed_second if copy else None,
                ),
                0.25,
                ">=",
                "x",
                3,
            )
        )
    if result.incremental is not None:
        idle = result.incremental.with_new(0)
        out.append(
            Target(
                "incremental_nothing_new",
                "run --once wall with nothing new (Spark start included)",
                idle.wall_seconds if idle and idle.exit_code == 0 else None,
                25.0,
                "<=",
                " s",
                1,
            )
        )
        for run in result.incremental.runs:
            if run.new_records:
                out.append(
                    Target(
                        "incremental_new",
                        f"run --once wall with {run.new_records:,} new records",
                        run.wall_seconds if run.exit_code == 0 else None,
                        None,
                        unit=" s",
                        digits=1,
                    )
                )
    soak = result.soak
    if soak is not None:
        out.append(
            Target(
                "soak_batch_p95",
                f"soak: last-window batch p95 / first ({soak.batch_p95_query or 'no query with enough batches'})",
                soak.batch_p95_ratio,
                1.2,
                "<=",
                "x",
            )
        )
    growth, small, large = scaling_growth(result.scaling)
    if result.scaling:
        out.append(
            Target(
                "scaling_seconds_per_million",
                f"drain s/M records at scale {large.scale:g} / at {small.scale:g}"
                if small and large
                else "drain s/M records, largest scale / smallest",
                growth,
                1.0,
                "<=",
                "x",
            )
        )
    hand = result.baselines.get(BASELINE_HANDWRITTEN)
    alone = result.baselines.get(STAGE_ALONE)
    stage = alone or next((s for s in result.stages if s.name == HANDWRITTEN_STAGE), None)
    if stage is not None or hand is not None:
        out.append(
            Target(
                "handwritten",
                f"{HANDWRITTEN_STAGE}{' (alone)' if alone else ''} rows/s vs hand-written PySpark",
                ratio(stage.rows_per_second if stage else None, hand.rows_per_second if hand else None),
                0.95,
                ">=",
                "x",
            )
        )
    if steady is not None:
        out.append(
            Target("state_growth", "streaming state rows growth per minute", steady.state_growth_per_minute, 0.0)
        )
    return out


def _num(value: float | None, fmt: str = ",.0f") -> str:
    return "-" if value is None else format(value, fmt)


def _mb(value: int | None) -> str:
    return "-" if value is None else f"{value / _MB:,.0f}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value / 1000:,.2f}"


def _load(values: Sequence[float] | None) -> str:
    return "?" if not values else f"{values[0]:.2f}"


def format_targets(checks: Sequence[Target]) -> list[str]:
    """The figures-and-targets table: figure, measured, target, verdict."""
    width = max((len(t.name) for t in checks), default=6)
    header = f"{'figure':<{width}}  {'measured':>14}  {'target':>14}  status"
    lines = [header, "-" * len(header)]
    lines += [f"{t.name:<{width}}  {t.shown():>14}  {t.bar():>14}  {t.verdict}" for t in checks]
    return lines


def _format_sustained(figures: SustainedFigures) -> list[str]:
    rate = "none held" if figures.rate_per_second is None else f"{figures.rate_per_second:,.0f} events/s"
    lines = [
        f"sustained rate, {figures.system}: {rate} ({figures.limit}; steps of {figures.step_seconds:g}s, "
        f"warm-up {figures.warmup_seconds:g}s, p99 bar {figures.p99_bound_ms / 1000:g} s, "
        f"start {figures.start_rate:,g}/s, cap {figures.max_rate:,g}/s)",
        f"  {'rate/s':>8} {'achieved':>9} {'p99 s':>7} {'missing':>8} {'backlog 1st':>11} {'backlog end':>11} "
        f"{'load':>5}  verdict",
    ]
    for s in figures.steps:
        lines.append(
            f"  {s.rate:>8,.0f} {s.achieved_rate:>9,.0f} {_ms(s.p99_ms):>7} {s.missing:>8,} "
            f"{_num(s.backlog_start):>11} {_num(s.backlog_end):>11} {_num(s.load_before, '.2f'):>5}  "
            + ("holds" if s.holds else f"fails: {s.why}")
        )
    return lines


def _format_incremental(figures: IncrementalFigures) -> list[str]:
    lines = [f"incremental: {' '.join(figures.command)}"]
    for run in figures.runs:
        drained = "" if run.drained_seconds is None else f", drained in {run.drained_seconds:.1f}s after start-up"
        read = "" if run.ingested_rows is None else f", Kafka query read {run.ingested_rows:,}"
        lines.append(f"  {run.label:<22} wall {run.wall_seconds:>7.1f}s, exit {run.exit_code}{drained}{read}")
    return lines


def _format_soak(soak: SoakFigures) -> list[str]:
    f0, f1 = soak.first_window
    l0, l1 = soak.last_window
    lines = [
        f"soak: {soak.produced:,} records at {soak.achieved_rate_per_second:,.0f}/s (asked "
        f"{soak.rate_per_second:,g}/s) for {soak.duration_seconds:g}s; first window [{f0:.0f}, {f1:.0f}) s, "
        f"last [{l0:.0f}, {l1:.0f}) s; backlog mean {_num(soak.backlog_first)} -> {_num(soak.backlog_last)}; "
        "caught up "
        + ("never (grace ran out)" if soak.catch_up_seconds is None else f"{soak.catch_up_seconds:.1f}s after"),
        f"  {'query':<34} {'batches':>9} {'p95 first s':>11} {'p95 last s':>10} {'last/first':>10}",
    ]
    for name, row in soak.batch_p95.items():
        r = row.get("ratio")
        lines.append(
            f"  {name:<34} {row.get('first_batches', 0)!s:>4}/{row.get('last_batches', 0)!s:<4} "
            f"{_ms(row.get('first_p95_ms')):>11} {_ms(row.get('last_p95_ms')):>10} {_num(r, '.2f'):>10}"
        )
    if soak.event_to_silver_first is not None and soak.event_to_silver_last is not None:
        lines.append(
            f"  event->silver p99 first {_ms(soak.event_to_silver_first.p99_ms)}s, "
            f"last {_ms(soak.event_to_silver_last.p99_ms)}s"
        )
    if soak.files:
        lines.append(
            "  Delta files: "
            + ", ".join(f"{table} {_num(n.get('start'))}->{_num(n.get('end'))}" for table, n in soak.files.items())
        )
    return lines


def _format_scaling(points: Sequence[ScalePoint]) -> list[str]:
    lines = [f"scaling: {'scale':>6} {'records':>10} {'drain s':>8} {'s/M rec':>8} {'copy s':>7} {'copy s/M':>8}"]
    for p in sorted(points, key=lambda p: p.scale):
        lines.append(
            f"         {p.scale:>6g} {p.kafka_records:>10,} {p.seconds:>8.1f} {_num(p.seconds_per_million, ',.1f'):>8} "
            f"{_num(p.copy_seconds, ',.1f'):>7} {_num(p.copy_seconds_per_million, ',.1f'):>8}"
        )
    return lines


def format_report(result: BenchResult) -> str:
    """The short table: per stage and baseline rows, seconds, rows/s, ratios, memory, state; then the
    load phases and every figure with its target."""
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
    if result.phase_load:
        lines.append(
            "load (1 min) per phase: "
            + ", ".join(
                f"{phase} {_load(load.get('before'))} -> {_load(load.get('after'))}"
                + (f" (after {load['settled_seconds']:.0f}s settling)" if load.get("settled_seconds") else "")
                for phase, load in result.phase_load.items()
            )
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
    if result.incremental is not None:
        lines.append("")
        lines += _format_incremental(result.incremental)
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
    for figures in result.sustained.values():
        lines.append("")
        lines += _format_sustained(figures)
    if result.soak is not None:
        lines.append("")
        lines += _format_soak(result.soak)
    if result.scaling:
        lines.append("")
        lines += _format_scaling(result.scaling)
    checks = result.targets()
    if checks:
        lines.append("")
        lines.append("targets:")
        lines += [f"  {line}" for line in format_targets(checks)]
    if result.notes:
        lines.append("")
        lines += [f"note: {note}" for note in result.notes]
    return "\n".join(lines)
