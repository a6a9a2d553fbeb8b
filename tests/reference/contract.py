"""CONTRACT.md in plain Python: bronze rows in, every silver and gold table out, as lists of dicts.

Written from the contract text alone (not from the Spark transforms), so that it can catch their
bugs; it is slow and simple on purpose. Every instant is a naive ``datetime`` in UTC, exactly as
Spark hands TIMESTAMP values to a process whose time zone is UTC; JSON is parsed with ``json`` and
``Decimal`` so that epoch seconds become microseconds exactly.

Micro-batches matter for one rule only, ``late`` (CONTRACT.md §3.6): a record is late when its
event time is older than the greatest accepted event time of its topic in *earlier* micro-batches,
minus the horizon. The caller says which batch a bronze row belongs to with ``batch_of(load_time)``
(the e2e tests pass the pipeline run that ingested it); by default every distinct ``load_time`` is a
batch of its own. Both give the same tables whenever nothing inside one batch can be late, which is
how the e2e tests arrange their data: the generator's late wave is emitted and ingested in a
separate, later run.

Readings taken where the contract leaves room (the e2e report lists them):

- The max that decides ``late`` is over *accepted* records (quarantined ones have no trustworthy
  event time; ``future`` ones must not move it, §3.6).
- ``workout_bpm_summary.age`` is the age bin (§3.3) of the in-effect version's dob as of the date of
  ``start_time``, so a summary never moves from one run to the next; no version gives NULL (§3.2).
- A ``user_info`` field that is present is type-checked whatever the update_type.
- "Identical duplicate messages" of ``user_info`` are changes with the same user, type, timestamp
  and profile; the copy earliest in Kafka order (offset, then partition) stands, so which copy
  stands does not depend on how the copies were split over micro-batches. Identical content means
  the copies differ only in where they sit in that order (§3.1), which this choice fixes.
"""

from __future__ import annotations

import bisect
import calendar
import json
import math
import re
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from fractions import Fraction
from typing import Any, Literal

from fitbit_stream.config import KafkaTopics, RulesConfig

__all__ = [
    "PROFILE_FIELDS",
    "TABLE_KEYS",
    "Rules",
    "age_bin",
    "contract_tables",
    "diff_tables",
    "months_between",
    "profile_tables",
    "us_week",
]

Row = dict[str, Any]
Kind = Literal["user_info", "bpm", "workout"]

EPOCH = datetime(1970, 1, 1)
MINUTE = timedelta(minutes=1)

#: The key of every table (CONTRACT.md §2), used to line rows up when comparing.
TABLE_KEYS: dict[str, tuple[str, ...]] = {
    "users": ("user_id",),
    "gym_logs": ("mac_address", "gym", "login"),
    "user_profile": ("user_id",),
    "user_profile_history": ("user_id", "valid_from"),
    "heart_rate": ("device_id", "time"),
    "workouts": ("user_id", "workout_id", "session_id", "action"),
    "completed_workouts": ("user_id", "workout_id", "session_id"),
    "workout_bpm": ("user_id", "workout_id", "session_id", "time"),
    "user_bins": ("user_id",),
    "date_lookup": ("date",),
    "quarantine": ("topic", "partition", "offset"),
    "workout_bpm_summary": ("user_id", "workout_id", "session_id"),
    "gym_summary": ("gym", "mac_address", "login"),
    "gym_occupancy": ("gym", "hour"),
}

PROFILE_FIELDS: tuple[str, ...] = (
    "dob",
    "sex",
    "gender",
    "first_name",
    "last_name",
    "street_address",
    "city",
    "state",
    "zip",
)

_BIGINT = (-(2**63), 2**63 - 1)
_INT = (-(2**31), 2**31 - 1)
_UPDATE_TYPES = ("new", "update", "delete")
_ORDER_OF_TYPE = {"new": 0, "update": 1, "delete": 2}
_ACTIONS = ("start", "stop")
_SEXES = ("M", "F")
_DOB = re.compile(r"([0-9]{2})/([0-9]{2})/([0-9]{4})")
_ZIP = re.compile(r"[0-9]{1,5}")
_BINS: tuple[tuple[int, str], ...] = (
    (18, "under 18"),
    (25, "18-25"),
    (35, "25-35"),
    (45, "35-45"),
    (55, "45-55"),
    (65, "55-65"),
    (75, "65-75"),
    (85, "75-85"),
    (95, "85-95"),
)


@dataclass(frozen=True)
class Rules:
    """The configurable knobs of the contract (§2.2, §3.6)."""

    heartrate_min: float = 25.0
    heartrate_max: float = 250.0
    max_session: timedelta = timedelta(hours=3)
    clock_skew: timedelta = timedelta(minutes=10)
    lateness_horizon: timedelta = timedelta(hours=1)

    @classmethod
    def from_config(cls, rules: RulesConfig) -> Rules:
        return cls(
            heartrate_min=rules.heartrate_min,
            heartrate_max=rules.heartrate_max,
            max_session=timedelta(hours=rules.max_session_hours),
            clock_skew=timedelta(minutes=rules.clock_skew_minutes),
            lateness_horizon=timedelta(minutes=rules.lateness_horizon_minutes),
        )


# --- calendar and age ------------------------------------------------------------------------------


def us_week(d: date) -> int:
    """US week (§3.5): week 1 holds 1 January, weeks start on Sunday."""
    jan1 = date(d.year, 1, 1)
    return (d.timetuple().tm_yday - 1 + _dayofweek(jan1) - 1) // 7 + 1


def _dayofweek(d: date) -> int:
    """1 = Sunday … 7 = Saturday."""
    return (d.weekday() + 1) % 7 + 1


def _last_day(d: date) -> bool:
    return d.day == calendar.monthrange(d.year, d.month)[1]


def months_between(later: date, earlier: date) -> Fraction:
    """Spark's months_between of two dates (midnight instants): whole months when the days of month
    match or both are month ends, else the day difference counts in 31sts of a month."""
    months = Fraction((later.year - earlier.year) * 12 + later.month - earlier.month)
    if later.day == earlier.day or (_last_day(later) and _last_day(earlier)):
        return months
    return months + Fraction(later.day - earlier.day, 31)


def age_bin(dob: date | None, on: date) -> str:
    """The age bin (§3.3) of someone born on ``dob``, on ``on``."""
    if dob is None or dob > on:
        return "invalid age"
    age = math.floor(months_between(on, dob) / 12)
    for upper, label in _BINS:
        if age < upper:
            return label
    return "95+"


# --- payload validation (§1.1) ----------------------------------------------------------------------


class _Quarantined(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def _violation(field: str, why: str) -> _Quarantined:
    return _Quarantined("schema_violation", f"{field}: {why}")


def _reject_constant(text: str) -> Any:
    raise ValueError(f"{text} is not JSON")


def _load_object(value: str | None) -> dict[str, Any]:
    if value is None:
        raise _Quarantined("malformed_json", "value is NULL")
    try:
        obj = json.loads(value, parse_float=Decimal, parse_constant=_reject_constant)
    except ValueError as exc:  # json.JSONDecodeError is a ValueError
        raise _Quarantined("malformed_json", f"not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise _Quarantined("malformed_json", f"not a JSON object: {type(obj).__name__}")
    return obj


def _integer(obj: Mapping[str, Any], field: str, bounds: tuple[int, int]) -> int:
    v = obj.get(field)
    if v is None:
        raise _violation(field, "required, missing or null")
    if isinstance(v, bool) or not isinstance(v, int | Decimal):
        raise _violation(field, f"expected an integer, got {v!r}")
    if isinstance(v, Decimal):
        raise _violation(field, f"expected an integer, got the fraction {v}")
    if not bounds[0] <= v <= bounds[1]:
        raise _violation(field, f"{v} is out of range")
    return v


def _instant(obj: Mapping[str, Any], field: str) -> datetime:
    """Epoch seconds to a naive UTC datetime, exactly (fractions beyond the microsecond round half up)."""
    v = obj.get(field)
    if v is None:
        raise _violation(field, "required, missing or null")
    if isinstance(v, bool) or not isinstance(v, int | Decimal):
        raise _violation(field, f"expected epoch seconds (a number), got {v!r}")
    try:
        micros = int((Decimal(v) * 1_000_000).quantize(Decimal(1), rounding=ROUND_HALF_UP))
        return EPOCH + timedelta(microseconds=micros)
    except (OverflowError, InvalidOperation):
        raise _violation(field, f"{v} is not a representable instant") from None


def _enum(obj: Mapping[str, Any], field: str, allowed: Sequence[str], *, required: bool) -> str | None:
    v = obj.get(field)
    if v is None:
        if required:
            raise _violation(field, "required, missing or null")
        return None
    if not isinstance(v, str) or v not in allowed:
        raise _violation(field, f"expected one of {list(allowed)}, got {v!r}")
    return v


def _text(obj: Mapping[str, Any], field: str) -> str | None:
    v = obj.get(field)
    if v is None or isinstance(v, str):
        return v
    raise _violation(field, f"expected a string, got {v!r}")


def _dob(obj: Mapping[str, Any]) -> date | None:
    v = obj.get("dob")
    if v is None:
        return None
    m = _DOB.fullmatch(v) if isinstance(v, str) else None
    if m is None:
        raise _violation("dob", f"expected MM/dd/yyyy, got {v!r}")
    try:
        return date(int(m.group(3)), int(m.group(1)), int(m.group(2)))
    except ValueError:
        raise _violation("dob", f"{v!r} is not a date") from None


def _zip(address: Mapping[str, Any]) -> str | None:
    v = address.get("zip")
    if v is None:
        return None
    if isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 99_999:
        return f"{v:05d}"
    if isinstance(v, str) and _ZIP.fullmatch(v):
        return v.zfill(5)
    raise _violation("zip", f"expected 1-5 digits, got {v!r}")


def _parse_user_info(obj: Mapping[str, Any]) -> tuple[datetime, Row]:
    user_id = _integer(obj, "user_id", _BIGINT)
    update_type = _enum(obj, "update_type", _UPDATE_TYPES, required=True)
    ts = _instant(obj, "timestamp")
    address = obj.get("address")
    if address is None:
        address = {}
    elif not isinstance(address, dict):
        raise _violation("address", f"expected an object, got {address!r}")
    profile = {
        "dob": _dob(obj),
        "sex": _enum(obj, "sex", _SEXES, required=False),
        "gender": _enum(obj, "gender", _SEXES, required=False),
        "first_name": _text(obj, "first_name"),
        "last_name": _text(obj, "last_name"),
        "street_address": _text(address, "street_address"),
        "city": _text(address, "city"),
        "state": _text(address, "state"),
        "zip": _zip(address),
    }
    if update_type == "delete":
        profile = dict.fromkeys(PROFILE_FIELDS)
    return ts, {"user_id": user_id, "update_type": update_type, "time": ts, **profile}


def _parse_bpm(obj: Mapping[str, Any]) -> tuple[datetime, Row]:
    device_id = _integer(obj, "device_id", _BIGINT)
    time = _instant(obj, "time")
    hr = obj.get("heartrate")
    if hr is not None and (isinstance(hr, bool) or not isinstance(hr, int | Decimal)):
        raise _violation("heartrate", f"expected a number or null, got {hr!r}")
    return time, {"device_id": device_id, "time": time, "heartrate": None if hr is None else float(hr)}


def _parse_workout(obj: Mapping[str, Any]) -> tuple[datetime, Row]:
    row: Row = {
        "user_id": _integer(obj, "user_id", _BIGINT),
        "workout_id": _integer(obj, "workout_id", _INT),
        "session_id": _integer(obj, "session_id", _INT),
    }
    time = _instant(obj, "timestamp")
    row["action"] = _enum(obj, "action", _ACTIONS, required=True)
    row["time"] = time
    return time, row


_PARSERS: dict[Kind, Callable[[Mapping[str, Any]], tuple[datetime, Row]]] = {
    "user_info": _parse_user_info,
    "bpm": _parse_bpm,
    "workout": _parse_workout,
}


# --- record-level rules: quarantine, future, late ---------------------------------------------------


def _coordinates(record: Mapping[str, Any]) -> Row:
    return {c: record[c] for c in ("key", "value", "topic", "partition", "offset", "timestamp")}


def _ingestion_order(record: Mapping[str, Any]) -> tuple[Any, ...]:
    return (record["load_time"], record["partition"], record["offset"])


@dataclass
class _Accepted:
    """An accepted payload with the bronze record it came from."""

    row: Row
    record: Mapping[str, Any]


def _screen(
    kafka: Iterable[Mapping[str, Any]],
    *,
    topics: KafkaTopics,
    rules: Rules,
    batch_of: Callable[[datetime], int],
) -> tuple[dict[Kind, list[_Accepted]], list[Row]]:
    """Parse, then apply future and late per topic, batch by batch; accepted rows in ingestion order."""
    kinds: dict[str, Kind] = {topics.user_info: "user_info", topics.bpm: "bpm", topics.workout: "workout"}
    per_batch: dict[int, list[Mapping[str, Any]]] = defaultdict(list)
    for record in kafka:
        if record["topic"] in kinds:
            per_batch[batch_of(record["load_time"])].append(record)
    accepted: dict[Kind, list[_Accepted]] = {k: [] for k in _PARSERS}
    quarantine: list[Row] = []
    max_before: dict[str, datetime] = {}  # greatest accepted event time in earlier batches, per topic
    for batch in sorted(per_batch):
        max_now: dict[str, datetime] = {}
        for record in sorted(per_batch[batch], key=_ingestion_order):
            topic = record["topic"]
            kind = kinds[topic]
            try:
                event_time, row = _PARSERS[kind](_load_object(record["value"]))
                if event_time > record["timestamp"] + rules.clock_skew:
                    raise _Quarantined("future", f"event time {event_time} is ahead of {record['timestamp']}")
                top = max_before.get(topic)
                if top is not None and event_time < top - rules.lateness_horizon:
                    raise _Quarantined("late", f"event time {event_time} is older than {top} - horizon")
            except _Quarantined as q:
                quarantine.append({**_coordinates(record), "reason": q.reason, "detail": q.detail})
                continue
            accepted[kind].append(_Accepted(row, record))
            if topic not in max_now or event_time > max_now[topic]:
                max_now[topic] = event_time
        for topic, t in max_now.items():
            if topic not in max_before or t > max_before[topic]:
                max_before[topic] = t
    return accepted, quarantine


def _first_per_key(items: Iterable[_Accepted], key: Sequence[str]) -> dict[tuple[Any, ...], _Accepted]:
    """Duplicates collapse to one row: the first ingested wins."""
    out: dict[tuple[Any, ...], _Accepted] = {}
    for item in sorted(items, key=lambda a: _ingestion_order(a.record)):
        out.setdefault(tuple(item.row[k] for k in key), item)
    return out


# --- silver --------------------------------------------------------------------------------------


def profile_tables(changes: Iterable[tuple[Row, Mapping[str, Any]]]) -> tuple[list[Row], list[Row]]:
    """user_profile and user_profile_history (§3.1) of accepted ``user_info`` changes, each a parsed
    row (``user_id``, ``update_type``, ``time`` and the profile fields) with the bronze record it
    came from (``partition``, ``offset``)."""
    return _profile_tables([_Accepted(row, record) for row, record in changes])


def _profile_tables(changes: list[_Accepted]) -> tuple[list[Row], list[Row]]:
    """user_profile and user_profile_history (§3.1)."""
    identical: dict[tuple[Any, ...], _Accepted] = {}
    for c in sorted(changes, key=lambda a: (a.record["offset"], a.record["partition"])):
        r = c.row
        identical.setdefault((r["user_id"], r["update_type"], r["time"], *(r[f] for f in PROFILE_FIELDS)), c)
    per_user: dict[int, list[_Accepted]] = defaultdict(list)
    for c in identical.values():
        per_user[c.row["user_id"]].append(c)
    profiles: list[Row] = []
    history: list[Row] = []
    for user_id, user_changes in per_user.items():
        user_changes.sort(
            key=lambda c: (
                c.row["time"],
                _ORDER_OF_TYPE[c.row["update_type"]],
                c.record["offset"],
                c.record["partition"],
            )
        )
        current: Row | None = None
        for c in user_changes:
            if current is not None and current["time"] != c.row["time"]:
                history.append(_version(user_id, current, valid_to=c.row["time"]))
            current = None if c.row["update_type"] == "delete" else c.row
        if current is not None:
            history.append(_version(user_id, current, valid_to=None))
            profiles.append({"user_id": user_id, **{f: current[f] for f in PROFILE_FIELDS}, "updated": current["time"]})
    return profiles, history


def _version(user_id: int, change: Row, *, valid_to: datetime | None) -> Row:
    return {
        "user_id": user_id,
        **{f: change[f] for f in PROFILE_FIELDS},
        "valid_from": change["time"],
        "valid_to": valid_to,
    }


def _users(registrations: Iterable[Mapping[str, Any]]) -> list[Row]:
    latest: dict[int, Mapping[str, Any]] = {}
    for r in registrations:
        kept = latest.get(r["user_id"])
        if kept is None or (r["registration_timestamp"], r["load_time"]) > (
            kept["registration_timestamp"],
            kept["load_time"],
        ):
            latest[r["user_id"]] = r
    return [
        {c: r[c] for c in ("user_id", "device_id", "mac_address", "registration_timestamp")} for r in latest.values()
    ]


def _gym_logs(versions: Iterable[Mapping[str, Any]]) -> list[Row]:
    """The logout of the latest observed version that has one (at equal load_time the greater logout)."""
    visits: dict[tuple[Any, ...], tuple[datetime, datetime] | None] = {}
    for v in versions:
        key = (v["mac_address"], v["gym"], v["login"])
        closing = visits.get(key)
        if v["logout"] is not None and (closing is None or (v["load_time"], v["logout"]) > closing):
            closing = (v["load_time"], v["logout"])
        visits[key] = closing
    return [
        {"mac_address": m, "gym": g, "login": login, "logout": None if c is None else c[1]}
        for (m, g, login), c in visits.items()
    ]


def _sessions(workouts: dict[tuple[Any, ...], _Accepted], rules: Rules) -> tuple[list[Row], list[Row]]:
    """completed_workouts and the invalid_session quarantine rows (§2.2, §3.6)."""
    completed: list[Row] = []
    invalid: list[Row] = []
    for (user_id, workout_id, session_id, action), start in workouts.items():
        if action != "start":
            continue
        stop = workouts.get((user_id, workout_id, session_id, "stop"))
        if stop is None:
            continue
        s, e = start.row["time"], stop.row["time"]
        if s < e <= s + rules.max_session:
            completed.append(
                {"user_id": user_id, "workout_id": workout_id, "session_id": session_id, "start_time": s, "end_time": e}
            )
        else:
            invalid.append(
                {
                    **_coordinates(stop.record),
                    "reason": "invalid_session",
                    "detail": f"start {s}, stop {e}: outside (start, start + {rules.max_session}]",
                }
            )
    return completed, invalid


def _workout_bpm(completed: list[Row], users: list[Row], heart_rate: list[Row]) -> list[Row]:
    device_of = {u["user_id"]: u["device_id"] for u in users}
    valid: dict[int, list[tuple[datetime, float]]] = defaultdict(list)
    for r in heart_rate:
        if r["valid"]:
            valid[r["device_id"]].append((r["time"], r["heartrate"]))
    for readings in valid.values():
        readings.sort()
    out: list[Row] = []
    for s in completed:
        device = device_of.get(s["user_id"])
        if device is None:
            continue
        readings = valid.get(device, [])
        times = [t for t, _ in readings]
        lo = bisect.bisect_right(times, s["start_time"])  # start_time < time
        hi = bisect.bisect_right(times, s["end_time"])  # time <= end_time
        out.extend({**s, "time": t, "heartrate": hr} for t, hr in readings[lo:hi])
    return out


def _heart_rate(readings: dict[tuple[Any, ...], _Accepted], rules: Rules) -> list[Row]:
    out = []
    for item in readings.values():
        hr = item.row["heartrate"]
        valid = hr is not None and rules.heartrate_min <= hr <= rules.heartrate_max
        out.append({**item.row, "valid": valid})
    return out


def _date_lookup(instants: Iterable[datetime | None]) -> list[Row]:
    years = {t.year for t in instants if t is not None}
    out = []
    for year in sorted(years):
        d = date(year, 1, 1)
        while d.year == year:
            out.append(
                {
                    "date": d,
                    "week": us_week(d),
                    "year": d.year,
                    "month": d.month,
                    "dayofweek": _dayofweek(d),
                    "dayofmonth": d.day,
                    "dayofyear": d.timetuple().tm_yday,
                    "week_part": f"{d.year}-{us_week(d)}",
                }
            )
            d += timedelta(days=1)
    return out


# --- gold ----------------------------------------------------------------------------------------


def _as_of(history: list[Row], user_id: int, t: datetime) -> Row | None:
    """The version in effect at ``t`` (§3.2)."""
    for v in history:
        if v["user_id"] == user_id and v["valid_from"] <= t and (v["valid_to"] is None or t < v["valid_to"]):
            return v
    return None


def _workout_bpm_summary(workout_bpm: list[Row], history: list[Row]) -> list[Row]:
    per_session: dict[tuple[Any, ...], list[Row]] = defaultdict(list)
    for r in workout_bpm:
        per_session[(r["user_id"], r["workout_id"], r["session_id"])].append(r)
    out = []
    for (user_id, workout_id, session_id), rows in per_session.items():
        start = rows[0]["start_time"]
        version = _as_of(history, user_id, start)
        hrs = [r["heartrate"] for r in rows]
        out.append(
            {
                "user_id": user_id,
                "workout_id": workout_id,
                "session_id": session_id,
                "date": start.date(),
                "age": None if version is None else age_bin(version["dob"], start.date()),
                **{c: None if version is None else version[c] for c in ("sex", "gender", "city", "state")},
                "min_bpm": min(hrs),
                "avg_bpm": math.fsum(hrs) / len(hrs),
                "max_bpm": max(hrs),
                "num_recordings": len(hrs),
            }
        )
    return out


def _minutes(span: timedelta) -> float:
    """round(span / 60 s, 2), computed exactly (half up) and only then made a float."""
    micros = (span.days * 86_400 + span.seconds) * 1_000_000 + span.microseconds
    return float((Decimal(micros) / Decimal(60_000_000)).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))


def _gym_summary(gym_logs: list[Row], users: list[Row], completed: list[Row]) -> list[Row]:
    members: dict[str, list[int]] = defaultdict(list)
    for u in users:
        members[u["mac_address"]].append(u["user_id"])
    sessions: dict[int, list[Row]] = defaultdict(list)
    for s in completed:
        sessions[s["user_id"]].append(s)
    out = []
    for v in gym_logs:
        if v["logout"] is None:
            continue
        member = members.get(v["mac_address"], [])
        if len(member) > 1:
            raise ValueError(f"reference: mac_address {v['mac_address']} belongs to users {member}")
        mine = [s for uid in member for s in sessions[uid] if v["login"] <= s["start_time"] <= v["logout"]]
        out.append(
            {
                "gym": v["gym"],
                "mac_address": v["mac_address"],
                "login": v["login"],
                "date": v["login"].date(),
                "logout": v["logout"],
                "workouts": sorted({s["workout_id"] for s in mine}),
                "num_sessions": len(mine),
                "minutes_in_gym": _minutes(v["logout"] - v["login"]),
                "minutes_exercising": _minutes(sum((s["end_time"] - s["start_time"] for s in mine), timedelta())),
            }
        )
    return out


def _gym_occupancy(gym_logs: list[Row]) -> list[Row]:
    present: dict[tuple[int, datetime], dict[datetime, int]] = defaultdict(lambda: defaultdict(int))
    visitors: dict[tuple[int, datetime], set[str]] = defaultdict(set)
    for v in gym_logs:
        if v["logout"] is None:
            continue
        m = v["login"].replace(second=0, microsecond=0)
        if m < v["login"]:
            m += MINUTE
        while m < v["logout"]:
            hour = m.replace(minute=0)
            present[(v["gym"], hour)][m] += 1
            visitors[(v["gym"], hour)].add(v["mac_address"])
            m += MINUTE
    return [
        {
            "gym": gym,
            "hour": hour,
            "visitors": len(visitors[(gym, hour)]),
            "avg_occupancy": sum(counts.values()) / 60,
            "peak_occupancy": max(counts.values()),
        }
        for (gym, hour), counts in present.items()
    ]


# --- the whole contract -------------------------------------------------------------------------------


def _distinct_load_times(kafka: Sequence[Mapping[str, Any]]) -> Callable[[datetime], int]:
    order = {t: i for i, t in enumerate(sorted({r["load_time"] for r in kafka}))}
    return order.__getitem__


def contract_tables(
    kafka: Sequence[Mapping[str, Any]],
    registered_users: Sequence[Mapping[str, Any]],
    gym_logins: Sequence[Mapping[str, Any]],
    *,
    topics: KafkaTopics,
    rules: Rules,
    as_of: date,
    batch_of: Callable[[datetime], int] | None = None,
) -> dict[str, list[Row]]:
    """Every silver and gold table the contract derives from these bronze rows.

    ``kafka``: ``kafka_multiplex_bz`` rows (key, value, topic, partition, offset, timestamp,
    load_time); ``registered_users`` / ``gym_logins``: ``registered_users_bz`` / ``gym_logins_bz``
    rows. ``as_of`` is the reference date of ``user_bins``. ``quarantine`` rows carry no
    ``quarantined_at`` (it is the time of a batch, not a fact of the data).
    """
    accepted, quarantine = _screen(kafka, topics=topics, rules=rules, batch_of=batch_of or _distinct_load_times(kafka))
    users = _users(registered_users)
    gym_logs = _gym_logs(gym_logins)
    profiles, history = _profile_tables(accepted["user_info"])
    heart_rate = _heart_rate(_first_per_key(accepted["bpm"], ("device_id", "time")), rules)
    workouts_by_key = _first_per_key(accepted["workout"], ("user_id", "workout_id", "session_id", "action"))
    workouts = [item.row for item in workouts_by_key.values()]
    completed, invalid = _sessions(workouts_by_key, rules)
    workout_bpm = _workout_bpm(completed, users, heart_rate)
    user_bins = [
        {"user_id": p["user_id"], "age": age_bin(p["dob"], as_of), **{c: p[c] for c in ("gender", "city", "state")}}
        for p in profiles
    ]
    date_lookup = _date_lookup(
        [
            *(r["timestamp"] for r in kafka),
            *(a.row["time"] for rows in accepted.values() for a in rows),
            *(r["registration_timestamp"] for r in registered_users),
            *(t for r in gym_logins for t in (r["login"], r["logout"])),
        ]
    )
    return {
        "users": users,
        "gym_logs": gym_logs,
        "user_profile": profiles,
        "user_profile_history": history,
        "heart_rate": heart_rate,
        "workouts": workouts,
        "completed_workouts": completed,
        "workout_bpm": workout_bpm,
        "user_bins": user_bins,
        "date_lookup": date_lookup,
        "quarantine": quarantine + invalid,
        "workout_bpm_summary": _workout_bpm_summary(workout_bpm, history),
        "gym_summary": _gym_summary(gym_logs, users, completed),
        "gym_occupancy": _gym_occupancy(gym_logs),
    }


# --- comparing tables ------------------------------------------------------------------------------


def _same(a: Any, b: Any, rel_tol: float) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or math.isclose(a, b, rel_tol=rel_tol, abs_tol=1e-12)
    return type(a) is type(b) and a == b


def diff_tables(
    name: str,
    expected: Sequence[Mapping[str, Any]],
    actual: Sequence[Mapping[str, Any]],
    *,
    ignore: Collection[str] = (),
    rel_tol: float = 1e-9,
    limit: int = 15,
) -> list[str]:
    """Readable differences between two versions of table ``name`` (empty when equal).

    Rows are lined up by the table's key; DOUBLEs compare with a relative tolerance, everything
    else exactly (type included, so a DATE never equals a TIMESTAMP).
    """
    key = TABLE_KEYS[name]

    def index(rows: Sequence[Mapping[str, Any]], side: str, problems: list[str]) -> dict[tuple[Any, ...], Row]:
        out: dict[tuple[Any, ...], Row] = {}
        for r in rows:
            k = tuple(r[c] for c in key)
            if k in out:
                problems.append(f"{name}: {side} has key {k} twice: {out[k]} / {dict(r)}")
            out[k] = {c: v for c, v in r.items() if c not in ignore}
        return out

    problems: list[str] = []
    want = index(expected, "expected", problems)
    got = index(actual, "actual", problems)
    for k in sorted(want.keys() - got.keys(), key=repr):
        problems.append(f"{name}: missing {want[k]}")
    for k in sorted(got.keys() - want.keys(), key=repr):
        problems.append(f"{name}: unexpected {got[k]}")
    for k in sorted(want.keys() & got.keys(), key=repr):
        w, g = want[k], got[k]
        columns = sorted(w.keys() | g.keys())
        bad = [c for c in columns if c not in w or c not in g or not _same(w[c], g[c], rel_tol)]
        if bad:
            shown = ", ".join(f"{c}: expected {w.get(c, '<absent>')!r}, got {g.get(c, '<absent>')!r}" for c in bad)
            problems.append(f"{name} {dict(zip(key, k, strict=True))}: {shown}")
    if len(problems) > limit:
        problems = [*problems[:limit], f"{name}: ... and {len(problems) - limit} more differences"]
    return problems
