"""SparkSession factory: the same call works on a laptop and on a Databricks cluster.

Locally it builds a session wired to the JVM artifacts resolved by ``scripts/setup.sh`` (Delta,
Spark's Kafka connector, JDBC drivers) with Delta's extensions and a UTC session time zone. On
Databricks the cluster owns the session: the factory returns it and changes nothing but the
session time zone.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from fitbit_stream.config import Config, Platform
from fitbit_stream.errors import PlatformError

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

__all__ = ["get_spark", "local_jars", "on_databricks"]

_JARS_ENV = "FITBIT_STREAM_JARS_DIR"


def on_databricks() -> bool:
    return "DATABRICKS_RUNTIME_VERSION" in os.environ


def local_jars(jars_dir: str | Path) -> list[str]:
    """The Spark-side jars resolved into ``<jars_dir>/spark``; a clear error when setup did not run."""
    base = Path(os.environ.get(_JARS_ENV, str(jars_dir))) / "spark"
    jars = sorted(str(p.resolve()) for p in base.glob("*.jar"))
    if not jars:
        raise PlatformError(
            f"no JVM artifacts under {str(base)!r}: run `./scripts/setup.sh` (or `make setup`) to resolve "
            f"Delta, the Kafka connector and the JDBC drivers from Maven Central, or point {_JARS_ENV} "
            "at a directory that holds them"
        )
    return jars


def _local_conf(config: Config) -> dict[str, str]:
    conf = {
        "spark.jars": ",".join(local_jars(config.jars_dir)),
        "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
        "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.shuffle.partitions": str(config.streaming.shuffle_partitions),
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.streaming.stateStore.providerClass": _state_store_provider(config),
        # Delta replays its log with 50 tasks by default: far too many for one machine's tables.
        "spark.databricks.delta.snapshotPartitions": "2",
        "spark.driver.extraJavaOptions": "-Duser.timezone=UTC",
        "spark.executor.extraJavaOptions": "-Duser.timezone=UTC",
    }
    conf.update(config.spark_conf)
    return conf


def _state_store_provider(config: Config) -> str:
    if config.streaming.state_store == "hdfs":
        return "org.apache.spark.sql.execution.streaming.state.HDFSBackedStateStoreProvider"
    # Open-source Spark's RocksDB provider; Databricks runtimes configure their own.
    return "org.apache.spark.sql.execution.streaming.state.RocksDBStateStoreProvider"


def get_spark(config: Config, *, master: str = "local[*]") -> SparkSession:
    """Return the session this configuration runs in (building a local one when needed)."""
    from pyspark.sql import SparkSession

    if config.platform is Platform.DATABRICKS or on_databricks():
        active = SparkSession.getActiveSession()
        spark = active if active is not None else SparkSession.builder.getOrCreate()
        spark.conf.set("spark.sql.session.timeZone", "UTC")
        return spark

    builder = SparkSession.builder.master(master).appName(config.app_name)
    for key, value in _local_conf(config).items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark
