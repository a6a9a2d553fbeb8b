"""Gold ``workout_bpm_summary`` (CONTRACT.md §2.3): heart-rate figures per completed session.

Recomputed for the sessions a micro-batch affected (a new completed session, a late reading, a
profile change of its user) and MERGEd by key, so a late reading or a profile correction does
reach gold (PITFALLS 7) and nothing waits for a later event.
"""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from fitbit_stream.schemas import WORKOUT_BPM_SUMMARY
from fitbit_stream.transforms.demographics import PROFILE_VALID_FROM, age_bin, as_of_profile
from fitbit_stream.transforms.workouts import SESSION_KEY

__all__ = ["workout_bpm_summary"]

#: Heart rates as decimals for the mean. Spark turns a double into the shortest decimal that reads
#: back as it (66.92 is 66.92), which 18 places hold; 20 integer digits hold any sum of heart rates.
_EXACT = "decimal(38,18)"


def workout_bpm_summary(completed_df: DataFrame, workout_bpm_df: DataFrame, history_df: DataFrame) -> DataFrame:
    """``completed_workouts`` x ``workout_bpm`` x ``user_profile_history`` -> ``WORKOUT_BPM_SUMMARY``.

    One row per session of ``completed_df`` that has at least one reading with a non-NULL
    heartrate in ``workout_bpm_df`` (whose rows are already the valid readings inside the
    session). ``date`` is the UTC date of start_time; sex, gender, city and state come from the
    profile version in effect at start_time and ``age`` is that version's dob binned at ``date``
    (the session date, not today, so a session never changes bin between runs). A session
    without a version in effect keeps its row with all demographic columns NULL, ``age``
    included (``invalid age`` is kept for a version whose dob is NULL or after the session).

    To recompute some sessions, pass those sessions as ``completed_df`` and at least all their
    readings and all versions of their users (the whole tables do). Rows repeating a table key
    are collapsed first, so a duplicate reading counts once.
    """
    sessions = completed_df.dropDuplicates(list(SESSION_KEY)).select(*SESSION_KEY, "start_time")
    readings = (
        workout_bpm_df.where(F.col("heartrate").isNotNull())
        .dropDuplicates([*SESSION_KEY, "time"])
        .groupBy(*SESSION_KEY)
        .agg(
            F.min("heartrate").alias("min_bpm"),
            # A sum of doubles depends on the order it adds them in, and the order rows reach an
            # aggregate depends on files and partitions (a replay, a recompute, a run killed and
            # restarted). Summed as decimals, exactly, a session's mean is the same however its
            # readings were written or read: the sum rounded once to a double, divided once.
            (F.sum(F.col("heartrate").cast(_EXACT)).cast("double") / F.count("heartrate")).alias("avg_bpm"),
            F.max("heartrate").alias("max_bpm"),
            F.count("heartrate").alias("num_recordings"),
        )
    )
    summary = as_of_profile(history_df, sessions.join(readings, list(SESSION_KEY), "inner"), at="start_time")
    session_date = F.to_date("start_time")
    derived = {
        "date": session_date,
        "age": F.when(F.col(PROFILE_VALID_FROM).isNotNull(), age_bin("dob", session_date)),
    }
    return summary.select(
        *[derived.get(f.name, F.col(f.name)).cast(f.dataType).alias(f.name) for f in WORKOUT_BPM_SUMMARY.fields]
    )
