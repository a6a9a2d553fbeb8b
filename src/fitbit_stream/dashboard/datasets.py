"""The dashboard's datasets: one SQL query each, shared by the HTML page and the Lakeview dashboard.

Each dataset keeps the grain of the table it comes from, one row per workout, per visit, per
gym-hour or per member, and every join is to a side with at most one row per join key. A filter
or a chart then re-aggregates a single dataset and never sees a row twice: joining workouts to
visits (or raw CDC rows to anything) multiplies rows and inflated minutes and login counts 2-4x
in the reference notebooks (PITFALLS 10).

A query names its tables as ``{layer.table}``; :func:`dataset_sql` resolves them to Delta paths
(local), catalog names (Unity Catalog) or whatever a test registers. The columns carry no
TIMESTAMP (dates and hour numbers are computed from epoch seconds), so the result does not depend
on the session time zone.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING, Any

from fitbit_stream.config import Config
from fitbit_stream.dashboard.kpis import UNKNOWN
from fitbit_stream.errors import PipelineError
from fitbit_stream.io.tables import Tables
from fitbit_stream.schemas import TABLES

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

__all__ = [
    "DATASETS",
    "DashboardData",
    "Dataset",
    "dataset_frames",
    "dataset_sql",
    "kpi_tables",
    "load_data",
    "missing_tables",
    "referenced_tables",
    "table_resolver",
]

_TOKEN = re.compile(r"\{(\w+)\.(\w+)\}")


def _known(column: str) -> str:
    return f"coalesce({column}, '{UNKNOWN}')"


@dataclass(frozen=True)
class Dataset:
    name: str
    title: str
    #: The grain: the columns that identify a row.
    grain: tuple[str, ...]
    sql: str


_WORKOUTS = f"""
SELECT
  w.user_id,
  w.workout_id,
  w.session_id,
  w.date,
  {_known("w.age")} AS age,
  {_known("w.gender")} AS gender,
  {_known("w.city")} AS city,
  concat({_known("w.age")}, ' / ', {_known("w.gender")}) AS age_gender,
  w.min_bpm,
  w.avg_bpm,
  w.max_bpm,
  w.num_recordings
FROM {{gold.workout_bpm_summary}} AS w
"""

# The member of a visit is the user registered with its mac_address (CONTRACT.md §2.3). gym_summary
# counts the sessions of every user sharing a mac; the page gives the visit to one of them, the
# latest registration, so that a visit is never counted for two members.
_VISITS = f"""
WITH owners AS (
  SELECT mac_address, user_id
  FROM (
    SELECT
      mac_address,
      user_id,
      row_number() OVER (
        PARTITION BY mac_address ORDER BY registration_timestamp DESC NULLS LAST, user_id DESC
      ) AS rn
    FROM {{silver.users}}
    WHERE mac_address IS NOT NULL AND user_id IS NOT NULL
  )
  WHERE rn = 1
)
SELECT
  v.gym,
  v.mac_address,
  v.date,
  o.user_id,
  coalesce(concat('user ', CAST(o.user_id AS STRING)), concat('unregistered ', v.mac_address)) AS member,
  {_known("b.age")} AS age,
  {_known("b.gender")} AS gender,
  {_known("b.city")} AS city,
  v.num_sessions,
  v.minutes_in_gym,
  v.minutes_exercising,
  v.minutes_exercising / 60 AS hours_exercising
FROM {{gold.gym_summary}} AS v
LEFT JOIN owners AS o ON o.mac_address = v.mac_address
LEFT JOIN {{silver.user_bins}} AS b ON b.user_id = o.user_id
"""

_OCCUPANCY = """
SELECT
  o.gym,
  date_from_unix_date(CAST(floor(unix_seconds(o.hour) / 86400) AS INT)) AS date,
  CAST(pmod(floor(unix_seconds(o.hour) / 3600), 24) AS INT) AS hour_of_day,
  concat(
    'gym ', CAST(o.gym AS STRING), ' ',
    CAST(date_from_unix_date(CAST(floor(unix_seconds(o.hour) / 86400) AS INT)) AS STRING)
  ) AS gym_day,
  o.visitors,
  o.avg_occupancy,
  o.peak_occupancy
FROM {gold.gym_occupancy} AS o
"""

# A member is a registered user or a user with a current profile; one without the other shows
# as (unknown) rather than disappearing.
_MEMBERS = f"""
WITH registered AS (
  SELECT DISTINCT user_id FROM {{silver.users}} WHERE user_id IS NOT NULL
)
SELECT
  coalesce(r.user_id, b.user_id) AS user_id,
  concat('user ', CAST(coalesce(r.user_id, b.user_id) AS STRING)) AS member,
  {_known("b.age")} AS age,
  {_known("b.gender")} AS gender,
  {_known("b.city")} AS city
FROM registered AS r
FULL OUTER JOIN (SELECT * FROM {{silver.user_bins}} WHERE user_id IS NOT NULL) AS b
  ON b.user_id = r.user_id
"""

#: Every dataset by name, in display order.
DATASETS: dict[str, Dataset] = {
    d.name: d
    for d in (
        Dataset("workouts", "Workouts", ("user_id", "workout_id", "session_id"), _WORKOUTS.strip()),
        Dataset("visits", "Gym visits", ("gym", "mac_address", "date", "member"), _VISITS.strip()),
        Dataset("occupancy", "Gym occupancy per hour", ("gym", "date", "hour_of_day"), _OCCUPANCY.strip()),
        Dataset("members", "Members", ("user_id",), _MEMBERS.strip()),
    )
}


def referenced_tables(sql: str) -> list[tuple[str, str]]:
    """The ``(layer, table)`` placeholders of a dataset query, in order of appearance."""
    return [(m.group(1), m.group(2)) for m in _TOKEN.finditer(sql)]


def dataset_sql(dataset: Dataset, resolve: Callable[[str, str], str]) -> str:
    """The dataset's query with each ``{layer.table}`` replaced by ``resolve(layer, table)``."""
    for layer, table in referenced_tables(dataset.sql):
        spec = TABLES.get(table)
        if spec is None or spec.layer != layer:
            raise PipelineError(f"dataset {dataset.name!r}: {layer}.{table} is not a contract table")
    return _TOKEN.sub(lambda m: resolve(m.group(1), m.group(2)), dataset.sql)


def _quote(identifier: str) -> str:
    if re.fullmatch(r"[A-Za-z_]\w*", identifier):
        return identifier
    return "`" + identifier.replace("`", "``") + "`"


def table_resolver(config: Config) -> Callable[[str, str], str]:
    """Resolve placeholders to the configured tables: ``delta.`<path>``` locally, catalog names on UC."""
    tables = Tables(config)

    def resolve(layer: str, table: str) -> str:
        ref = tables.ref(table, layer=layer)
        if ref.path:
            return "delta.`" + ref.path.replace("`", "``") + "`"
        return ".".join(_quote(part) for part in str(ref.qualified_name).split("."))

    return resolve


def dataset_frames(spark: SparkSession, resolve: Callable[[str, str], str]) -> dict[str, DataFrame]:
    """Every dataset as a DataFrame over the tables ``resolve`` names."""
    return {name: spark.sql(dataset_sql(d, resolve)) for name, d in DATASETS.items()}


def _plain(value: Any) -> Any:
    # JSON has no DATE: ISO text sorts and compares like the date itself.
    return value.isoformat() if isinstance(value, date) else value


@dataclass(frozen=True)
class DashboardData:
    """The rows of every dataset, as plain JSON-ready values, sorted by the dataset's grain."""

    datasets: Mapping[str, list[dict[str, Any]]]

    @classmethod
    def from_frames(cls, frames: Mapping[str, DataFrame]) -> DashboardData:
        out: dict[str, list[dict[str, Any]]] = {}
        for name, df in frames.items():
            order = [c for c in DATASETS[name].grain if c in df.columns] if name in DATASETS else []
            rows = df.orderBy(*order).collect() if order else df.collect()
            out[name] = [{k: _plain(v) for k, v in row.asDict().items()} for row in rows]
        return cls(out)

    @classmethod
    def empty(cls) -> DashboardData:
        """No rows in any dataset: what the live page shows before the tables exist."""
        return cls({name: [] for name in DATASETS})


def kpi_tables() -> list[tuple[str, str]]:
    """The ``(layer, table)`` pairs the datasets read, sorted."""
    return sorted({t for d in DATASETS.values() for t in referenced_tables(d.sql)})


def missing_tables(spark: SparkSession, config: Config) -> list[str]:
    """The tables the datasets read that do not exist (yet), as their paths or catalog names."""
    tables = Tables(config)
    refs = (tables.ref(table, layer=layer) for layer, table in kpi_tables())
    return [str(ref) for ref in refs if not tables.exists(spark, ref)]


def load_data(spark: SparkSession, config: Config) -> DashboardData:
    """Read the gold and silver tables of ``config`` into the dashboard's datasets.

    Every table must exist: the page would otherwise show zeros that look like real figures.
    """
    missing = missing_tables(spark, config)
    if missing:
        raise PipelineError(
            f"dashboard: table(s) {', '.join(missing)} do not exist yet; run `fitbit-stream run --once` first"
        )
    return DashboardData.from_frames(dataset_frames(spark, table_resolver(config)))
