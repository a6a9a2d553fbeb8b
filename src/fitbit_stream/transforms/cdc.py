"""Change data capture (CONTRACT.md §3.1): the total order of changes, the state and the SCD2 versions.

A change stream is a DataFrame of accepted changes: key columns, an event time, a change type, the
value columns and the Kafka coordinates. :class:`CdcSpec` names them. Everything here is pure and
works on *complete* change sets (a batch, or the full change log of some keys), so the result does
not depend on arrival order: the writer (``fitbit_stream.io.cdc_merge``) keeps the change log and
re-derives the state of every key a micro-batch touches.

Total order of the changes of one key: ``(event_time, type rank, *tie_breakers, *value_columns)``.
The type rank follows ``type_order`` (for profiles ``new`` < ``update`` < ``delete`` at equal
timestamps). Two changes of one type keep their Kafka offset order, so ``offset`` breaks the next
tie; ``partition`` only decides between changes of one key that landed in different partitions
at the same offset, which never happens with key-partitioned topics but must still be
deterministic. The value columns close the order so that even malformed coordinates cannot make
``row_number`` pick arbitrarily.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql.types import StructType

from fitbit_stream.errors import PipelineError
from fitbit_stream.schemas import PROFILE_COLUMNS, USER_PROFILE, USER_PROFILE_HISTORY

__all__ = [
    "DELETED",
    "USER_PROFILE_CDC",
    "CdcSpec",
    "change_order",
    "dedupe_changes",
    "is_delete",
    "latest_change_per_key",
    "scd1_state",
    "scd2_versions",
    "tombstoned_keys",
]

#: Boolean column of :func:`scd1_state`: the latest change of the key is a delete (a tombstone).
DELETED = "_cdc_deleted"

_RN = "_cdc_rn"


@dataclass(frozen=True)
class CdcSpec:
    """What a change stream looks like and where its SCD1 / SCD2 results go.

    ``profile_schema`` (SCD1) must hold exactly ``keys + value_columns + (updated,)`` and
    ``history_schema`` (SCD2) exactly ``keys + value_columns + (valid_from, valid_to)``.
    ``provenance`` columns are kept in the change log only (for audit) and pick which copy of an
    identical duplicate is stored. ``tombstone_retention``: how long after its event time the
    change log of a deleted key is kept; ``None`` keeps it forever.
    """

    keys: tuple[str, ...]
    value_columns: tuple[str, ...]
    profile_schema: StructType
    history_schema: StructType
    event_time: str = "event_time"
    change_type: str = "update_type"
    type_order: tuple[str, ...] = ("new", "update", "delete")
    delete_types: frozenset[str] = frozenset({"delete"})
    tie_breakers: tuple[str, ...] = ("offset", "partition")
    provenance: tuple[str, ...] = ("topic", "key", "value", "load_time")
    updated: str = "updated"
    valid_from: str = "valid_from"
    valid_to: str = "valid_to"
    tombstone_retention: timedelta | None = None

    def __post_init__(self) -> None:
        if not self.keys:
            raise PipelineError("CdcSpec.keys: at least one key column is required, got ()")
        unknown = self.delete_types - set(self.type_order)
        if unknown:
            raise PipelineError(f"CdcSpec.delete_types: {sorted(unknown)!r} not in type_order {self.type_order!r}")
        if self.tombstone_retention is not None and self.tombstone_retention < timedelta(0):
            raise PipelineError(f"CdcSpec.tombstone_retention: must be >= 0, got {self.tombstone_retention!r}")
        change_cols = self.change_columns
        if len(set(change_cols)) != len(change_cols):
            raise PipelineError(f"CdcSpec: a column is named twice in {change_cols!r}")
        for label, schema, extra in (
            ("profile_schema", self.profile_schema, (self.updated,)),
            ("history_schema", self.history_schema, (self.valid_from, self.valid_to)),
        ):
            want = sorted((*self.keys, *self.value_columns, *extra))
            got = sorted(schema.fieldNames())
            if want != got:
                raise PipelineError(f"CdcSpec.{label}: columns {got!r} must be exactly {want!r}")

    @property
    def content_columns(self) -> tuple[str, ...]:
        """What makes two messages identical duplicates: same key, time, type and values."""
        return (*self.keys, self.event_time, self.change_type, *self.value_columns)

    @property
    def change_columns(self) -> tuple[str, ...]:
        """The columns of a change kept in the change log."""
        return (*self.content_columns, *self.tie_breakers, *self.provenance)


#: CONTRACT.md §2.2 / §3.1: user_info changes -> user_profile (SCD1) and user_profile_history (SCD2).
USER_PROFILE_CDC = CdcSpec(
    keys=("user_id",),
    value_columns=PROFILE_COLUMNS,
    profile_schema=USER_PROFILE,
    history_schema=USER_PROFILE_HISTORY,
)


def is_delete(*, spec: CdcSpec) -> Column:
    """True for a delete, False otherwise (an unknown or NULL type is never a delete)."""
    return F.coalesce(F.col(spec.change_type).isin(*sorted(spec.delete_types)), F.lit(False))


def _type_rank(spec: CdcSpec) -> Column:
    # Unknown types rank NULL and sort first; upstream validation keeps them out anyway.
    ct = F.col(spec.change_type)
    rank = F.when(ct == spec.type_order[0], F.lit(0))
    for i, name in enumerate(spec.type_order[1:], start=1):
        rank = rank.when(ct == name, F.lit(i))
    return rank


def change_order(*, spec: CdcSpec, descending: bool = False) -> list[Column]:
    """The total order of the changes of one key (see the module docstring), as sort columns."""
    cols = [
        F.col(spec.event_time),
        _type_rank(spec),
        *(F.col(c) for c in spec.tie_breakers),
        *(F.col(c) for c in spec.value_columns),
    ]
    return [c.desc_nulls_last() if descending else c.asc_nulls_first() for c in cols]


def dedupe_changes(df: DataFrame, *, spec: CdcSpec) -> DataFrame:
    """One row per distinct change: identical duplicates (same content) count once.

    A message re-sent by a producer lands at another offset with identical content; the copy
    earliest in the total order (lowest offset, then partition) stands for it, so the choice does
    not depend on which copy arrived first.
    """
    order = [F.col(c).asc_nulls_last() for c in (*spec.tie_breakers, *spec.provenance) if c in df.columns]
    w = Window.partitionBy(*spec.content_columns).orderBy(*order)
    return df.withColumn(_RN, F.row_number().over(w)).filter(F.col(_RN) == 1).drop(_RN)


def latest_change_per_key(df: DataFrame, *, spec: CdcSpec) -> DataFrame:
    """The last change of each key in the total order (``row_number``, so exactly one per key)."""
    w = Window.partitionBy(*spec.keys).orderBy(*change_order(spec=spec, descending=True))
    return df.withColumn(_RN, F.row_number().over(w)).filter(F.col(_RN) == 1).drop(_RN)


def scd1_state(df: DataFrame, *, spec: CdcSpec) -> DataFrame:
    """The state after applying ``df`` (all changes of its keys): one row per key.

    Columns: keys, value columns, ``updated`` (event time of the change in effect) and
    :data:`DELETED`. A deleted key keeps a row with ``DELETED`` true and NULL values: the caller
    removes it from the profile table.
    """
    latest = latest_change_per_key(df, spec=spec)
    deleted = is_delete(spec=spec)
    return latest.select(
        *spec.keys,
        *(F.when(deleted, F.lit(None)).otherwise(F.col(c)).alias(c) for c in spec.value_columns),
        F.col(spec.event_time).alias(spec.updated),
        deleted.alias(DELETED),
    )


def scd2_versions(df: DataFrame, *, spec: CdcSpec) -> DataFrame:
    """SCD type 2 versions of the complete change set ``df`` of its keys.

    Each new/update opens a version at its event time; the next change of the key (any type)
    closes it. Zero-length versions (closed at the instant they open, e.g. an update followed by a
    delete at the same timestamp) are dropped, so ``(keys, valid_from)`` is unique. Pass
    deduplicated changes (:func:`dedupe_changes`), otherwise a duplicate splits a version.
    """
    w = Window.partitionBy(*spec.keys).orderBy(*change_order(spec=spec))
    valid_from = F.col(spec.event_time)
    valid_to = F.col(spec.valid_to)
    return (
        df.withColumn(spec.valid_to, F.lead(spec.event_time).over(w))
        .filter(~is_delete(spec=spec))
        .filter(valid_to.isNull() | (valid_to != valid_from))
        .select(*spec.keys, *spec.value_columns, valid_from.alias(spec.valid_from), spec.valid_to)
    )


def tombstoned_keys(df: DataFrame, *, spec: CdcSpec, before: datetime) -> DataFrame:
    """Keys whose latest change is a delete with event time strictly before ``before``."""
    # A naive datetime means UTC, like every time in the contract (the Python process zone may differ).
    cutoff = F.lit(before.replace(tzinfo=UTC) if before.tzinfo is None else before).cast("timestamp")
    latest = latest_change_per_key(df, spec=spec)
    return latest.filter(is_delete(spec=spec) & (F.col(spec.event_time) < cutoff)).select(*spec.keys)
