"""SparkSession factory: the same call works on a laptop, under spark-submit and on a Databricks cluster.

Locally it builds a session wired to the JVM artifacts resolved by ``scripts/setup.sh`` (Delta,
Spark's Kafka connector, JDBC drivers) with Delta's extensions and a UTC session time zone. On
Databricks the cluster owns the session: the factory takes it as it is and sets only session-level
settings (time zone, shuffle partitions, the runtime's own RocksDB state store provider).

Either way, every credential the configuration references is checked (:meth:`AzureAuth.check`)
before the session is handed out, so no query starts with a missing secret, and the ADLS Gen2
OAuth settings of ``config.azure`` are set on the session.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from fitbit_stream.azure import AzureAuth
from fitbit_stream.config import Config
from fitbit_stream.errors import PlatformError

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

__all__ = [
    "DATABRICKS_ROCKSDB_PROVIDER",
    "HDFS_STATE_STORE_PROVIDER",
    "OSS_ROCKSDB_PROVIDER",
    "configure_session",
    "get_spark",
    "local_jars",
    "on_databricks",
    "quiet_py4j",
    "session_conf",
    "state_store_provider",
]

_JARS_ENV = "FITBIT_STREAM_JARS_DIR"

#: The RocksDB state store has a different class on each platform; HDFS-backed is the same on both.
OSS_ROCKSDB_PROVIDER = "org.apache.spark.sql.execution.streaming.state.RocksDBStateStoreProvider"
DATABRICKS_ROCKSDB_PROVIDER = "com.databricks.sql.streaming.state.RocksDBStateStoreProvider"
HDFS_STATE_STORE_PROVIDER = "org.apache.spark.sql.execution.streaming.state.HDFSBackedStateStoreProvider"


def on_databricks() -> bool:
    return "DATABRICKS_RUNTIME_VERSION" in os.environ


def _under_spark_submit() -> bool:
    # spark-submit (and the pyspark shell) start the JVM first and hand its port to Python.
    return "PYSPARK_GATEWAY_PORT" in os.environ


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


def state_store_provider(config: Config) -> str:
    """The state store class of ``config.streaming.state_store`` on the platform this runs on."""
    if config.streaming.state_store == "hdfs":
        return HDFS_STATE_STORE_PROVIDER
    return DATABRICKS_ROCKSDB_PROVIDER if config.on_databricks() else OSS_ROCKSDB_PROVIDER


def session_conf(config: Config) -> dict[str, str]:
    """Session-level settings both platforms get (runtime SQL settings, settable on a live session)."""
    return {
        "spark.sql.session.timeZone": "UTC",
        # Recorded in each stateful checkpoint at its first batch: fixed for the checkpoint's life.
        "spark.sql.shuffle.partitions": str(config.streaming.shuffle_partitions),
        "spark.sql.streaming.stateStore.providerClass": state_store_provider(config),
    }


def _local_conf(config: Config) -> dict[str, str]:
    conf = {
        "spark.jars": ",".join(local_jars(config.jars_dir)),
        "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
        "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
        **session_conf(config),
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        # Queries share the cores evenly (each runs in its own pool, see pipeline._scheduler_pool).
        "spark.scheduler.mode": "FAIR",
        # Delta replays its log with 50 tasks by default: far too many for one machine's tables.
        "spark.databricks.delta.snapshotPartitions": "2",
        "spark.driver.extraJavaOptions": "-Duser.timezone=UTC",
        "spark.executor.extraJavaOptions": "-Duser.timezone=UTC",
    }
    conf.update(config.spark_conf)
    return conf


def quiet_py4j() -> None:
    """Keep py4j's wire log off: at DEBUG it echoes every string sent to the JVM, secrets included,
    and at INFO it logs every call back from the JVM (each streaming progress event)."""
    py4j = logging.getLogger("py4j")
    if py4j.getEffectiveLevel() < logging.WARNING:
        py4j.setLevel(logging.WARNING)


def _require_delta(spark: SparkSession) -> None:
    """Under spark-submit the driver JVM is already running: jars set by the builder come too late."""
    from delta.tables import DeltaTable

    try:
        DeltaTable.isDeltaTable(spark, "file:///nonexistent-fitbit-stream-probe")
    except TypeError:  # py4j's "'JavaPackage' object is not callable": the class is not on the classpath
        raise PlatformError(
            "Delta Lake's JVM classes are not on the driver's classpath: pass the resolved jars to spark-submit, "
            "e.g. spark-submit --jars $(ls .cache/jars/spark/*.jar | paste -sd, -) entrypoints/<job>.py ..."
        ) from None


def configure_session(spark: SparkSession, config: Config, auth: AzureAuth) -> None:
    """Make an existing session ready for ``config``: check credentials, then set session settings."""
    quiet_py4j()
    if not auth.checked:
        auth.check()
    for key, value in session_conf(config).items():
        spark.conf.set(key, value)
    auth.apply(spark)


def get_spark(config: Config, *, master: str = "local[*]", auth: AzureAuth | None = None) -> SparkSession:
    """Return the session this configuration runs in (building a local one when needed).

    Credentials are checked first; ``auth`` passes a prepared :class:`AzureAuth` (an injected
    credential, dbutils). ``master`` applies to a session built here, not under spark-submit
    (whose ``--master`` governs) and not on Databricks.
    """
    from pyspark.sql import SparkSession

    auth = auth if auth is not None else AzureAuth(config)
    if config.on_databricks():
        active = SparkSession.getActiveSession()
        spark = active if active is not None else SparkSession.builder.getOrCreate()
        configure_session(spark, config, auth)
        return spark

    # Before the JVM starts: a missing secret fails in a second, not after the session is up.
    quiet_py4j()
    auth.check()
    builder = SparkSession.builder.appName(config.app_name)
    if not _under_spark_submit():
        builder = builder.master(master)
    for key, value in _local_conf(config).items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    if _under_spark_submit():
        _require_delta(spark)
    configure_session(spark, config, auth)
    return spark
