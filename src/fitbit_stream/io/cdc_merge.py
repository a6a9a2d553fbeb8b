"""The CDC writer: Delta MERGEs that keep an SCD1 table and an SCD2 history exact (CONTRACT.md §3.1).

The engine keeps one internal table, the append-only *change log* of every accepted change. Readers
collapse identical copies (same key, time, type and values: a replayed batch, or a message a producer
re-sent at another offset) to the copy earliest in the total order, so the result never depends on
which copy arrived first. Per micro-batch the engine

1. appends the batch's changes to the log (a replay appends copies that readers collapse),
2. re-derives, from the log as it was before the batch plus the batch's changes (what the log holds
   once the append commits), the state and the SCD2 versions of every key the batch touches (pure
   code in :mod:`fitbit_stream.transforms.cdc`), and
3. MERGEs those into the history and the profile table: insert new rows, update changed rows,
   delete rows that no longer exist (a profile whose latest change is a delete, a history version
   that a late change split or emptied), and touch nothing else.

The three writes go to different tables and none reads what another writes, so they run side by
side: a batch costs one commit's time, not three. Should the log append fail while the MERGEs
commit (or the other way round), the micro-batch is replayed from its checkpoint and every write
is repeated to the same result.

Because step 2 always starts from the complete log of the key, the tables equal "all changes applied
in total order" whatever order the changes arrived in and however they were split over batches and
runs; a delete in the log is the tombstone that keeps a stale update from bringing a user back. A
replayed micro-batch adds only identical copies to the log, derives the same rows and changes nothing
in the two tables, so no ``txnAppId`` is needed. Every MERGE source holds one row per target key.

Tombstone retention: :meth:`CdcMergeEngine.purge_tombstones` drops the change log of keys whose latest
change is a delete older than ``as_of - spec.tombstone_retention`` (their history rows stay). To stay
exact, pass an ``as_of`` no later than the lateness threshold of the topic (greatest accepted event
time of earlier batches minus the horizon): every change that a purged tombstone would have hidden
is then older than the threshold and quarantined as ``late`` before it reaches the engine.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from pyspark.sql import functions as F

from fitbit_stream.errors import PipelineError
from fitbit_stream.io.merge import with_conflict_retry
from fitbit_stream.io.parallel import run_side_by_side
from fitbit_stream.io.tables import create_if_absent, delta_table, read_table, table_exists
from fitbit_stream.transforms.cdc import (
    DELETED,
    CdcSpec,
    dedupe_changes,
    scd1_state,
    scd2_versions,
    tombstoned_keys,
)

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from fitbit_stream.io.tables import TableRef

__all__ = ["CdcMergeEngine"]

_ACTION = "_cdc_action"
_BATCH_ID = "_cdc_batch_id"
_SCOPE_START = "_cdc_scope_start"
_MAX_ATTEMPTS = 3


def _q(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def _same(columns: tuple[str, ...] | list[str]) -> str:
    """Null-safe equality of target ``t`` and source ``s`` on ``columns``."""
    return " AND ".join(f"t.{_q(c)} <=> s.{_q(c)}" for c in columns)


class CdcMergeEngine:
    """Applies micro-batches of accepted changes to an SCD1 table and an SCD2 history.

    ``profile``, ``history`` and ``changes`` (the internal change log) are where the tables live;
    the first two are created empty here (so readers can start before the first change), the log
    on the first batch (its schema follows the input). Use ``engine.apply`` as the
    ``foreachBatch`` function (or wrap it to pass ``as_of``).
    """

    def __init__(
        self,
        spec: CdcSpec,
        spark: SparkSession,
        *,
        profile: TableRef,
        history: TableRef,
        changes: TableRef,
    ) -> None:
        self.spec = spec
        self.profile = profile
        self.history = history
        self.changes = changes
        self._log_exists = False
        self.ensure_tables(spark)

    # --- public API ----------------------------------------------------------------------------

    def ensure_tables(self, spark: SparkSession) -> None:
        """Create the profile and history tables empty if they do not exist yet."""
        create_if_absent(spark, self.profile, self.spec.profile_schema)
        create_if_absent(spark, self.history, self.spec.history_schema)

    def apply(self, batch_df: DataFrame, batch_id: int, *, as_of: datetime | None = None) -> None:
        """Apply one micro-batch of accepted changes; replaying the same batch changes nothing.

        ``as_of`` (never the clock) also runs :meth:`purge_tombstones` when the spec sets a
        retention; it scans the whole change log, so pass it now and then (e.g. hourly), not with
        every batch.
        """
        spark = batch_df.sparkSession
        spec = self.spec
        missing = [c for c in spec.change_columns if c not in batch_df.columns]
        if missing:
            raise PipelineError(f"CDC batch {batch_id}: missing columns {missing!r}")
        changes = batch_df.select(*spec.change_columns).withColumn(_BATCH_ID, F.lit(batch_id).cast("long"))
        # Used three times (log append, keys of both MERGEs): evaluate the micro-batch once.
        changes = changes.persist()
        try:
            if not changes.isEmpty():
                if not self._log_exists:
                    create_if_absent(spark, self.changes, changes.schema)
                    self._log_exists = True
                keys = changes.select(*spec.keys)
                run_side_by_side(
                    spark,
                    [lambda: self._append_log(changes), lambda: self._recompute(spark, keys, pending=changes)],
                )
        finally:
            changes.unpersist()
        if as_of is not None and spec.tombstone_retention is not None:
            self.purge_tombstones(spark, as_of=as_of)

    def recompute(self, spark: SparkSession, keys: DataFrame | None = None) -> None:
        """Re-derive profile and history rows of ``keys`` (default: every key in the change log).

        ``apply`` calls it for the keys of a batch; call it alone to repair the tables after, for
        example, a restart on a new checkpoint that never replayed a half-applied batch.
        """
        if not table_exists(spark, self.changes):
            return
        if keys is None:
            keys = read_table(spark, self.changes).select(*self.spec.keys).distinct()
        self._recompute(spark, keys)

    def purge_tombstones(self, spark: SparkSession, *, as_of: datetime) -> None:
        """Forget the change log of keys deleted before ``as_of - tombstone_retention``."""
        retention = self.spec.tombstone_retention
        if retention is None or not table_exists(spark, self.changes):
            return
        spec = self.spec

        def purge() -> None:
            dead = tombstoned_keys(read_table(spark, self.changes), spec=spec, before=as_of - retention)
            if dead.isEmpty():  # the usual case: no commit at all
                return
            (
                delta_table(spark, self.changes)
                .alias("t")
                .merge(dead.alias("s"), _same(spec.keys))
                .whenMatchedDelete()
                .execute()
            )

        with_conflict_retry(purge, what=f"purge tombstones of {self.changes}", attempts=_MAX_ATTEMPTS)

    # --- the writes ----------------------------------------------------------------------------

    def _recompute(self, spark: SparkSession, keys: DataFrame, *, pending: DataFrame | None = None) -> None:
        """Re-derive the rows of ``keys`` from the log plus ``pending`` (changes not appended yet,
        or appended meanwhile: readers collapse the copies)."""

        def merge_both() -> None:
            # The deduplicated log of the touched keys feeds both MERGEs (and each MERGE reads its
            # source more than once): read it once, from one snapshot of the log.
            log = self._touched_log(spark, keys, pending).persist()
            try:
                run_side_by_side(
                    spark, [lambda: self._merge_history(spark, log), lambda: self._merge_profile(spark, log)]
                )
            finally:
                log.unpersist()

        with_conflict_retry(merge_both, what=f"CDC merge into {self.profile}", attempts=_MAX_ATTEMPTS)

    def _append_log(self, changes: DataFrame) -> None:
        # A plain append (Delta's cheapest write) with no txnAppId: a replayed batch appends its
        # copies again and readers collapse them with dedupe_changes, so correctness never rests on
        # an app id that a new checkpoint could reuse and silently skip.
        writer = changes.write.format("delta").mode("append")
        if self.changes.path:
            writer.save(self.changes.path)
        else:
            writer.saveAsTable(str(self.changes.qualified_name))

    def _touched_log(self, spark: SparkSession, keys: DataFrame, pending: DataFrame | None) -> DataFrame:
        log = read_table(spark, self.changes)
        if pending is not None:
            log = log.unionByName(pending)
        log = log.join(keys, list(self.spec.keys), "left_semi")
        # One shuffle by key serves dedupe (clustered by content, keys first) and the per-key windows.
        return dedupe_changes(log.repartition(*self.spec.keys), spec=self.spec)

    def _merge_history(self, spark: SparkSession, log: DataFrame) -> None:
        spec = self.spec
        versions = scd2_versions(log, spec=spec)
        # Rows of these keys from before their oldest logged change belong to a purged past.
        scope = log.groupBy(*spec.keys).agg(F.min(spec.event_time).alias(_SCOPE_START))
        row_key = [*spec.keys, spec.valid_from]
        gone = (
            read_table(spark, self.history)
            .join(scope, list(spec.keys))
            .filter(F.col(spec.valid_from) >= F.col(_SCOPE_START))
            .select(*row_key)
            .join(versions.select(*row_key), row_key, "left_anti")
            .withColumn(_ACTION, F.lit("delete"))
        )
        source = versions.withColumn(_ACTION, F.lit("upsert")).unionByName(gone, allowMissingColumns=True)
        payload = (*spec.value_columns, spec.valid_to)
        changed = f"NOT ({_same(payload)})"
        (
            delta_table(spark, self.history)
            .alias("t")
            .merge(source.alias("s"), _same(row_key))
            .whenMatchedDelete(condition=f"s.{_ACTION} = 'delete'")
            .whenMatchedUpdate(
                condition=f"s.{_ACTION} = 'upsert' AND {changed}",
                set={_q(c): F.col(f"s.{_q(c)}") for c in payload},
            )
            .whenNotMatchedInsert(
                condition=f"s.{_ACTION} = 'upsert'",
                values={_q(c): F.col(f"s.{_q(c)}") for c in spec.history_schema.fieldNames()},
            )
            .execute()
        )

    def _merge_profile(self, spark: SparkSession, log: DataFrame) -> None:
        spec = self.spec
        state = scd1_state(log, spec=spec)
        source = state.withColumn(_ACTION, F.when(F.col(DELETED), "delete").otherwise("upsert")).drop(DELETED)
        upd = _q(spec.updated)
        # The state comes from the complete log, so it is never older than the target; the guard
        # keeps it that way should anything else ever write the table.
        not_older = f"(t.{upd} IS NULL OR s.{upd} >= t.{upd})"
        payload = (*spec.value_columns, spec.updated)
        (
            delta_table(spark, self.profile)
            .alias("t")
            .merge(source.alias("s"), _same(spec.keys))
            .whenMatchedDelete(condition=f"s.{_ACTION} = 'delete' AND {not_older}")
            .whenMatchedUpdate(
                condition=f"s.{_ACTION} = 'upsert' AND {not_older} AND NOT ({_same(payload)})",
                set={_q(c): F.col(f"s.{_q(c)}") for c in payload},
            )
            .whenNotMatchedInsert(
                condition=f"s.{_ACTION} = 'upsert'",
                values={_q(c): F.col(f"s.{_q(c)}") for c in spec.profile_schema.fieldNames()},
            )
            .execute()
        )
