"""``verify``: each silver and gold table compared with its batch recomputation (``recompute``).

Differences are counted per table key (missing, extra, changed rows, duplicate keys) with example
keys; the streaming run's ``late`` decisions are checked for plausibility (``recompute``'s
docstring says why they cannot be recomputed exactly).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import date
from functools import reduce
from typing import TYPE_CHECKING, Any

from pyspark.sql import functions as F
from pyspark.sql.types import DoubleType, FloatType

from fitbit_stream.config import Config
from fitbit_stream.errors import PipelineError
from fitbit_stream.io.silver import QUARANTINE_KEY
from fitbit_stream.recompute import COMPARED_TABLES, Recomputation
from fitbit_stream.schemas import TABLES

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

__all__ = ["LateCheck", "TableDiff", "VerifyReport", "verify"]


# Doubles that are sums or means may differ in the last bits with the order of summation.
_RELATIVE_TOLERANCE = 1e-9

_ONLY_STREAM, _ONLY_BATCH, _DIFFERING, _DUPLICATE = "only_in_stream", "only_in_batch", "differing", "duplicate_key"
_CATEGORIES = (_ONLY_STREAM, _ONLY_BATCH, _DIFFERING, _DUPLICATE)


@dataclass(frozen=True)
class TableDiff:
    """How one table differs from its recomputation, compared on the table key.

    ``differing`` keys are in both with other values; a ``duplicate_key`` is a key the table (or
    the recomputation) holds more than once. ``examples`` holds up to N keys per category, in key
    order.
    """

    table: str
    key: tuple[str, ...]
    stream_rows: int
    batch_rows: int
    only_in_stream: int
    only_in_batch: int
    differing: int
    duplicate_keys: int
    examples: Mapping[str, tuple[tuple[Any, ...], ...]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not (self.only_in_stream or self.only_in_batch or self.differing or self.duplicate_keys)


@dataclass(frozen=True)
class LateCheck:
    """The plausibility check of the streaming run's ``late`` decisions."""

    checked: int
    implausible: int
    examples: tuple[tuple[Any, ...], ...] = ()

    @property
    def ok(self) -> bool:
        return self.implausible == 0


@dataclass(frozen=True)
class VerifyReport:
    tables: tuple[TableDiff, ...]
    late: LateCheck

    @property
    def ok(self) -> bool:
        return self.late.ok and all(t.ok for t in self.tables)

    @property
    def differences(self) -> dict[str, TableDiff]:
        """The tables that differ, by name."""
        return {t.table: t for t in self.tables if not t.ok}

    def table(self) -> str:
        heads = ("table", "stream", "batch", "only stream", "only batch", "differing", "dup keys")
        width = max([len(heads[0]), *(len(t.table) for t in self.tables)])
        lines = [f"{heads[0]:<{width}}  " + "  ".join(f"{h:>11}" for h in heads[1:])]
        for t in self.tables:
            figures = (t.stream_rows, t.batch_rows, t.only_in_stream, t.only_in_batch, t.differing, t.duplicate_keys)
            lines.append(f"{t.table:<{width}}  " + "  ".join(f"{n:>11}" for n in figures))
        lines.append(f"late decisions: {self.late.checked} checked, {self.late.implausible} implausible")
        for t in self.tables:
            for category in _CATEGORIES:
                keys = t.examples.get(category, ())
                if keys:
                    shown = ", ".join(_format_key(k) for k in keys)
                    lines.append(f"  {t.table} {category} ({', '.join(t.key)}): {shown}")
        if self.late.examples:
            shown = ", ".join(_format_key(k) for k in self.late.examples)
            lines.append(f"  implausible late (topic, partition, offset): {shown}")
        lines.append("OK: every table equals its recomputation" if self.ok else "DIFFERENT")
        return "\n".join(lines)


def _format_key(key: tuple[Any, ...]) -> str:
    return "(" + ", ".join("NULL" if v is None else str(v) for v in key) + ")"


def _same_value(stream: Column, batch: Column, is_double: bool) -> Column:
    same = stream.eqNullSafe(batch)
    if not is_double:
        return same
    scale = F.greatest(F.lit(1.0), F.abs(stream), F.abs(batch))
    return same | F.coalesce(F.abs(stream - batch) <= F.lit(_RELATIVE_TOLERANCE) * scale, F.lit(False))


def _compare(name: str, stream: DataFrame, batch: DataFrame, *, examples: int) -> TableDiff:
    spec = TABLES[name]
    key = list(spec.key)
    fields = [f for f in spec.schema.fields if f.name not in key and f.name != "quarantined_at"]

    def per_key(df: DataFrame, tag: str) -> DataFrame:
        values = F.struct(*(F.col(f.name).cast(f.dataType).alias(f.name) for f in fields))
        return df.groupBy(*(F.col(k).alias(f"{tag}{k}") for k in key)).agg(
            F.count(F.lit(1)).alias(f"{tag}n"), F.first(values).alias(f"{tag}v")
        )

    s, b = per_key(stream, "_s_"), per_key(batch, "_b_")
    on = reduce(lambda acc, c: acc & c, [F.col(f"_s_{k}").eqNullSafe(F.col(f"_b_{k}")) for k in key])
    same = reduce(
        lambda acc, c: acc & c,
        [
            _same_value(
                F.col(f"_s_v.{f.name}"), F.col(f"_b_v.{f.name}"), isinstance(f.dataType, DoubleType | FloatType)
            )
            for f in fields
        ],
        F.lit(True),
    )
    category = (
        F.when((F.col("_s_n") > 1) | (F.col("_b_n") > 1), F.lit(_DUPLICATE))
        .when(F.col("_b_n").isNull(), F.lit(_ONLY_STREAM))
        .when(F.col("_s_n").isNull(), F.lit(_ONLY_BATCH))
        .when(~same, F.lit(_DIFFERING))
    )
    joined = (
        s.join(b, on, "full_outer")
        .select(
            *(F.coalesce(F.col(f"_s_{k}"), F.col(f"_b_{k}")).alias(k) for k in key),
            F.col("_s_n"),
            F.col("_b_n"),
            category.alias("_category"),
        )
        .persist()
    )
    try:
        counts = joined.agg(
            F.coalesce(F.sum("_s_n"), F.lit(0)).alias("stream_rows"),
            F.coalesce(F.sum("_b_n"), F.lit(0)).alias("batch_rows"),
            *(F.count(F.when(F.col("_category") == c, 1)).alias(c) for c in _CATEGORIES),
        ).first()
        assert counts is not None  # a global aggregate always has one row
        found: dict[str, tuple[tuple[Any, ...], ...]] = {}
        for c in _CATEGORIES:
            if counts[c] and examples > 0:
                rows = (
                    joined.filter(F.col("_category") == c)
                    .orderBy(*(F.col(k).asc_nulls_first() for k in key))
                    .select(*key)
                    .limit(examples)
                    .collect()
                )
                found[c] = tuple(tuple(r) for r in rows)
    finally:
        joined.unpersist()
    return TableDiff(
        table=name,
        key=tuple(key),
        stream_rows=int(counts["stream_rows"]),
        batch_rows=int(counts["batch_rows"]),
        only_in_stream=int(counts[_ONLY_STREAM]),
        only_in_batch=int(counts[_ONLY_BATCH]),
        differing=int(counts[_DIFFERING]),
        duplicate_keys=int(counts[_DUPLICATE]),
        examples=found,
    )


def verify(
    spark: SparkSession,
    config: Config,
    *,
    as_of: date,
    examples: int = 5,
    tables: Collection[str] | None = None,
) -> VerifyReport:
    """Compare each silver and gold table (or only ``tables``) with its batch recomputation.

    ``as_of`` must be the reference date the streaming run gave ``user_bins``. ``quarantined_at``
    is ignored; doubles are equal within a relative 1e-9 (a mean depends on summation order). Run
    it after a run that drained its input: rows bronze holds that silver has not read yet are
    differences too.
    """
    names = COMPARED_TABLES if tables is None else tuple(tables)
    unknown = sorted(set(names) - set(COMPARED_TABLES))
    if unknown:
        raise PipelineError(f"verify: unknown table(s) {unknown}: choose from {', '.join(COMPARED_TABLES)}")
    batch = Recomputation(spark, config, as_of=as_of, cache=True)
    try:
        diffs = tuple(
            _compare(name, batch.read(name), batch.table(name), examples=examples)
            for name in COMPARED_TABLES
            if name in names
        )
        check = batch.late_check().persist()
        try:
            total = check.count()
            bad = check.filter(~F.col("plausible")).orderBy(*QUARANTINE_KEY).select(*QUARANTINE_KEY)
            implausible = bad.count()
            shown = tuple(tuple(r) for r in bad.limit(examples).collect()) if implausible and examples > 0 else ()
        finally:
            check.unpersist()
    finally:
        batch.close()
    return VerifyReport(tables=diffs, late=LateCheck(checked=total, implausible=implausible, examples=shown))
