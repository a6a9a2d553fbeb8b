"""The ground-truth scenario: the library's generator emits a small chaotic world to a real Kafka broker
and PostgreSQL database, a pipeline drains it run by run, and the tables come back with what the
contract reference (``tests/reference/contract.py``) needs to derive them from the same bronze rows.
Shared by the ground-truth e2e (in this process's Spark session) and the cluster e2e (a
``fitbit-stream run --once`` subprocess on a standalone cluster)."""

from __future__ import annotations

import bisect
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from pyspark.sql import SparkSession

from fitbit_stream.config import Config, load_config
from fitbit_stream.generator.model import ChaosConfig, GeneratorConfig
from fitbit_stream.generator.run import GenerateRequest, generate
from fitbit_stream.io.tables import Tables
from fitbit_stream.pipeline import Pipeline
from fitbit_stream.platform.kafka import KafkaBroker
from fitbit_stream.platform.postgres import PostgresServer
from reference.contract import TABLE_KEYS, Rules, contract_tables

START = datetime(2025, 3, 3, 5, tzinfo=UTC)
# Seed 8 of this shape has every session kind (normal, stop before start, too long, no stop), a
# re-registration, a delete with a re-creation, a visit open at the end and visits open at MID.
KNOBS = GeneratorConfig(
    seed=8,
    users=7,
    days=0.7,
    start=START,
    chaos=ChaosConfig(
        rate=0.001,
        malformed_json=7,  # every malformed variant
        schema_violations=17,  # every schema-violation variant
        future=2,
        late=6,
        duplicates=12,
        shuffle_window_seconds=20,
    ),
)
MID = START + timedelta(days=KNOBS.days / 2)
AS_OF = date(2025, 6, 1)
SILVER_GOLD = tuple(TABLE_KEYS)
BRONZE_COLUMNS = ("key", "value", "topic", "partition", "offset", "timestamp", "load_time")
# Not facts of the data: when a row was quarantined, and the wording of why (its field is checked
# against the generator's truth instead).
NOT_FACTS = ("quarantined_at", "detail")


@dataclass
class Scenario:
    config: Config
    truth: Path
    #: wall-clock instants (naive UTC) just before each run: a bronze row belongs to the last run
    #: that started before its load_time
    cuts: list[datetime]
    tables: dict[str, list[dict[str, Any]]]
    kafka: list[dict[str, Any]]
    registered_users: list[dict[str, Any]]
    gym_logins: list[dict[str, Any]]

    def run_of(self, load_time: datetime) -> int:
        run = bisect.bisect_right(self.cuts, load_time) - 1
        assert run >= 0, f"load_time {load_time} is before the first run started ({self.cuts[0]})"
        return run

    def reference(self) -> dict[str, list[dict[str, Any]]]:
        return contract_tables(
            self.kafka,
            self.registered_users,
            self.gym_logins,
            topics=self.config.kafka.topics,
            rules=Rules.from_config(self.config.rules),
            as_of=AS_OF,
            batch_of=self.run_of,
        )

    def role(self, topic: str) -> str:
        topics = self.config.kafka.topics
        return {topics.user_info: "user_info", topics.bpm: "bpm", topics.workout: "workout"}[topic]


def run_scenario(
    name: str,
    slices: list[dict[str, Any]],
    *,
    spark: SparkSession,
    spark_config: Config,
    broker: KafkaBroker,
    postgres: PostgresServer,
    base: Path,
    overrides: tuple[str, ...] = (),
    drain: Callable[[Config, int], str] | None = None,
) -> Scenario:
    """Emit ``slices`` of the world one after the other, each drained by a run: ``drain(config, run
    number)`` (default: ``Pipeline.run_once`` in ``spark``), which returns what to print of it."""
    suffix = f"{name}_{uuid.uuid4().hex[:8]}"
    database = f"gt_{suffix}"
    postgres.create_database(database)
    config = load_config(
        None,
        [
            f"storage.root={base / 'lake'}",
            f"storage.checkpoint_root={base / 'checkpoints'}",
            f"platform_dir={base / 'platform'}",
            f"jars_dir={spark_config.jars_dir}",
            f"kafka.bootstrap_servers={broker.bootstrap_servers}",
            f"kafka.topics.user_info=user_info_{suffix}",
            f"kafka.topics.bpm=bpm_{suffix}",
            f"kafka.topics.workout=workout_{suffix}",
            f"sql.url={postgres.jdbc_url(database)}",
            "sql.user=postgres",
            *overrides,
        ],
    )
    knobs = KNOBS.model_copy(update={"topics": config.kafka.topics})
    truth = base / "truth"
    if drain is None:
        pipeline = Pipeline(spark, config)

        def drain(config: Config, run: int) -> str:
            return pipeline.run_once(as_of=AS_OF).table()

    cuts: list[datetime] = []
    for i, part in enumerate(slices):
        started = time.monotonic()
        generate(config, GenerateRequest(knobs, truth_dir=truth if i == 0 else None, **part))
        cuts.append(datetime.now(UTC).replace(tzinfo=None))
        generated = time.monotonic()
        shown = drain(config, i)
        print(f"{name} run {i}: generate {generated - started:.1f}s, run {time.monotonic() - generated:.1f}s")
        print(shown)
    tables = Tables(config)

    def collect(table: str) -> list[dict[str, Any]]:
        return [r.asDict(recursive=True) for r in tables.read(spark, tables.ref(table)).collect()]

    started = time.monotonic()
    scenario = Scenario(
        config=config,
        truth=truth,
        cuts=cuts,
        tables={table: collect(table) for table in SILVER_GOLD},
        kafka=[{c: r[c] for c in BRONZE_COLUMNS} for r in collect("kafka_multiplex_bz")],
        registered_users=collect("registered_users_bz"),
        gym_logins=collect("gym_logins_bz"),
    )
    print(f"{name}: tables collected in {time.monotonic() - started:.1f}s")
    return scenario
