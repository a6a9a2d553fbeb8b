"""Where each contract table lives, and how to create, read and stream it.

Locally a table is a path ``<storage.root>/<layer>/<table>``; with ``storage.catalog`` set (Unity
Catalog on Databricks) it is the three-part name ``<catalog>.<schema>.<table>``. Every other module
goes through :class:`Tables`, so the same code runs in both places.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fitbit_stream.config import Config, Layer
from fitbit_stream.errors import PipelineError
from fitbit_stream.schemas import TABLES, TableSpec

_log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from delta.tables import DeltaTable
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.streaming.query import StreamingQuery  # the package re-exports it implicitly
    from pyspark.sql.streaming.readwriter import DataStreamReader, DataStreamWriter
    from pyspark.sql.types import StructType

__all__ = ["TableRef", "Tables", "create_if_absent", "delta_table", "is_uri", "read_table", "table_exists"]


def is_uri(location: str) -> bool:
    """Whether ``location`` is a URI (``abfss://``, ``s3://``, ``dbfs:``) rather than a path.

    A path (local, or a Unity Catalog volume under ``/Volumes``, which Databricks mounts) is what
    Python's own file API reaches; a URI only Spark's file systems do.
    """
    return "://" in location or location.startswith("dbfs:")


@dataclass(frozen=True)
class TableRef:
    """A resolved table: a filesystem path (local) or a catalog name (Unity Catalog)."""

    layer: str
    name: str
    path: str | None
    qualified_name: str | None

    def __str__(self) -> str:
        return self.qualified_name or self.path or self.name


class Tables:
    """Resolves, creates and opens the tables of one configuration."""

    def __init__(self, config: Config) -> None:
        self._config = config

    def ref(self, name: str, *, layer: str | None = None) -> TableRef:
        spec = TABLES.get(name)
        layer_name = layer or (spec.layer if spec else None)
        if layer_name is None:
            raise PipelineError(f"unknown table {name!r}: give its layer")
        storage = self._config.storage
        if storage.catalog:
            schema = storage.schemas[Layer(layer_name)]
            return TableRef(layer_name, name, None, f"{storage.catalog}.{schema}.{name}")
        path = str(Path(storage.root).absolute() / layer_name / name)
        return TableRef(layer_name, name, path, None)

    def checkpoint(self, query_name: str) -> str:
        """Each query has its own checkpoint directory (sharing one corrupts both)."""
        root = self._config.storage.checkpoint_root
        if is_uri(root):
            return f"{root.rstrip('/')}/{query_name}"
        return str(Path(root).absolute() / query_name)

    # --- creation ------------------------------------------------------------------------------

    def ensure(
        self,
        spark: SparkSession,
        name: str,
        *,
        schema: StructType | None = None,
        layer: str | None = None,
        partition_by: tuple[str, ...] = (),
        properties: dict[str, str] | None = None,
    ) -> TableRef:
        """Create the table empty (schema, partitioning, properties) if it does not exist yet.

        Readers downstream can then start before the first row arrives.
        """
        spec: TableSpec | None = TABLES.get(name)
        ref = self.ref(name, layer=layer)
        table_schema = schema or (spec.schema if spec else None)
        if table_schema is None:
            raise PipelineError(f"table {name!r}: no schema known, pass one")
        parts = partition_by or (spec.partition_by if spec else ())
        if not _has_local_log(ref):  # an existing table needs nothing (and no Spark call to say so)
            create_if_absent(spark, ref, table_schema, partition_by=parts, properties=properties)
        return ref

    # --- access --------------------------------------------------------------------------------

    def delta(self, spark: SparkSession, ref: TableRef) -> DeltaTable:
        return delta_table(spark, ref)

    def read(self, spark: SparkSession, ref: TableRef) -> DataFrame:
        return read_table(spark, ref)

    def version(self, spark: SparkSession, ref: TableRef) -> int | None:
        """The table's latest committed version: from the log's file names when Python can list
        them (no Spark job), else Delta's history; None when the table has no commit."""
        from fitbit_stream.io.commits import latest_version  # commits reads TableRef from here

        version = latest_version(ref)
        if version is not None:
            return version
        row = self.delta(spark, ref).history(1).select("version").first()
        return None if row is None else int(row[0])

    def read_at(self, spark: SparkSession, ref: TableRef, version: int) -> DataFrame:
        """The table as of ``version``: pinned, whatever commits after the DataFrame is made."""
        reader = spark.read.format("delta").option("versionAsOf", str(version))
        return reader.load(ref.path) if ref.path else reader.table(str(ref.qualified_name))

    def read_changes(self, spark: SparkSession, ref: TableRef, *, after: int, through: int) -> DataFrame:
        """The change feed rows of versions ``after + 1`` to ``through`` (both Delta versions)."""
        reader = (
            spark.read.format("delta")
            .option("readChangeFeed", "true")
            .option("startingVersion", str(after + 1))
            .option("endingVersion", str(through))
        )
        return reader.load(ref.path) if ref.path else reader.table(str(ref.qualified_name))

    def read_stream(self, spark: SparkSession, ref: TableRef, **options: str) -> DataFrame:
        reader: DataStreamReader = spark.readStream.format("delta").options(**options)
        return reader.load(ref.path) if ref.path else reader.table(str(ref.qualified_name))

    def exists(self, spark: SparkSession, ref: TableRef) -> bool:
        return table_exists(spark, ref)

    def append(self, df: DataFrame, ref: TableRef) -> None:
        writer = df.write.format("delta").mode("append")
        if ref.path:
            writer.save(ref.path)
        else:
            writer.saveAsTable(str(ref.qualified_name))

    def start_stream(self, writer: DataStreamWriter, ref: TableRef) -> StreamingQuery:
        """Start a Delta sink on the table (path locally, catalog name on Unity Catalog)."""
        if ref.path:
            return writer.start(ref.path)
        return writer.toTable(str(ref.qualified_name))


# --- primitives on a resolved table (shared by Tables and the CDC engine) -----------------------


def create_if_absent(
    spark: SparkSession,
    ref: TableRef,
    schema: StructType,
    *,
    partition_by: tuple[str, ...] = (),
    properties: dict[str, str] | None = None,
) -> None:
    from delta.tables import DeltaTable

    _clear_unfinished_creation(ref)
    builder = DeltaTable.createIfNotExists(spark).addColumns(schema)
    builder = builder.location(ref.path) if ref.path else builder.tableName(str(ref.qualified_name))
    if partition_by:
        builder = builder.partitionedBy(*partition_by)
    for key, value in (properties or {}).items():
        builder = builder.property(key, value)
    builder.execute()


def delta_table(spark: SparkSession, ref: TableRef) -> DeltaTable:
    from delta.tables import DeltaTable

    if ref.path:
        return DeltaTable.forPath(spark, ref.path)
    return DeltaTable.forName(spark, str(ref.qualified_name))


def read_table(spark: SparkSession, ref: TableRef) -> DataFrame:
    if ref.path:
        return spark.read.format("delta").load(ref.path)
    return spark.read.table(str(ref.qualified_name))


def _clear_unfinished_creation(ref: TableRef) -> None:
    """Remove the Delta log a killed table creation began and never committed to.

    Delta 4 makes ``_delta_log/_staged_commits`` before it writes the table's first commit; a run
    killed in between leaves a log with no file in it (or only a hidden temporary one), and Delta
    then takes the path for a table and refuses to create it (``DELTA_TABLE_NOT_FOUND``) on every
    restart. Such a log holds nothing to keep. Local paths only (the caller holds the pipeline's
    single-writer lock)."""
    if ref.path is None or is_uri(ref.path):
        return
    log = Path(ref.path) / "_delta_log"
    try:
        if not log.is_dir() or any(p.is_file() and not p.name.startswith(".") for p in log.rglob("*")):
            return
    except OSError:
        return
    shutil.rmtree(log, ignore_errors=True)
    _log.info("%s: removed the Delta log of a table creation a killed run began and never committed", ref.path)


def _has_local_log(ref: TableRef) -> bool:
    """Whether ``ref`` is a path Python reads whose Delta log holds a commit: the table exists.

    A start-up touches every table; asking Delta through Spark costs a job each, listing costs
    nothing. False for anything else (the caller asks Delta)."""
    if ref.path is None or is_uri(ref.path):
        return False
    log = Path(ref.path) / "_delta_log"
    try:
        return any(p.name.endswith(".json") and p.name[:-5].isdigit() for p in log.iterdir())
    except OSError:
        return False


def table_exists(spark: SparkSession, ref: TableRef) -> bool:
    from delta.tables import DeltaTable

    if _has_local_log(ref):
        return True
    if ref.path:
        return bool(DeltaTable.isDeltaTable(spark, ref.path))
    return bool(spark.catalog.tableExists(str(ref.qualified_name)))
