"""A local Spark standalone cluster: one master and two workers, for running the pipeline with its
executors in processes of their own (``fitbit-stream platform start --cluster``).

Why it looks like this:

- **Spark's own scripts.** The daemons are started by the pyspark distribution's
  ``sbin/spark-daemon.sh`` (what ``start-master.sh`` and ``start-worker.sh`` call), with pid files
  and logs in the state directory: nothing to install beyond ``pip install pyspark``.
- **Loopback only.** Master, workers and their web UIs bind to 127.0.0.1; the driver a pipeline
  starts against this master binds there too (``session.cluster_conf``). Nothing outside the machine
  can reach this unauthenticated cluster.
- **Ready means registered.** ``start`` returns when the master's status page lists every worker
  ALIVE; otherwise the error names the log file and quotes its last lines.
- **Shared paths.** Every process runs on this machine, so local table and checkpoint paths are
  seen alike by the driver and the executors, as a mounted volume is on a real cluster.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fitbit_stream.errors import PlatformError
from fitbit_stream.platform import pid_alive, port_open

if TYPE_CHECKING:
    from fitbit_stream.config import Config

__all__ = ["ClusterStatus", "SparkCluster"]

_MASTER = "org.apache.spark.deploy.master.Master"
_WORKER = "org.apache.spark.deploy.worker.Worker"
_IDENT = "fitbit-stream"
_HOST = "127.0.0.1"
_LOG_TAIL_LINES = 25


@dataclass(frozen=True)
class ClusterStatus:
    running: bool
    master_url: str
    web_url: str
    #: worker id -> (state, cores, memory in MB), as the master lists them
    workers: dict[str, tuple[str, int, int]]
    started: bool = False

    @property
    def alive_workers(self) -> int:
        return sum(state == "ALIVE" for state, _, _ in self.workers.values())


class SparkCluster:
    """A standalone master and ``workers`` workers of ``cores`` cores each, on loopback."""

    def __init__(
        self,
        state_dir: str | Path,
        *,
        workers: int = 2,
        cores: int = 1,
        memory_mb: int = 2048,
        port: int = 7077,
        web_port: int = 8080,
    ) -> None:
        self.state_dir = Path(state_dir).resolve()
        self.workers = workers
        self.cores = cores
        self.memory_mb = memory_mb
        self.port = port
        self.web_port = web_port

    @classmethod
    def from_config(cls, config: Config, **kwargs: Any) -> SparkCluster:
        return cls(Path(config.platform_dir) / "spark-cluster", **kwargs)

    @property
    def master_url(self) -> str:
        return f"spark://{_HOST}:{self.port}"

    @property
    def web_url(self) -> str:
        return f"http://{_HOST}:{self.web_port}"

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "logs"

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self, timeout: float = 90.0) -> ClusterStatus:
        """Start the master and the workers (those not running yet); return once all are ALIVE."""
        current = self.status()
        if current.running and current.alive_workers >= self.workers:
            return current
        deadline = time.monotonic() + timeout
        started = False
        if not current.running:
            if port_open(_HOST, self.port):
                raise PlatformError(
                    f"Spark cluster: port {self.port} on {_HOST} is taken by another program; "
                    "pick another with --cluster-port"
                )
            self._daemon(
                "start", _MASTER, 1, "--host", _HOST, "--port", str(self.port), "--webui-port", str(self.web_port)
            )
            started = True
            self._wait(deadline, lambda s: s.running, "the master to answer", _MASTER, 1)
        for instance in range(1, self.workers + 1):
            if self._pid(_WORKER, instance) is None:
                work = self.state_dir / f"work-{instance}"
                work.mkdir(parents=True, exist_ok=True)
                self._daemon(
                    "start",
                    _WORKER,
                    instance,
                    "--host",
                    _HOST,
                    "--cores",
                    str(self.cores),
                    "--memory",
                    f"{self.memory_mb}m",
                    "--webui-port",
                    "0",
                    "--work-dir",
                    str(work),
                    self.master_url,
                )
                started = True
        status = self._wait(
            deadline, lambda s: s.alive_workers >= self.workers, f"{self.workers} workers to register", _WORKER, 1
        )
        return ClusterStatus(status.running, status.master_url, status.web_url, status.workers, started=started)

    def stop(self, timeout: float = 30.0) -> bool:
        """Stop the workers, then the master; True if any was running."""
        was_running = False
        for command, instance in [*((_WORKER, i) for i in range(1, self.workers + 1)), (_MASTER, 1)]:
            pid = self._pid(command, instance)
            if pid is None:
                continue
            was_running = True
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            end = time.monotonic() + timeout
            while pid_alive(pid) and time.monotonic() < end:
                time.sleep(0.1)
            if pid_alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self._pid_file(command, instance).unlink(missing_ok=True)
        return was_running

    def status(self) -> ClusterStatus:
        state = self._master_state()
        workers: dict[str, tuple[str, int, int]] = {}
        if state is not None:
            for w in state.get("workers", []):
                workers[str(w.get("id"))] = (str(w.get("state")), int(w.get("cores", 0)), int(w.get("memory", 0)))
        return ClusterStatus(state is not None, self.master_url, self.web_url, workers)

    def executor_pids(self) -> list[int]:
        """The process ids of the executor JVMs this cluster's workers run now."""
        return sorted(self.executors())

    def executors(self) -> dict[int, str]:
        """Each executor JVM this cluster's workers run now, with the id of its application (the
        directory it runs in under the workers' work directory). An executor of a finished
        application can outlive it for a moment."""
        work = self.state_dir / "work"
        found: dict[int, str] = {}
        for proc in Path("/proc").glob("[0-9]*"):
            with contextlib.suppress(OSError):
                if b"CoarseGrainedExecutorBackend" not in (proc / "cmdline").read_bytes():
                    continue
                cwd = Path(os.readlink(proc / "cwd"))
                if cwd.is_relative_to(self.state_dir):
                    app = cwd.relative_to(work).parts[:1] if cwd.is_relative_to(work) else ()
                    found[int(proc.name)] = app[0] if app else ""
        return found

    # --- helpers ---------------------------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        from pyspark.find_spark_home import _find_spark_home

        home = _find_spark_home()
        env = {
            **os.environ,
            "SPARK_HOME": home,
            "SPARK_LOCAL_IP": _HOST,
            "SPARK_MASTER_HOST": _HOST,
            "SPARK_PID_DIR": str(self.state_dir / "pids"),
            "SPARK_LOG_DIR": str(self.log_dir),
            "SPARK_IDENT_STRING": _IDENT,
            "SPARK_WORKER_DIR": str(self.state_dir / "work"),
            # The daemons are small; the executors get their memory from the application.
            "SPARK_DAEMON_MEMORY": "512m",
        }
        env.pop("SPARK_CONF_DIR", None)
        return env

    def _daemon(self, action: str, command: str, instance: int, *args: str) -> None:
        env = self._env()
        script = Path(env["SPARK_HOME"]) / "sbin" / "spark-daemon.sh"
        if not script.is_file():
            raise PlatformError(
                f"Spark cluster: {script} is missing; reinstall pyspark (pip install 'fitbit-stream[local]')"
            )
        self.state_dir.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            ["bash", str(script), action, command, str(instance), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if done.returncode != 0:
            raise PlatformError(
                f"Spark cluster: spark-daemon.sh {action} {command.rsplit('.', 1)[-1]} {instance} failed "
                f"(exit {done.returncode}): {(done.stdout + done.stderr).strip()[-500:]}"
            )

    def _pid_file(self, command: str, instance: int) -> Path:
        return self.state_dir / "pids" / f"spark-{_IDENT}-{command}-{instance}.pid"

    def _pid(self, command: str, instance: int) -> int | None:
        try:
            pid = int(self._pid_file(command, instance).read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if pid_alive(pid) else None

    def _log_file(self, command: str, instance: int) -> Path:
        return self.log_dir / f"spark-{_IDENT}-{command}-{instance}-{socket.gethostname()}.out"

    def _master_state(self) -> dict[str, Any] | None:
        try:
            with urllib.request.urlopen(f"{self.web_url}/json/", timeout=2) as response:
                state: dict[str, Any] = json.loads(response.read().decode("utf-8"))
                return state
        except (OSError, ValueError):
            return None

    def _wait(self, deadline: float, ready: Any, what: str, command: str, instance: int) -> ClusterStatus:
        while True:
            status = self.status()
            if ready(status):
                return status
            if time.monotonic() > deadline:
                log = self._log_file(command, instance)
                raise PlatformError(
                    f"Spark cluster: timed out waiting for {what} ({self.web_url}); log {log}:\n{_tail(log)}"
                )
            time.sleep(0.5)


def _tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
