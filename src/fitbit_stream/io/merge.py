"""Idempotent Delta MERGE patterns every silver and gold writer is built from.

- :func:`insert_if_absent`: the first row for a key wins, a replayed batch inserts nothing.
- :func:`replace_scopes`: the rows of some scopes (e.g. the sessions a batch touched) become
  exactly the given rows, in ONE atomic MERGE computed as a diff (insert / update / delete), so a
  reader never sees a half-replaced scope and a replay changes nothing.

Both reduce the source to one row per target key before merging (a MERGE fails when two source
rows match one target row) and retry on Delta's optimistic-concurrency conflicts (a concurrent
OPTIMIZE or a second writer), which are safe to retry because the merge is idempotent.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from functools import reduce
from typing import TYPE_CHECKING, TypeVar

from pyspark.sql import functions as F
from pyspark.sql.window import Window

from fitbit_stream.errors import PipelineError

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

    from fitbit_stream.io.tables import TableRef, Tables

__all__ = ["insert_if_absent", "replace_scopes", "with_conflict_retry"]

log = logging.getLogger(__name__)
T = TypeVar("T")

_CONFLICTS = (
    "ConcurrentAppendException",
    "ConcurrentDeleteReadException",
    "ConcurrentDeleteDeleteException",
    "ConcurrentTransactionException",
    "ConcurrentWriteException",
    "DeltaConcurrentModificationException",
    "MetadataChangedException",
    "ProtocolChangedException",
    "DELTA_CONCURRENT_",
)


def with_conflict_retry(action: Callable[[], T], *, what: str, attempts: int = 5) -> T:
    """Run ``action``; retry it with backoff when Delta reports a concurrent-commit conflict."""
    for attempt in range(1, attempts + 1):
        try:
            return action()
        except Exception as exc:  # py4j wraps Delta's exceptions; match on the class name
            text = f"{type(exc).__name__}: {exc}"
            if attempt == attempts or not any(marker in text for marker in _CONFLICTS):
                raise
            # Expected when writers share a table (the topics' quarantine writes): not a user's concern
            # unless the retries run out, and then the error is raised.
            log.info("%s: concurrent commit conflict (attempt %d/%d), retrying", what, attempt, attempts)
            time.sleep(min(0.2 * 2**attempt, 5.0))
    raise PipelineError(f"{what}: unreachable")  # pragma: no cover


def _on(keys: Sequence[str], left: str = "t", right: str = "s") -> str:
    return " AND ".join(f"{left}.`{k}` <=> {right}.`{k}`" for k in keys)


def _range_prune(df: DataFrame, column: str, bounds: tuple[str, str] | None = None) -> str | None:
    """A literal range on ``column`` that lets Delta skip target files by their min/max stats.

    ``bounds`` (the range as Spark renders timestamps to strings) saves the aggregation when the
    caller already knows it.
    """
    if bounds is None:
        # Rendered by Spark in the session time zone: a Python datetime would be in the process's zone.
        row = df.agg(F.min(column).cast("string").alias("lo"), F.max(column).cast("string").alias("hi")).first()
        if row is None or row["lo"] is None:
            return None
        bounds = (row["lo"], row["hi"])
    lo, hi = bounds
    return f"t.`{column}` BETWEEN CAST('{lo}' AS TIMESTAMP) AND CAST('{hi}' AS TIMESTAMP)"


def _first_per_key(rows: DataFrame, keys: Sequence[str], order_by: Sequence[Column]) -> DataFrame:
    """One row per key: the first by ``order_by``, or any one when no order is given."""
    if not order_by:
        return rows.dropDuplicates(list(keys))
    first = Window.partitionBy(*keys).orderBy(*order_by)
    return rows.withColumn("_rn", F.row_number().over(first)).filter("_rn = 1").drop("_rn")


def insert_if_absent(
    spark: SparkSession,
    tables: Tables,
    ref: TableRef,
    rows: DataFrame,
    *,
    keys: Sequence[str],
    order_by: Sequence[Column] = (),
    prune_on: str | None = None,
    prune_bounds: tuple[str, str] | None = None,
    unique: bool = False,
) -> None:
    """Insert the rows whose key the table does not hold; the first by ``order_by`` per key wins.

    ``prune_on`` names a (timestamp) column whose batch range bounds the target files scanned;
    ``prune_bounds`` is that range (lowest, highest, as Spark casts them to string) when the caller
    knows it already. ``unique=True`` says ``rows`` already hold one row per key (the caller
    reduced them): the second reduction is then skipped.
    """
    if not unique:
        rows = _first_per_key(rows, keys, order_by)
    condition = _on(keys)
    if prune_on is not None:
        prune = _range_prune(rows, prune_on, prune_bounds)
        if prune is None:
            return
        condition = f"{prune} AND {condition}"

    def merge() -> None:
        (tables.delta(spark, ref).alias("t").merge(rows.alias("s"), condition).whenNotMatchedInsertAll().execute())

    with_conflict_retry(merge, what=f"insert into {ref}")


def replace_scopes(
    spark: SparkSession,
    tables: Tables,
    ref: TableRef,
    rows: DataFrame,
    *,
    scopes: DataFrame,
    scope_keys: Sequence[str],
    keys: Sequence[str],
    prune_on: str | None = None,
    prune_bounds: tuple[str, str] | None = None,
) -> None:
    """Make the target rows of each scope in ``scopes`` equal to ``rows`` (one atomic MERGE).

    ``scopes`` holds the distinct ``scope_keys`` values to replace; ``rows`` is the complete new
    content of those scopes (rows outside them are ignored). Target rows of other scopes are
    untouched. Unchanged rows are not rewritten, so a replay commits nothing new.

    ``prune_on`` and ``prune_bounds`` (a timestamp column and its range, as Spark renders it) say
    that every row of the scopes, current and new, lies in that range: the target is then read and
    merged only there, and Delta skips the other files by their statistics.
    """
    scopes = scopes.select(*scope_keys).dropDuplicates(list(scope_keys))
    columns = list(rows.columns)
    value_columns = [c for c in columns if c not in keys]
    new = rows.join(scopes, list(scope_keys), "left_semi").dropDuplicates(list(keys))
    prune = None if prune_on is None or prune_bounds is None else _range_prune(rows, prune_on, prune_bounds)
    condition = _on(keys) if prune is None else f"{prune} AND {_on(keys)}"

    def diff() -> DataFrame:
        # Built per attempt: after a conflict the target must be re-read at its new version.
        target = tables.read(spark, ref)
        if prune is not None:
            target = target.alias("t").where(F.expr(prune))
        current = target.select(*columns).join(scopes, list(scope_keys), "left_semi")
        # A key column may legitimately be NULL, so presence is tracked by markers.
        joined = (
            new.withColumn("_in_new", F.lit(True))
            .alias("n")
            .join(
                current.withColumn("_in_cur", F.lit(True)).alias("c"),
                reduce(lambda acc, cond: acc & cond, [F.col(f"n.{k}").eqNullSafe(F.col(f"c.{k}")) for k in keys]),
                "full_outer",
            )
        )
        in_new = F.coalesce(F.col("n._in_new"), F.lit(False))
        in_current = F.coalesce(F.col("c._in_cur"), F.lit(False))
        same = reduce(
            lambda acc, cond: acc & cond,
            [F.col(f"n.{c}").eqNullSafe(F.col(f"c.{c}")) for c in value_columns],
            F.lit(True),
        )
        action = (
            F.when(in_new & ~in_current, F.lit("insert"))
            .when(~in_new & in_current, F.lit("delete"))
            .when(in_new & in_current & ~same, F.lit("update"))
        )
        return joined.select(
            *[
                F.coalesce(F.col(f"n.{c}"), F.col(f"c.{c}")).alias(c) if c in keys else F.col(f"n.{c}").alias(c)
                for c in columns
            ],
            action.alias("_action"),
        ).filter(F.col("_action").isNotNull())

    def merge() -> None:
        merge_builder = (
            tables.delta(spark, ref)
            .alias("t")
            .merge(diff().alias("s"), condition)
            .whenMatchedDelete(condition="s._action = 'delete'")
        )
        if value_columns:
            merge_builder = merge_builder.whenMatchedUpdate(
                condition="s._action = 'update'", set={c: f"s.`{c}`" for c in value_columns}
            )
        merge_builder.whenNotMatchedInsert(
            condition="s._action = 'insert'", values={c: f"s.`{c}`" for c in columns}
        ).execute()

    with_conflict_retry(merge, what=f"replace scopes of {ref}")
