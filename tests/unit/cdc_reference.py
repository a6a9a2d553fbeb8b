"""Test data for the CDC engine (changes as rows, hypothesis strategies) and its oracle, the
contract reference's §3.1 (``tests/reference/contract.py``) in the tuples these tests compare.

Used by test_cdc.py and test_cdc_merge.py.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta

from hypothesis import strategies as st
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.types import (
    DateType,
    IntegerType,
    LongType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

from reference.contract import PROFILE_FIELDS, profile_tables

T0 = datetime(2023, 3, 1, 10, 0, tzinfo=UTC)
LOAD = datetime(2023, 3, 2, 0, 0, tzinfo=UTC)

#: The engine's input: accepted user_info changes with their bronze coordinates.
CHANGES = StructType(
    [
        StructField("user_id", LongType()),
        StructField("update_type", StringType()),
        StructField("event_time", TimestampType()),
        StructField("dob", DateType()),
        StructField("sex", StringType()),
        StructField("gender", StringType()),
        StructField("first_name", StringType()),
        StructField("last_name", StringType()),
        StructField("street_address", StringType()),
        StructField("city", StringType()),
        StructField("state", StringType()),
        StructField("zip", StringType()),
        StructField("partition", IntegerType()),
        StructField("offset", LongType()),
        StructField("load_time", TimestampType()),
        StructField("topic", StringType()),
        StructField("key", StringType()),
        StructField("value", StringType()),
    ]
)

Profile = tuple[
    date | None, str | None, str | None, str | None, str | None, str | None, str | None, str | None, str | None
]
NO_PROFILE: Profile = (None, None, None, None, None, None, None, None, None)


def profile(name: str | None, *, city: str | None = "Austin", dob: date | None = date(1990, 5, 17)) -> Profile:
    """A full profile whose first name and city vary (enough to tell versions apart)."""
    return (dob, "F", "F", name, "Doe", "1 Main St", city, "TX", "07001")


@dataclass(frozen=True)
class Change:
    user_id: int
    update_type: str
    event_time: datetime
    values: Profile
    offset: int
    partition: int = 0

    def row(self) -> tuple[object, ...]:
        return (
            self.user_id,
            self.update_type,
            self.event_time,
            *self.values,
            self.partition,
            self.offset,
            LOAD,
            "user_info",
            str(self.user_id),
            f'{{"user_id": {self.user_id}, "update_type": "{self.update_type}"}}',
        )


def changes_df(spark: SparkSession, changes: list[Change]) -> DataFrame:
    return spark.createDataFrame([c.row() for c in changes], CHANGES)


def reference(changes: list[Change]) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    """(user_profile rows, user_profile_history rows) by the contract reference
    (``tests/reference/contract.py``), the one oracle of §3.1 that the e2e tests use too.

    Rows: (user_id, *profile, updated) and (user_id, *profile, valid_from, valid_to).
    """
    profiles, history = profile_tables(
        (
            {
                "user_id": c.user_id,
                "update_type": c.update_type,
                "time": c.event_time,
                **dict(zip(PROFILE_FIELDS, c.values, strict=True)),
            },
            {"partition": c.partition, "offset": c.offset},
        )
        for c in changes
    )
    return (
        [(p["user_id"], *(p[f] for f in PROFILE_FIELDS), p["updated"]) for p in profiles],
        [(h["user_id"], *(h[f] for f in PROFILE_FIELDS), h["valid_from"], h["valid_to"]) for h in history],
    )


# --- hypothesis strategies -------------------------------------------------------------------------

_VALUES = st.sampled_from(
    [
        profile("Ann"),
        profile("Bea", city="Boston"),
        profile(None, city=None, dob=None),  # NULL profile fields
    ]
)


@st.composite
def change_sets(draw: st.DrawFn, *, users: int = 3, max_changes: int = 8) -> list[Change]:
    """Random changes of up to ``users`` users at few distinct instants (so ties are frequent),
    with re-sent copies (same content, later offset) and bronze duplicates (same everything)."""
    n = draw(st.integers(min_value=1, max_value=max_changes))
    out: list[Change] = []
    for i in range(n):
        kind = draw(st.sampled_from(["new", "update", "update", "delete"]))
        out.append(
            Change(
                user_id=draw(st.integers(min_value=1, max_value=users)),
                update_type=kind,
                event_time=T0 + timedelta(minutes=draw(st.integers(min_value=0, max_value=3))),
                values=NO_PROFILE if kind == "delete" else draw(_VALUES),
                offset=10 * i,
                partition=draw(st.integers(min_value=0, max_value=1)),
            )
        )
    resent = draw(st.lists(st.sampled_from(out), max_size=2))
    out += [replace(c, offset=1000 + 10 * j) for j, c in enumerate(resent)]
    out += draw(st.lists(st.sampled_from(out), max_size=1))
    return out
