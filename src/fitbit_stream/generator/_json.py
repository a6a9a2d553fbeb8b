"""Compact JSON text with exact numbers: epoch seconds are written from their decimal text."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

__all__ = ["JsonNumber", "JsonValue", "dumps"]


class JsonNumber:
    """A JSON number written verbatim from its exact decimal text (``1741000000.123456``)."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return f"JsonNumber({self.text!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, JsonNumber) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)


JsonValue = None | bool | int | str | JsonNumber | Mapping[str, "JsonValue"] | Sequence["JsonValue"]


def dumps(value: JsonValue) -> str:
    """Compact JSON (no spaces, keys in insertion order, UTF-8 text kept as is)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, JsonNumber):
        return value.text
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{json.dumps(k, ensure_ascii=False)}:{dumps(v)}" for k, v in value.items()) + "}"
    return "[" + ",".join(dumps(v) for v in value) + "]"
