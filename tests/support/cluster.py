"""Runs on the local Spark standalone cluster (``SparkCluster``): ``fitbit-stream run --once`` in a
subprocess whose ``spark.master`` is the cluster (a process holds one SparkContext, and the suite's
own session stays local), and an executor JVM killed in the middle of a micro-batch."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

from fitbit_stream import topology
from fitbit_stream.config import Config
from fitbit_stream.platform.cluster import SparkCluster
from support.lake import batches, lake_commits, write_config

_KAFKA = [q for q in topology.queries("realtime") if q.source == "kafka"]
#: table -> the Kafka ingest query (``realtime`` mode) that alone writes it: a kill after its commit
#: lands in that query's micro-batch, which commits its silver topic tables, then bronze
_ONE_INGEST_QUERY = {t: q.name for q in _KAFKA for t in q.writes if sum(t in other.writes for other in _KAFKA) == 1}


@dataclass
class ExecutorKill:
    killed: int | None = None
    before: list[int] = field(default_factory=list)
    #: the commit to a silver table the kill followed
    trigger: str = ""
    #: the ingest query that wrote the table of ``trigger``
    query: str = ""
    #: that query's planned and committed batches when the kill landed
    planned: list[int] = field(default_factory=list)
    committed: list[int] = field(default_factory=list)
    #: executors seen after the kill that were not running before it
    replacements: set[int] = field(default_factory=set)


def _silver_commits(lake: Path) -> set[str]:
    """Commits to a silver table that exactly one Kafka ingest query writes (not the quarantine)."""
    return {
        c for c in lake_commits(lake) if c.startswith("silver/") and c.split()[0].split("/")[1] in _ONE_INGEST_QUERY
    }


def _this_runs_executors(cluster: SparkCluster, timeout: float = 10.0) -> list[int]:
    """The executors of the newest application on ``cluster`` (this run's), once there is one per
    worker. An executor of the previous run's application may still be exiting beside them."""
    end = time.monotonic() + timeout
    while True:
        owners = cluster.executors()
        newest = max(owners.values(), default="")
        mine = sorted(pid for pid, app in owners.items() if app == newest)
        if len(mine) >= 2 or time.monotonic() > end:
            return mine
        time.sleep(0.1)


def _kill_an_executor_mid_batch(
    proc: subprocess.Popen[bytes], cluster: SparkCluster, config: Config, kill: ExecutorKill
) -> None:
    lake = Path(config.storage.root)
    seen = _silver_commits(lake)
    while proc.poll() is None:
        fresh = sorted(_silver_commits(lake) - seen)
        if fresh:
            kill.before = _this_runs_executors(cluster)
            if len(kill.before) != 2:  # the test reports it: kill.killed stays None
                kill.trigger = f"{fresh[0]} (expected an executor per worker, found {cluster.executors()})"
                break
            kill.killed, kill.trigger = kill.before[0], fresh[0]
            os.kill(kill.killed, signal.SIGKILL)
            kill.query = _ONE_INGEST_QUERY[kill.trigger.split()[0].split("/")[1]]
            checkpoint = Path(config.storage.checkpoint_root) / kill.query
            kill.planned, kill.committed = batches(checkpoint / "offsets"), batches(checkpoint / "commits")
            break
        time.sleep(0.05)
    while proc.poll() is None:  # the worker replaces the lost executor while the run goes on
        kill.replacements |= set(cluster.executor_pids()) - set(kill.before)
        time.sleep(0.2)


def cluster_overrides(cluster: SparkCluster) -> tuple[str, ...]:
    """The settings of a run on ``cluster``."""
    # As the fault suite's subprocesses: on data this small, JVMs that compile with C1 only and
    # expressions evaluated without generated code cost far less CPU (the results must not depend on it).
    jvm = "-Duser.timezone=UTC -XX:TieredStopAtLevel=1 -XX:ReservedCodeCacheSize=240m -XX:+UseSerialGC"
    spark_conf = {
        "spark.master": cluster.master_url,
        "spark.executor.memory": "1g",
        "spark.driver.memory": "1g",
        "spark.default.parallelism": "2",
        "spark.sql.codegen.wholeStage": "false",
        "spark.sql.codegen.factoryMode": "NO_CODEGEN",
        "spark.driver.extraJavaOptions": jvm,
        "spark.executor.extraJavaOptions": jvm,
    }
    return (f"spark_conf={spark_conf!r}",)


def cluster_drain(
    cluster: SparkCluster, base: Path, kill: ExecutorKill, *, as_of: date
) -> Callable[[Config, int], str]:
    """A ``drain`` for :func:`support.ground_truth.run_scenario`: each run a ``run --once`` on the
    cluster; in the first, one executor is killed right after the first commit to a silver table."""

    def drain(config: Config, run: int) -> str:
        config_file = write_config(config, base / f"run-{run}.yaml")
        log = base / f"run-{run}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "fitbit_stream.cli",
                    "run",
                    "--once",
                    "--config",
                    str(config_file),
                    "--as-of",
                    as_of.isoformat(),
                ],
                cwd=base,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "TZ": "UTC", "PYTHONUNBUFFERED": "1"},
                start_new_session=True,
            )
        try:
            if run == 0:
                watcher = threading.Thread(target=_kill_an_executor_mid_batch, args=(proc, cluster, config, kill))
                watcher.start()
            exit_code = proc.wait(timeout=900)
            if run == 0:
                watcher.join(timeout=60)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        text = log.read_text(encoding="utf-8", errors="replace")
        assert exit_code == 0, f"the run on the cluster failed (exit {exit_code}):\n{text[-3000:]}"
        return text[-1500:]

    return drain
