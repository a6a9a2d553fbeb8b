"""One SparkSession for the whole suite, built by the library's own factory (UTC, Delta, 1 partition),
and the tiers every test belongs to (``make check``, ``make unit``, ``make integration``, ``make e2e``).

A test's tier follows from where it lives and what it needs, so no test can be filed in the wrong
one: under ``tests/unit`` a test that asks for the ``spark`` fixture (directly or through another
fixture) is ``spark``, any other is ``check`` (and fails if it starts Spark anyway);
``tests/integration`` is whole-pipeline runs on local Delta tables; ``tests/e2e`` the real broker,
database and browser.
"""

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

_SPARK_FIXTURES = frozenset({"spark", "spark_session"})
_TIERS = {"unit", "integration", "e2e"}


def pytest_configure(config: pytest.Config) -> None:
    # Spark hands TIMESTAMP values to Python as naive datetimes in the process's time zone: pin it
    # to UTC (for the test process only, once pytest has started rather than at import) so literal
    # expected rows mean the same instants on every machine.
    os.environ["TZ"] = "UTC"
    time.tzset()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(str(item.fspath)).resolve().relative_to(ROOT / "tests").parts
        tier = parts[0] if parts[0] in _TIERS else "unit"
        if tier == "unit":
            uses_spark = bool(_SPARK_FIXTURES & set(getattr(item, "fixturenames", ())))
            item.add_marker(pytest.mark.spark if uses_spark else pytest.mark.check)
        else:
            item.add_marker(getattr(pytest.mark, tier))


@pytest.fixture(autouse=True)
def _check_tier_starts_no_spark(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """A ``check`` test that builds a SparkSession fails: it belongs in the ``spark`` tier (ask for
    the ``spark`` fixture)."""
    if request.node.get_closest_marker("check") is None:
        return
    from pyspark.sql import SparkSession

    def refuse(*_: object, **__: object) -> None:
        raise AssertionError("a check-tier test started Spark: ask for the `spark` fixture instead")

    monkeypatch.setattr(SparkSession.Builder, "getOrCreate", refuse)


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
            + "', 'spark.driver.memory': '2g'"
            # Each test makes its own tables: Delta's log cache (10,000 entries by default) would
            # keep every one of them, with its snapshot, for the whole run.
            + ", 'spark.databricks.delta.delta.log.cacheSize': '100'"
            # Tests run thousands of small plans once each: compiling an expression's code costs more
            # than evaluating it on a few rows (the pipeline's results do not depend on it; whole-
            # stage code generation is already off in every local session).
            + ", 'spark.sql.codegen.factoryMode': 'NO_CODEGEN'}",
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
