"""Knobs, emission types and exact time helpers of the synthetic data generator.

Every instant inside the generator is an ``int`` of microseconds since the epoch (UTC): epoch-second
JSON numbers are formatted from it as exact decimal text, never through a float.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from typing import Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, field_validator

from fitbit_stream.config import KafkaTopics

__all__ = [
    "CHAOS_KINDS",
    "DEFAULT_START",
    "ChaosConfig",
    "ChaosCounts",
    "ChaosKind",
    "Emission",
    "GeneratorConfig",
    "KafkaEmission",
    "RegistrationRow",
    "SqlEmission",
    "SqlOp",
    "VisitRow",
    "emit_time_us",
    "epoch_ms_text",
    "epoch_text",
    "from_us",
    "iso",
    "to_us",
]

US = 1_000_000
MINUTE = 60 * US
HOUR = 60 * MINUTE
DAY = 24 * HOUR

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

DEFAULT_START = datetime(2025, 3, 3, tzinfo=UTC)


# --- time helpers ------------------------------------------------------------------------------


def to_us(value: datetime) -> int:
    """Microseconds since the epoch of an aware datetime."""
    if value.tzinfo is None:
        raise ValueError(f"expected a time-zone aware datetime, got {value!r}")
    return (value - _EPOCH) // timedelta(microseconds=1)


def from_us(us: int) -> datetime:
    """The UTC datetime of microseconds since the epoch."""
    return _EPOCH + timedelta(microseconds=us)


def epoch_text(us: int) -> str:
    """Epoch seconds as exact JSON number text: ``1741000000`` or ``1741000000.123456``."""
    sec, frac = divmod(us, US)
    return str(sec) if frac == 0 else f"{sec}.{frac:06d}"


def epoch_ms_text(ms: int) -> str:
    """Epoch seconds of a millisecond Kafka timestamp as exact JSON number text (``1741000000.123``)."""
    sec, frac = divmod(ms, 1000)
    return f"{sec}.{frac:03d}"


@lru_cache(maxsize=4096)
def _iso_day(days: int) -> str:
    return (_EPOCH + timedelta(days=days)).strftime("%Y-%m-%d")


def iso(us: int) -> str:
    """ISO-8601 UTC text with microseconds: ``2025-03-03T05:00:00.000000Z``."""
    sec, frac = divmod(us, US)
    days, rest = divmod(sec, 86_400)
    hour, rest = divmod(rest, 3600)
    minute, second = divmod(rest, 60)
    return f"{_iso_day(days)}T{hour:02d}:{minute:02d}:{second:02d}.{frac:06d}Z"


def iso_date(value: date) -> str:
    return value.isoformat()


# --- knobs -------------------------------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ChaosCounts(NamedTuple):
    """How many records of each kind of trouble a world (or one topic of it) carries."""

    duplicates: int
    late: int
    malformed_json: int
    schema_violations: int
    future: int


ChaosKind = Literal["duplicates", "late", "malformed_json", "schema_violations", "future"]
#: The kinds of trouble, in the order of the ChaosCounts fields.
CHAOS_KINDS: tuple[ChaosKind, ...] = ("duplicates", "late", "malformed_json", "schema_violations", "future")
# The one record a small topic gets when ``rate`` rounds every kind to zero: a bad record (not a
# duplicate) that any non-empty topic can carry, so the topic's quarantine path is exercised.
_FALLBACK_ORDER: tuple[ChaosKind, ...] = ("schema_violations", "malformed_json", "future", "late", "duplicates")


class ChaosConfig(_Model):
    """Trouble injected into the Kafka stream; everything is off by default.

    **Counts from ``rate``** are per topic, so bad data is equally sparse on every topic: each kind
    of trouble that applies to a topic gets ``round(rate * the topic's good messages)`` records
    (half up), all drawn from that topic. A non-empty topic whose every kind rounds to zero still
    gets exactly one record (the first rate-derived kind of schema_violations, malformed_json,
    future, late, duplicates that applies), so with ``rate > 0`` each topic's quarantine path is
    exercised; a small topic therefore carries about one bad record, a big one about ``rate`` per
    kind. ``future`` applies to the device topics (bpm, workout) only.

    **Explicit counts** (``late=5``...) are world-wide and keep the historical split, meant for
    tests that want every variant: malformed_json and schema_violations cycle through every
    variant of :mod:`~fitbit_stream.generator.chaos` (each topic in turn), future alternates bpm
    and workout, duplicates go 30% to user_info/workout events and the rest to readings, late goes
    20% to workout stops, 20% to user_info updates and the rest (with whatever those two could not
    take) to blocks of readings. Explicit and rate-derived kinds can be mixed.

    ``late`` records are held back and only emitted in the late wave (``emit(..., late_wave=True)``);
    their event times are at least ``late_age_minutes`` older than the greatest event time of their
    topic in the main data, so they are late for any lateness horizon below that, whatever the
    micro-batch split. Only the stops of complete sessions, profile updates and readings are held
    back, never more than 10% of a topic's messages or of the complete sessions (at least one may
    always be held back, so an explicit count covers every topic of a small world).
    """

    rate: float = Field(default=0.0, ge=0.0, le=0.2)
    duplicates: int | None = Field(default=None, ge=0)
    late: int | None = Field(default=None, ge=0)
    malformed_json: int | None = Field(default=None, ge=0)
    schema_violations: int | None = Field(default=None, ge=0)
    future: int | None = Field(default=None, ge=0)
    # Kafka messages whose arrival falls in the same window of this many seconds are delivered in
    # a shuffled order. Windows are a fixed grid, so a slice of the stream shuffles like the whole.
    shuffle_window_seconds: float = Field(default=0.0, ge=0.0, le=600.0)
    late_age_minutes: float = Field(default=120.0, gt=60.0)
    # How far ahead the wrong device clock of a `future` record runs.
    future_skew_hours: float = Field(default=24.0, gt=1.0)

    @classmethod
    def on(cls, rate: float = 0.001, *, shuffle_window_seconds: float = 20.0) -> ChaosConfig:
        """Every kind of trouble at ``rate`` with a shuffled delivery order."""
        return cls(rate=rate, shuffle_window_seconds=shuffle_window_seconds)

    def explicit_kinds(self) -> frozenset[ChaosKind]:
        """The kinds of trouble given an explicit count (the others come from ``rate``)."""
        return frozenset(k for k in CHAOS_KINDS if getattr(self, k) is not None)

    def rate_counts(self, good_messages: int, *, kinds: Collection[ChaosKind] = CHAOS_KINDS) -> ChaosCounts:
        """What ``rate`` asks of one topic of ``good_messages`` good messages, for ``kinds`` only.

        ``kinds`` are the kinds that apply to the topic and have no explicit count; the others are 0.
        """
        zero = dict.fromkeys(CHAOS_KINDS, 0)
        if self.rate <= 0 or good_messages <= 0 or not kinds:
            return ChaosCounts(**zero)
        # Half up rather than Python's half-to-even: a rate reads the same at every size.
        each = math.floor(self.rate * good_messages + 0.5)
        if each == 0:
            first = next(k for k in _FALLBACK_ORDER if k in kinds)
            return ChaosCounts(**{**zero, first: 1})
        return ChaosCounts(**{**zero, **dict.fromkeys(kinds, each)})

    def resolve(self, good_messages: int) -> ChaosCounts:
        """The counts of a world of a single topic of ``good_messages`` good messages.

        An explicit count is returned as given; the others follow the per-topic rule of ``rate``.
        """
        explicit = self.explicit_kinds()
        rated = self.rate_counts(good_messages, kinds=[k for k in CHAOS_KINDS if k not in explicit])
        return ChaosCounts(*(getattr(self, k) if k in explicit else n for k, n in zip(CHAOS_KINDS, rated, strict=True)))


class GeneratorConfig(_Model):
    """Everything that shapes a synthetic world: same knobs and seed give byte-identical output."""

    seed: int = 42
    users: int = Field(default=50, ge=1, le=1_000_000)
    days: float = Field(default=1.0, gt=0.0, le=3660.0)
    start: datetime = DEFAULT_START
    gyms: int = Field(default=3, ge=1, le=10_000)
    topics: KafkaTopics = KafkaTopics()
    # The session bound of the contract (RulesConfig.max_session_hours): `too_long` sessions break it.
    max_session_hours: float = Field(default=3.0, gt=0.5, le=24.0)
    heartrate_null_rate: float = Field(default=0.002, ge=0.0, le=1.0)
    heartrate_out_of_range_rate: float = Field(default=0.001, ge=0.0, le=1.0)
    # Share of event timestamps (and of devices' reading clocks) carrying a microsecond fraction.
    fraction_rate: float = Field(default=0.15, ge=0.0, le=1.0)
    chaos: ChaosConfig = ChaosConfig()

    @field_validator("start")
    @classmethod
    def _aware_utc(cls, v: datetime) -> datetime:
        if v.tzinfo is None:
            raise ValueError(f"start must carry a time zone (e.g. 2025-03-03T00:00:00Z), got {v.isoformat()}")
        return v.astimezone(UTC)

    @property
    def start_us(self) -> int:
        return to_us(self.start)

    @property
    def end_us(self) -> int:
        return self.start_us + round(self.days * DAY)


# --- emissions ---------------------------------------------------------------------------------


class KafkaEmission(NamedTuple):
    """One Kafka record: UTF-8 string key, compact JSON value, CreateTime timestamp in ms.

    ``partition`` None means "the default partitioner on the key" (murmur2).
    """

    topic: str
    key: str
    value: str
    timestamp_ms: int
    partition: int | None = None


SqlOp = Literal["insert_registration", "update_registration", "insert_visit", "update_visit_logout"]


class RegistrationRow(NamedTuple):
    """A ``registered_users`` row (the table's key is user_id: a re-registration updates it)."""

    user_id: int
    device_id: int
    mac_address: str
    registration_us: int

    @property
    def registration_timestamp(self) -> datetime:
        return from_us(self.registration_us)


class VisitRow(NamedTuple):
    """A ``gym_logins`` row; ``logout_us`` is None while the visit is open."""

    mac_address: str
    gym: int
    login_us: int
    logout_us: int | None

    @property
    def login(self) -> datetime:
        return from_us(self.login_us)

    @property
    def logout(self) -> datetime | None:
        return None if self.logout_us is None else from_us(self.logout_us)


class SqlEmission(NamedTuple):
    """A statement against the SQL source, happening at ``time_us``."""

    op: SqlOp
    time_us: int
    row: RegistrationRow | VisitRow


Emission = KafkaEmission | SqlEmission


def emit_time_us(emission: Emission) -> int:
    """When an emission happens: a Kafka record's timestamp, a statement's time."""
    if isinstance(emission, KafkaEmission):
        return emission.timestamp_ms * 1000
    return emission.time_us
