"""Pure CDC transforms (CONTRACT.md §3.1): total order, identical duplicates, SCD1 state, SCD2 versions."""

from __future__ import annotations

import random
from datetime import timedelta

import pytest
from cdc_reference import NO_PROFILE, T0, Change, change_sets, changes_df, profile, reference
from chispa import assert_df_equality
from hypothesis import given, settings
from hypothesis import strategies as st
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import BooleanType, StructField, StructType

from fitbit_stream.errors import PipelineError
from fitbit_stream.schemas import USER_PROFILE, USER_PROFILE_HISTORY
from fitbit_stream.transforms.cdc import (
    DELETED,
    USER_PROFILE_CDC,
    CdcSpec,
    dedupe_changes,
    latest_change_per_key,
    scd1_state,
    scd2_versions,
    tombstoned_keys,
)

SPEC = USER_PROFILE_CDC
M = timedelta(minutes=1)
ANN, BEA, CAT = profile("Ann"), profile("Bea"), profile("Cat")
NULLS = profile(None, city=None, dob=None)


def _profiles(spark: SparkSession, rows: list[tuple[object, ...]]) -> DataFrame:
    return spark.createDataFrame(rows, USER_PROFILE)


def test_ties_at_one_instant_order_new_update_delete_then_offset_then_partition(spark: SparkSession) -> None:
    changes = [
        # user 1: delete, update and new at one instant (offsets deliberately reversed)
        Change(1, "delete", T0, NO_PROFILE, offset=1),
        Change(1, "update", T0, BEA, offset=2),
        Change(1, "new", T0, ANN, offset=3),
        # user 2: two updates at one instant keep offset order, whatever their partition
        Change(2, "update", T0, CAT, offset=8, partition=0),
        Change(2, "update", T0, BEA, offset=7, partition=1),
        # user 3: same instant, type and offset in two partitions: the partition decides
        Change(3, "update", T0, ANN, offset=5, partition=1),
        Change(3, "update", T0, BEA, offset=5, partition=0),
        # user 4: an older change arriving later never wins; a NULL-field profile is a profile
        Change(4, "new", T0 + M, NULLS, offset=1),
        Change(4, "update", T0, ANN, offset=9),
    ]
    actual = latest_change_per_key(changes_df(spark, changes), spec=SPEC).select(
        "user_id", "update_type", "first_name", "offset"
    )
    expected = spark.createDataFrame(
        [(1, "delete", None, 1), (2, "update", "Cat", 8), (3, "update", "Ann", 5), (4, "new", None, 1)],
        "user_id long, update_type string, first_name string, offset long",
    )
    assert_df_equality(actual, expected, ignore_row_order=True, ignore_nullable=True)


def test_dedupe_counts_identical_messages_once_keeping_the_earliest_copy(spark: SparkSession) -> None:
    changes = [
        Change(1, "update", T0, ANN, offset=30),  # re-sent copy, arrives first
        Change(1, "update", T0, ANN, offset=10),  # the original
        Change(1, "update", T0, ANN, offset=10),  # bronze duplicate of the original
        Change(1, "update", T0, BEA, offset=20),  # same instant, other content: a change of its own
        Change(1, "update", T0 + M, ANN, offset=40),  # same content, other instant: its own change
        Change(2, "new", T0, NULLS, offset=1),  # NULL fields compare equal for duplicates
        Change(2, "new", T0, NULLS, offset=2),
    ]
    actual = dedupe_changes(changes_df(spark, changes), spec=SPEC).select(
        "user_id", "event_time", "first_name", "offset"
    )
    expected = spark.createDataFrame(
        [(1, T0, "Ann", 10), (1, T0, "Bea", 20), (1, T0 + M, "Ann", 40), (2, T0, None, 1)],
        "user_id long, event_time timestamp, first_name string, offset long",
    )
    assert_df_equality(actual, expected, ignore_row_order=True, ignore_nullable=True)


def test_scd1_state_marks_tombstones_and_keeps_null_fields(spark: SparkSession) -> None:
    changes = [
        Change(1, "new", T0, ANN, offset=1),
        Change(1, "delete", T0 + 2 * M, NO_PROFILE, offset=3),
        Change(1, "update", T0 + M, BEA, offset=4),  # stale: older than the delete
        Change(2, "new", T0, NULLS, offset=5),
        Change(3, "delete", T0, NO_PROFILE, offset=6),
        Change(3, "new", T0 + M, CAT, offset=7),  # re-created after its delete
    ]
    actual = scd1_state(changes_df(spark, changes), spec=SPEC)
    expected = spark.createDataFrame(
        [
            (1, *NO_PROFILE, T0 + 2 * M, True),
            (2, *NULLS, T0, False),
            (3, *CAT, T0 + M, False),
        ],
        StructType([*USER_PROFILE.fields, StructField(DELETED, BooleanType())]),
    )
    assert_df_equality(actual, expected, ignore_row_order=True, ignore_nullable=True, ignore_column_order=True)


def test_scd2_versions_open_close_and_drop_zero_length(spark: SparkSession) -> None:
    changes = [
        # user 1: new, stale update arriving after the delete, delete, then re-creation
        Change(1, "new", T0, ANN, offset=1),
        Change(1, "delete", T0 + 2 * M, NO_PROFILE, offset=2),
        Change(1, "update", T0 + M, BEA, offset=3),
        Change(1, "new", T0 + 3 * M, CAT, offset=4),
        # user 2: new + update + delete at one instant leave no version at all
        Change(2, "update", T0, BEA, offset=6),
        Change(2, "new", T0, ANN, offset=5),
        Change(2, "delete", T0, NO_PROFILE, offset=7),
        # user 3: NULL fields; a delete before any version closes nothing
        Change(3, "delete", T0, NO_PROFILE, offset=8),
        Change(3, "update", T0 + M, NULLS, offset=9),
    ]
    actual = scd2_versions(changes_df(spark, changes), spec=SPEC)
    expected = spark.createDataFrame(
        [
            (1, *ANN, T0, T0 + M),
            (1, *BEA, T0 + M, T0 + 2 * M),
            (1, *CAT, T0 + 3 * M, None),
            (3, *NULLS, T0 + M, None),
        ],
        USER_PROFILE_HISTORY,
    )
    assert_df_equality(actual, expected, ignore_row_order=True, ignore_nullable=True)


def test_tombstoned_keys_only_before_the_cutoff(spark: SparkSession) -> None:
    changes = [
        Change(1, "delete", T0, NO_PROFILE, offset=1),
        Change(2, "delete", T0 + 10 * M, NO_PROFILE, offset=2),  # too recent
        Change(3, "delete", T0, NO_PROFILE, offset=3),
        Change(3, "new", T0 + M, ANN, offset=4),  # alive again
        Change(4, "new", T0, NULLS, offset=5),
    ]
    cutoff = (T0 + 5 * M).replace(tzinfo=None)  # naive means UTC
    actual = tombstoned_keys(changes_df(spark, changes), spec=SPEC, before=cutoff)
    assert_df_equality(actual, spark.createDataFrame([(1,)], "user_id long"), ignore_nullable=True)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"keys": ()}, "at least one key"),
        ({"delete_types": frozenset({"remove"})}, "not in type_order"),
        ({"tombstone_retention": timedelta(days=-1)}, ">= 0"),
        ({"value_columns": ("dob",)}, "profile_schema"),
        ({"tie_breakers": ("offset", "user_id")}, "named twice"),
    ],
)
def test_spec_rejects_inconsistent_settings(overrides: dict[str, object], message: str) -> None:
    fields = {
        "keys": SPEC.keys,
        "value_columns": SPEC.value_columns,
        "profile_schema": SPEC.profile_schema,
        "history_schema": SPEC.history_schema,
        **overrides,
    }
    with pytest.raises(PipelineError, match=message):
        CdcSpec(**fields)  # type: ignore[arg-type]  # deliberately wrong values


@settings(max_examples=12, deadline=None)
@given(changes=change_sets(), seed=st.integers(min_value=0, max_value=2**16))
def test_transforms_match_the_reference_in_any_arrival_order(
    spark: SparkSession, changes: list[Change], seed: int
) -> None:
    shuffled = list(changes)
    random.Random(seed).shuffle(shuffled)
    df = dedupe_changes(changes_df(spark, shuffled), spec=SPEC)
    want_profiles, want_history = reference(changes)
    state = scd1_state(df, spec=SPEC).filter(~F.col(DELETED)).drop(DELETED)
    assert_df_equality(state, _profiles(spark, want_profiles), ignore_row_order=True, ignore_nullable=True)
    history = scd2_versions(df, spec=SPEC)
    expected_history = spark.createDataFrame(want_history, USER_PROFILE_HISTORY)
    assert_df_equality(history, expected_history, ignore_row_order=True, ignore_nullable=True)


def test_reference_itself_on_the_contract_example() -> None:
    """The oracle agrees with §3.1 on a hand-checked case (so the property tests test something)."""
    changes = [
        Change(1, "new", T0, ANN, offset=1),
        Change(1, "update", T0 + M, BEA, offset=3),
        Change(1, "update", T0 + M, ANN, offset=2),
        Change(1, "update", T0 + M, BEA, offset=4),  # re-sent copy of offset 3: counts once
        Change(1, "delete", T0 + 2 * M, NO_PROFILE, offset=5),
    ]
    profiles, history = reference(changes)
    assert profiles == []
    assert history == [(1, *ANN, T0, T0 + M), (1, *BEA, T0 + M, T0 + 2 * M)]
