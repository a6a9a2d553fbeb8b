"""What a benchmark run does: its phases and every knob (``fitbit-stream bench --help`` lists them).

No Spark, Kafka or clock here: the command line builds a :class:`BenchOptions` (and checks it) before
anything starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from pathlib import Path

from fitbit_stream.errors import InvalidConfigError

__all__ = ["AS_OF", "PHASES", "BenchOptions"]

#: The reference date of the batch tail (user_bins): fixed, so every run computes the same rows.
AS_OF = date(2025, 6, 1)

#: Every phase, in the order a run takes them (``bench/README.md`` describes each).
PHASES = ("drain", "incremental", "steady", "sustained", "soak", "scaling")


@dataclass(frozen=True)
class BenchOptions:
    scale: float = 1.0
    seed: int = 42
    chaos: float = 0.001
    phases: tuple[str, ...] = PHASES
    baselines: bool = True
    rate: float = 2000.0
    steady_seconds: float = 180.0
    warmup_seconds: float = 30.0
    grace_seconds: float = 120.0
    trigger_seconds: float = 1.0
    bucket_seconds: float = 10.0
    work_dir: Path = Path("data/bench")
    out_dir: Path | None = Path("bench/results")
    #: None: the local session's own default (session.default_driver_memory)
    driver_memory: str | None = None
    keep: bool = False
    #: sustained: seconds of production per step, the first rate, the cap, the bisection's stop
    #: (highest held and lowest failed within this fraction), the p99 event->silver bar
    sustain_seconds: float = 300.0
    sustain_start_rate: float = 1000.0
    sustain_max_rate: float = 64000.0
    sustain_resolution: float = 0.125
    sustain_p99_seconds: float = 5.0
    sustain_max_steps: int = 12
    #: sustained: wait at most this long after a step for its records (a step that fell behind fails)
    sustain_grace_seconds: float = 60.0
    #: incremental: new records produced before the second run
    incremental_records: int = 1000
    #: soak: seconds of production at ``rate``; length of the first and last windows compared
    soak_seconds: float = 1800.0
    soak_window_seconds: float = 300.0
    #: scaling: the drain at each scale
    scales: tuple[float, ...] = (0.05, 0.25, 1.0)
    #: a phase starting with a 1-minute load average above this prints a warning
    load_warning: float = 1.5
    #: before each phase, wait up to this long for the load to fall to ``load_warning`` (0: never)
    settle_seconds: float = 120.0

    def __post_init__(self) -> None:
        unknown = set(self.phases) - set(PHASES)
        if unknown or not self.phases:
            raise InvalidConfigError(f"bench phases: choose from {', '.join(PHASES)}, got {list(self.phases)}")
        if self.scale <= 0 or any(s <= 0 for s in self.scales):
            raise InvalidConfigError(f"bench scale: must be positive, got {self.scale!r} and {list(self.scales)}")
        if "scaling" in self.phases and not self.scales:
            raise InvalidConfigError("bench scales: the scaling phase needs at least one scale")
        if self.settle_seconds < 0:
            raise InvalidConfigError(f"bench settle seconds: 0 or more, got {self.settle_seconds!r}")
        if self.rate < 3:
            raise InvalidConfigError(f"bench rate: at least 3 events/s (readings and a session), got {self.rate!r}")
        for phase, name in (("steady", "steady_seconds"), ("sustained", "sustain_seconds"), ("soak", "soak_seconds")):
            seconds = getattr(self, name)
            if phase in self.phases and seconds <= self.warmup_seconds:
                raise InvalidConfigError(
                    f"bench {name.replace('_', ' ')} ({seconds:g}) must exceed the warm-up ({self.warmup_seconds:g})"
                )
        if not 3 <= self.sustain_start_rate <= self.sustain_max_rate:
            raise InvalidConfigError(
                f"bench sustain rates: need 3 <= start ({self.sustain_start_rate:g}) <= max ({self.sustain_max_rate:g})"
            )
        if self.sustain_resolution <= 0 or self.sustain_max_steps < 1 or self.incremental_records < 0:
            raise InvalidConfigError("bench: sustain resolution and max steps must be positive, records not negative")

    @property
    def sustain_min_rate(self) -> float:
        """The search halves down to here (an eighth of the start rate, at least 3 events/s)."""
        return max(3.0, self.sustain_start_rate / 8)
