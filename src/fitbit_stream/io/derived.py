"""Writers of the derived tables: ``workout_bpm`` and the three gold tables.

Each derived table is maintained by ONE streaming query over the Delta change feeds of all its
inputs. A micro-batch turns the changes into the keys they affect, recomputes those keys from the
inputs' current state with the pure transforms, and replaces them atomically. Because one query
sees every input in sequence, a reading and its session (or a profile change and the workouts it
describes) are always joined by whichever batch comes second, whatever their arrival order: no row
waits for a later event, and a late reading or a profile change corrects the rows it affects.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from functools import reduce
from typing import TYPE_CHECKING

from pyspark.sql import functions as F

from fitbit_stream.io.merge import replace_scopes
from fitbit_stream.io.parallel import run_side_by_side
from fitbit_stream.io.tables import Tables
from fitbit_stream.transforms.gold_bpm import workout_bpm_summary
from fitbit_stream.transforms.gold_gym import (
    GYM_SUMMARY_KEY,
    OCCUPANCY_KEY,
    affected_hours,
    gym_occupancy,
    gym_summary,
    macs_with_visits_holding,
)
from fitbit_stream.transforms.workouts import SESSION_KEY, sessions_near_readings, workout_bpm

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

__all__ = ["DERIVED", "DerivedSpec", "change_stream", "derived_writer"]

#: The columns every change row is projected to, so that one query can union several feeds.
_CHANGE_COLUMNS: dict[str, str] = {
    "user_id": "bigint",
    "device_id": "bigint",
    "mac_address": "string",
    "gym": "bigint",
    "login": "timestamp",
    "logout": "timestamp",
    "workout_id": "int",
    "session_id": "int",
    "time": "timestamp",
    "start_time": "timestamp",
    "heartrate": "double",
    "valid": "boolean",
}


def _project(df: DataFrame, source: str) -> DataFrame:
    cols: list[Column] = [F.lit(source).alias("_source")]
    for name, dtype in _CHANGE_COLUMNS.items():
        cols.append((F.col(name) if name in df.columns else F.lit(None)).cast(dtype).alias(name))
    return df.select(*cols)


def change_stream(spark: SparkSession, tables: Tables, inputs: tuple[str, ...], **options: str) -> DataFrame:
    """The union of the change feeds of ``inputs`` (pre- and post-images included)."""
    feeds = [
        _project(tables.read_stream(spark, tables.ref(name), readChangeFeed="true", **options), name) for name in inputs
    ]
    return reduce(lambda a, b: a.unionByName(b), feeds)


def _from(batch: DataFrame, source: str, *columns: str) -> DataFrame:
    return batch.filter(F.col("_source") == source).select(*columns).dropna().dropDuplicates(list(columns))


def _session_bounds(sessions: DataFrame) -> tuple[str, str] | None:
    """(earliest start, latest end) of ``sessions`` as Spark renders them; None when there are none."""
    row = sessions.agg(
        F.min("start_time").cast("string").alias("lo"), F.max("end_time").cast("string").alias("hi")
    ).first()
    if row is None or row["lo"] is None or row["hi"] is None:
        return None
    return str(row["lo"]), str(row["hi"])


def _within(df: DataFrame, column: str, bounds: tuple[str, str] | None) -> DataFrame:
    """``df`` where ``column`` lies in ``bounds`` (no bounds: all of it), as a literal range that
    Delta's file skipping can use."""
    if bounds is None:
        return df
    lo, hi = bounds
    return df.where(f"`{column}` BETWEEN CAST('{lo}' AS TIMESTAMP) AND CAST('{hi}' AS TIMESTAMP)")


@dataclass(frozen=True)
class DerivedSpec:
    """The writer of the derived tables ``writes`` (in the order it writes them); the query's
    inputs are declared in ``topology``."""

    writes: tuple[str, ...]
    make_writer: Callable[[Tables], Callable[[DataFrame, int], None]]


@contextmanager
def _persisted(df: DataFrame) -> Iterator[DataFrame]:
    """``df`` computed once for the block (several actions read it), released after it."""
    df = df.persist()
    try:
        yield df
    finally:
        df.unpersist()


def _cached(write: Callable[[DataFrame, int], None]) -> Callable[[DataFrame, int], None]:
    """Read the micro-batch's change feeds once: each writer filters the batch several times, and
    every action on an uncached batch would scan the feeds again."""

    def run(batch: DataFrame, batch_id: int) -> None:
        with _persisted(batch) as cached:
            write(cached, batch_id)

    return run


def _workout_bpm_scopes(batch: DataFrame, completed: DataFrame, users: DataFrame) -> DataFrame:
    """The sessions (``SESSION_KEY``) whose ``workout_bpm`` rows the batch's changes may affect."""
    readings = batch.filter(F.col("_source") == "heart_rate").select("device_id", "time", "heartrate", "valid")
    # The sessions the new readings may fall in, by equi-joins over one row per device: a
    # superset of those holding one, whose extra members recompute to the rows they have (one
    # band join per batch, the recompute's, instead of a second over the whole table).
    by_reading = sessions_near_readings(completed, readings, users)
    by_session = _from(batch, "completed_workouts", *SESSION_KEY)
    by_user = completed.join(_from(batch, "users", "user_id"), ["user_id"], "left_semi").select(*SESSION_KEY)
    return by_reading.unionByName(by_session).unionByName(by_user).distinct()


@dataclass(frozen=True)
class _NewRows:
    """The complete ``workout_bpm`` rows of some sessions, and the range their times lie in."""

    rows: DataFrame
    bounds: tuple[str, str]


def _new_workout_bpm(tables: Tables, scopes: DataFrame, completed: DataFrame, users: DataFrame) -> _NewRows | None:
    """The ``workout_bpm`` rows of the sessions in ``scopes`` from the inputs' current state (None:
    no completed session is in ``scopes``, so none has or gets a row)."""
    sessions = completed.join(scopes, list(SESSION_KEY), "left_semi")
    # A session's rows lie within its bounds (never changed: completed_workouts is
    # insert-only), so readings and target are read only there: O(batch), not O(table).
    bounds = _session_bounds(sessions)
    if bounds is None:
        return None
    heart_rate = tables.read(scopes.sparkSession, tables.ref("heart_rate"))
    return _NewRows(workout_bpm(sessions, _within(heart_rate, "time", bounds), users), bounds)


def _write_workout_bpm(tables: Tables, scopes: DataFrame, new: _NewRows) -> None:
    """Replace the ``workout_bpm`` rows of the sessions in ``scopes`` with ``new`` (theirs, complete)."""
    replace_scopes(
        scopes.sparkSession,
        tables,
        tables.ref("workout_bpm"),
        new.rows,
        scopes=scopes,
        scope_keys=SESSION_KEY,
        keys=(*SESSION_KEY, "time"),
        prune_on="time",
        prune_bounds=new.bounds,
    )


def _stored_workout_bpm(tables: Tables, scopes: DataFrame, completed: DataFrame) -> DataFrame | None:
    """The ``workout_bpm`` rows of the sessions in ``scopes`` as the table holds them (None: no
    completed session is in ``scopes``)."""
    bounds = _session_bounds(completed.join(scopes, list(SESSION_KEY), "left_semi"))
    if bounds is None:
        return None
    readings = tables.read(scopes.sparkSession, tables.ref("workout_bpm"))
    return _within(readings, "time", bounds).join(scopes, list(SESSION_KEY), "left_semi")


def _write_summary(tables: Tables, scopes: DataFrame, completed: DataFrame, readings: DataFrame | None) -> None:
    """Replace the ``workout_bpm_summary`` rows of the sessions in ``scopes`` from ``readings`` (every
    ``workout_bpm`` row of those sessions; None: they have none) and the profile history."""
    if readings is None:
        return
    spark = scopes.sparkSession
    history = tables.read(spark, tables.ref("user_profile_history"))
    users = scopes.select("user_id").distinct()
    rows = workout_bpm_summary(
        completed.join(scopes, list(SESSION_KEY), "left_semi"),
        readings.join(scopes, list(SESSION_KEY), "left_semi"),
        history.join(users, ["user_id"], "left_semi"),
    )
    replace_scopes(
        spark, tables, tables.ref("workout_bpm_summary"), rows, scopes=scopes, scope_keys=SESSION_KEY, keys=SESSION_KEY
    )


def _sessions_of_history_changes(batch: DataFrame, completed: DataFrame) -> DataFrame:
    """The sessions of every user whose profile history the batch changed."""
    changed = _from(batch, "user_profile_history", "user_id")
    return completed.join(changed, ["user_id"], "left_semi").select(*SESSION_KEY)


def _completed_and_users(tables: Tables, spark: SparkSession) -> tuple[DataFrame, DataFrame]:
    """``completed_workouts`` and ``users``, read once for everything a micro-batch derives."""
    return tables.read(spark, tables.ref("completed_workouts")), tables.read(spark, tables.ref("users"))


def _workout_bpm_writer(tables: Tables) -> Callable[[DataFrame, int], None]:
    def write(batch: DataFrame, batch_id: int) -> None:
        completed, users = _completed_and_users(tables, batch.sparkSession)
        with _persisted(_workout_bpm_scopes(batch, completed, users)) as scopes:
            new = _new_workout_bpm(tables, scopes, completed, users)
            if new is not None:
                _write_workout_bpm(tables, scopes, new)

    return _cached(write)


def _workout_bpm_summary_writer(tables: Tables) -> Callable[[DataFrame, int], None]:
    def write(batch: DataFrame, batch_id: int) -> None:
        completed = tables.read(batch.sparkSession, tables.ref("completed_workouts"))
        scopes = (
            _from(batch, "completed_workouts", *SESSION_KEY)
            .unionByName(_from(batch, "workout_bpm", *SESSION_KEY))
            .unionByName(_sessions_of_history_changes(batch, completed))
            .distinct()
        )
        with _persisted(scopes) as persisted:
            _write_summary(tables, persisted, completed, _stored_workout_bpm(tables, persisted, completed))

    return _cached(write)


def _workout_chain_writer(tables: Tables) -> Callable[[DataFrame, int], None]:
    """``workout_bpm`` and then its summary from ONE micro-batch (``realtime`` mode): a reading
    reaches gold one derived batch after silver, not two.

    The summary's sessions are those whose ``workout_bpm`` rows the first MERGE may replace (every
    change of a summary's readings is one of those) plus the sessions of users whose profile
    history changed. The replaced sessions' readings are the rows that MERGE writes (computed once,
    kept for both writes); only the other sessions' are read back from ``workout_bpm``. So neither
    MERGE reads what the other writes, and they run side by side; a batch that fails after one of
    them committed is replayed and computes the same rows.
    """

    def write(batch: DataFrame, batch_id: int) -> None:
        spark = batch.sparkSession
        completed, users = _completed_and_users(tables, spark)
        with ExitStack() as kept:
            replaced = kept.enter_context(_persisted(_workout_bpm_scopes(batch, completed, users)))
            readings: list[DataFrame] = []
            writes: list[Callable[[], None]] = []
            new = _new_workout_bpm(tables, replaced, completed, users)
            if new is not None:
                rows = _NewRows(kept.enter_context(_persisted(new.rows)), new.bounds)
                writes.append(lambda: _write_workout_bpm(tables, replaced, rows))
                readings.append(rows.rows)
            profile_only = kept.enter_context(
                _persisted(
                    _sessions_of_history_changes(batch, completed)
                    .join(replaced, list(SESSION_KEY), "left_anti")
                    .distinct()
                )
            )
            stored = _stored_workout_bpm(tables, profile_only, completed)
            if stored is not None:
                readings.append(stored)
            if readings:
                scopes = kept.enter_context(_persisted(replaced.unionByName(profile_only)))
                summary = reduce(lambda a, b: a.unionByName(b), readings)
                writes.append(lambda: _write_summary(tables, scopes, completed, summary))
            # The summary reads the rows the first MERGE writes, not the table, and the sessions
            # it reads back from ``workout_bpm`` are none of those: the two MERGEs run side by side.
            run_side_by_side(spark, writes)

    return _cached(write)


def _gym_summary_writer(tables: Tables) -> Callable[[DataFrame, int], None]:
    target = tables.ref("gym_summary")

    def write(batch: DataFrame, batch_id: int) -> None:
        spark = batch.sparkSession
        completed, users = _completed_and_users(tables, spark)
        visits = tables.read(spark, tables.ref("gym_logs"))
        # A visit's row depends on the visit, on who owns its mac address and on that member's
        # sessions: recompute every visit of each mac address the batch touched. A new session
        # touches its member's mac address only when a closed visit there holds its start.
        sessions = _from(batch, "completed_workouts", "user_id", "start_time")
        macs = (
            _from(batch, "gym_logs", "mac_address")
            .unionByName(_from(batch, "users", "mac_address"))
            .unionByName(macs_with_visits_holding(sessions, users, visits))
            .dropna()
            .distinct()
        )
        with _persisted(macs) as scopes:
            if scopes.isEmpty():  # no visit's row can change: no scan, no MERGE
                return
            rows = gym_summary(visits.join(scopes, ["mac_address"], "left_semi"), users, completed)
            replace_scopes(spark, tables, target, rows, scopes=scopes, scope_keys=["mac_address"], keys=GYM_SUMMARY_KEY)

    return _cached(write)


def _gym_occupancy_writer(tables: Tables) -> Callable[[DataFrame, int], None]:
    target = tables.ref("gym_occupancy")

    def write(batch: DataFrame, batch_id: int) -> None:
        spark = batch.sparkSession
        changed = batch.filter(F.col("_source") == "gym_logs").select("mac_address", "gym", "login", "logout")
        with _persisted(affected_hours(changed)) as hours:
            visits = tables.read(spark, tables.ref("gym_logs"))
            rows = gym_occupancy(visits, hours=hours)
            replace_scopes(spark, tables, target, rows, scopes=hours, scope_keys=OCCUPANCY_KEY, keys=OCCUPANCY_KEY)

    return _cached(write)


#: The writers of the derived tables, by the tables they write.
DERIVED: tuple[DerivedSpec, ...] = (
    DerivedSpec(("workout_bpm",), _workout_bpm_writer),
    DerivedSpec(("workout_bpm_summary",), _workout_bpm_summary_writer),
    DerivedSpec(("workout_bpm", "workout_bpm_summary"), _workout_chain_writer),
    DerivedSpec(("gym_summary",), _gym_summary_writer),
    DerivedSpec(("gym_occupancy",), _gym_occupancy_writer),
)


def derived_writer(writes: tuple[str, ...]) -> DerivedSpec:
    """The writer of exactly the tables ``writes``."""
    return next(d for d in DERIVED if d.writes == writes)
