"""One SparkSession for the whole suite, built by the library's own factory (UTC, Delta, 1 partition)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pyspark.sql import SparkSession

from fitbit_stream.config import Config, load_config
from fitbit_stream.session import get_spark

ROOT = Path(__file__).resolve().parents[1]

# Spark hands TIMESTAMP values to Python as naive datetimes in the process's time zone: pin it to
# UTC so literal expected rows mean the same instants on every machine.
os.environ["TZ"] = "UTC"
time.tzset()


@pytest.fixture(scope="session")
def spark_config(tmp_path_factory: pytest.TempPathFactory) -> Config:
    base = tmp_path_factory.mktemp("lake")
    return load_config(
        None,
        [
            f"storage.root={base / 'tables'}",
            f"storage.checkpoint_root={base / 'checkpoints'}",
            f"jars_dir={ROOT / '.cache' / 'jars'}",
            "streaming.shuffle_partitions=1",
            "spark_conf={'spark.default.parallelism': '2', 'spark.sql.warehouse.dir': '"
            + str(base / "warehouse")
            + "', 'spark.driver.memory': '2g'}",
        ],
    )


@pytest.fixture(scope="session")
def spark(spark_config: Config) -> Iterator[SparkSession]:
    session = get_spark(spark_config, master="local[2]")
    try:
        yield session
    finally:
        session.stop()


@pytest.fixture(scope="session")
def spark_session(spark: SparkSession) -> SparkSession:
    """pytest-spark's fixture name, served by the same session."""
    return spark
