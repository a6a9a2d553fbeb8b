"""The drain phase's input: a seeded synthetic world preloaded into the benchmark's own broker and
SQLite source, before any query starts (so every query drains the same, complete backlog)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fitbit_stream.generator.emit import Progress, emit
from fitbit_stream.generator.model import ChaosConfig, GeneratorConfig
from fitbit_stream.generator.sinks import KafkaSink, Sink, SqlSink, connect_sql
from fitbit_stream.generator.world import build_world

if TYPE_CHECKING:
    from fitbit_stream.config import Config
    from fitbit_stream.platform.kafka import KafkaBroker

__all__ = ["USERS_PER_SCALE", "Backlog", "backlog_knobs", "preload"]

#: Members of a one-day world holding about one million heart-rate readings (seed 42: 1,000,186).
USERS_PER_SCALE = 226


@dataclass(frozen=True)
class Backlog:
    users: int
    days: float
    seed: int
    chaos_rate: float
    kafka_records: int
    readings: int
    sql_statements: int
    #: generation and delivery (Kafka acks, SQLite commits), wall clock
    seconds: float
    counts: dict[str, Any]

    @property
    def records_per_second(self) -> float:
        return self.kafka_records / self.seconds if self.seconds > 0 else 0.0


def backlog_knobs(config: Config, *, scale: float, seed: int, chaos: float) -> GeneratorConfig:
    """One simulated day; ``scale`` 1.0 is about one million readings (members scale linearly)."""
    return GeneratorConfig(
        seed=seed,
        users=max(1, round(USERS_PER_SCALE * scale)),
        days=1.0,
        topics=config.kafka.topics,
        max_session_hours=config.rules.max_session_hours,
        chaos=ChaosConfig.on(chaos) if chaos > 0 else ChaosConfig(),
    )


def preload(
    config: Config,
    knobs: GeneratorConfig,
    *,
    broker: KafkaBroker,
    progress: Callable[[Progress], None] | None = None,
) -> Backlog:
    """Create the topics and emit the world's main wave to Kafka and the SQL source."""
    broker.ensure_topics(config.kafka.topics.names(), config.kafka.partitions)
    world = build_world(knobs)
    connection, dialect = connect_sql(config.sql.url)
    started = time.monotonic()
    try:
        sinks: list[Sink] = [
            KafkaSink(config.kafka.bootstrap_servers, keep_deliveries=False),
            SqlSink(
                connection,
                dialect=dialect,
                registered_users_table=config.sql.registered_users_table,
                gym_logins_table=config.sql.gym_logins_table,
                commit_every=10_000,
            ),
        ]
        result = emit(world, sinks, progress=progress, progress_every=200_000)
    finally:
        connection.close()
    counts = world.counts()
    return Backlog(
        users=knobs.users,
        days=knobs.days,
        seed=knobs.seed,
        chaos_rate=knobs.chaos.rate,
        kafka_records=result.kafka_messages,
        readings=int(counts["readings"]),
        sql_statements=result.sql_statements,
        seconds=round(time.monotonic() - started, 3),
        counts=counts,
    )
