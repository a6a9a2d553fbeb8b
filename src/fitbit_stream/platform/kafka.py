"""A local, single-node Apache Kafka broker for development, the demo and the e2e tests.

Why it looks like this:

- **KRaft, one node.** One JVM is both broker and controller (``process.roles=broker,controller``),
  so there is no ZooKeeper to run, and it starts in a few seconds from the jars ``scripts/setup.sh``
  resolved into ``.cache/jars/kafka``. The storage is formatted once, with a cluster id generated
  here and kept in the state directory, so a restart finds its data again.
- **Loopback only.** Both listeners bind to a loopback address and the broker advertises that same
  address: nothing outside the machine can reach this unauthenticated broker, and clients never
  chase an advertised host name that resolves elsewhere (``localhost`` may resolve to ``::1``).
- **No retention.** The generator replays events whose record timestamps are years old. Kafka's
  time-based retention compares those timestamps with the wall clock and would delete the records
  before the pipeline reads them, so the broker default and every topic this module creates keep
  records forever (``retention.ms=-1``). The local topics are small and thrown away with the
  state directory.
- **A detached process with a pid file.** The broker outlives the command that started it
  (``fitbit-stream platform start``) and runs in its own session, so a Ctrl-C in the terminal or the
  end of a test process does not take it down uncontrolled; ``stop`` sends SIGTERM for a clean
  shutdown and escalates to SIGKILL only after a timeout. A pid file whose process is gone (or is
  no longer this broker) is stale and cleaned up on the next call.
- **Ready means answering.** ``start`` returns only when the broker answers a metadata request; if
  the JVM dies or does not answer in time the error names the log file and quotes its last lines.
"""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import logging
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fitbit_stream.errors import PlatformError
from fitbit_stream.platform import port_open

if TYPE_CHECKING:
    from fitbit_stream.config import Config

__all__ = ["DEFAULT_TOPIC_CONFIG", "KafkaBroker", "KafkaStatus"]

_LOG = logging.getLogger(__name__)
# librdkafka's own log lines (connection refused while the broker boots, ...) go to this logger
# instead of stderr, so a normal start leaves a clean terminal.
_RDKAFKA_LOG = logging.getLogger(f"{__name__}.librdkafka")

_JARS_ENV = "FITBIT_STREAM_JARS_DIR"
_MAIN_CLASS = "kafka.Kafka"
_STORAGE_TOOL = "kafka.tools.StorageTool"
_LOG_TAIL_LINES = 25

# Records keep their (possibly years-old) event timestamps: time or size never deletes them.
DEFAULT_TOPIC_CONFIG: Mapping[str, str] = {"retention.ms": "-1", "retention.bytes": "-1"}

# Broker processes this Python process launched, so their exit status is reaped (a zombie would
# still look alive to os.kill(pid, 0)) and a stop can wait on them without polling.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


@dataclass(frozen=True)
class KafkaStatus:
    """What ``status()`` (and ``start()``) found.

    ``ready`` is true when the broker answered a metadata request; ``topics`` are the non-internal
    topics it reported. ``started`` is true only in the result of the ``start()`` call that launched
    the process (false when a running broker was left alone).
    """

    running: bool
    pid: int | None
    bootstrap_servers: str
    log_file: Path
    ready: bool = False
    topics: tuple[str, ...] = ()
    started: bool = False


class KafkaBroker:
    """One KRaft broker+controller whose configuration, data, log and pid file live in ``state_dir``."""

    def __init__(
        self,
        state_dir: str | Path,
        *,
        host: str = "127.0.0.1",
        port: int = 9092,
        controller_port: int = 9093,
        jars_dir: str | Path = ".cache/jars/kafka",
        partitions: int = 3,
        heap: str = "512m",
    ) -> None:
        self.state_dir = Path(state_dir).expanduser().resolve()
        if "," in str(self.state_dir):
            # log.dirs is a comma-separated list.
            raise PlatformError(f"kafka state directory {str(self.state_dir)!r} must not contain a comma")
        self.host = _loopback_host(host)
        for name, value in (("port", port), ("controller_port", controller_port)):
            if not 0 < value < 65536:
                raise PlatformError(f"kafka {name} must be between 1 and 65535, got {value!r}")
        if port == controller_port:
            raise PlatformError(f"kafka port and controller_port must differ, both are {port}")
        if partitions < 1:
            raise PlatformError(f"kafka partitions must be at least 1, got {partitions!r}")
        self.port = port
        self.controller_port = controller_port
        self.jars_dir = Path(jars_dir).expanduser().resolve()
        self.partitions = partitions
        self.heap = heap

    @classmethod
    def from_config(cls, config: Config, *, state_dir: str | Path | None = None) -> KafkaBroker:
        """The broker ``config`` points at: host and port from the first ``kafka.bootstrap_servers``
        entry, controller on the next port, state in ``<platform_dir>/kafka``."""
        first = config.kafka.bootstrap_servers.split(",")[0].strip()
        host, _, port_text = first.rpartition(":")
        port = int(port_text)
        from fitbit_stream.session import jars_base

        jars_root = jars_base(config.jars_dir)
        return cls(
            state_dir if state_dir is not None else Path(config.platform_dir) / "kafka",
            host=host.strip("[]"),
            port=port,
            controller_port=port + 1 if port < 65535 else port - 1,
            jars_dir=jars_root / "kafka",
            partitions=config.kafka.partitions,
        )

    # -- paths -----------------------------------------------------------------------------------

    @property
    def bootstrap_servers(self) -> str:
        return f"{_url_host(self.host)}:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.state_dir / "broker.log"

    @property
    def pid_file(self) -> Path:
        return self.state_dir / "broker.pid"

    @property
    def properties_file(self) -> Path:
        return self.state_dir / "server.properties"

    @property
    def data_dir(self) -> Path:
        return self.state_dir / "data"

    @property
    def _cluster_id_file(self) -> Path:
        return self.state_dir / "cluster.id"

    @property
    def _log4j_file(self) -> Path:
        return self.state_dir / "log4j.properties"

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> KafkaStatus:
        """Start the broker unless it already runs, and wait until it answers metadata requests."""
        deadline = time.monotonic() + timeout
        pid = self._running_pid()
        if pid is not None:
            _LOG.info("kafka broker already running (pid %d, %s)", pid, self.bootstrap_servers)
            topics = self._wait_ready(deadline, pid)
            return self._status(pid, ready=True, topics=topics)

        java = _java()
        self._check_jars()
        for port in (self.port, self.controller_port):
            if port_open(self.host, port):
                raise PlatformError(
                    f"cannot start the kafka broker: {self.host}:{port} is already in use by another "
                    f"process (a broker from another state directory? `fitbit-stream platform status`)"
                )
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._write_config()
        if not (self.data_dir / "meta.properties").is_file():
            self._format_storage(java, deadline)

        _rotate(self.log_file)
        cmd = [*self._java_cmd(java), _MAIN_CLASS, str(self.properties_file)]
        with self.log_file.open("ab") as log:
            proc = subprocess.Popen(
                cmd,
                cwd=self.state_dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        _CHILDREN[proc.pid] = proc
        self.pid_file.write_text(f"{proc.pid}\n", encoding="ascii")
        _LOG.info("kafka broker starting (pid %d, %s, log %s)", proc.pid, self.bootstrap_servers, self.log_file)
        try:
            topics = self._wait_ready(deadline, proc.pid)
        except PlatformError:
            self._terminate(proc.pid, timeout=10.0)
            self.pid_file.unlink(missing_ok=True)
            raise
        _LOG.info("kafka broker ready on %s", self.bootstrap_servers)
        return self._status(proc.pid, ready=True, topics=topics, started=True)

    def stop(self, timeout: float = 30.0) -> bool:
        """SIGTERM the broker, SIGKILL it after ``timeout``; true when a running broker was stopped."""
        pid = self._running_pid()
        if pid is None:
            return False
        _LOG.info("stopping kafka broker (pid %d)", pid)
        self._terminate(pid, timeout=timeout)
        self.pid_file.unlink(missing_ok=True)
        return True

    def restart(self, timeout: float = 60.0) -> KafkaStatus:
        """Stop (if running) and start again, keeping the data: what a broker outage looks like."""
        self.stop(timeout=timeout)
        return self.start(timeout=timeout)

    def status(self, timeout: float = 5.0) -> KafkaStatus:
        """Whether the broker runs and, if it answers within ``timeout``, which topics it has."""
        pid = self._running_pid()
        if pid is None:
            return self._status(None)
        try:
            topics = self._list_topics(timeout)
        except PlatformError as exc:
            _LOG.debug("kafka broker pid %d does not answer: %s", pid, exc)
            return self._status(pid)
        return self._status(pid, ready=True, topics=tuple(sorted(topics)))

    # -- topics ----------------------------------------------------------------------------------

    def ensure_topics(
        self,
        names: Iterable[str],
        partitions: int | None = None,
        config: Mapping[str, str] | None = None,
        *,
        timeout: float = 30.0,
    ) -> list[str]:
        """Create the missing topics (replication 1, no retention unless ``config`` says otherwise);
        existing topics are left as they are. Returns the names created."""
        # The documented import path; the package re-exports it without listing it in __all__.
        from confluent_kafka.admin import NewTopic  # type: ignore[attr-defined]

        wanted = _topic_names(names)
        count = self.partitions if partitions is None else partitions
        if count < 1:
            raise PlatformError(f"ensure_topics: partitions must be at least 1, got {count!r}")
        deadline = time.monotonic() + timeout
        admin = self._admin()
        existing = self._topic_partitions(admin, _remaining(deadline))
        for name in wanted:
            if name in existing and existing[name] != count:
                _LOG.warning(
                    "topic %r exists with %d partitions (asked for %d): left unchanged",
                    name,
                    existing[name],
                    count,
                )
        missing = [name for name in wanted if name not in existing]
        if not missing:
            return []
        topic_config = {**DEFAULT_TOPIC_CONFIG, **(config or {})}
        futures = admin.create_topics(
            [NewTopic(name, count, 1, config=dict(topic_config)) for name in missing],
            operation_timeout=_remaining(deadline),
            request_timeout=_remaining(deadline),
        )
        created = []
        for name, future in futures.items():
            try:
                future.result()
                created.append(name)
            except Exception as exc:
                if _error_name(exc) != "TOPIC_ALREADY_EXISTS":  # created concurrently: fine
                    raise PlatformError(f"could not create kafka topic {name!r}: {exc}") from None
        self._wait_topics(admin, deadline, present=missing)
        _LOG.info("created kafka topics %s", sorted(created))
        return sorted(created)

    def delete_topics(self, names: Iterable[str], *, timeout: float = 30.0) -> list[str]:
        """Delete the named topics that exist; returns the names deleted."""
        wanted = _topic_names(names)
        deadline = time.monotonic() + timeout
        admin = self._admin()
        existing = self._topic_partitions(admin, _remaining(deadline))
        present = [name for name in wanted if name in existing]
        if not present:
            return []
        futures = admin.delete_topics(
            present, operation_timeout=_remaining(deadline), request_timeout=_remaining(deadline)
        )
        deleted = []
        for name, future in futures.items():
            try:
                future.result()
                deleted.append(name)
            except Exception as exc:
                if _error_name(exc) != "UNKNOWN_TOPIC_OR_PART":
                    raise PlatformError(f"could not delete kafka topic {name!r}: {exc}") from None
        self._wait_topics(admin, deadline, absent=present)
        _LOG.info("deleted kafka topics %s", sorted(deleted))
        return sorted(deleted)

    def delete_records(
        self, before: Mapping[tuple[str, int], int], *, timeout: float = 30.0
    ) -> dict[tuple[str, int], int]:
        """Delete every record below ``before[(topic, partition)]`` (what retention does, on demand);
        returns each partition's new earliest offset. Fault tests use it to lose data on purpose."""
        from confluent_kafka import TopicPartition

        if not before:
            return {}
        admin = self._admin()
        futures = admin.delete_records(
            [TopicPartition(topic, partition, offset) for (topic, partition), offset in before.items()],
            operation_timeout=timeout,
            request_timeout=timeout,
        )
        low: dict[tuple[str, int], int] = {}
        for tp, future in futures.items():
            try:
                low[(tp.topic, tp.partition)] = int(future.result().low_watermark)
            except Exception as exc:
                raise PlatformError(f"could not delete records of {tp.topic}[{tp.partition}]: {exc}") from None
        _LOG.info("deleted kafka records below %s", dict(before))
        return low

    def alter_topic_config(self, name: str, config: Mapping[str, str], *, timeout: float = 30.0) -> None:
        """Set some of a topic's configuration entries (e.g. ``max.message.bytes``), keeping the others."""
        from confluent_kafka.admin import (  # type: ignore[attr-defined]  # documented path, not in __all__
            AlterConfigOpType,
            ConfigEntry,
            ConfigResource,
            ResourceType,
        )

        resource = ConfigResource(
            ResourceType.TOPIC,
            name,
            incremental_configs=[
                ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET) for k, v in config.items()
            ],
        )
        futures = self._admin().incremental_alter_configs([resource], request_timeout=timeout)
        for future in futures.values():
            try:
                future.result()
            except Exception as exc:
                raise PlatformError(f"could not alter the configuration of kafka topic {name!r}: {exc}") from None

    # -- internals -------------------------------------------------------------------------------

    def _status(
        self,
        pid: int | None,
        *,
        ready: bool = False,
        topics: Iterable[str] = (),
        started: bool = False,
    ) -> KafkaStatus:
        return KafkaStatus(
            running=pid is not None,
            pid=pid,
            bootstrap_servers=self.bootstrap_servers,
            log_file=self.log_file,
            ready=ready,
            topics=tuple(sorted(topics)),
            started=started,
        )

    def _running_pid(self) -> int | None:
        """The pid of this state directory's live broker; a stale pid file is removed."""
        try:
            text = self.pid_file.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            return None
        pid = int(text) if text.isdigit() else None
        if pid is not None and _alive(pid) and self._is_our_broker(pid):
            return pid
        _LOG.info("removing stale kafka pid file %s (pid %s is not running)", self.pid_file, text or "?")
        self.pid_file.unlink(missing_ok=True)
        return None

    def _is_our_broker(self, pid: int) -> bool:
        # A reused pid must not make an unrelated process look like the broker (and get SIGTERM).
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except FileNotFoundError:
            return False
        except OSError:
            return True  # no /proc (not Linux): trust the pid file
        return _MAIN_CLASS.encode() in args and os.fsencode(self.properties_file) in args

    def _terminate(self, pid: int, *, timeout: float) -> None:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        if _wait_exit(pid, timeout):
            return
        _LOG.warning("kafka broker pid %d did not stop within %.0fs: killing it", pid, timeout)
        try:
            os.killpg(pid, signal.SIGKILL)  # the broker leads its own session (start_new_session)
        except ProcessLookupError:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                return
        if not _wait_exit(pid, 10.0):
            raise PlatformError(f"kafka broker pid {pid} survived SIGKILL")

    def _wait_ready(self, deadline: float, pid: int) -> list[str]:
        """Poll until the broker answers a metadata request; fail if it exits or time runs out."""
        last_error = "no answer"
        while True:
            if not _alive(pid):
                raise PlatformError(
                    f"kafka broker (pid {pid}) exited during start-up; see {self.log_file}:\n" + _tail(self.log_file)
                )
            # A plain TCP probe first: it costs nothing while the JVM boots and keeps librdkafka
            # from retrying connections in the background.
            if port_open(self.host, self.port):
                try:
                    return self._list_topics(min(2.0, max(0.1, _remaining(deadline))))
                except PlatformError as exc:
                    last_error = str(exc)
            if time.monotonic() >= deadline:
                raise PlatformError(
                    f"kafka broker (pid {pid}) did not answer on {self.bootstrap_servers} in time "
                    f"({last_error}); see {self.log_file}:\n" + _tail(self.log_file)
                )
            _pause(pid, 0.2)

    def _admin(self) -> Any:
        try:
            from confluent_kafka.admin import AdminClient
        except ImportError:
            raise PlatformError("confluent-kafka is not installed: pip install 'fitbit-stream[platform]'") from None
        return AdminClient({"bootstrap.servers": self.bootstrap_servers}, logger=_RDKAFKA_LOG)

    def _topic_partitions(self, admin: Any, timeout: float) -> dict[str, int]:
        try:
            metadata = admin.list_topics(timeout=max(0.1, timeout))
        except Exception as exc:
            raise PlatformError(
                f"kafka broker on {self.bootstrap_servers} did not answer a metadata request: {exc}"
            ) from None
        return {
            name: len(topic.partitions)
            for name, topic in metadata.topics.items()
            if not name.startswith("__") and topic.error is None
        }

    def _list_topics(self, timeout: float) -> list[str]:
        return sorted(self._topic_partitions(self._admin(), timeout))

    def _wait_topics(
        self,
        admin: Any,
        deadline: float,
        *,
        present: Collection[str] = (),
        absent: Collection[str] = (),
    ) -> None:
        # Topic creation returns when the controller committed it; producers and Spark asking the
        # broker a moment later must already see every partition with a leader.
        while True:
            try:
                metadata = admin.list_topics(timeout=max(0.1, min(2.0, _remaining(deadline))))
                topics = metadata.topics
                done = all(
                    name in topics
                    and topics[name].error is None
                    and all(p.leader >= 0 for p in topics[name].partitions.values())
                    for name in present
                ) and not any(name in topics for name in absent)
            except Exception:
                done = False
            if done:
                return
            if time.monotonic() >= deadline:
                raise PlatformError(
                    f"kafka topics did not settle in time (waiting for {sorted(present)} to appear and "
                    f"{sorted(absent)} to disappear) on {self.bootstrap_servers}"
                )
            time.sleep(0.1)

    def _check_jars(self) -> None:
        if not any(self.jars_dir.glob("kafka_2.13-*.jar")):
            raise PlatformError(
                f"no Kafka broker jars under {str(self.jars_dir)!r}: run `./scripts/setup.sh` (or "
                f"`make setup`), or point {_JARS_ENV} at the directory holding kafka/ and spark/"
            )

    def _java_cmd(self, java: str) -> list[str]:
        return [
            java,
            f"-Xmx{self.heap}",
            "-Xms128m",
            # A local broker moves little data: the C1 compiler alone and the serial collector
            # halve its start-up time on a busy laptop or CI runner, at a throughput cost that
            # does not show at these volumes.
            "-XX:TieredStopAtLevel=1",
            "-XX:+UseSerialGC",
            "-Djava.awt.headless=true",
            f"-Dlog4j.configuration={self._log4j_file.as_uri()}",
            f"-Dkafka.logs.dir={self.state_dir}",
            "-cp",
            f"{self.jars_dir}{os.sep}*",  # expanded by the JVM, not a shell
        ]

    def _format_storage(self, java: str, deadline: float) -> None:
        cmd = [
            *self._java_cmd(java),
            _STORAGE_TOOL,
            "format",
            "--cluster-id",
            self._cluster_id(),
            "--config",
            str(self.properties_file),
            "--ignore-formatted",
        ]
        try:
            result = subprocess.run(
                cmd,
                cwd=self.state_dir,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=max(5.0, _remaining(deadline)),
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise PlatformError(f"formatting kafka storage in {self.data_dir} timed out") from None
        if result.returncode != 0:
            output = "\n".join((result.stdout + result.stderr).splitlines()[-_LOG_TAIL_LINES:])
            raise PlatformError(
                f"formatting kafka storage in {self.data_dir} failed (exit {result.returncode}):\n{output}"
            )
        _LOG.info("formatted kafka storage in %s", self.data_dir)

    def _cluster_id(self) -> str:
        try:
            cluster_id = self._cluster_id_file.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            cluster_id = ""
        if not cluster_id:
            cluster_id = _new_cluster_id()
            self._cluster_id_file.write_text(cluster_id + "\n", encoding="ascii")
        return cluster_id

    def _write_config(self) -> None:
        listener_host = _url_host(self.host)
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@{listener_host}:{self.controller_port}",
            "controller.listener.names": "CONTROLLER",
            "listeners": f"PLAINTEXT://{listener_host}:{self.port},CONTROLLER://{listener_host}:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{listener_host}:{self.port}",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(self.data_dir),
            "num.partitions": str(self.partitions),
            "default.replication.factor": "1",
            "min.insync.replicas": "1",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "auto.create.topics.enable": "false",
            "delete.topic.enable": "true",
            "group.initial.rebalance.delay.ms": "0",
            # Never delete by age or size: record timestamps are event times, often years old.
            "log.retention.ms": "-1",
            "log.retention.bytes": "-1",
            "num.recovery.threads.per.data.dir": "1",
        }
        header = "# Written by fitbit_stream.platform.kafka on every start; edits are overwritten.\n"
        self.properties_file.write_text(
            header + "".join(f"{key}={_escape_property(value)}\n" for key, value in props.items()),
            encoding="latin-1",
        )
        self._log4j_file.write_text(_LOG4J, encoding="ascii")


_LOG4J = """\
# Written by fitbit_stream.platform.kafka: the broker logs to stdout, which goes to broker.log.
# Warnings and errors from everything; at INFO only the story of a run (start, signals, topics,
# consumer groups, shutdown), not the hundreds of lines of internal state transitions.
log4j.rootLogger=WARN, stdout
log4j.appender.stdout=org.apache.log4j.ConsoleAppender
log4j.appender.stdout.layout=org.apache.log4j.PatternLayout
log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka.server.KafkaRaftServer=INFO
log4j.logger.kafka.server.BrokerServer=INFO
log4j.logger.org.apache.kafka.common.utils.LoggingSignalHandler=INFO
log4j.logger.org.apache.kafka.controller.ReplicationControlManager=INFO
log4j.logger.kafka.coordinator.group.GroupCoordinator=INFO
log4j.logger.org.apache.kafka.coordinator.group=INFO
"""


def _loopback_host(host: str) -> str:
    """The loopback address to bind: ``localhost`` becomes 127.0.0.1; anything else is refused."""
    name = host.strip().strip("[]")
    if name.lower() == "localhost":
        return "127.0.0.1"
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        raise PlatformError(
            f"the local kafka broker binds to loopback only: expected localhost or a loopback address, got {host!r}"
        ) from None
    if not address.is_loopback:
        raise PlatformError(f"the local kafka broker binds to loopback only: {host!r} is not a loopback address")
    return str(address)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _new_cluster_id() -> str:
    # Kafka's Uuid.toString(): URL-safe base64 of 16 random bytes, no padding. Like
    # Uuid.randomUuid() avoid a leading '-', which command-line parsers take for an option.
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode("ascii").rstrip("=")
        if not text.startswith("-"):
            return text


def _escape_property(value: str) -> str:
    """Escape a value for java.util.Properties (ISO-8859-1 file): backslashes and non-ASCII."""
    out = []
    for char in value.replace("\\", "\\\\"):
        code = ord(char)
        if code < 0x80:
            out.append(char)
        elif code <= 0xFFFF:
            out.append(f"\\u{code:04x}")
        else:  # outside the BMP: a UTF-16 surrogate pair
            code -= 0x10000
            out.append(f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}")
    return "".join(out)


def _topic_names(names: Iterable[str]) -> list[str]:
    if isinstance(names, str):
        raise PlatformError(f"expected a list of topic names, got the string {names!r}")
    wanted = list(dict.fromkeys(names))
    bad = [name for name in wanted if not name or not name.strip()]
    if bad:
        raise PlatformError(f"topic names must not be empty, got {wanted!r}")
    return wanted


def _error_name(exc: Exception) -> str:
    error = exc.args[0] if exc.args else None
    name = getattr(error, "name", None)
    return str(name()) if callable(name) else ""


def _java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").is_file():
        return str(Path(java_home) / "bin" / "java")
    found = shutil.which("java")
    if found is None:
        raise PlatformError("no `java` on PATH (and JAVA_HOME is not set): run `./scripts/setup.sh`")
    return found


def _alive(pid: int) -> bool:
    child = _CHILDREN.get(pid)
    if child is not None:
        if child.poll() is None:
            return True
        del _CHILDREN[pid]
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, owned by someone else
    try:
        # A zombie (exited, not yet reaped by its parent) still answers kill(pid, 0).
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def _pause(pid: int, seconds: float) -> None:
    """Wait ``seconds``, returning early if the process is our child and exits."""
    child = _CHILDREN.get(pid)
    if child is None:
        time.sleep(seconds)
        return
    with contextlib.suppress(subprocess.TimeoutExpired):
        child.wait(timeout=seconds)


def _wait_exit(pid: int, timeout: float) -> bool:
    child = _CHILDREN.get(pid)
    if child is not None:
        try:
            child.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return False
        del _CHILDREN[pid]
        return True
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


def _remaining(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())


def _rotate(log_file: Path) -> None:
    """Keep the previous run's log as ``<name>.1`` so each log file tells one run's story."""
    if log_file.exists():
        log_file.replace(log_file.with_name(log_file.name + ".1"))


def _tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return "  (no log file)"
    return "\n".join(f"  {line}" for line in text.splitlines()[-lines:]) or "  (empty log file)"
