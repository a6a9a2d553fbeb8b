"""The pure-Python contract reference (tests/reference/contract.py) checked on its own, without Spark.

Its calendar and age rules on literal dates, and its quarantine against the generator's truth on a
world whose bronze rows are built in Python (as the Kafka broker would number them), so that when
the e2e comparison with the pipeline fails, the reference is already known to agree with the
generator.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from fitbit_stream.config import KafkaTopics, RulesConfig
from fitbit_stream.generator import build_world
from fitbit_stream.generator.model import ChaosConfig, GeneratorConfig, KafkaEmission
from fitbit_stream.generator.murmur2 import partition_for_key
from reference.contract import PROFILE_FIELDS, Rules, age_bin, contract_tables, profile_tables, us_week

EPOCH = datetime(1970, 1, 1)


@pytest.mark.parametrize(
    ("day", "week"),
    [(date(2023, 1, 1), 1), (date(2023, 1, 8), 2), (date(2023, 12, 31), 53), (date(2025, 3, 3), 10)],
)
def test_us_week(day: date, week: int) -> None:
    assert us_week(day) == week


@pytest.mark.parametrize(
    ("dob", "on", "expected"),
    [
        (date(2000, 2, 29), date(2025, 2, 28), "25-35"),  # both month ends: the birthday is reached
        (date(2000, 2, 29), date(2024, 2, 28), "18-25"),  # 23 (a leap year has the 29th)
        (date(2007, 3, 3), date(2025, 3, 3), "18-25"),  # lower bounds are inclusive
        (date(2007, 3, 4), date(2025, 3, 3), "under 18"),
        (date(1928, 3, 3), date(2025, 3, 3), "95+"),
        (date(2025, 3, 3), date(2025, 3, 3), "under 18"),
        (date(2025, 3, 4), date(2025, 3, 3), "invalid age"),
        (None, date(2025, 3, 3), "invalid age"),
    ],
)
def test_age_bin(dob: date | None, on: date, expected: str) -> None:
    assert age_bin(dob, on) == expected


def test_identical_copies_count_once_and_the_earliest_in_kafka_order_stands() -> None:
    """§3.1: copies of one change count once. The copy that stands decides the order among
    changes of one type at one instant (offset order): the lowest offset (then partition) stands,
    whichever copy was ingested first."""
    t = datetime(2023, 3, 1, 10)

    def change(name: str, partition: int, offset: int) -> tuple[dict[str, Any], dict[str, Any]]:
        values = dict.fromkeys(PROFILE_FIELDS) | {"first_name": name}
        return {"user_id": 1, "update_type": "update", "time": t, **values}, {"partition": partition, "offset": offset}

    # Ann's copy at offset 5 (partition 1) arrived after her copy at offset 20 (partition 0); Bea
    # sits at offset 10. Ann's offset-5 copy stands, so Bea is applied last.
    profiles, history = profile_tables([change("Ann", 0, 20), change("Bea", 0, 10), change("Ann", 1, 5)])
    assert [(p["user_id"], p["first_name"], p["updated"]) for p in profiles] == [(1, "Bea", t)]
    assert [(h["first_name"], h["valid_from"], h["valid_to"]) for h in history] == [("Bea", t, None)]


def test_reference_quarantines_exactly_the_generator_bad_records() -> None:
    world = build_world(
        GeneratorConfig(
            seed=8,
            users=7,
            days=0.7,
            start=datetime(2025, 3, 3, 5, tzinfo=UTC),
            chaos=ChaosConfig(
                malformed_json=7, schema_violations=17, future=2, late=6, duplicates=12, shuffle_window_seconds=20
            ),
        )
    )
    offsets: Counter[tuple[str, int]] = Counter()
    kafka: list[dict[str, Any]] = []
    # The main data in one batch, the late wave in the next.
    for batch, slice_ in enumerate(({"main": True}, {"main": False, "late_wave": True})):
        for em in world.emissions(**slice_):
            if not isinstance(em, KafkaEmission):
                continue
            partition = partition_for_key(em.key, 3)
            kafka.append(
                {
                    "key": em.key,
                    "value": em.value,
                    "topic": em.topic,
                    "partition": partition,
                    "offset": offsets[(em.topic, partition)],
                    "timestamp": EPOCH + timedelta(milliseconds=em.timestamp_ms),
                    "load_time": datetime(2026, 1, 1, batch),
                }
            )
            offsets[(em.topic, partition)] += 1
    tables = contract_tables(
        kafka, [], [], topics=KafkaTopics(), rules=Rules.from_config(RulesConfig()), as_of=date(2025, 6, 1)
    )
    expected = Counter((b.reason, b.topic, b.key, b.value) for b in world.bad_records())
    actual = Counter((q["reason"], q["topic"], q["key"], q["value"]) for q in tables["quarantine"])
    assert actual == expected
    assert {reason for reason, *_ in expected} == {
        "malformed_json",
        "schema_violation",
        "future",
        "late",
        "invalid_session",
    }
