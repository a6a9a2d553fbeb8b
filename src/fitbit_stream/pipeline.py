"""Wires sources, transforms and sinks into streaming queries, in dependency order.

``run_once`` drains everything that is available (available-now triggers, one SQL poll) and
returns; ``run_continuously`` keeps every query running with processing-time triggers until it is
asked to stop, then stops each query cleanly so its checkpoint is consistent.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fitbit_stream.config import Config
from fitbit_stream.errors import PipelineError
from fitbit_stream.io.bronze import (
    SqlIngestResult,
    Trigger,
    ingest_sql_sources,
    start_kafka_bronze,
    start_landing_bronze,
)

if TYPE_CHECKING:
    from pyspark.sql import SparkSession
    from pyspark.sql.streaming import StreamingQuery

__all__ = ["Pipeline", "RunReport", "StageReport"]

log = logging.getLogger(__name__)


@dataclass
class StageReport:
    name: str
    rows: int
    seconds: float


@dataclass
class RunReport:
    stages: list[StageReport] = field(default_factory=list)

    def add(self, name: str, rows: int, seconds: float) -> None:
        self.stages.append(StageReport(name, rows, seconds))

    def table(self) -> str:
        width = max((len(s.name) for s in self.stages), default=5)
        lines = [f"{'stage':<{width}}  {'rows':>10}  {'seconds':>8}"]
        lines += [f"{s.name:<{width}}  {s.rows:>10}  {s.seconds:>8.1f}" for s in self.stages]
        return "\n".join(lines)


def _input_rows(query: StreamingQuery) -> int:
    return sum(int(p.get("numInputRows", 0)) for p in query.recentProgress)


def _await(query: StreamingQuery) -> None:
    query.awaitTermination()
    error = query.exception()
    if error is not None:
        raise PipelineError(f"query {query.name!r} failed: {error}")


class Pipeline:
    """All queries of one configuration."""

    def __init__(self, spark: SparkSession, config: Config) -> None:
        self.spark = spark
        self.config = config

    # --- bronze --------------------------------------------------------------------------------

    def _bronze_streams(self, trigger: Trigger) -> list[StreamingQuery]:
        queries = []
        if self.config.kafka.enabled:
            queries.append(start_kafka_bronze(self.spark, self.config, trigger=trigger))
        if self.config.landing.enabled:
            queries.append(start_landing_bronze(self.spark, self.config, trigger=trigger))
        return queries

    def _ingest_sql(self) -> SqlIngestResult:
        return ingest_sql_sources(self.spark, self.config)

    # --- runs ----------------------------------------------------------------------------------

    def run_once(self, *, progress: Callable[[str], None] = log.info) -> RunReport:
        """Drain all available input through every layer, then return."""
        report = RunReport()
        started = time.monotonic()
        for query in self._bronze_streams({"availableNow": True}):
            _await(query)
            report.add(query.name or "bronze", _input_rows(query), time.monotonic() - started)
            progress(f"{query.name}: {_input_rows(query)} rows")
            started = time.monotonic()
        if self.config.sql.enabled:
            result = self._ingest_sql()
            report.add(
                "bronze_sql",
                result.registered_users_added + result.gym_logins_added,
                time.monotonic() - started,
            )
            progress(
                f"bronze_sql: {result.registered_users_added} registered_users, "
                f"{result.gym_logins_added} gym_logins row versions"
            )
        return report

    def run_continuously(self, stop: threading.Event) -> None:
        """Run every query until ``stop`` is set; then stop them cleanly."""
        trigger: Trigger = {"processingTime": f"{self.config.streaming.trigger_interval_seconds} seconds"}
        queries = self._bronze_streams(trigger)
        try:
            while not stop.is_set():
                if self.config.sql.enabled:
                    self._ingest_sql()
                for query in queries:
                    error = query.exception()
                    if error is not None:
                        raise PipelineError(f"query {query.name!r} failed: {error}")
                stop.wait(self.config.sql.poll_interval_seconds)
        finally:
            for query in queries:
                if query.isActive:
                    query.stop()
