"""``fitbit-stream generate``: a synthetic world emitted to the sources a configuration reads."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from fitbit_stream.config import Config
from fitbit_stream.generator.emit import EmitResult, Pace, Progress, emit
from fitbit_stream.generator.model import GeneratorConfig
from fitbit_stream.generator.sinks import KafkaSink, LandingSink, Sink, SqlSink, connect_sql
from fitbit_stream.generator.truth import write_truth
from fitbit_stream.generator.world import World, build_world

__all__ = ["GenerateRequest", "generate"]


@dataclass(frozen=True)
class GenerateRequest:
    knobs: GeneratorConfig
    since: datetime | None = None
    until: datetime | None = None
    main: bool = True
    late_wave: bool = False
    pace: Pace = "fast"
    truth_dir: Path | None = None
    sql_timestamps: str = "timestamp"


@contextlib.contextmanager
def _sinks(config: Config, request: GenerateRequest) -> Iterator[list[Sink]]:
    sinks: list[Sink] = []
    connection = None
    try:
        if config.kafka.enabled:
            from fitbit_stream.platform.kafka import KafkaBroker

            # Topics are created up front with the configured partitions and unlimited retention:
            # generated records can be years old and must not be expired by the broker.
            KafkaBroker.from_config(config).ensure_topics(config.kafka.topics.names(), config.kafka.partitions)
            sinks.append(KafkaSink(config.kafka.bootstrap_servers, keep_deliveries=False))
        elif config.landing.enabled:
            sinks.append(
                LandingSink(Path(config.landing.path), partitions=config.kafka.partitions, keep_deliveries=False)
            )
        if config.sql.enabled:
            password = config.sql.password()
            connection, dialect = connect_sql(
                config.sql.url,
                user=config.sql.user,
                password=password.get_secret_value() if password else None,
            )
            sinks.append(
                SqlSink(
                    connection,
                    dialect=dialect,
                    timestamps=request.sql_timestamps,  # type: ignore[arg-type]
                    registered_users_table=config.sql.registered_users_table,
                    gym_logins_table=config.sql.gym_logins_table,
                )
            )
        yield sinks
    finally:
        if connection is not None:
            connection.close()


def generate(
    config: Config, request: GenerateRequest, *, progress: Callable[[Progress], None] | None = None
) -> tuple[World, EmitResult]:
    """Build the world of ``request.knobs`` and emit the requested slice to the configured sources."""
    world = build_world(request.knobs)
    with _sinks(config, request) as sinks:
        result = emit(
            world,
            sinks,
            since=request.since,
            until=request.until,
            main=request.main,
            late_wave=request.late_wave,
            pace=request.pace,
            progress=progress,
        )
    if request.truth_dir is not None:
        write_truth(world, request.truth_dir)
    return world, result
