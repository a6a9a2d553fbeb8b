"""Drive a world's emissions into sinks: a slice of time, the late wave, fast or in real time."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from fitbit_stream.errors import InvalidConfigError
from fitbit_stream.generator.model import KafkaEmission, from_us, to_us
from fitbit_stream.generator.sinks import Delivery, Sink
from fitbit_stream.generator.world import World

__all__ = ["EmitResult", "Pace", "Progress", "emit", "realtime_start"]

Pace = Literal["fast", "realtime"]


@dataclass(frozen=True, slots=True)
class Progress:
    """Reported every ``progress_every`` emissions and once at the end."""

    emitted: int
    #: about how many emissions the call makes (exact for a whole run)
    total: int
    elapsed_seconds: float
    #: emissions per wall-clock second so far
    rate: float
    #: simulated time of the last emission
    sim_time: datetime | None
    done: bool


@dataclass(frozen=True, slots=True)
class EmitResult:
    emitted: int
    kafka_messages: int
    sql_statements: int
    #: where every Kafka record landed, per sink that reports it (Kafka, landing files), in order
    deliveries: list[Delivery]
    elapsed_seconds: float


def realtime_start(now: datetime | None = None) -> datetime:
    """The simulated start of a real-time run: the wall clock, rounded down to the minute."""
    t = now if now is not None else datetime.now(UTC)
    if t.tzinfo is None:
        raise InvalidConfigError(f"realtime_start: expected an aware datetime, got {t.isoformat()}")
    return t.astimezone(UTC).replace(second=0, microsecond=0)


def _instant(name: str, value: datetime | None) -> int | None:
    if value is None:
        return None
    if value.tzinfo is None:
        raise InvalidConfigError(f"{name}: expected a time-zone aware datetime, got {value.isoformat()}")
    return to_us(value)


def emit(
    world: World,
    sinks: Sequence[Sink],
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    main: bool = True,
    late_wave: bool = False,
    pace: Pace = "fast",
    speed: float = 1.0,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
    progress: Callable[[Progress], None] | None = None,
    progress_every: int = 100_000,
    flush_every_seconds: float = 2.0,
) -> EmitResult:
    """Send the emissions whose emit time is in [since, until) to every sink, then finish the sinks.

    ``main=False, late_wave=True`` sends only the late wave (held-back late records), so a test
    can run the pipeline between the main data and the late wave. With ``pace="realtime"`` an
    emission at simulated time ``t`` goes out when the wall clock reaches
    ``clock() at the call + (t - origin) / speed``, origin being ``since`` or the start of what
    is sent; ``clock`` and ``sleep`` are injectable for tests.
    """
    since_us = _instant("since", since)
    until_us = _instant("until", until)
    if since_us is not None and until_us is not None and since_us >= until_us:
        raise InvalidConfigError(f"emit: since ({since}) must be before until ({until})")
    if pace not in ("fast", "realtime"):
        raise InvalidConfigError(f"pace: expected 'fast' or 'realtime', got {pace!r}")
    if not speed > 0 or math.isinf(speed):
        raise InvalidConfigError(f"speed: expected a positive finite number, got {speed!r}")
    if progress_every < 1:
        raise InvalidConfigError(f"progress_every: expected >= 1, got {progress_every}")

    total = world.estimate_emissions(since_us, until_us, main=main, late_wave=late_wave)
    wall0 = clock()
    if since_us is not None:
        origin_us = since_us
    elif main:
        origin_us = world.start_us
    else:
        origin_us = world.late_wave_start_ms * 1000
    last_flush = wall0
    emitted = kafka = sql = 0
    at = None

    def report(done: bool) -> None:
        if progress is None:
            return
        elapsed = clock() - wall0
        progress(
            Progress(
                emitted=emitted,
                total=max(total, emitted),
                elapsed_seconds=elapsed,
                rate=emitted / elapsed if elapsed > 0 else 0.0,
                sim_time=None if at is None else from_us(at),
                done=done,
            )
        )

    for at, emission, _kind in world.timed_emissions(
        since_us=since_us, until_us=until_us, main=main, late_wave=late_wave
    ):
        if pace == "realtime":
            target = wall0 + (at - origin_us) / 1e6 / speed
            now = clock()
            if target > now:
                if now - last_flush >= flush_every_seconds:
                    # Before idling, let readers see what was sent (commit, close the landing file).
                    for sink in sinks:
                        sink.flush()
                    last_flush = now
                sleep(target - now)
        for sink in sinks:
            sink.write(emission)
        emitted += 1
        if isinstance(emission, KafkaEmission):
            kafka += 1
        else:
            sql += 1
        if emitted % progress_every == 0:
            report(False)
    deliveries: list[Delivery] = []
    for sink in sinks:
        deliveries.extend(sink.finish())
    report(True)
    return EmitResult(
        emitted=emitted,
        kafka_messages=kafka,
        sql_statements=sql,
        deliveries=deliveries,
        elapsed_seconds=clock() - wall0,
    )
