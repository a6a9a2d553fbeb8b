"""Parse and validate Kafka payloads (CONTRACT.md §1.1, §3.6): bronze ``value`` -> typed columns.

One pass, no joins, no UDFs: ``try_parse_json`` reads each value once into a VARIANT, and
``schema_of_variant`` of every field tells the JSON type the producer actually sent (``BIGINT`` for
an integer literal that fits 64 bits, ``DECIMAL(p,s)`` for other plain numbers, ``DOUBLE`` for
exponent notation or more than 38 digits, ``STRING``, ``BOOLEAN``, ``OBJECT<..>``, ``ARRAY<..>``,
``VOID`` for ``null``, SQL NULL when the field is missing). Numbers are exact: VARIANT keeps
``1700000000.123456`` as DECIMAL(16,6), and epoch seconds go to a TIMESTAMP through DECIMAL, never a
float.

Readings of the contract taken here:

- An integer field takes a JSON integer literal only: ``1.0`` and ``1e3`` are schema violations
  (VARIANT itself tells them apart: ``1`` is BIGINT, ``1.0`` DECIMAL(1,0), ``1e3`` DOUBLE).
  Integers outside the column's type (BIGINT, or INT for workout_id/session_id) are violations.
- Epoch seconds take any JSON number (integer, fraction, exponent) within TIMESTAMP's range
  (years 1..9999); exponent notation is read through a double, as the JSON parser reads it.
- Only the bold fields of §1.1 are required. The others may be missing or ``null`` (-> NULL) but,
  when present, must have the right type and format. ``heartrate`` is a number or null; NaN and
  infinities are not JSON, and an exponent literal beyond the double range is a violation.
- A ``delete`` carries only user_id, update_type and timestamp: any profile fields it also carries
  are ignored like unknown fields (not validated, returned as NULL).
- ``address`` must be an object when present; its fields are optional like the other profile
  fields. ``zip`` is an integer literal 0..99999 or a string of 1-5 ASCII digits, returned as five
  digits zero-padded.
- Enum values are case-sensitive (``new`` / ``update`` / ``delete``, ``M`` / ``F``,
  ``start`` / ``stop``).
- ``malformed_json``: value NULL, not JSON (Spark's parser also rejects duplicate object keys,
  NaN, single quotes, trailing commas, leading zeros), or JSON that is not an object, or an object
  followed by other text (Spark's parser stops after the first value, so text after the closing
  brace is checked separately; a second object glued on after a ``}`` is not detected).
- ``detail`` lists every problem found, ``; ``-separated, in field order, each as ``field: problem``.
  On rejected rows the typed columns hold what could be read (NULL for a bad field); only rows with
  ``reason`` NULL are meant to be used.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, get_args

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import (
    DataType,
    DateType,
    DoubleType,
    IntegerType,
    LongType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

from fitbit_stream.errors import InvalidConfigError
from fitbit_stream.transforms.dates import epoch_seconds_to_timestamp
from fitbit_stream.transforms.quality import MALFORMED_JSON, SCHEMA_VIOLATION

__all__ = [
    "KINDS",
    "PAYLOAD_COLUMNS",
    "PayloadKind",
    "parse_bpm",
    "parse_payload",
    "parse_user_info",
    "parse_workout",
]

PayloadKind = Literal["user_info", "bpm", "workout"]
KINDS: tuple[str, ...] = get_args(PayloadKind)

_PROFILE_COLUMNS: tuple[tuple[str, DataType], ...] = (
    ("dob", DateType()),
    ("sex", StringType()),
    ("gender", StringType()),
    ("first_name", StringType()),
    ("last_name", StringType()),
    ("street_address", StringType()),
    ("city", StringType()),
    ("state", StringType()),
    ("zip", StringType()),
)

#: The typed columns each parser adds after the bronze columns (then ``reason``, ``detail``).
PAYLOAD_COLUMNS: dict[str, StructType] = {
    "user_info": StructType(
        [
            StructField("user_id", LongType()),
            StructField("update_type", StringType()),
            StructField("event_time", TimestampType()),
            *(StructField(name, dtype) for name, dtype in _PROFILE_COLUMNS),
        ]
    ),
    "bpm": StructType(
        [
            StructField("device_id", LongType()),
            StructField("event_time", TimestampType()),
            StructField("heartrate", DoubleType()),
        ]
    ),
    "workout": StructType(
        [
            StructField("user_id", LongType()),
            StructField("workout_id", IntegerType()),
            StructField("session_id", IntegerType()),
            StructField("event_time", TimestampType()),
            StructField("action", StringType()),
        ]
    ),
}

# TIMESTAMP's range, 0001-01-01T00:00:00Z .. 9999-12-31T23:59:59.999999Z, in epoch seconds.
_MIN_EPOCH = "-62135596800"
_MAX_EPOCH = "253402300799.999999"
_INT_RANGES: dict[str, tuple[int, int]] = {
    "bigint": (-(2**63), 2**63 - 1),
    "int": (-(2**31), 2**31 - 1),
}
_NUMERIC = ("BIGINT", "DOUBLE")


def _is_numeric(t: Column) -> Column:
    return t.isin(*_NUMERIC) | t.startswith("DECIMAL")


def _json_type_name(t: Column) -> Column:
    """A short name of the JSON type ``schema_of_variant`` reports, for ``detail``."""
    return (
        F.when(t == "BIGINT", F.lit("integer"))
        .when(t.startswith("DECIMAL"), F.lit("decimal"))
        .when(t == "DOUBLE", F.lit("float"))
        .when(t == "STRING", F.lit("string"))
        .when(t == "BOOLEAN", F.lit("boolean"))
        .when(t.startswith("OBJECT"), F.lit("object"))
        .when(t.startswith("ARRAY"), F.lit("array"))
        .when(t == "VOID", F.lit("null"))
        .otherwise(F.lower(t))
    )


def _shown(fv: Column) -> Column:
    """The offending JSON value as sent (strings quoted), cut short to keep ``detail`` small."""
    text = F.to_json(fv)
    return F.when(F.length(text) > 40, F.concat(F.substring(text, 1, 37), F.lit("..."))).otherwise(text)


@dataclass(frozen=True)
class _Field:
    """A payload field, by the columns the staged projections give it (see :class:`_Payload`)."""

    name: str
    index: int

    @property
    def value(self) -> Column:
        """The field's VARIANT (SQL NULL when missing, a VARIANT null for JSON ``null``)."""
        return F.col(f"__f{self.index}")

    @property
    def type(self) -> Column:
        """``schema_of_variant`` of the field: NULL when missing, ``VOID`` for JSON ``null``."""
        return F.col(f"__t{self.index}")

    @property
    def raw(self) -> Column:
        """The field read as its target SQL type; NULL unless the JSON type is one it accepts."""
        return F.col(f"__r{self.index}")

    @property
    def ok(self) -> Column:
        return F.col(f"__ok{self.index}")

    def error(self, problem: str | Column) -> Column:
        return F.concat(F.lit(f"{self.name}: "), F.lit(problem) if isinstance(problem, str) else problem)

    def expected(self, what: str) -> Column:
        return self.error(F.concat(F.lit(f"expected {what}, got "), _json_type_name(self.type)))

    def got(self, what: str) -> Column:
        """``expected <what>, got <the value as sent>``, for a value of the right JSON type."""
        return self.error(F.concat(F.lit(f"expected {what}, got "), _shown(self.value)))

    def absent(self) -> Column:
        return self.type.isNull() | (self.type == "VOID")


@dataclass
class _Payload:
    """The fields a payload kind reads, and its typed columns and errors, accumulated field by field.

    Each step is its own projection (``__v`` the parsed value; per field ``__f<i>`` its VARIANT,
    ``__t<i>`` its JSON type, ``__r<i>`` its raw typed value, ``__ok<i>`` whether it is good) so
    that each is computed once per row: inlined, the nested CASE expressions repeat every
    sub-expression and the generated code outgrows the JVM's 64 KB method limit. The messages of
    ``detail`` are built apart (see :func:`_parse`) so that the per-row code stays small.
    """

    paths: list[str] = field(default_factory=list)
    raws: list[Column] = field(default_factory=list)
    oks: list[Column] = field(default_factory=list)
    columns: list[Column] = field(default_factory=list)
    errors: list[Column] = field(default_factory=list)
    #: Per field, a condition under which its error is NULL (never NULL itself): a row where all
    #: hold has no ``detail`` to build.
    fine: list[Column] = field(default_factory=list)

    def read(
        self,
        path: str,
        name: str,
        *,
        accepts: Callable[[Column], Column] | None = None,
        target: str = "string",
    ) -> _Field:
        """Read the field at ``path``; ``raw`` is it as ``target`` when ``accepts(json type)``."""
        f = _Field(name, len(self.paths))
        self.paths.append(path)
        raw = F.lit(None).cast(target)
        if accepts is not None:
            raw = F.when(accepts(f.type), F.try_variant_get(f.value, "$", target))
        self.raws.append(raw.alias(f"__r{f.index}"))
        return f

    def check(
        self,
        path: str,
        name: str,
        *,
        required: bool,
        accepts: Callable[[Column], Column],
        target: str,
        problem: Callable[[_Field], Column],
        valid: Callable[[_Field], Column] | None = None,
        value: Callable[[_Field], Column] | None = None,
        out: str | None = None,
        when: Column | None = None,
    ) -> _Field:
        """Add column ``out`` (default ``name``): ``value`` (default: ``raw``) when the JSON type is
        accepted and ``valid``; NULL when missing or null (an error if ``required``); else NULL and
        ``problem``. With ``when``, the field counts only where ``when`` holds (elsewhere NULL and
        never an error)."""
        f = self.read(path, name, accepts=accepts, target=target)
        good = f.raw.isNotNull() if valid is None else f.raw.isNotNull() & valid(f)
        self.oks.append(F.coalesce(good, F.lit(False)).alias(f"__ok{f.index}"))
        self.fine.append(f.ok if required else f.ok | f.absent())
        absent_error = (
            F.when(f.type.isNull(), f.error("missing")).otherwise(f.error("null"))
            if required
            else F.lit(None).cast("string")
        )
        col = F.when(f.ok, f.raw if value is None else value(f))
        error = F.when(f.absent(), absent_error).when(~f.ok, problem(f))
        if when is not None:
            col, error = F.when(when, col), F.when(when, error)
        self.columns.append(col.alias(out or name))
        self.errors.append(error)
        return f

    def integer(self, path: str, name: str, *, sql_type: str) -> None:
        lo, hi = _INT_RANGES[sql_type]

        def problem(f: _Field) -> Column:
            # An integer literal too big for 64 bits arrives as DECIMAL(p,0), or DOUBLE past 38
            # digits; "1.0" is DECIMAL(1,0) too, but fits.
            n = F.try_variant_get(f.value, "$", "decimal(38,0)")
            whole = f.type.rlike(r"^(BIGINT|DECIMAL\(\d+,0\)|DOUBLE)$")
            too_big = whole & (n.isNull() | ~n.between(F.lit(lo), F.lit(hi)))
            return F.when(too_big, f.error(f"integer out of range for {sql_type.upper()}")).otherwise(
                f.expected("integer")
            )

        self.check(
            path,
            name,
            required=True,
            # A BIGINT always fits 64 bits: only INT needs a range check.
            accepts=lambda t: t == "BIGINT",
            target="bigint",
            valid=None if sql_type == "bigint" else (lambda f: f.raw.between(lo, hi)),
            value=lambda f: f.raw.cast(sql_type),
            problem=problem,
        )

    def epoch(self, path: str, name: str) -> None:
        lo, hi = (F.lit(b).cast("decimal(38,9)") for b in (_MIN_EPOCH, _MAX_EPOCH))
        self.check(
            path,
            name,
            out="event_time",
            required=True,
            accepts=_is_numeric,
            # Exact for every plain JSON number; fractions beyond nanoseconds round half up here,
            # then to the microsecond.
            target="decimal(38,9)",
            valid=lambda f: f.raw.between(lo, hi),
            value=lambda f: epoch_seconds_to_timestamp(f.raw),
            problem=lambda f: F.when(
                _is_numeric(f.type), f.error("epoch seconds out of range (years 1-9999)")
            ).otherwise(f.expected("epoch seconds (a number)")),
        )

    def string(self, path: str, name: str, *, when: Column | None = None) -> None:
        self.check(
            path,
            name,
            required=False,
            accepts=lambda t: t == "STRING",
            target="string",
            problem=lambda f: f.expected("string"),
            when=when,
        )

    def enum(
        self, path: str, name: str, allowed: tuple[str, ...], *, required: bool, when: Column | None = None
    ) -> _Field:
        listed = "/".join(allowed)
        return self.check(
            path,
            name,
            required=required,
            accepts=lambda t: t == "STRING",
            target="string",
            valid=lambda f: f.raw.isin(*allowed),
            problem=lambda f: F.when(f.type == "STRING", f.got(f"one of {listed}")).otherwise(
                f.expected(f"one of {listed}")
            ),
            when=when,
        )


_NOT_OBJECT = "value: expected a JSON object"


@dataclass(frozen=True)
class _Steps:
    """A kind's projections after the first, which keeps the bronze columns: each a list of columns
    added to ``*``, then the final typed columns, ``reason`` and ``detail``."""

    value: Column
    added: tuple[tuple[Column, ...], ...]
    final: tuple[Column, ...]


def _steps(kind: str) -> _Steps:
    payload = _Payload()
    _BUILDERS[kind](payload)
    value, v, m = F.col("value"), F.col("__v"), F.col("__malformed")
    # A JSON text that parses and starts with a brace is an object: cheaper than the full
    # schema_of_variant of every value, which is only computed to name what a non-object is.
    # VARIANT's parser stops after the first JSON value, so an object must also end with its brace.
    # The plain first and last characters decide almost every row without a regular expression.
    malformed = (
        F.when(value.isNull(), F.lit("value: NULL"))
        # Kafka's bytes become a string unchecked, and parse_json accepts invalid UTF-8 inside a
        # JSON string: without this check such bytes would reach silver's text columns.
        .when(~F.is_valid_utf8(value), F.lit("value: not valid UTF-8"))
        .when(v.isNull(), F.lit("value: not valid JSON"))
        .when(~(value.startswith("{") | value.rlike(r"^[ \t\n\r]*\{")), F.lit(_NOT_OBJECT))
        .when(
            ~(value.endswith("}") | value.rlike(r"\}[ \t\n\r]*$")),
            F.lit("value: not valid JSON (text after the object)"),
        )
    )
    fields = range(len(payload.paths))
    typed = [
        F.when(m.isNull(), c).cast(f.dataType).alias(f.name)
        for c, f in zip(payload.columns, PAYLOAD_COLUMNS[kind].fields, strict=True)
    ]
    # A row whose fields are all fine has nothing to report: decided from booleans at hand, so
    # that only the other rows evaluate the messages (the same ones: each error is NULL there).
    clean = m.isNull()
    for fine in payload.fine:
        clean = clean & fine
    detail = (
        F.when(F.col("__clean"), F.lit(None).cast("string"))
        .when(m == _NOT_OBJECT, F.concat(m, F.lit(", got "), _json_type_name(F.schema_of_variant(v))))
        .when(m.isNotNull(), m)
        .otherwise(F.nullif(F.concat_ws("; ", *payload.errors), F.lit("")))
    )
    return _Steps(
        value=F.try_parse_json(value).alias("__v"),
        added=(
            (
                malformed.alias("__malformed"),
                *(F.try_variant_get(v, path, "variant").alias(f"__f{i}") for i, path in enumerate(payload.paths)),
            ),
            tuple(F.schema_of_variant(f"__f{i}").alias(f"__t{i}") for i in fields),
            tuple(payload.raws),
            tuple(payload.oks),
            (clean.alias("__clean"),),
        ),
        final=(
            *typed,
            # detail is referenced twice, so whole-stage codegen evaluates it once, in a method of
            # its own: the code of every message stays out of the per-row loop, whose method must
            # stay under HotSpot's 8,000-byte limit to be JIT-compiled at all (interpreted, the
            # parse ran ~2.5x slower). A clean row leaves that method at its first test.
            F.when(detail.isNull(), F.lit(None).cast("string"))
            .when(m.isNotNull(), F.lit(MALFORMED_JSON))
            .otherwise(F.lit(SCHEMA_VIOLATION))
            .alias("reason"),
            detail.alias("detail"),
        ),
    )


#: Each kind's projections, built once per process and JVM: a few hundred column expressions, each
#: a call into the JVM, took 0.1-0.7 s of the driver's time per parse, and the ingest query parses
#: every micro-batch. Columns are unresolved expressions, bound to a plan only when a DataFrame uses
#: them, so one set serves every batch.
_STEPS: dict[tuple[str, int], _Steps] = {}
_STEPS_LOCK = threading.Lock()


def _cached_steps(kind: str) -> _Steps:
    from pyspark import SparkContext

    key = (kind, id(SparkContext._gateway))
    with _STEPS_LOCK:
        steps = _STEPS.get(key)
        if steps is None:
            steps = _STEPS[key] = _steps(kind)
    return steps


def _parse(df: DataFrame, kind: str) -> DataFrame:
    bronze = df.columns
    steps = _cached_steps(kind)
    out = df.select(*bronze, steps.value)
    for added in steps.added:
        out = out.select("*", *added)
    return out.select(*bronze, *steps.final)


_SEX = ("M", "F")


def _build_user_info(p: _Payload) -> None:
    p.integer("$.user_id", "user_id", sql_type="bigint")
    update_type = p.enum("$.update_type", "update_type", ("new", "update", "delete"), required=True)
    p.epoch("$.timestamp", "timestamp")
    # A delete's profile fields are not part of the change: ignored like unknown fields.
    profile = F.coalesce(update_type.raw != "delete", F.lit(True))
    p.check(
        "$.dob",
        "dob",
        required=False,
        accepts=lambda t: t == "STRING",
        target="string",
        # The pattern pins two-digit month and day and a four-digit year; try_to_date rejects
        # impossible dates such as 02/30.
        valid=lambda f: f.raw.rlike(r"^[0-9]{2}/[0-9]{2}/[0-9]{4}$") & F.try_to_date(f.raw, "MM/dd/yyyy").isNotNull(),
        value=lambda f: F.try_to_date(f.raw, "MM/dd/yyyy"),
        problem=lambda f: F.when(f.type == "STRING", f.got("a MM/dd/yyyy date")).otherwise(
            f.expected("a MM/dd/yyyy date string")
        ),
        when=profile,
    )
    p.enum("$.sex", "sex", _SEX, required=False, when=profile)
    p.enum("$.gender", "gender", _SEX, required=False, when=profile)
    p.string("$.first_name", "first_name", when=profile)
    p.string("$.last_name", "last_name", when=profile)

    address = p.read("$.address", "address")
    address_ok = address.absent() | address.type.startswith("OBJECT")
    # address has no column of its own (its fields do) but its error takes its place in field order.
    p.errors.append(F.when(profile & ~address_ok, address.expected("object")))
    p.fine.append(address_ok)
    p.string("$.address.street_address", "street_address", when=profile)
    p.string("$.address.city", "city", when=profile)
    p.string("$.address.state", "state", when=profile)
    p.check(
        "$.address.zip",
        "zip",
        required=False,
        # An integer reads as its decimal digits, so one pattern checks both forms (and rejects -1).
        accepts=lambda t: t.isin("BIGINT", "STRING"),
        target="string",
        valid=lambda f: f.raw.rlike(r"^[0-9]{1,5}$"),
        value=lambda f: F.lpad(f.raw, 5, "0"),
        problem=lambda f: F.when(f.type.isin("BIGINT", "STRING"), f.got("1-5 digits")).otherwise(
            f.expected("1-5 digits (integer or string)")
        ),
        when=profile,
    )


def _build_bpm(p: _Payload) -> None:
    p.integer("$.device_id", "device_id", sql_type="bigint")
    p.epoch("$.time", "time")
    p.check(
        "$.heartrate",
        "heartrate",
        required=False,
        accepts=_is_numeric,
        target="double",
        # Only an exponent literal beyond the double range gets here (JSON has no NaN/Infinity).
        valid=lambda f: ~f.raw.isin(float("inf"), float("-inf")),
        problem=lambda f: F.when(_is_numeric(f.type), f.error("number out of range")).otherwise(
            f.expected("number or null")
        ),
    )


def _build_workout(p: _Payload) -> None:
    p.integer("$.user_id", "user_id", sql_type="bigint")
    p.integer("$.workout_id", "workout_id", sql_type="int")
    p.integer("$.session_id", "session_id", sql_type="int")
    p.epoch("$.timestamp", "timestamp")
    p.enum("$.action", "action", ("start", "stop"), required=True)


_BUILDERS: dict[str, Callable[[_Payload], None]] = {
    "user_info": _build_user_info,
    "bpm": _build_bpm,
    "workout": _build_workout,
}


def parse_payload(df: DataFrame, *, kind: PayloadKind | str) -> DataFrame:
    """Bronze rows -> bronze columns + the kind's typed columns (:data:`PAYLOAD_COLUMNS`) +
    ``reason`` (NULL, ``malformed_json`` or ``schema_violation``) + ``detail`` (``field: problem``)."""
    if kind not in _BUILDERS:
        raise InvalidConfigError(f"payload kind: expected one of {', '.join(KINDS)}, got {kind!r}")
    return _parse(df, kind)


def parse_user_info(df: DataFrame) -> DataFrame:
    """:func:`parse_payload` for ``user_info`` records."""
    return parse_payload(df, kind="user_info")


def parse_bpm(df: DataFrame) -> DataFrame:
    """:func:`parse_payload` for ``bpm`` records."""
    return parse_payload(df, kind="bpm")


def parse_workout(df: DataFrame) -> DataFrame:
    """:func:`parse_payload` for ``workout`` records."""
    return parse_payload(df, kind="workout")
