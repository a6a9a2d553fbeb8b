"""The pipeline-health panel's data: per-query progress from the ops table, quarantine by reason.

``_query_progress`` (ops layer) holds one row per micro-batch of every query (see
:mod:`fitbit_stream.io.progress`); the panel shows each query's latest batches: its lag (the input
backlog Spark reports: Kafka offsets behind the latest, or Delta files outstanding) and latency
(the batch's trigger-to-commit duration) over time, and its last batch. The silver ``quarantine``
table gives the records set aside, counted by reason and topic.

Times leave Spark as epoch milliseconds (``unix_millis``): an instant, whatever the session or the
browser time zone.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fitbit_stream.config import Config
from fitbit_stream.dashboard.datasets import table_resolver
from fitbit_stream.dashboard.kpis import UNKNOWN
from fitbit_stream.io.tables import TableRef, Tables

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

__all__ = [
    "HEALTH_TABLES",
    "PROGRESS_BATCHES",
    "PipelineHealth",
    "health_frames",
    "health_refs",
    "health_sql",
    "load_health",
]

#: The tables the panel reads, as ``(layer, table)``.
HEALTH_TABLES: tuple[tuple[str, str], ...] = (("ops", "_query_progress"), ("silver", "quarantine"))

#: How many of each query's latest batches the panel plots: a long continuous run writes thousands
#: of rows per query and hour, and a chart of the last few minutes is what a watcher needs.
PROGRESS_BATCHES = 120

_PROGRESS = """
SELECT
  query_name,
  run_id,
  batch_id,
  unix_millis(timestamp) AS time_ms,
  num_input_rows,
  processed_rows_per_second,
  batch_duration_ms,
  backlog_offsets,
  backlog_files,
  backlog_bytes
FROM (
  SELECT
    *,
    row_number() OVER (PARTITION BY query_name ORDER BY timestamp DESC, batch_id DESC) AS rn
  FROM {progress}
  WHERE query_name IS NOT NULL AND query_name <> ''
)
WHERE rn <= {limit}
ORDER BY query_name, time_ms, batch_id
"""

_QUARANTINE = f"""
SELECT
  coalesce(reason, '{UNKNOWN}') AS reason,
  coalesce(topic, '{UNKNOWN}') AS topic,
  count(*) AS records,
  max(unix_millis(quarantined_at)) AS last_ms
FROM {{quarantine}}
GROUP BY 1, 2
ORDER BY reason, topic
"""


def health_sql(resolve: Callable[[str, str], str], *, limit: int = PROGRESS_BATCHES) -> dict[str, str]:
    """The panel's two queries over the tables ``resolve`` names (``progress`` and ``quarantine``)."""
    return {
        "progress": _PROGRESS.format(progress=resolve("ops", "_query_progress"), limit=int(limit)).strip(),
        "quarantine": _QUARANTINE.format(quarantine=resolve("silver", "quarantine")).strip(),
    }


def health_frames(
    spark: SparkSession, resolve: Callable[[str, str], str], *, limit: int = PROGRESS_BATCHES
) -> dict[str, DataFrame]:
    return {name: spark.sql(sql) for name, sql in health_sql(resolve, limit=limit).items()}


@dataclass(frozen=True)
class PipelineHealth:
    """The panel's rows as plain JSON-ready values; a table not written yet has no rows."""

    progress: list[dict[str, Any]] = field(default_factory=list)
    quarantine: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_frames(cls, frames: Mapping[str, DataFrame]) -> PipelineHealth:
        # Both queries order their rows; the panel shows them in that order.
        rows = {name: [row.asDict() for row in df.collect()] for name, df in frames.items()}
        return cls(progress=rows.get("progress", []), quarantine=rows.get("quarantine", []))

    def as_json(self) -> dict[str, list[dict[str, Any]]]:
        return {"progress": self.progress, "quarantine": self.quarantine}


def health_refs(config: Config) -> dict[str, TableRef]:
    tables = Tables(config)
    return {table: tables.ref(table, layer=layer) for layer, table in HEALTH_TABLES}


def load_health(spark: SparkSession, config: Config) -> PipelineHealth:
    """Read the panel's rows; a table the pipeline has not created yet reads as empty."""
    tables = Tables(config)
    present = {name for name, ref in health_refs(config).items() if tables.exists(spark, ref)}
    sql = health_sql(table_resolver(config))
    sources = {"progress": "_query_progress", "quarantine": "quarantine"}
    frames = {name: spark.sql(sql[name]) for name, table in sources.items() if table in present}
    return PipelineHealth.from_frames(frames)
