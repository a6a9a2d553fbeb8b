"""The batch tail of silver: ``user_bins``, ``date_lookup`` and the CDC tombstone purge.

These are batch steps, not streaming queries: ``user_bins`` moves with the job's reference date,
``date_lookup`` only grows by whole years, and the purge forgets old tombstones. Each remembers the
Delta versions of what it read, so a step whose inputs did not change reads nothing again.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import replace
from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from fitbit_stream.config import Config
from fitbit_stream.io.cdc_merge import CdcMergeEngine
from fitbit_stream.io.ingest import late_state_keys
from fitbit_stream.io.merge import insert_if_absent, replace_scopes
from fitbit_stream.io.silver import LateState
from fitbit_stream.io.tables import TableRef, Tables, is_uri
from fitbit_stream.topology import DATE_LOOKUP_SOURCES, INTERNAL_TABLES
from fitbit_stream.transforms.cdc import USER_PROFILE_CDC
from fitbit_stream.transforms.dates import date_lookup, years_of
from fitbit_stream.transforms.demographics import user_bins
from fitbit_stream.transforms.quality import late_threshold

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

__all__ = ["BatchTail"]

log = logging.getLogger(__name__)

#: Under the checkpoint root: the Delta versions (and years) the last tail saw.
_MEMO_FILE = "_batch_tail.json"


class BatchTail:
    """The tail's steps for one configuration, with what they last saw (kept in memory)."""

    def __init__(self, spark: SparkSession, config: Config, tables: Tables) -> None:
        self.spark = spark
        self.config = config
        self.tables = tables
        #: (reference date, user_profile version, user_bins version) of the last user_bins refresh
        self._bins: tuple[date, int | None, int | None] | None = None
        self._years: dict[str, tuple[int | None, frozenset[int]]] = {}
        # What the last run's tail saw, so a scheduled run with nothing new reads nothing again.
        root = config.storage.checkpoint_root
        self._memo_file = None if is_uri(root) else Path(root).absolute() / _MEMO_FILE
        self._load()

    def _load(self) -> None:
        if self._memo_file is None or not self._memo_file.is_file():
            return
        try:
            saved = json.loads(self._memo_file.read_text(encoding="utf-8"))
            bins = saved.get("user_bins")
            if bins is not None:
                self._bins = (date.fromisoformat(bins[0]), bins[1], bins[2])
            for table, (version, years) in saved.get("years", {}).items():
                self._years[table] = (version, frozenset(int(y) for y in years))
        except (ValueError, TypeError, KeyError, OSError) as exc:  # a damaged memo only costs a re-read
            log.info("batch tail: ignoring %s (%s)", self._memo_file, exc)

    def _save(self) -> None:
        if self._memo_file is None:
            return
        bins = None if self._bins is None else [self._bins[0].isoformat(), self._bins[1], self._bins[2]]
        state = {
            "user_bins": bins,
            "years": {table: [version, sorted(years)] for table, (version, years) in self._years.items()},
        }
        try:
            self._memo_file.parent.mkdir(parents=True, exist_ok=True)
            temporary = self._memo_file.with_suffix(".tmp")
            temporary.write_text(json.dumps(state), encoding="utf-8")
            temporary.replace(self._memo_file)  # atomic: a reader sees the old memo or the new one
        except OSError as exc:
            log.info("batch tail: could not save %s (%s)", self._memo_file, exc)

    def run(self, as_of: date) -> None:
        """Every step of the tail, in order."""
        self.refresh_user_bins(as_of)
        self.refresh_date_lookup()
        self.purge_tombstones()
        self._save()

    def refresh_user_bins(self, as_of: date) -> None:
        """``user_bins`` as of the job's reference date (recomputed whole: it moves with the date).

        Skipped while neither the date, ``user_profile`` nor ``user_bins`` changed since the last
        refresh (of this object, or of the last run's tail).
        """
        spark = self.spark
        source, target = self.tables.ref("user_profile"), self.tables.ref("user_bins")
        profile = self.tables.version(self.spark, source)
        if self._bins == (as_of, profile, self.tables.version(self.spark, target)):
            return
        rows = user_bins(self.tables.read(spark, source), as_of=as_of)
        scopes = rows.select("user_id").unionByName(self.tables.read(spark, target).select("user_id"))
        replace_scopes(spark, self.tables, target, rows, scopes=scopes, scope_keys=["user_id"], keys=["user_id"])
        self._bins = (as_of, profile, self.tables.version(self.spark, target))

    def refresh_date_lookup(self) -> None:
        """Every day of every year of :data:`~fitbit_stream.topology.DATE_LOOKUP_SOURCES`.

        The years of each input table are kept with the Delta version they were read at: a table
        that did not change is not read again, one that did is read only from its change feed since
        that version, and ``date_lookup`` is written only when a year it lacks turns up.
        """
        spark, memo = self.spark, self._years
        inputs: list[tuple[TableRef, tuple[str, ...]]] = []
        for name, columns in DATE_LOOKUP_SOURCES:
            ref = self.tables.ref(name, layer=INTERNAL_TABLES.get(name))
            # Writer-internal tables appear with their first write (the CDC change log with the
            # first accepted change).
            if name not in INTERNAL_TABLES or self.tables.exists(spark, ref):
                inputs.append((ref, columns))

        def years(table: TableRef, columns: tuple[str, ...], rows: DataFrame | None = None) -> frozenset[int]:
            rows = self.tables.read(spark, table) if rows is None else rows
            return frozenset(int(r["year"]) for r in years_of(rows, *columns).collect())

        def years_since(table: TableRef, columns: tuple[str, ...], seen: int, at: int) -> frozenset[int] | None:
            """Years of the rows written after version ``seen`` (its change feed), None when unreadable."""
            try:
                return years(table, columns, self.tables.read_changes(spark, table, after=seen, through=at))
            except Exception as exc:  # feed off or its files vacuumed: read the table instead
                log.info("date_lookup: change feed of %s unreadable (%s); reading the table", table, type(exc).__name__)
                return None

        wanted: set[int] = set()
        for table, columns in inputs:
            at = self.tables.version(self.spark, table)
            known = memo.get(str(table))
            if known is None or known[0] is None or at is None or known[0] != at:
                found = None
                if known is not None and known[0] is not None and at is not None and known[0] < at:
                    # Only the rows written since: a growing table is not scanned again (a year seen
                    # stays wanted, as date_lookup never loses a year).
                    added = years_since(table, columns, known[0], at)
                    found = None if added is None else known[1] | added
                known = (at, years(table, columns) if found is None else found)
                memo[str(table)] = known
            wanted |= known[1]
        target = self.tables.ref("date_lookup")
        at = self.tables.version(self.spark, target)
        held = memo.get(str(target))
        if held is None or held[0] is None or held[0] != at:
            held = (at, years(target, ("date",)))
        if wanted <= held[1]:
            memo[str(target)] = held
            return
        missing = sorted(wanted - held[1])
        rows = date_lookup(spark.createDataFrame([(y,) for y in missing], "year int"))
        insert_if_absent(spark, self.tables, target, rows, keys=["date"])
        memo[str(target)] = (self.tables.version(self.spark, target), held[1] | frozenset(missing))

    def purge_tombstones(self) -> None:
        """Forget the change log of users deleted longer ago than the tombstone retention.

        The retention is counted back from the user_info lateness threshold, never from the clock:
        every change old enough to have been hidden by a purged tombstone is then quarantined as
        ``late`` before it reaches the CDC engine, so purging never changes a result.
        """
        spark = self.spark
        state = LateState(self.tables, spark)
        # Each ingest query judges lateness by its own state: the purge follows the one that is
        # furthest behind, and waits while an enabled one has none.
        seen = [state.previous_max(spark, key, sys.maxsize) for key in late_state_keys(self.config, "user_info")]
        if not seen or None in seen:
            return
        latest = min(t for t in seen if t is not None)
        horizon = timedelta(minutes=self.config.rules.lateness_horizon_minutes)
        threshold = late_threshold(latest, horizon=horizon)
        if threshold is None:
            return
        spec = replace(USER_PROFILE_CDC, tombstone_retention=timedelta(days=self.config.rules.tombstone_retention_days))
        engine = CdcMergeEngine(
            spec,
            spark,
            profile=self.tables.ref("user_profile"),
            history=self.tables.ref("user_profile_history"),
            changes=self.tables.ref("_user_profile_changes", layer=INTERNAL_TABLES["_user_profile_changes"]),
        )
        engine.purge_tombstones(spark, as_of=threshold)
