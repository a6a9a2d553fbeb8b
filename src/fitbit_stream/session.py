"""SparkSession factory: the same call works on a laptop, under spark-submit and on a Databricks cluster.

Locally it builds a session wired to the JVM artifacts resolved by ``scripts/setup.sh`` (Delta,
Spark's Kafka connector, JDBC drivers) with Delta's extensions and a UTC session time zone. On
Databricks the cluster owns the session: the factory takes it as it is and sets only session-level
settings (time zone, shuffle partitions, the runtime's own RocksDB state store provider).

Either way, every credential the configuration references is checked (:meth:`AzureAuth.check`)
before the session is handed out, so no query starts with a missing secret, and the ADLS Gen2
OAuth settings of ``config.azure`` are set on the session.

Quiet by default: a local session logs through a log4j2 configuration of its own (errors only, one
line each; :func:`set_verbosity` brings Spark's WARN lines and the Java stack traces back), declares
a FAIR scheduler pool per query (Spark warns about every pool a job names that is not declared),
and leaves adaptive query execution off (streaming queries disable it, with a warning each).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import signal
import sys
import tempfile
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Literal
from xml.sax.saxutils import quoteattr

from fitbit_stream import class_archive
from fitbit_stream.azure import AzureAuth
from fitbit_stream.config import Config
from fitbit_stream.errors import PlatformError

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

__all__ = [
    "DATABRICKS_ROCKSDB_PROVIDER",
    "HDFS_STATE_STORE_PROVIDER",
    "MINIMUM_SPARK",
    "OSS_ROCKSDB_PROVIDER",
    "TESTED_SPARK",
    "Verbosity",
    "check_spark_version",
    "configure_session",
    "default_driver_memory",
    "fair_scheduler_xml",
    "get_spark",
    "jars_base",
    "local_jars",
    "log4j2_properties",
    "quiet_py4j",
    "session_conf",
    "set_verbosity",
    "spark_version_problem",
    "state_store_provider",
]

_JARS_ENV = "FITBIT_STREAM_JARS_DIR"

#: How much of Spark's own logging a process shows: ``quiet`` (errors, one line each), ``verbose``
#: (Spark's WARN lines too), ``debug`` (and the Java stack traces).
Verbosity = Literal["quiet", "verbose", "debug"]
_verbosity: Verbosity = "quiet"


def set_verbosity(level: Verbosity) -> None:
    """Spark's log level for the sessions this process builds (the CLI's ``--verbose``/``--debug``)."""
    global _verbosity
    _verbosity = level
    quiet_py4j()


#: The root log level of Spark's JVM per verbosity.
_ROOT_LEVEL: dict[Verbosity, str] = {"quiet": "ERROR", "verbose": "WARN", "debug": "WARN"}

#: A thread's stack in the driver JVM. When a query is stopped while its foreachBatch function runs,
#: Spark tells the interruption apart from a failure by matching the Python traceback (which holds
#: the whole Java stack trace) with a regex, ``(.|\n)*``, that recurses once per character: on the
#: default 1 MB stack it overflows, the stream thread dies with a StackOverflowError and the JVM
#: prints a thousand-line stack trace. 64 MB is reserved per thread, committed only as used.
THREAD_STACK = "-Xss64m"
#: The JIT compiles a method after five times the JVM's usual number of calls. A pipeline's driver
#: runs a very large code base (Spark's planner, Delta's log and MERGE, the connectors) a few times
#: per micro-batch: with the usual thresholds the compiler threads took 22-23 of the 80 CPU-seconds
#: a minute of the steady bench used, still minutes after start, and half of that with this setting,
#: while the hot row-level code is compiled all the same. Steady at 2,000 events/s, p99
#: event->silver 14.4 and 17.4 s against 19.2 and 20.0 s (bench/NOTES.md, session 17).
JIT_THRESHOLDS = "-XX:CompileThresholdScaling=5"


def default_driver_memory() -> str:
    """The local driver's heap when the configuration sets none: a quarter of the machine's memory,
    between 1 and 8 GB (the JVM's own default, which Spark's fixed 1g would replace).

    A streaming driver keeps Delta snapshots and query state; at 1-2 GB its collector ran near-full
    (12 of 80 CPU-seconds a minute in the steady bench, 6.5 at 6 GB).
    """
    try:
        memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return "1g"
    return f"{max(1, min(8, memory // 4 // 2**30))}g"


def log4j2_properties(verbosity: Verbosity) -> str:
    """The log4j2 configuration of a local session: Spark's own defaults, at ``verbosity``'s level.

    Below ``debug`` a log line never carries a stack trace (``alwaysWriteExceptions=false``): a
    failure reaches the user as one line from the pipeline, and ``--debug`` shows the trace.
    """
    traces = verbosity == "debug"
    lines = [
        "status = error",
        "appender.console.type = Console",
        "appender.console.name = console",
        "appender.console.target = SYSTEM_ERR",
        "appender.console.layout.type = PatternLayout",
        "appender.console.layout.pattern = %d{yy/MM/dd HH:mm:ss} %p %c{1}: %m%n" + ("%ex" if traces else ""),
        f"appender.console.layout.alwaysWriteExceptions = {str(traces).lower()}",
        f"rootLogger.level = {_ROOT_LEVEL[verbosity].lower()}",
        "rootLogger.appenderRef.stdout.ref = console",
        # pyspark's gateway counts as a shell: Spark gives the shell its logger's level (WARN when it
        # has none) and says so on stderr ("Setting default log level ...") when it is not the root's.
        "logger.gateway.name = org.apache.spark.api.python.PythonGatewayServer",
        f"logger.gateway.level = {_ROOT_LEVEL[verbosity].lower()}",
        # Spark's log4j2-defaults.properties: third-party loggers that are noisy at WARN.
        "logger.jetty.name = org.sparkproject.jetty",
        "logger.jetty.level = warn",
        "logger.jetty2.name = org.sparkproject.jetty.util.component.AbstractLifeCycle",
        "logger.jetty2.level = error",
        "logger.metastore.name = org.apache.hadoop.hive.metastore.RetryingHMSHandler",
        "logger.metastore.level = fatal",
        "logger.metastore2.name = org.apache.hadoop.hive.metastore.ObjectStore",
        "logger.metastore2.level = error",
        "logger.parquet.name = org.apache.parquet.CorruptStatistics",
        "logger.parquet.level = error",
        "logger.parquet2.name = parquet.CorruptStatistics",
        "logger.parquet2.level = error",
    ]
    return "\n".join(lines) + "\n"


def fair_scheduler_xml(pools: Iterable[str]) -> str:
    """A FAIR scheduler allocation file declaring one pool per name (equal weights, FIFO inside)."""
    body = "".join(
        f"  <pool name={quoteattr(name)}>\n"
        "    <schedulingMode>FIFO</schedulingMode>\n"
        "    <weight>1</weight>\n"
        "    <minShare>0</minShare>\n"
        "  </pool>\n"
        for name in sorted(set(pools))
    )
    return f'<?xml version="1.0"?>\n<allocations>\n{body}</allocations>\n'


def _pools() -> list[str]:
    """Every query's pool: ``queries.scheduler_pool`` runs a query's jobs in the pool named after it."""
    from fitbit_stream.topology import ALL_QUERIES

    return [spec.name for spec in ALL_QUERIES]


def _support_file(name: str, suffix: str, text: str) -> Path:
    """``text`` in a per-user temporary file named after its content (written once, atomically)."""
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
    folder = Path(tempfile.gettempdir()) / f"fitbit-stream-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    path = folder / f"{name}-{digest}{suffix}"
    if not path.is_file():
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        partial.write_text(text, encoding="utf-8")
        partial.replace(path)
    return path


def _java_option(path: Path) -> str:
    text = str(path)
    return f'"{text}"' if " " in text else text


#: The RocksDB state store has a different class on each platform; HDFS-backed is the same on both.
OSS_ROCKSDB_PROVIDER = "org.apache.spark.sql.execution.streaming.state.RocksDBStateStoreProvider"
DATABRICKS_ROCKSDB_PROVIDER = "com.databricks.sql.streaming.state.RocksDBStateStoreProvider"
HDFS_STATE_STORE_PROVIDER = "org.apache.spark.sql.execution.streaming.state.HDFSBackedStateStoreProvider"


def _under_spark_submit() -> bool:
    # spark-submit (and the pyspark shell) start the JVM first and hand its port to Python.
    return "PYSPARK_GATEWAY_PORT" in os.environ


def jars_base(jars_dir: str | Path) -> Path:
    """Where setup resolved the JVM artifacts: ``jars_dir``, or ``$FITBIT_STREAM_JARS_DIR`` when set."""
    return Path(os.environ.get(_JARS_ENV, str(jars_dir)))


def local_jars(jars_dir: str | Path) -> list[str]:
    """The Spark-side jars resolved into ``<jars_dir>/spark``; a clear error when setup did not run."""
    base = jars_base(jars_dir) / "spark"
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
    jars = local_jars(config.jars_dir)
    conf = {
        "spark.jars": ",".join(jars),
        "spark.driver.memory": default_driver_memory(),
        "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
        "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
        **session_conf(config),
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        # The status store keeps every job, stage and SQL execution (with its plan text) up to these
        # limits even with the UI off. A pipeline runs several executions per micro-batch, and the
        # defaults (1,000 each) hold hundreds of MB of plans on a driver that runs for days.
        "spark.ui.retainedJobs": "200",
        "spark.ui.retainedStages": "200",
        "spark.ui.retainedTasks": "20000",
        "spark.sql.ui.retainedExecutions": "100",
        "spark.sql.streaming.ui.retainedQueries": "50",
        "spark.sql.streaming.ui.retainedProgressUpdates": "100",
        # Queries share the cores evenly: each runs in its own pool (queries.scheduler_pool), declared
        # here so that Spark does not warn about each one as it appears.
        "spark.scheduler.mode": "FAIR",
        "spark.scheduler.allocation.file": str(_support_file("fairscheduler", ".xml", fair_scheduler_xml(_pools()))),
        # Streaming queries turn adaptive execution off anyway (with a warning each); the batch steps
        # are small enough that it gains nothing there either.
        "spark.sql.adaptive.enabled": "false",
        # A micro-batch of tens of thousands of rows spends more compiling whole-stage code (new
        # classes for each plan whose literals differ, batch after batch, then JIT-compiled) than
        # running it: in A/B runs at 2,000 events/s, gold's p99 was 85 s without it against
        # 105-128 s with it (bench/NOTES.md, session 7). spark_conf can turn it back on, together
        # with the factory mode below (whose NO_CODEGEN also keeps whole-stage code off).
        "spark.sql.codegen.wholeStage": "false",
        # The same holds for the code Spark generates per expression (projections, predicates,
        # orderings): each MERGE and each batch step plans with new literals, so nearly every one
        # is a cache miss, compiled by Janino and then by the JIT. Evaluated without generated code,
        # a small replace-scopes MERGE took 1.2-1.5 s against 1.8-2.5 s warm, and at 2,000 events/s
        # the ingest batch p50 6.5 s against 9.9 s (bench/NOTES.md, session 12). The setting is
        # Spark's internal switch (its test suites use it); spark_conf can set it back to FALLBACK.
        "spark.sql.codegen.factoryMode": "NO_CODEGEN",
        # Delta replays its log with 50 tasks by default: far too many for one machine's tables.
        "spark.databricks.delta.snapshotPartitions": "2",
        # Delta 4 keeps a small table's file list in each commit's checksum file. Creating a table
        # then runs a Spark job over the empty state before version 0, and every commit rewrites
        # the list: on one machine's many small tables that cost a tenth of the JVM's CPU (a JFR
        # profile of the pipeline tests: 361 CPU-s with it, 316 without; bench/NOTES.md, session 9).
        # Without it the checksum still carries the table's size and file count, as before Delta 4.
        "spark.databricks.delta.allFilesInCrc.enabled": "false",
        "spark.driver.extraJavaOptions": "-Duser.timezone=UTC",
        "spark.executor.extraJavaOptions": "-Duser.timezone=UTC",
    }
    conf.update(config.spark_conf)
    master = conf.get("spark.master", "")
    if master.startswith("spark://"):
        # A standalone cluster (``platform start --cluster``): its executors run this Python, and a
        # master on loopback gets a driver on loopback (else Spark picks the first network address).
        conf.setdefault("spark.pyspark.python", sys.executable)
        if master.removeprefix("spark://").split(":")[0] in ("127.0.0.1", "localhost"):
            conf.setdefault("spark.driver.host", "127.0.0.1")
            conf.setdefault("spark.driver.bindAddress", "127.0.0.1")
    # Added to whatever the configuration sets, unless it sets them itself.
    java = conf.get("spark.driver.extraJavaOptions", "")
    if "log4j2.configurationFile" not in java:
        log4j = _support_file("log4j2", ".properties", log4j2_properties(_verbosity))
        java += f" -Dlog4j2.configurationFile={_java_option(log4j)}"
    if "-Xss" not in java:
        java += f" {THREAD_STACK}"
    if "CompileThresholdScaling" not in java and "TieredStopAtLevel" not in java:
        java += f" {JIT_THRESHOLDS}"
    archive = (
        None
        if _under_spark_submit() or class_archive.names_its_own(java)
        else class_archive.usable(jars_base(config.jars_dir), jars)
    )
    if archive is not None:
        # The classes setup's training run loaded, mapped instead of loaded: a cold start in about
        # half the time (scripts/setup.sh; bench/NOTES.md, session 17).
        java += f" -XX:SharedArchiveFile={_java_option(archive)}"
        if _verbosity != "debug":
            java += f" {class_archive.QUIET}"
    conf["spark.driver.extraJavaOptions"] = java.strip()
    return conf


def quiet_py4j() -> None:
    """Keep py4j's wire log off: at DEBUG it echoes every string sent to the JVM, secrets included,
    and at INFO it logs every call back from the JVM (each streaming progress event).

    Below ``debug`` verbosity, py4j's own report of an exception raised in a callback (a
    foreachBatch function, a listener) is off too: it is a Python traceback holding a Java one, and
    the failure reaches the user anyway, as the query's error.
    """
    py4j = logging.getLogger("py4j")
    if py4j.getEffectiveLevel() < logging.WARNING:
        py4j.setLevel(logging.WARNING)
    logging.getLogger("py4j.clientserver").setLevel(logging.ERROR if _verbosity == "debug" else logging.CRITICAL)


@contextmanager
def _jvm_ignores_sigterm() -> Iterator[None]:
    """Start the driver JVM with SIGTERM ignored (the JVM keeps an ignored SIGTERM ignored).

    Python owns the run: a SIGTERM sent to the whole process group (a service manager, a container
    stop) then stops the queries cleanly through Python's handler, instead of also running the JVM's
    shutdown hooks under the running queries (their stack traces, a half-written batch). The JVM
    still exits with Python: pyspark's gateway ends when its stdin closes. (pyspark already starts
    it with SIGINT ignored, for Ctrl-C.)
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


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


#: The Spark versions the library runs on: VARIANT parsing and ``is_valid_utf8`` arrived in 4.0.
MINIMUM_SPARK = (4, 0)
#: The Spark minor version the test suite runs (pyspark 4.2.0 with delta-spark 4.4.1; Databricks
#: runtime 19, which the bundle pins). Another 4.x runs with a one-line warning.
TESTED_SPARK = (4, 2)


def spark_version_problem(version: str) -> tuple[str, str] | None:
    """("error" or "warning", one line) when Spark ``version`` is outside the supported range."""
    parts = re.match(r"(\d+)\.(\d+)", version)
    if parts is None:
        return ("warning", f"Spark version {version!r} is not a version number; the library is tested on Spark 4.2")
    found = (int(parts[1]), int(parts[2]))
    if found < MINIMUM_SPARK:
        return (
            "error",
            f"Spark {version} is too old: fitbit-stream needs Spark 4.0 or newer (VARIANT parsing); "
            "on Databricks pick runtime 17.3 LTS or newer (the bundle's spark_version variable), "
            "locally `pip install 'fitbit-stream[local]'`",
        )
    if found != TESTED_SPARK:
        return ("warning", f"Spark {version}: fitbit-stream is tested on Spark 4.2 (Databricks runtime 19)")
    return None


def check_spark_version(spark: SparkSession) -> None:
    """Refuse a Spark without what the transforms use; warn, in one line, on an untested one."""
    problem = spark_version_problem(spark.version)
    if problem is None:
        return
    kind, message = problem
    if kind == "error":
        raise PlatformError(message)
    logging.getLogger(__name__).warning(message)


def configure_session(spark: SparkSession, config: Config, auth: AzureAuth) -> None:
    """Make an existing session ready for ``config``: check credentials and the Spark version, then
    set session settings."""
    quiet_py4j()
    check_spark_version(spark)
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
    if not auth.checked:
        auth.check()
    builder = SparkSession.builder.appName(config.app_name)
    if not _under_spark_submit():
        builder = builder.master(master)
    for key, value in _local_conf(config).items():
        builder = builder.config(key, value)
    with _jvm_ignores_sigterm():
        spark = builder.getOrCreate()
    # A JVM started without the configuration above (spark-submit, an earlier session) gets the level.
    spark.sparkContext.setLogLevel(_ROOT_LEVEL[_verbosity])
    if _under_spark_submit():
        _require_delta(spark)
    configure_session(spark, config, auth)
    return spark
