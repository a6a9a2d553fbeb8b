"""Bad records: how an otherwise plausible message is broken, and which contract rule it breaks.

Every variant breaks exactly one rule of CONTRACT.md §1.1, so the reason (and field) the pipeline
must give it is unambiguous: ``malformed_json`` for a value that is not a JSON object,
``schema_violation`` naming the field otherwise.
"""

from __future__ import annotations

import random
from typing import Literal

from fitbit_stream.generator._json import JsonNumber, JsonValue, dumps

__all__ = [
    "BAD_DOBS",
    "BAD_ZIPS",
    "MALFORMED_VARIANTS",
    "SCHEMA_VARIANTS",
    "Role",
    "malformed_value",
    "schema_violation_value",
]

Role = Literal["user_info", "bpm", "workout"]

#: (topic role, kind, field) of every schema violation the generator injects, cycled in this order.
SCHEMA_VARIANTS: tuple[tuple[Role, str, str], ...] = (
    ("bpm", "missing_field", "time"),
    ("workout", "unknown_enum", "action"),
    ("user_info", "bad_dob", "dob"),
    ("bpm", "fraction_for_int", "device_id"),
    ("workout", "number_as_string", "user_id"),
    ("user_info", "bad_zip", "zip"),
    ("bpm", "null_field", "device_id"),
    ("workout", "fraction_for_int", "session_id"),
    ("user_info", "unknown_enum", "update_type"),
    ("bpm", "number_as_string", "time"),
    ("workout", "missing_field", "session_id"),
    ("user_info", "number_as_string", "timestamp"),
    ("workout", "null_field", "action"),
    ("user_info", "fraction_for_int", "user_id"),
    ("user_info", "missing_field", "update_type"),
    ("user_info", "null_field", "timestamp"),
    ("workout", "fraction_for_int", "workout_id"),
)

#: (topic role, kind, form) of every malformed value, cycled in this order.
MALFORMED_VARIANTS: tuple[tuple[Role, str, str], ...] = (
    ("bpm", "not_json", "truncated"),
    ("workout", "not_object", "array"),
    ("user_info", "not_json", "truncated"),
    ("bpm", "not_object", "number"),
    ("workout", "not_json", "text"),
    ("user_info", "not_object", "string"),
    ("bpm", "not_object", "null"),
)

# Each is clearly not a valid MM/dd/yyyy date (empty strings are left out: a reader could take
# them for a missing, optional dob).
BAD_DOBS: tuple[str, ...] = (
    "1990-04-12",
    "13/01/1990",
    "02/30/1991",
    "00/10/1985",
    "04/31/1988",
    "not a date",
)
BAD_ZIPS: tuple[str | int, ...] = ("123456", "12a45", 123456, "1234 5", "ABCDE")
_UNKNOWN_ENUM = {"action": "pause", "update_type": "upsert"}


def _number_text(value: JsonValue) -> str:
    if isinstance(value, JsonNumber):
        return value.text
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise ValueError(f"expected a number, got {value!r}")


def schema_violation_value(message: dict[str, JsonValue], kind: str, field: str, rng: random.Random) -> str:
    """The message with ``field`` broken the ``kind`` way, as compact JSON."""
    broken = dict(message)
    if kind == "missing_field":
        del broken[field]
    elif kind == "null_field":
        broken[field] = None
    elif kind == "number_as_string":
        broken[field] = _number_text(broken[field])
    elif kind == "fraction_for_int":
        broken[field] = JsonNumber(f"{_number_text(broken[field])}.5")
    elif kind == "unknown_enum":
        broken[field] = _UNKNOWN_ENUM[field]
    elif kind == "bad_dob":
        broken["dob"] = rng.choice(BAD_DOBS)
    elif kind == "bad_zip":
        address = broken["address"]
        if not isinstance(address, dict):
            raise ValueError(f"expected an address object, got {address!r}")
        broken["address"] = {**address, "zip": rng.choice(BAD_ZIPS)}
    else:
        raise ValueError(f"unknown schema violation kind {kind!r}")
    return dumps(broken)


def malformed_value(message: dict[str, JsonValue], form: str, rng: random.Random) -> str:
    """A value that is not a JSON object (``not_json`` forms do not even parse)."""
    text = dumps(message)
    if form == "truncated":
        # Cutting anywhere before the closing brace leaves unparseable text.
        return text[: rng.randrange(len(text) // 3, len(text) - 1)]
    if form == "text":
        return " ".join(f"{k}={_plain(v)}" for k, v in message.items())
    if form == "array":
        return dumps(list(message.values()))
    if form == "string":
        return dumps(text)
    if form == "number":
        return _number_text(next(v for v in message.values() if isinstance(v, int | JsonNumber)))
    if form == "null":
        return "null"
    raise ValueError(f"unknown malformed form {form!r}")


def _plain(value: JsonValue) -> str:
    return value.text if isinstance(value, JsonNumber) else str(value)
