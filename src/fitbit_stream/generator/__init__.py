"""Deterministic synthetic world: registrations, gym visits, profile CDC, workouts, heart rate.

Typical use (what ``fitbit-stream generate`` wires)::

    world = build_world(GeneratorConfig(seed=7, users=50, days=1, chaos=ChaosConfig.on()))
    sinks = [KafkaSink("localhost:9092"), SqlSink(sqlite3.connect("data/source.db"))]
    result = emit(world, sinks, until=world.config.start + timedelta(hours=12))
    emit(world, sinks, since=world.config.start + timedelta(hours=12))  # the rest
    emit(world, sinks, main=False, late_wave=True)                      # held-back late records
    write_truth(world, "data/truth")

Same seed and knobs give byte-identical emissions and truth files.
"""

from __future__ import annotations

from fitbit_stream.generator.emit import EmitResult, Pace, Progress, emit, realtime_start
from fitbit_stream.generator.model import (
    DEFAULT_START,
    ChaosConfig,
    ChaosCounts,
    Emission,
    GeneratorConfig,
    KafkaEmission,
    RegistrationRow,
    SqlEmission,
    VisitRow,
    emit_time_us,
)
from fitbit_stream.generator.murmur2 import murmur2, partition_for_key
from fitbit_stream.generator.sinks import (
    Delivery,
    KafkaSink,
    LandingSink,
    Sink,
    SqlSink,
    connect_sql,
)
from fitbit_stream.generator.truth import TRUTH_FILES, write_truth
from fitbit_stream.generator.world import BadRecord, World, build_world

__all__ = [
    "DEFAULT_START",
    "TRUTH_FILES",
    "BadRecord",
    "ChaosConfig",
    "ChaosCounts",
    "Delivery",
    "Emission",
    "EmitResult",
    "GeneratorConfig",
    "KafkaEmission",
    "KafkaSink",
    "LandingSink",
    "Pace",
    "Progress",
    "RegistrationRow",
    "Sink",
    "SqlEmission",
    "SqlSink",
    "VisitRow",
    "World",
    "build_world",
    "connect_sql",
    "emit",
    "emit_time_us",
    "murmur2",
    "partition_for_key",
    "realtime_start",
    "write_truth",
]
