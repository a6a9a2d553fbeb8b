"""The pure decisions of the benchmark's load phases: the search for a sustained rate, whether a step
held, the backlog over a window, the soak's first and last windows, seconds per million records.

Nothing here touches Spark, Kafka or the clock: every function takes figures (rates, backlog
samples, batch durations) and returns figures or decisions, so the verdicts are unit-tested on
literal numbers. ``bench/README.md`` says why each rule is what it is.

**Sustained rate.** A step produces at one rate for ``--sustain-seconds`` on a fresh pipeline (or
copy); after the warm-up it *holds* when

- the producer reached the rate (at least ``PRODUCER_FLOOR`` of it: a step the producer could not
  drive says nothing about the pipeline, and ends the search with a lower bound),
- p99 event->silver (for the copy: event->copy) of the window's readings is known and at most the
  bar (a p99 is unknown when more than 1% of the readings were not there after the wait),
- the Kafka backlog of the ingest query did not grow: its mean over the last ``probe`` seconds of
  the window exceeds its mean over the first ``probe`` seconds by at most ``GROWTH_SECONDS`` of
  production (the backlog is a sawtooth between batches; the means smooth it, and an overload of
  even 1% grows it by more than that over a 5-minute window).

The search starts at ``start``, doubles while steps hold (up to ``max_rate``), halves while they
fail (down to ``min_rate``), then bisects between the highest rate that held below the lowest that
failed, until they are within ``resolution`` of each other. The sustained rate is that highest
rate that held.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

from fitbit_stream.bench.report import Limit, RateStep, percentile

__all__ = [
    "GROWTH_SECONDS",
    "PRODUCER_FLOOR",
    "backlog_ends",
    "judge_step",
    "load_warning",
    "next_rate",
    "nice_rate",
    "seconds_per_million",
    "settle",
    "soak_windows",
    "sustained_rate",
    "window_p95",
]

#: The share of the asked rate the producer must reach for a step to count.
PRODUCER_FLOOR = 0.95
#: The backlog may grow by this many seconds of production over a step's window and still hold.
GROWTH_SECONDS = 1.0
#: ... and by at least this many records (a rate of a few events/s has a sawtooth of a few records).
GROWTH_FLOOR = 10


def judge_step(
    rate: float,
    achieved_rate: float,
    p99_ms: float | None,
    backlog_start: float | None,
    backlog_end: float | None,
    *,
    p99_bound_ms: float = 5000.0,
    growth_seconds: float = GROWTH_SECONDS,
    producer_floor: float = PRODUCER_FLOOR,
) -> tuple[bool, str]:
    """(holds, why not) for a step's figures (module docstring: the rules, in this order)."""
    if achieved_rate < producer_floor * rate:
        return False, f"producer reached only {achieved_rate:,.0f}/s of {rate:,.0f}/s"
    if p99_ms is None:
        return False, "p99 unknown: more than 1% of the readings missing after the wait"
    if p99_ms > p99_bound_ms:
        return False, f"p99 {p99_ms / 1000:,.2f} s > {p99_bound_ms / 1000:g} s"
    if backlog_start is None or backlog_end is None:
        return False, "no backlog samples in the window"
    growth = backlog_end - backlog_start
    allowed = max(rate * growth_seconds, GROWTH_FLOOR)
    if growth > allowed:
        return False, f"backlog grew by {growth:,.0f} records (allowed {allowed:,.0f})"
    return True, ""


def backlog_ends(
    samples: Sequence[tuple[float, float]], *, window_start: float, window_end: float, probe: float | None = None
) -> tuple[float | None, float | None]:
    """Mean backlog over the first and the last ``probe`` seconds of the window (default: a fifth
    of it); None for an end with no sample. ``samples``: (epoch seconds, records behind)."""
    span = window_end - window_start
    if span <= 0:
        return None, None
    probe = span / 5 if probe is None else min(probe, span / 2)

    def mean(lo: float, hi: float) -> float | None:
        values = [lag for at, lag in samples if lo <= at <= hi]
        return sum(values) / len(values) if values else None

    return mean(window_start, window_start + probe), mean(window_end - probe, window_end)


def nice_rate(rate: float) -> float:
    """``rate`` rounded to two significant figures (5,250 -> 5,200; 937.5 -> 940)."""
    if rate <= 0:
        return rate
    grain = 10.0 ** (math.floor(math.log10(rate)) - 1)
    return float(round(rate / grain) * grain)


def _bracket(steps: Sequence[RateStep]) -> tuple[float | None, float | None]:
    """(highest rate that held below the lowest that failed, lowest that failed)."""
    failed = [s.rate for s in steps if not s.holds]
    hi = min(failed) if failed else None
    held = [s.rate for s in steps if s.holds and (hi is None or s.rate < hi)]
    return (max(held) if held else None), hi


def next_rate(
    steps: Sequence[RateStep],
    *,
    start: float,
    max_rate: float,
    min_rate: float,
    resolution: float = 0.125,
    max_steps: int = 12,
) -> float | None:
    """The rate of the next step, or None when the search is over (see the module docstring)."""
    if not steps:
        return min(start, max_rate)
    if len(steps) >= max_steps or any(s.producer_bound for s in steps):
        return None
    lo, hi = _bracket(steps)
    if hi is None:  # everything held so far: double, up to the cap
        assert lo is not None
        return None if lo >= max_rate else min(2 * lo, max_rate)
    if lo is None:  # nothing held yet: halve, down to the floor
        lower = hi / 2
        return lower if lower >= min_rate else None
    if hi <= lo * (1 + resolution):
        return None
    mid = nice_rate((lo + hi) / 2)
    return mid if lo < mid < hi else None


def sustained_rate(steps: Sequence[RateStep], *, max_rate: float, max_steps: int = 12) -> tuple[float | None, Limit]:
    """The highest rate that held below the lowest that failed, and what ended the search."""
    lo, hi = _bracket(steps)
    if any(s.producer_bound for s in steps):
        return lo, "producer"
    if lo is None:
        return None, "below_min" if len(steps) < max_steps else "max_steps"
    if hi is None:
        return lo, "max_rate" if lo >= max_rate else "max_steps"
    return lo, "bracketed"


# --- the soak ------------------------------------------------------------------------------------


def soak_windows(
    started: float, ended: float, *, warmup: float, window: float
) -> tuple[tuple[float, float], tuple[float, float]]:
    """The first window after the warm-up and the last one of production (epoch seconds); each is
    ``window`` long, or shorter so that the two do not overlap in a short soak."""
    span = max(0.0, ended - started - warmup)
    length = min(window, span / 2)
    first_start = started + warmup
    return (first_start, first_start + length), (ended - length, ended)


def window_p95(
    batches: Mapping[str, Sequence[tuple[float, int, int, int]]],
    first: tuple[float, float],
    last: tuple[float, float],
    *,
    min_batches: int = 5,
) -> dict[str, dict[str, float | int | None]]:
    """Per query: p95 of the durations (``triggerExecution`` ms) of the batches that read rows and
    started in each window, and last over first. ``batches``: (start epoch s, rows, ms, state) per
    query, as :class:`~fitbit_stream.bench.steady.ProgressWatch` keeps them. A query with fewer than
    ``min_batches`` such batches in either window has no ratio (too few for a p95)."""
    out: dict[str, dict[str, float | int | None]] = {}
    for name, rows in sorted(batches.items()):

        def durations(window: tuple[float, float], rows: Sequence[tuple[float, int, int, int]] = rows) -> list[float]:
            lo, hi = window
            return [float(ms) for at, n, ms, _ in rows if n > 0 and lo <= at < hi]

        a, b = durations(first), durations(last)
        p_first, p_last = percentile(a, 0.95), percentile(b, 0.95)
        enough = len(a) >= min_batches and len(b) >= min_batches
        out[name] = {
            "first_batches": len(a),
            "last_batches": len(b),
            "first_p95_ms": p_first,
            "last_p95_ms": p_last,
            "ratio": (p_last / p_first) if enough and p_first and p_last is not None else None,
        }
    return out


def seconds_per_million(seconds: float | None, records: int | None) -> float | None:
    """Seconds per million records; None without records or seconds."""
    if seconds is None or not records:
        return None
    return seconds / records * 1_000_000


def settle(
    load_1min: Callable[[], float],
    *,
    bound: float,
    limit_seconds: float,
    sleep: Callable[[float], None],
    step_seconds: float = 5.0,
) -> tuple[float, float]:
    """Wait until the 1-minute load average is at most ``bound``, for at most ``limit_seconds``.

    A phase that follows another (the incremental runs right after the drain), or a scale's drain
    right after its backlog was produced, would otherwise start on the load left before it.
    ``load_1min`` and ``sleep`` are the caller's (the machine's load and clock). Returns the seconds
    waited and the load it ended at.
    """
    waited = 0.0
    load = load_1min()
    while load > bound and waited < limit_seconds:
        pause = min(step_seconds, limit_seconds - waited)
        sleep(pause)
        waited += pause
        load = load_1min()
    return waited, load


def load_warning(load_1min: float, *, phase: str, bound: float = 1.5) -> str | None:
    """The warning line for a phase starting on a loaded machine, or None."""
    if load_1min <= bound:
        return None
    return (
        f"WARNING: 1-minute load average {load_1min:.2f} > {bound:g} at the start of {phase}: "
        "a figure from a loaded machine is not a figure"
    )
