"""The simulated world: members, devices, gym visits, workouts, profile changes and heart rate.

``build_world(config)`` plans everything small up front (registrations, visits, sessions, profile
changes, injected bad records: a few thousand objects for the defaults) and keeps heart-rate
readings lazy: each visit's readings come from their own seeded ``random.Random``, so any slice of
the stream can be regenerated without the rest, and the whole is byte-identical for a seed.

Time inside is ``int`` microseconds since the epoch (UTC). Every random choice comes from a
``random.Random`` seeded with a string naming its purpose (string seeds are hashed with SHA-512, so
they do not depend on ``PYTHONHASHSEED``).
"""

from __future__ import annotations

import bisect
import dataclasses
import heapq
import random
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from functools import cached_property
from typing import Any, Literal, NamedTuple

from fitbit_stream.generator import _names
from fitbit_stream.generator._json import JsonNumber, JsonValue, dumps
from fitbit_stream.generator.chaos import (
    MALFORMED_VARIANTS,
    SCHEMA_VARIANTS,
    Role,
    malformed_value,
    schema_violation_value,
)
from fitbit_stream.generator.model import (
    CHAOS_KINDS,
    DAY,
    HOUR,
    MINUTE,
    US,
    ChaosCounts,
    ChaosKind,
    Emission,
    GeneratorConfig,
    KafkaEmission,
    RegistrationRow,
    SqlEmission,
    VisitRow,
    epoch_text,
    iso,
)

__all__ = [
    "MAX_DELAY_MS",
    "BadRecord",
    "Profile",
    "ProfileChange",
    "Reading",
    "RegistrationVersion",
    "Session",
    "Visit",
    "World",
    "build_world",
]

#: The largest gap between a message's event time and its arrival (Kafka record timestamp).
MAX_DELAY_MS = 5_000
_MAX_DELAY_US = MAX_DELAY_MS * 1000

DeliveryState = Literal["main", "late", "not_sent"]
Reason = Literal["malformed_json", "schema_violation", "future", "late", "invalid_session"]

# Ranks order the sources of one instant: SQL first (a registration exists before its readings).
_RANK_SQL, _RANK_USER_INFO, _RANK_WORKOUT, _RANK_BPM, _RANK_BAD = 0, 1, 2, 3, 4
_DUP, _LATE = "dup", "late"
_ROLES: tuple[Role, ...] = ("user_info", "bpm", "workout")
# The kinds of trouble each topic can carry: a profile change has no device clock to run ahead.
_ROLE_KINDS: dict[Role, tuple[ChaosKind, ...]] = {
    "user_info": ("duplicates", "late", "malformed_json", "schema_violations"),
    "bpm": CHAOS_KINDS,
    "workout": CHAOS_KINDS,
}


def _rng(seed: int, *parts: object) -> random.Random:
    return random.Random("|".join(str(p) for p in (seed, *parts)))


def _delay_ms(u: float) -> int:
    """Producer-to-broker delay from one uniform draw: mostly ms, sometimes a few seconds."""
    if u < 0.85:
        return 5 + int(u * (295 / 0.85))
    if u < 0.98:
        return 300 + int((u - 0.85) * (1700 / 0.13))
    return 2000 + int((u - 0.98) * (2999 / 0.02))


def _arrival_ms(event_us: int, u: float) -> int:
    return -(-event_us // 1000) + _delay_ms(u)


# --- what was simulated --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Profile:
    dob: date
    sex: str
    gender: str
    first_name: str
    last_name: str
    street_address: str
    city: str
    state: str
    zip_code: int

    @property
    def zip5(self) -> str:
        """The zip as the contract's silver tables hold it: 5 digits, zero-padded."""
        return f"{self.zip_code:05d}"


@dataclass(frozen=True, slots=True)
class ProfileChange:
    """One user_info message of the simulation (its delivery says whether it is held back late)."""

    user_id: int
    update_type: Literal["new", "update", "delete"]
    time_us: int
    profile: Profile | None
    value: str
    timestamp_ms: int
    delivery: DeliveryState


class RegistrationVersion(NamedTuple):
    op: Literal["insert", "update"]
    row: RegistrationRow


@dataclass(frozen=True, slots=True)
class Session:
    """A workout session. ``stop_us`` is the stop message's timestamp (None: never sent).

    ``kind``: normal, stop_before_start (the stop message carries a time before the start),
    too_long (longer than the session bound), no_stop (the member never pressed stop).
    ``status`` is what the contract makes of the events that were sent: complete, incomplete
    (no stop before the end of the simulation) or invalid.
    """

    user_id: int
    workout_id: int
    session_id: int
    start_us: int
    stop_us: int | None
    exercise_end_us: int
    kind: Literal["normal", "stop_before_start", "too_long", "no_stop"]
    status: Literal["complete", "incomplete", "invalid"]
    gym: int
    mac_address: str
    device_id: int
    visit_login_us: int
    start_value: str
    start_timestamp_ms: int
    stop_value: str | None
    stop_timestamp_ms: int | None
    stop_delivery: DeliveryState


@dataclass(frozen=True, slots=True)
class Visit:
    """A gym visit. ``logout_us`` is None when the member is still in the gym at the end."""

    index: int
    user_id: int
    device_id: int
    mac_address: str
    gym: int
    login_us: int
    logout_us: int | None
    sessions: tuple[Session, ...]
    first_reading_us: int
    readings: int
    baseline_bpm: float

    @property
    def last_reading_us(self) -> int:
        return self.first_reading_us + (self.readings - 1) * US


class Reading(NamedTuple):
    device_id: int
    time_us: int
    #: exact JSON text of the heart rate: ``72.15``, ``0``, ``300`` or ``null``
    heartrate: str


@dataclass(frozen=True, slots=True)
class BadRecord:
    """A record the pipeline must quarantine, with the contract reason (and field) it should get."""

    topic: str
    key: str
    value: str
    timestamp_ms: int
    reason: Reason
    kind: str
    field: str | None
    injected: bool
    source: dict[str, Any]


# --- planning ------------------------------------------------------------------------------------


@dataclass(slots=True)
class _RawSession:
    start_us: int
    exercise_end_us: int
    kind: Literal["normal", "stop_before_start", "too_long", "no_stop"]
    workout_id: int
    intensity: float


@dataclass(slots=True)
class _RawVisit:
    login_us: int
    logout_us: int
    gym: int
    sessions: list[_RawSession]


@dataclass(slots=True)
class _User:
    user_id: int
    rng: random.Random
    registration_us: int
    device_id: int
    mac_address: str
    home_gym: int
    baseline_bpm: float
    favorite_workouts: list[int]
    profile: Profile
    candidates: list[int] = field(default_factory=list)
    special: str | None = None
    visits: list[_RawVisit] = field(default_factory=list)
    rereg_us: int | None = None
    new_device_id: int | None = None
    new_mac_address: str | None = None

    def device_at(self, t_us: int) -> tuple[int, str]:
        if self.rereg_us is not None and t_us >= self.rereg_us:
            assert self.new_device_id is not None
            assert self.new_mac_address is not None
            return self.new_device_id, self.new_mac_address
        return self.device_id, self.mac_address


class _Planned(NamedTuple):
    """A planned Kafka message: stream order key, emission, chaos flag and what it came from."""

    order_us: int
    rank: int
    n: int
    event_us: int
    emission: KafkaEmission
    source: dict[str, Any]


def _mac(n: int) -> str:
    text = f"{n:012x}"
    return ":".join(text[i : i + 2] for i in range(0, 12, 2))


def _dob_text(d: date) -> str:
    return f"{d.month:02d}/{d.day:02d}/{d.year:04d}"


class World:
    """A planned synthetic world; iterate its emissions with :meth:`emissions`."""

    def __init__(self, config: GeneratorConfig) -> None:
        self.config = config
        self.seed = config.seed
        self.start_us = config.start_us
        self.end_us = config.end_us
        self.topics = config.topics
        self.gyms: tuple[int, ...] = tuple(range(1, config.gyms + 1))
        self._frac_rate = config.fraction_rate
        self._max_session_us = round(config.max_session_hours * HOUR)
        self._users: list[_User] = []
        self.registrations: list[RegistrationVersion] = []
        self.visits: list[Visit] = []
        self.sessions: list[Session] = []
        self.profile_changes: list[ProfileChange] = []
        self._sql_items: list[tuple[int, int, int, int, SqlEmission, str | None, str]] = []
        self._event_items: list[tuple[int, int, int, int, KafkaEmission, str | None, str]] = []
        self._bad_items: list[tuple[int, int, int, int, KafkaEmission, str | None, str]] = []
        self._planned_bad: list[BadRecord] = []
        self._reading_flags: dict[int, dict[int, str]] = {}
        self._late_events: list[_Planned] = []
        self.max_event_us: dict[str, int | None] = {}
        self.chaos_counts = ChaosCounts(0, 0, 0, 0, 0)
        self.chaos_placed: Counter[str] = Counter()
        self._plan()

    # -- small helpers ------------------------------------------------------------------------

    def _frac(self, rng: random.Random) -> int:
        """A microsecond fraction for a share of timestamps (the rest are whole seconds)."""
        return rng.randrange(1, US) if rng.random() < self._frac_rate else 0

    def _at_second(self, rng: random.Random, lo_us: int, hi_us: int) -> int:
        """A random instant in [lo, hi), on a whole second unless it draws a fraction."""
        lo_s, hi_s = -(-lo_us // US), max(-(-lo_us // US) + 1, hi_us // US)
        t = rng.randrange(lo_s, hi_s) * US + self._frac(rng)
        return min(max(t, lo_us), hi_us - 1) if hi_us > lo_us else lo_us

    # -- plan ---------------------------------------------------------------------------------

    def _plan(self) -> None:
        self._plan_users()
        self._plan_candidates()
        self._plan_visits()
        self._plan_reregistrations()
        self._plan_sql_and_visits()
        self._plan_profile_changes()
        self._plan_event_items()
        self._plan_max_event_times()
        self._plan_chaos()

    def _plan_users(self) -> None:
        cfg = self.config
        rng = _rng(self.seed, "ids")
        n = cfg.users
        user_ids = sorted(rng.sample(range(10_000, 100_000 + 10 * n), n))
        # Device ids above 2**31 catch any INT truncation of the BIGINT column.
        device_ids = rng.sample(range(3_000_000_000, 4_000_000_000), 2 * n)
        macs = rng.sample(range(1 << 48), 2 * n)
        span = self.end_us - self.start_us
        for i, uid in enumerate(user_ids):
            urng = _rng(self.seed, "user", uid)
            if urng.random() < 0.1 and span >= 12 * HOUR:
                reg = self._at_second(urng, self.start_us + span // 10, self.start_us + span * 6 // 10)
            else:
                reg = self._at_second(urng, self.start_us, self.start_us + min(HOUR, span // 20))
            sex = urng.choice("MF")
            gender = sex if urng.random() < 0.95 else ("F" if sex == "M" else "M")
            first = urng.choice(_names.FIRST_NAMES_F if sex == "F" else _names.FIRST_NAMES_M)
            start_date = (self.config.start).date()
            if i == 0:
                dob = date(2000, 2, 29)  # a 29 February birthday (contract §3.3)
            elif i == 1 and n >= 3:
                # The `95+` bin (29 February falls back to the 28th in a common year).
                dob = date(start_date.year - 97, start_date.month, min(start_date.day, 28))
            else:
                age_days = urng.randrange(16 * 365, 82 * 365)
                dob = start_date - timedelta(days=age_days)
            city, state, zip_base = urng.choice(_names.CITIES)
            profile = Profile(
                dob=dob,
                sex=sex,
                gender=gender,
                first_name=first,
                last_name=urng.choice(_names.LAST_NAMES),
                street_address=f"{urng.randrange(1, 9999)} {urng.choice(_names.STREET_NAMES)}",
                city=city,
                state=state,
                zip_code=zip_base + urng.randrange(0, 40),
            )
            home = urng.choice(self.gyms)
            self._users.append(
                _User(
                    user_id=uid,
                    rng=urng,
                    registration_us=reg,
                    device_id=device_ids[i],
                    mac_address=_mac(macs[i]),
                    home_gym=home,
                    baseline_bpm=urng.uniform(60.0, 78.0),
                    favorite_workouts=sorted(urng.sample(range(1, 13), urng.randrange(2, 5))),
                    profile=profile,
                )
            )
        self._spare_devices = [(device_ids[n + i], _mac(macs[n + i])) for i in range(n)]

    def _plan_candidates(self) -> None:
        day0 = self.start_us - self.start_us % DAY
        for u in self._users:
            rng = u.rng
            for d in range(day0, self.end_us, DAY):
                x = rng.random()
                if x < 0.35:
                    logins = []
                elif x < 0.92:
                    logins = [self._at_second(rng, d + 5 * HOUR, d + 23 * HOUR)]
                else:
                    logins = [
                        self._at_second(rng, d + 5 * HOUR, d + 13 * HOUR),
                        self._at_second(rng, d + 15 * HOUR, d + 23 * HOUR),
                    ]
                u.candidates.extend(t for t in logins if u.registration_us + 10 * MINUTE <= t < self.end_us)
        rng = _rng(self.seed, "open-at-end")
        eligible = [u for u in self._users if u.registration_us < self.end_us - 2 * HOUR]
        n_open = min(len(eligible), max(1, len(self._users) // 25))
        for u in rng.sample(eligible, n_open):
            forced = self._at_second(rng, self.end_us - 75 * MINUTE, self.end_us - 15 * MINUTE)
            u.candidates = [t for t in u.candidates if t < forced - 6 * HOUR] + [forced]
        open_ids = {u.user_id for u in self._users if u.candidates and u.candidates[-1] >= self.end_us - 2 * HOUR}
        rng = _rng(self.seed, "specials")
        n_each = max(1, round(len(self._users) * self.config.days * 0.02))
        eligible = [
            u
            for u in self._users
            if u.candidates and u.candidates[0] < self.end_us - 6 * HOUR and u.user_id not in open_ids
        ]
        kinds = ("stop_before_start", "too_long", "no_stop")
        chosen = rng.sample(eligible, min(len(eligible), 3 * n_each))
        for i, u in enumerate(chosen):
            u.special = kinds[i % 3]

    def _plan_visits(self) -> None:
        for u in self._users:
            rng = u.rng
            cursor = u.registration_us
            for login in sorted(u.candidates):
                if login < cursor + 20 * MINUTE:
                    continue
                special = u.special if not u.visits else None
                gym = u.home_gym if rng.random() < 0.75 or len(self.gyms) == 1 else rng.choice(self.gyms)
                x = rng.random()
                n_sessions = 0 if x < 0.1 else 1 if x < 0.6 else 2 if x < 0.9 else 3
                if special is not None:
                    n_sessions = max(1, n_sessions)
                t = login + rng.randrange(2 * 60, 12 * 60) * US
                sessions: list[_RawSession] = []
                for j in range(n_sessions):
                    kind: Any = special if (special is not None and j == 0) else "normal"
                    length = rng.randrange(20 * 60, 90 * 60 + 1) * US
                    if kind == "too_long":
                        length = self._max_session_us + rng.randrange(5 * 60, 45 * 60) * US
                    start = t - t % US + self._frac(rng)
                    end = start + length + self._frac(rng)
                    sessions.append(
                        _RawSession(
                            start_us=start,
                            exercise_end_us=end,
                            kind=kind,
                            workout_id=rng.choice(u.favorite_workouts),
                            intensity=rng.uniform(120.0, 178.0),
                        )
                    )
                    t = end + rng.randrange(3 * 60, 15 * 60) * US
                if sessions:
                    logout = t + rng.randrange(2 * 60, 12 * 60) * US
                else:
                    logout = login + rng.randrange(20 * 60, 70 * 60) * US
                logout = logout - logout % US + self._frac(rng)
                u.visits.append(_RawVisit(login, logout, gym, sessions))
                cursor = logout

    def _plan_reregistrations(self) -> None:
        rng = _rng(self.seed, "reregistration")
        n = max(1, round(len(self._users) * 0.06))
        gaps: list[tuple[_User, int, int]] = []
        for u in self._users:
            for a, b in zip(u.visits, u.visits[1:], strict=False):
                if b.login_us - a.logout_us >= HOUR:
                    gaps.append((u, a.logout_us, b.login_us))
        by_user: dict[int, list[tuple[_User, int, int]]] = {}
        for g in gaps:
            by_user.setdefault(g[0].user_id, []).append(g)
        users_with_gap = sorted(by_user)
        chosen = rng.sample(users_with_gap, min(n, len(users_with_gap)))
        if len(chosen) < n:
            # Fall back to members whose last visit ends early enough for a new device afterwards.
            rest = [
                u.user_id
                for u in self._users
                if u.user_id not in by_user and u.visits and u.visits[-1].logout_us < self.end_us - 2 * HOUR
            ]
            for uid in rng.sample(rest, min(n - len(chosen), len(rest))):
                u = next(x for x in self._users if x.user_id == uid)
                by_user[uid] = [(u, u.visits[-1].logout_us, self.end_us - HOUR)]
                chosen.append(uid)
        for i, uid in enumerate(sorted(chosen)):
            u, lo, hi = rng.choice(by_user[uid])
            u.rereg_us = self._at_second(rng, lo + 10 * MINUTE, hi - 10 * MINUTE)
            u.new_device_id, u.new_mac_address = self._spare_devices[i]

    def _plan_sql_and_visits(self) -> None:
        sql: list[SqlEmission] = []
        visits: list[tuple[int, _User, _RawVisit]] = []
        for u in self._users:
            row = RegistrationRow(u.user_id, u.device_id, u.mac_address, u.registration_us)
            self.registrations.append(RegistrationVersion("insert", row))
            sql.append(SqlEmission("insert_registration", u.registration_us, row))
            if u.rereg_us is not None:
                assert u.new_device_id is not None
                assert u.new_mac_address is not None
                row2 = RegistrationRow(u.user_id, u.new_device_id, u.new_mac_address, u.rereg_us)
                self.registrations.append(RegistrationVersion("update", row2))
                sql.append(SqlEmission("update_registration", u.rereg_us, row2))
            for v in u.visits:
                visits.append((v.login_us, u, v))
        self.registrations.sort(key=lambda r: (r.row.registration_us, r.row.user_id))
        visits.sort(key=lambda x: (x[0], x[1].user_id))
        session_counter: dict[int, int] = {}
        self._raw_sessions: dict[tuple[int, int], _RawSession] = {}
        phase_of: dict[int, int] = {}
        for index, (_, u, v) in enumerate(visits):
            device_id, mac = u.device_at(v.login_us)
            if device_id not in phase_of:
                prng = _rng(self.seed, "phase", device_id)
                phase_of[device_id] = prng.randrange(1, US) if prng.random() < self._frac_rate else 0
            phase = phase_of[device_id]
            logout = v.logout_us if v.logout_us < self.end_us else None
            sql.append(SqlEmission("insert_visit", v.login_us, VisitRow(mac, v.gym, v.login_us, None)))
            if logout is not None:
                sql.append(SqlEmission("update_visit_logout", logout, VisitRow(mac, v.gym, v.login_us, logout)))
            # Readings at 1 Hz on the device's own sub-second phase, while the member is in the gym.
            first = v.login_us + (phase - v.login_us) % US
            stop = min(v.logout_us, self.end_us)
            n_readings = max(0, -(-(stop - first) // US))
            sessions: list[Session] = []
            for rs in v.sessions:
                if rs.start_us >= self.end_us:
                    break
                sid = session_counter.get(u.user_id, 0) + 1
                session_counter[u.user_id] = sid
                self._raw_sessions[(u.user_id, sid)] = rs
                sessions.append(self._session(u, v, rs, sid, device_id, mac))
            self.visits.append(
                Visit(
                    index=index,
                    user_id=u.user_id,
                    device_id=device_id,
                    mac_address=mac,
                    gym=v.gym,
                    login_us=v.login_us,
                    logout_us=logout,
                    sessions=tuple(sessions),
                    first_reading_us=first,
                    readings=n_readings,
                    baseline_bpm=u.baseline_bpm,
                )
            )
            self.sessions.extend(sessions)
        sql.sort(key=lambda e: (e.time_us, _SQL_ORDER[e.op]))
        self._sql_items = [(e.time_us, _RANK_SQL, i, 0, e, None, "sql") for i, e in enumerate(sql)]

    def _session(self, u: _User, v: _RawVisit, rs: _RawSession, sid: int, device_id: int, mac: str) -> Session:
        if rs.kind == "stop_before_start":
            stop: int | None = rs.start_us - u.rng.randrange(60, 20 * 60) * US
        elif rs.kind == "no_stop":
            stop = None
        else:
            stop = rs.exercise_end_us
        if stop is not None and stop >= self.end_us:
            stop = None
        if stop is None:
            status: Literal["complete", "incomplete", "invalid"] = "incomplete"
        elif rs.kind in ("stop_before_start", "too_long"):
            status = "invalid"
        else:
            status = "complete"
        return Session(
            user_id=u.user_id,
            workout_id=rs.workout_id,
            session_id=sid,
            start_us=rs.start_us,
            stop_us=stop,
            exercise_end_us=rs.exercise_end_us,
            kind=rs.kind,
            status=status,
            gym=v.gym,
            mac_address=mac,
            device_id=device_id,
            visit_login_us=v.login_us,
            start_value="",
            start_timestamp_ms=0,
            stop_value=None,
            stop_timestamp_ms=None,
            stop_delivery="main" if stop is not None else "not_sent",
        )

    def _plan_profile_changes(self) -> None:
        rng = _rng(self.seed, "profiles")
        changes: list[tuple[int, int, str, Profile | None]] = []  # (time, user_id, type, profile)
        last_change: dict[int, int] = {}
        for u in self._users:
            urng = _rng(self.seed, "profile", u.user_id)
            t_new = u.registration_us + urng.randrange(1, 90) * US + self._frac(urng)
            if t_new >= self.end_us:
                continue
            changes.append((t_new, u.user_id, "new", u.profile))
            last_change[u.user_id] = t_new
            profile = u.profile
            if urng.random() < 0.3 and t_new + HOUR < self.end_us - MINUTE:
                times = sorted(
                    self._at_second(urng, t_new + HOUR, self.end_us - MINUTE)
                    for _ in range(1 if urng.random() < 0.8 else 2)
                )
                for t in times:
                    profile = self._changed_profile(profile, urng)
                    changes.append((t, u.user_id, "update", profile))
                    last_change[u.user_id] = t
        # Deletes, some followed by a re-creation, one at the very timestamp of an update.
        by_user = {uid: t for uid, t in last_change.items() if t < self.end_us - 3 * HOUR}
        n_del = min(len(by_user), max(1, round(len(self._users) * 0.06)))
        deleted = sorted(rng.sample(sorted(by_user), n_del))
        profiles = {u.user_id: u.profile for u in self._users}
        for _t, uid, kind, p in changes:
            if kind != "delete" and p is not None:
                profiles[uid] = p
        for i, uid in enumerate(deleted):
            lo = by_user[uid] + 10 * MINUTE
            t_del = self._at_second(rng, lo, max(lo + 1, self.end_us - 30 * MINUTE))
            if i == 0:
                # Same timestamp: the contract orders update before delete.
                profiles[uid] = self._changed_profile(profiles[uid], rng)
                changes.append((t_del, uid, "update", profiles[uid]))
            changes.append((t_del, uid, "delete", None))
            if i % 2 == 0 and t_del + 10 * MINUTE < self.end_us - MINUTE:
                t_back = self._at_second(rng, t_del + 10 * MINUTE, self.end_us - MINUTE)
                profiles[uid] = self._changed_profile(profiles[uid], rng)
                changes.append((t_back, uid, "new", profiles[uid]))
        order = {"new": 0, "update": 1, "delete": 2}
        changes.sort(key=lambda c: (c[0], c[1], order[c[2]]))
        self._raw_changes = changes

    def _changed_profile(self, p: Profile, rng: random.Random) -> Profile:
        x = rng.random()
        if x < 0.55:
            city, state, zip_base = rng.choice(_names.CITIES)
            return Profile(
                p.dob,
                p.sex,
                p.gender,
                p.first_name,
                p.last_name,
                f"{rng.randrange(1, 9999)} {rng.choice(_names.STREET_NAMES)}",
                city,
                state,
                zip_base + rng.randrange(0, 40),
            )
        if x < 0.85:
            return Profile(
                p.dob,
                p.sex,
                p.gender,
                p.first_name,
                rng.choice(_names.LAST_NAMES),
                p.street_address,
                p.city,
                p.state,
                p.zip_code,
            )
        gender = "F" if p.gender == "M" else "M"
        return Profile(p.dob, p.sex, gender, p.first_name, p.last_name, p.street_address, p.city, p.state, p.zip_code)

    def _user_info_message(
        self, uid: int, kind: str, t_us: int, p: Profile | None, rng: random.Random
    ) -> dict[str, JsonValue]:
        msg: dict[str, JsonValue] = {
            "user_id": uid,
            "update_type": kind,
            "timestamp": JsonNumber(epoch_text(t_us)),
        }
        if p is None:
            return msg
        x = rng.random()
        zip_value: JsonValue = p.zip_code if x < 0.4 else p.zip5 if x < 0.8 else str(p.zip_code)
        msg.update(
            {
                "dob": _dob_text(p.dob),
                "sex": p.sex,
                "gender": p.gender,
                "first_name": p.first_name,
                "last_name": p.last_name,
                "address": {
                    "street_address": p.street_address,
                    "city": p.city,
                    "state": p.state,
                    "zip": zip_value,
                },
            }
        )
        if rng.random() < 0.1:
            msg["app_version"] = "4.12.0"  # unknown extra fields are ignored (contract §1.1)
        return msg

    def _plan_event_items(self) -> None:
        rng = _rng(self.seed, "events")
        planned: list[tuple[int, int, int, str, str, dict[str, JsonValue], dict[str, Any]]] = []
        self._messages: dict[int, dict[str, JsonValue]] = {}
        for i, (t, uid, kind, p) in enumerate(self._raw_changes):
            msg = self._user_info_message(uid, kind, t, p, rng)
            src = {"entity": "profile_change", "user_id": uid, "update_type": kind, "timestamp": iso(t)}
            planned.append((t, _RANK_USER_INFO, i, self.topics.user_info, str(uid), msg, src))
        for i, s in enumerate(self.sessions):
            for action in ("start", "stop"):
                at = s.start_us if action == "start" else s.stop_us
                if at is None:
                    continue
                t = at
                msg = {
                    "user_id": s.user_id,
                    "workout_id": s.workout_id,
                    "session_id": s.session_id,
                    "timestamp": JsonNumber(epoch_text(t)),
                    "action": action,
                }
                src = {
                    "entity": "workout_event",
                    "user_id": s.user_id,
                    "workout_id": s.workout_id,
                    "session_id": s.session_id,
                    "action": action,
                }
                planned.append(
                    (
                        t,
                        _RANK_WORKOUT,
                        2 * i + (action == "stop"),
                        self.topics.workout,
                        str(s.user_id),
                        msg,
                        src,
                    )
                )
        planned.sort(key=lambda x: x[:3])
        delays = _rng(self.seed, "delays")
        self._planned_events: list[_Planned] = []
        self._raw_of: dict[int, int] = {}
        for n, (t, rank, i, topic, key, msg, src) in enumerate(planned):
            em = KafkaEmission(topic, key, dumps(msg), _arrival_ms(t, delays.random()))
            self._planned_events.append(_Planned(t, rank, n, t, em, src))
            self._messages[n] = msg
            if rank == _RANK_USER_INFO:
                self._raw_of[n] = i

    def _plan_max_event_times(self) -> None:
        bpm = max((v.last_reading_us for v in self.visits if v.readings > 0), default=None)
        workout = max((t for s in self.sessions for t in (s.start_us, s.stop_us) if t is not None), default=None)
        user_info = max((t for t, *_ in self._raw_changes), default=None)
        self.max_event_us = {"bpm": bpm, "workout": workout, "user_info": user_info}

    # -- chaos --------------------------------------------------------------------------------

    def _plan_chaos(self) -> None:
        chaos = self.config.chaos
        explicit = chaos.explicit_kinds()
        readable = [v for v in self.visits if v.readings > 0]
        cum = list(_cumsum(v.readings for v in readable))
        good: dict[Role, int] = {
            "user_info": sum(1 for p in self._planned_events if p.rank == _RANK_USER_INFO),
            "bpm": cum[-1] if cum else 0,
            "workout": sum(1 for p in self._planned_events if p.rank == _RANK_WORKOUT),
        }
        # Counts from the rate are per topic, so a 1 Hz topic cannot swamp the small ones.
        per_role = {
            role: chaos.rate_counts(good[role], kinds=[k for k in _ROLE_KINDS[role] if k not in explicit])
            for role in _ROLES
        }
        self.chaos_counts = ChaosCounts(
            *(getattr(chaos, k) if k in explicit else sum(getattr(per_role[r], k) for r in _ROLES) for k in CHAOS_KINDS)
        )
        rng = _rng(self.seed, "chaos")
        flags: dict[int, str] = {}  # planned event index -> chaos flag
        self._plan_late(flags, per_role, good, readable, rng)
        self._plan_duplicates(flags, per_role, readable, cum, rng)
        self._event_flags = flags
        self._plan_bad_records(per_role, readable, cum)

        # The planned (non-reading) Kafka items of the main stream, and the late ones held back.
        for p in self._planned_events:
            flag = flags.get(p.n)
            if flag == _LATE:
                self._late_events.append(p)
            self._event_items.append((p.order_us, p.rank, p.n, 0, p.emission, flag, "good"))
        self._finish_truth_records()

    def _plan_late(
        self,
        flags: dict[int, str],
        per_role: dict[Role, ChaosCounts],
        good: dict[Role, int],
        readable: list[Visit],
        rng: random.Random,
    ) -> None:
        """Held back for the late wave; event time older than the topic's max minus late_age."""
        chaos = self.config.chaos
        n_late = chaos.late  # None: per topic, from the rate
        late_age = round(chaos.late_age_minutes * MINUTE)
        complete = {(s.user_id, s.session_id) for s in self.sessions if s.status == "complete"}
        # A late wave that swallows most stops would leave sessions open for the whole main data.
        caps: dict[Role, int] = {
            "user_info": _late_cap(good["user_info"]),
            "workout": _late_cap(len(complete)),
            "bpm": _late_cap(good["bpm"]),
        }

        def late_candidate(p: _Planned, cutoff: int) -> bool:
            if p.event_us >= cutoff:
                return False
            if p.rank == _RANK_WORKOUT:
                # Only the stop of a complete session: the session then simply never completes.
                key = (p.source["user_id"], p.source["session_id"])
                return p.source["action"] == "stop" and key in complete
            return bool(p.source["update_type"] == "update")

        placed = 0
        small: tuple[tuple[Role, int], ...] = (("workout", _RANK_WORKOUT), ("user_info", _RANK_USER_INFO))
        for role, rank in small:
            top = self.max_event_us[role]
            if top is None:
                continue
            want = round(n_late * 0.2) if n_late is not None else per_role[role].late
            cutoff = top - late_age
            candidates = [p for p in self._planned_events if p.rank == rank and late_candidate(p, cutoff)]
            for p in rng.sample(candidates, min(want, caps[role], len(candidates))):
                flags[p.n] = _LATE
                placed += 1
        # An explicit count sends whatever the small topics could not take to the readings.
        remaining = min(caps["bpm"], n_late - placed if n_late is not None else per_role["bpm"].late)
        top_bpm = self.max_event_us["bpm"]
        if remaining > 0 and top_bpm is not None:
            cutoff = top_bpm - late_age
            # A device that lost its connection uploads a block of readings much later.
            eligible = [
                (v, min(v.readings, -(-(cutoff - v.first_reading_us) // US)))
                for v in readable
                if v.first_reading_us < cutoff
            ]
            rng.shuffle(eligible)
            blocks = min(3, len(eligible))
            for j, (v, n_ok) in enumerate(eligible):
                if remaining <= 0:
                    break
                share = remaining if j >= blocks - 1 else max(1, remaining // (blocks - j))
                size = min(share, n_ok)
                k0 = rng.randrange(0, n_ok - size + 1)
                self._reading_flags.setdefault(v.index, {}).update(dict.fromkeys(range(k0, k0 + size), _LATE))
                remaining -= size
                placed += size
        self.chaos_placed["late"] = placed

    def _plan_duplicates(
        self,
        flags: dict[int, str],
        per_role: dict[Role, ChaosCounts],
        readable: list[Visit],
        cum: list[int],
        rng: random.Random,
    ) -> None:
        """Exact copies (same key, value and timestamp) delivered twice."""
        n_dup = self.config.chaos.duplicates  # None: per topic, from the rate
        invalid = {(s.user_id, s.session_id) for s in self.sessions if s.status == "invalid"}
        dup_events = [
            p
            for p in self._planned_events
            if p.n not in flags
            and not (p.rank == _RANK_WORKOUT and (p.source["user_id"], p.source["session_id"]) in invalid)
        ]
        if n_dup is not None:
            share = round(n_dup * 0.3) if cum else n_dup
            picked = rng.sample(dup_events, min(len(dup_events), share))
            want_readings = n_dup - len(picked)
        else:
            picked = []
            events: tuple[tuple[Role, int], ...] = (("user_info", _RANK_USER_INFO), ("workout", _RANK_WORKOUT))
            for role, rank in events:
                pool = [p for p in dup_events if p.rank == rank]
                picked.extend(rng.sample(pool, min(len(pool), per_role[role].duplicates)))
            want_readings = per_role["bpm"].duplicates
        for p in picked:
            flags[p.n] = _DUP
        placed = len(picked)
        got = tries = 0
        while got < want_readings and cum and tries < 20 * want_readings:
            tries += 1
            v, k = _pick_reading(readable, cum, rng)
            vf = self._reading_flags.setdefault(v.index, {})
            if k not in vf:
                vf[k] = _DUP
                got += 1
        self.chaos_placed["duplicates"] = placed + got

    def _plan_bad_records(self, per_role: dict[Role, ChaosCounts], readable: list[Visit], cum: list[int]) -> None:
        """Extra bad records: malformed, schema violations, future; each from its own topic's messages."""
        chaos = self.config.chaos
        bad_rng = _rng(self.seed, "bad-records")
        malformed: list[tuple[Role, str, str]]
        schema: list[tuple[Role, str, str]]
        clocks: list[Role]
        if chaos.malformed_json is not None:
            malformed = [MALFORMED_VARIANTS[i % len(MALFORMED_VARIANTS)] for i in range(chaos.malformed_json)]
        else:
            malformed = _variants_per_role(MALFORMED_VARIANTS, {r: c.malformed_json for r, c in per_role.items()})
        if chaos.schema_violations is not None:
            schema = [SCHEMA_VARIANTS[i % len(SCHEMA_VARIANTS)] for i in range(chaos.schema_violations)]
        else:
            schema = _variants_per_role(SCHEMA_VARIANTS, {r: c.schema_violations for r, c in per_role.items()})
        if chaos.future is not None:
            clocks = ["bpm" if i % 2 == 0 else "workout" for i in range(chaos.future)]
        else:
            clocks = [r for r in _ROLES for _ in range(per_role[r].future)]
        bad: list[tuple[int, KafkaEmission, BadRecord]] = []
        for role, kind, form in malformed:
            src_msg = self._source_message(role, bad_rng, readable, cum, need_profile=False)
            if src_msg is None:
                continue
            t, key, msg, src = src_msg
            value = malformed_value(msg, form, bad_rng)
            bad.append(self._bad(role, t, key, value, "malformed_json", kind, None, src, bad_rng))
        for role, kind, fld in schema:
            src_msg = self._source_message(role, bad_rng, readable, cum, need_profile=kind in ("bad_dob", "bad_zip"))
            if src_msg is None:
                continue
            t, key, msg, src = src_msg
            value = schema_violation_value(msg, kind, fld, bad_rng)
            bad.append(self._bad(role, t, key, value, "schema_violation", kind, fld, src, bad_rng))
        skew = round(chaos.future_skew_hours * HOUR)
        for clock_role in clocks:
            src_msg = self._source_message(clock_role, bad_rng, readable, cum, need_profile=False)
            if src_msg is None:
                continue
            t, key, msg, src = src_msg
            # A quarter second off the device's grid: never the key of a real reading.
            field_name = "time" if clock_role == "bpm" else "timestamp"
            msg = {**msg, field_name: JsonNumber(epoch_text(t + skew + US // 4))}
            bad.append(self._bad(clock_role, t, key, dumps(msg), "future", "clock_ahead", field_name, src, bad_rng))
        bad.sort(key=lambda b: (b[0], b[2].topic, b[2].key, b[2].value))
        for i, (t, em, record) in enumerate(bad):
            self._bad_items.append((t, _RANK_BAD, i, 0, em, None, "bad"))
            self._planned_bad.append(record)
            self.chaos_placed[record.reason] += 1

    def _bad(
        self,
        role: Role,
        t: int,
        key: str,
        value: str,
        reason: Reason,
        kind: str,
        fld: str | None,
        src: dict[str, Any],
        rng: random.Random,
    ) -> tuple[int, KafkaEmission, BadRecord]:
        topic = getattr(self.topics, role)
        em = KafkaEmission(topic, key, value, _arrival_ms(t, rng.random()))
        return t, em, BadRecord(topic, key, value, em.timestamp_ms, reason, kind, fld, True, src)

    def _source_message(
        self,
        role: Role,
        rng: random.Random,
        readable: list[Visit],
        cum: list[int],
        *,
        need_profile: bool,
    ) -> tuple[int, str, dict[str, JsonValue], dict[str, Any]] | None:
        """A plausible message of ``role`` (time, key, JSON object, source) to break."""
        if role == "bpm":
            if not readable:
                return None
            v, k = _pick_reading(readable, cum, rng)
            t = v.first_reading_us + k * US
            msg: dict[str, JsonValue] = {
                "device_id": v.device_id,
                "time": JsonNumber(epoch_text(t)),
                "heartrate": JsonNumber(f"{rng.uniform(60.0, 80.0):.2f}"),
            }
            return t, str(v.device_id), msg, {"entity": "reading", "device_id": v.device_id, "time": iso(t)}
        rank = _RANK_WORKOUT if role == "workout" else _RANK_USER_INFO
        pool = [
            p
            for p in self._planned_events
            if p.rank == rank and (not need_profile or p.source.get("update_type") in ("new", "update"))
        ]
        if not pool:
            return None
        p = rng.choice(pool)
        return p.event_us, p.emission.key, dict(self._messages[p.n]), dict(p.source)

    def _finish_truth_records(self) -> None:
        """Attach message values and delivery to the session and profile truth records."""
        by_source: dict[tuple[Any, ...], _Planned] = {}
        for p in self._planned_events:
            src = p.source
            if src["entity"] == "workout_event":
                by_source[("w", src["user_id"], src["session_id"], src["action"])] = p
        sessions = []
        for s in self.sessions:
            start = by_source[("w", s.user_id, s.session_id, "start")]
            stop = by_source.get(("w", s.user_id, s.session_id, "stop"))
            delivery: DeliveryState = "not_sent"
            if stop is not None:
                delivery = "late" if self._event_flags.get(stop.n) == _LATE else "main"
            sessions.append(
                dataclasses.replace(
                    s,
                    start_value=start.emission.value,
                    start_timestamp_ms=start.emission.timestamp_ms,
                    stop_value=None if stop is None else stop.emission.value,
                    stop_timestamp_ms=None if stop is None else stop.emission.timestamp_ms,
                    stop_delivery=delivery,
                )
            )
        self.sessions = sessions
        by_key = {(s.user_id, s.session_id): s for s in sessions}
        self.visits = [
            dataclasses.replace(v, sessions=tuple(by_key[(s.user_id, s.session_id)] for s in v.sessions))
            for v in self.visits
        ]
        for p in self._planned_events:
            if p.rank != _RANK_USER_INFO:
                continue
            t, uid, kind, profile = self._raw_changes[self._raw_of[p.n]]
            self.profile_changes.append(
                ProfileChange(
                    user_id=uid,
                    update_type=kind,  # type: ignore[arg-type]  # one of new/update/delete by construction
                    time_us=t,
                    profile=profile,
                    value=p.emission.value,
                    timestamp_ms=p.emission.timestamp_ms,
                    delivery="late" if self._event_flags.get(p.n) == _LATE else "main",
                )
            )

    # -- readings -----------------------------------------------------------------------------

    def _reading_items(self, v: Visit) -> Iterator[tuple[int, int, int, int, KafkaEmission, str | None, str, str]]:
        """Every reading of a visit as a stream item: (time, rank, visit, k, emission, flag, kind, heartrate).

        The hot loop of the generator: two or three draws of the visit's own generator, one format.
        """
        rng = _rng(self.seed, "readings", v.index)
        r = rng.random
        p_null = self.config.heartrate_null_rate
        p_bad = p_null + self.config.heartrate_out_of_range_rate
        p_zero = p_null + self.config.heartrate_out_of_range_rate / 2
        first = v.first_reading_us
        phase = first % US
        frac = "" if phase == 0 else f".{phase:06d}"
        sec0 = first // US
        ms_first = -(-first // 1000)
        topic = self.topics.bpm
        key = str(v.device_id)
        prefix = f'{{"device_id":{v.device_id},"time":'
        index = v.index
        flags = self._reading_flags.get(index, {})
        # tuple.__new__ skips the NamedTuple's Python-level constructor: half the cost per reading.
        new_emission = tuple.__new__
        hr = v.baseline_bpm + (r() - 0.5) * 4.0
        for k0, k1, target in self._segments(v):
            for k in range(k0, k1):
                u = r()
                hr += (target - hr) * 0.02 + (r() - 0.5) * 2.4
                if u >= p_bad:
                    hr_text = f"{hr:.2f}"
                elif u < p_null:
                    hr_text = "null"
                elif u < p_zero:
                    hr_text = "0"
                else:
                    hr_text = "300"
                arrival = ms_first + k * 1000 + _delay_ms(r())
                value = f'{prefix}{sec0 + k}{frac},"heartrate":{hr_text}}}'
                yield (
                    first + k * US,
                    _RANK_BPM,
                    index,
                    k,
                    new_emission(KafkaEmission, (topic, key, value, arrival, None)),
                    flags.get(k),
                    "good",
                    hr_text,
                )

    def _segments(self, v: Visit) -> Iterator[tuple[int, int, float]]:
        """Reading index ranges at rest or exercising: a session drives start < t <= exercise end."""
        first, n = v.first_reading_us, v.readings
        k = 0
        for s in v.sessions:
            rs = self._raw_sessions[(s.user_id, s.session_id)]
            lo = min(n, max(0, (s.start_us - first) // US + 1))
            hi = min(n, max(0, (s.exercise_end_us - first) // US + 1))
            if lo > k:
                yield k, lo, v.baseline_bpm
            if hi > lo:
                yield lo, hi, rs.intensity
            k = max(k, hi)
        if n > k:
            yield k, n, v.baseline_bpm

    def readings(self) -> Iterator[Reading]:
        """Every simulated reading, visit by visit (late ones included)."""
        for v in self.visits:
            device_id = v.device_id
            for item in self._reading_items(v):
                yield Reading(device_id, item[0], item[7])

    # -- streams ------------------------------------------------------------------------------

    def _arrivals(self, since_us: int | None, until_us: int | None) -> Iterator[tuple[int, int, Emission, str]]:
        """(emit time, seq, emission, kind) of the main data in arrival order (before shuffling)."""
        sources: list[Iterable[tuple[Any, ...]]] = [self._sql_items, self._event_items, self._bad_items]
        for v in self.visits:
            if v.readings == 0:
                continue
            if since_us is not None and v.last_reading_us + _MAX_DELAY_US < since_us:
                continue
            if until_us is not None and v.first_reading_us >= until_us:
                continue
            sources.append(self._reading_items(v))
        hi = until_us if until_us is not None else 1 << 62
        pending: list[tuple[int, int, Emission, str]] = []
        push, pop = heapq.heappush, heapq.heappop
        seq = 0
        for item in heapq.merge(*sources):
            order = item[0]
            if order >= hi:
                break
            # Arrival >= event time, so whatever arrived by now can go: nothing later arrives earlier.
            while pending and pending[0][0] <= order:
                yield pop(pending)
            flag = item[5]
            if flag == _LATE:
                continue
            em = item[4]
            kind = item[6]
            at = em.time_us if kind == "sql" else em.timestamp_ms * 1000
            push(pending, (at, seq, em, kind))
            seq += 1
            if flag == _DUP:
                push(pending, (at, seq, em, "duplicate"))
                seq += 1
        while pending:
            yield pop(pending)

    def _main(self, since_us: int | None, until_us: int | None) -> Iterator[tuple[int, Emission, str]]:
        """The main data of [since, until) in delivery order: arrival order, shuffled per window."""
        lo = since_us if since_us is not None else -(1 << 62)
        hi = until_us if until_us is not None else 1 << 62
        window = round(self.config.chaos.shuffle_window_seconds * US)
        if window <= 0:
            for at, _seq, em, kind in self._arrivals(since_us, until_us):
                if lo <= at < hi:
                    yield at, em, kind
            return
        cell = None
        buf: list[tuple[int, int, Emission, str]] = []
        for item in self._arrivals(since_us, until_us):
            c = item[0] // window
            if c != cell:
                yield from self._shuffle_cell(cell, buf, lo, hi)
                cell, buf = c, []
            buf.append(item)
        yield from self._shuffle_cell(cell, buf, lo, hi)

    def _shuffle_cell(
        self, cell: int | None, buf: list[tuple[int, int, Emission, str]], lo: int, hi: int
    ) -> Iterator[tuple[int, Emission, str]]:
        slots = [i for i, item in enumerate(buf) if item[3] != "sql"]
        # One generator per grid cell: a slice of the stream shuffles exactly like the whole.
        r = _rng(self.seed, "shuffle", cell).random
        keys = [r() for _ in slots]
        kafka = [buf[slots[j]] for j in sorted(range(len(slots)), key=keys.__getitem__)]
        for i, item in zip(slots, kafka, strict=True):
            buf[i] = item
        for at, _seq, em, kind in buf:
            if lo <= at < hi:
                yield at, em, kind

    @cached_property
    def late_wave_start_ms(self) -> int:
        """The late wave arrives five minutes after the end of the simulation."""
        return -(-self.end_us // 1000) + 5 * 60 * 1000

    @cached_property
    def _late_wave(self) -> list[tuple[KafkaEmission, BadRecord]]:
        held: list[tuple[int, int, int, int, str, str, str, dict[str, Any]]] = []
        for p in self._late_events:
            held.append((p.event_us, p.rank, p.n, 0, p.emission.topic, p.emission.key, p.emission.value, p.source))
        for index, flags in sorted(self._reading_flags.items()):
            late_ks = {k for k, f in flags.items() if f == _LATE}
            if not late_ks:
                continue
            v = self.visits[index]
            for item in self._reading_items(v):
                if item[3] in late_ks:
                    t, em = item[0], item[4]
                    src = {"entity": "reading", "device_id": v.device_id, "time": iso(t)}
                    held.append((t, _RANK_BPM, index, item[3], em.topic, em.key, em.value, src))
        held.sort(key=lambda h: h[:4])
        wave = []
        for i, (_t, _rank, _idx, _k, topic, key, value, src) in enumerate(held):
            em = KafkaEmission(topic, key, value, self.late_wave_start_ms + i)
            wave.append((em, BadRecord(topic, key, value, em.timestamp_ms, "late", "late", None, True, src)))
        return wave

    def timed_emissions(
        self,
        *,
        since_us: int | None = None,
        until_us: int | None = None,
        main: bool = True,
        late_wave: bool = False,
    ) -> Iterator[tuple[int, Emission, str]]:
        """(emit time µs, emission, kind) in delivery order; kind: sql, good, duplicate, bad, late."""
        if main:
            yield from self._main(since_us, until_us)
        if late_wave:
            for em, _record in self._late_wave:
                yield em.timestamp_ms * 1000, em, "late"

    def emissions(
        self,
        *,
        since_us: int | None = None,
        until_us: int | None = None,
        main: bool = True,
        late_wave: bool = False,
    ) -> Iterator[Emission]:
        """The emissions with emit time in [since, until) in delivery order, then the late wave if asked."""
        for _at, em, _kind in self.timed_emissions(
            since_us=since_us, until_us=until_us, main=main, late_wave=late_wave
        ):
            yield em

    # -- truth --------------------------------------------------------------------------------

    def bad_records(self) -> list[BadRecord]:
        """Every record the pipeline must quarantine: injected ones, late ones, invalid sessions."""
        records = list(self._planned_bad)
        records.extend(record for _em, record in self._late_wave)
        for s in self.sessions:
            if s.status == "invalid" and s.stop_value is not None and s.stop_timestamp_ms is not None:
                records.append(
                    BadRecord(
                        topic=self.topics.workout,
                        key=str(s.user_id),
                        value=s.stop_value,
                        timestamp_ms=s.stop_timestamp_ms,
                        reason="invalid_session",
                        kind=s.kind,
                        field=None,
                        injected=False,
                        source={
                            "entity": "workout_event",
                            "user_id": s.user_id,
                            "workout_id": s.workout_id,
                            "session_id": s.session_id,
                            "action": "stop",
                        },
                    )
                )
        return records

    def late_records(self) -> list[BadRecord]:
        return [record for _em, record in self._late_wave]

    def counts(self) -> dict[str, Any]:
        """Sizes of everything simulated (deterministic; no pass over the readings needed)."""
        readings = sum(v.readings for v in self.visits)
        dup_readings = sum(1 for f in self._reading_flags.values() for x in f.values() if x == _DUP)
        late_readings = sum(1 for f in self._reading_flags.values() for x in f.values() if x == _LATE)
        dup_events = Counter(p.emission.topic for p in self._planned_events if self._event_flags.get(p.n) == _DUP)
        per_topic = Counter(p.emission.topic for p in self._planned_events)
        per_topic[self.topics.bpm] += readings
        for topic, n in dup_events.items():
            per_topic[topic] += n
        per_topic[self.topics.bpm] += dup_readings
        for record in self._planned_bad:
            per_topic[record.topic] += 1
        bad = Counter(f"{r.reason}:{r.kind}" for r in self._planned_bad)
        return {
            "users": len(self._users),
            "registrations": len(self.registrations),
            "reregistrations": sum(1 for r in self.registrations if r.op == "update"),
            "visits": len(self.visits),
            "open_visits": sum(1 for v in self.visits if v.logout_us is None),
            "sessions": dict(sorted(Counter(s.status for s in self.sessions).items())),
            "session_kinds": dict(sorted(Counter(s.kind for s in self.sessions).items())),
            "profile_changes": dict(sorted(Counter(c.update_type for c in self.profile_changes).items())),
            "readings": readings,
            "kafka_messages": dict(sorted(per_topic.items())),
            "kafka_messages_total": sum(per_topic.values()),
            "sql_statements": len(self._sql_items),
            "duplicates": dup_readings + sum(dup_events.values()),
            "late": late_readings + len(self._late_events),
            "bad_records": dict(sorted(bad.items())),
            "invalid_sessions": sum(1 for s in self.sessions if s.status == "invalid"),
        }

    def estimate_emissions(self, since_us: int | None, until_us: int | None, *, main: bool, late_wave: bool) -> int:
        """About how many emissions a slice holds (exact without a window; for progress reports)."""
        total = 0
        if main:
            lo = since_us if since_us is not None else -(1 << 62)
            hi = until_us if until_us is not None else 1 << 62
            for v in self.visits:
                if v.readings == 0:
                    continue
                k_lo = min(v.readings, max(0, -(-(lo - v.first_reading_us) // US)))
                k_hi = min(v.readings, max(0, -(-(hi - v.first_reading_us) // US)))
                total += k_hi - k_lo
            total += sum(1 for it in self._sql_items if lo <= it[0] < hi)
            total += sum(1 for it in self._event_items if lo <= it[4].timestamp_ms * 1000 < hi)
            total += sum(1 for it in self._bad_items if lo <= it[4].timestamp_ms * 1000 < hi)
            if since_us is None and until_us is None:
                c = self.counts()
                total += c["duplicates"] - c["late"]
        if late_wave:
            total += self.counts()["late"]
        return total


_SQL_ORDER = {"insert_registration": 0, "update_registration": 1, "insert_visit": 2, "update_visit_logout": 3}


def _cumsum(values: Iterable[int]) -> Iterator[int]:
    total = 0
    for v in values:
        total += v
        yield total


def _pick_reading(readable: list[Visit], cum: list[int], rng: random.Random) -> tuple[Visit, int]:
    r = rng.randrange(cum[-1])
    i = bisect.bisect_right(cum, r)
    before = cum[i - 1] if i else 0
    return readable[i], r - before


def _late_cap(n: int) -> int:
    """At most a tenth of ``n`` is held back late (one may always be, or a small world would get none)."""
    return max(1, n // 10)


def _variants_per_role(
    variants: tuple[tuple[Role, str, str], ...], counts: dict[Role, int]
) -> list[tuple[Role, str, str]]:
    """``counts[role]`` variants of each role, cycling through that role's variants in table order."""
    out: list[tuple[Role, str, str]] = []
    for role in _ROLES:
        mine = [v for v in variants if v[0] == role]
        out.extend(mine[i % len(mine)] for i in range(counts.get(role, 0)))
    return out


def build_world(config: GeneratorConfig) -> World:
    """Plan the world the knobs describe (cheap: readings are generated lazily)."""
    return World(config)
