"""A throwaway PostgreSQL server for the e2e tests of the SQL source.

Why it looks like this:

- **Throwaway, so fast and trusting.** The cluster lives in a state directory (created with
  ``initdb`` on first start) and holds nothing but test data: authentication is ``trust``,
  ``fsync`` is off, and there is no password anywhere to leak into configs or logs. That is only
  acceptable because the server listens on 127.0.0.1 alone (``listen_addresses``) and
  ``pg_hba.conf`` admits nothing but loopback TCP and the Unix socket, which sits in the state
  directory rather than the system-wide ``/var/run/postgresql``.
- **Never as root.** PostgreSQL refuses to run as root, and the project's scripts often do. As
  root the server binaries run as an unprivileged OS user (``postgres`` by default, the user
  Debian's package creates) who owns the state directory. When that user cannot traverse the
  directories above the state directory (a project under ``/root``, or pytest's private temporary
  directory), the server processes get only the ``CAP_DAC_READ_SEARCH`` capability to walk
  there, rather than the project having to open up its parent directories.
- **Server binaries from the distribution.** ``scripts/setup.sh --with-postgres`` installs
  Debian's ``postgresql`` package; its binaries are in ``/usr/lib/postgresql/<version>/bin``,
  which is not on PATH. The highest version found there wins, then PATH.
- **pg_ctl does the waiting.** ``pg_ctl start -w`` returns once the server accepts connections and
  ``pg_ctl stop -m fast`` once it is down, so there are no pid or port polling loops here; the
  server's own ``postmaster.pid`` tells whether it runs.
"""

from __future__ import annotations

import logging
import os
import pwd
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fitbit_stream.errors import PlatformError
from fitbit_stream.platform import pid_alive, port_open

if TYPE_CHECKING:
    from fitbit_stream.config import Config

__all__ = ["PostgresServer", "PostgresStatus", "find_postgres_bin"]

_LOG = logging.getLogger(__name__)
_LOG_TAIL_LINES = 25
_SUPERUSER = "postgres"
_DEFAULT_PORT = 55432
_CONF_NAME = "fitbit_stream.conf"
# sun_path is 108 bytes on Linux, including the terminating NUL.
_MAX_SOCKET_PATH = 107
_SETUP_HINT = "run `./scripts/setup.sh --with-postgres` (or `make test`) to install the PostgreSQL server"


@dataclass(frozen=True)
class PostgresStatus:
    """What ``status()`` (and ``start()``) found; ``started`` is true only in the result of the
    ``start()`` call that launched the server."""

    running: bool
    pid: int | None
    host: str
    port: int
    data_dir: Path
    log_file: Path
    started: bool = False


def find_postgres_bin() -> Path:
    """The directory holding ``pg_ctl`` and ``initdb``: the highest /usr/lib/postgresql version, else PATH."""
    candidates = []
    for pg_ctl in Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"):
        version = pg_ctl.parent.parent.name
        if version.replace(".", "").isdigit():
            candidates.append((tuple(int(part) for part in version.split(".")), pg_ctl.parent))
    if candidates:
        return max(candidates)[1]
    on_path = shutil.which("pg_ctl")
    if on_path is not None and (Path(on_path).parent / "initdb").exists():
        return Path(on_path).resolve().parent
    raise PlatformError(f"no PostgreSQL server binaries (pg_ctl, initdb) found: {_SETUP_HINT}")


class PostgresServer:
    """One PostgreSQL cluster whose data, configuration, socket and log live in ``state_dir``."""

    def __init__(
        self,
        state_dir: str | Path,
        *,
        port: int = _DEFAULT_PORT,
        os_user: str | None = None,
        bin_dir: str | Path | None = None,
    ) -> None:
        self.state_dir = Path(state_dir).expanduser().resolve()
        if not 0 < port < 65536:
            raise PlatformError(f"postgres port must be between 1 and 65535, got {port!r}")
        self.host = "127.0.0.1"
        self.port = port
        self.user = _SUPERUSER
        self._os_user = os_user
        self._bin_dir = Path(bin_dir) if bin_dir is not None else None
        self._needs_traverse_cap: bool | None = None

    @classmethod
    def from_config(
        cls, config: Config, *, state_dir: str | Path | None = None, port: int | None = None
    ) -> PostgresServer:
        """The server for ``config``: state in ``<platform_dir>/postgres``; the port from ``sql.url``
        when that is a loopback PostgreSQL URL, else ``port`` or the default."""
        if port is None and config.sql.dialect == "postgresql":
            port = _port_from_url(config.sql.url)
        return cls(
            state_dir if state_dir is not None else Path(config.platform_dir) / "postgres",
            port=_DEFAULT_PORT if port is None else port,
        )

    # -- paths and addresses ---------------------------------------------------------------------

    @property
    def data_dir(self) -> Path:
        return self.state_dir / "data"

    @property
    def log_file(self) -> Path:
        return self.state_dir / "postgres.log"

    @property
    def socket_dir(self) -> Path:
        return self.state_dir / "run"

    def jdbc_url(self, database: str = "postgres") -> str:
        """``jdbc:postgresql://127.0.0.1:<port>/<database>``; the user is ``self.user``, no password."""
        return f"jdbc:postgresql://{self.host}:{self.port}/{database}"

    def conninfo(self, database: str = "postgres") -> str:
        """A libpq connection string (for ``psycopg.connect``) over loopback TCP."""
        parts = {"host": self.host, "port": str(self.port), "dbname": database, "user": self.user}
        return " ".join(f"{key}={_conninfo_value(value)}" for key, value in parts.items())

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> PostgresStatus:
        """Start the server unless it already runs (initialising the cluster on first start)."""
        pid = self._running_pid()
        if pid is not None:
            _LOG.info("postgres already running (pid %d, port %d)", pid, self.port)
            return self._status(pid)
        bin_dir = self._bin()
        if port_open(self.host, self.port):
            raise PlatformError(f"cannot start postgres: {self.host}:{self.port} is already in use by another process")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(exist_ok=True)
        self._give_to_server_user(self.state_dir, self.socket_dir)
        if not (self.data_dir / "PG_VERSION").is_file():
            self._initdb(bin_dir, timeout)
        self._write_conf()
        _rotate(self.log_file)
        result = self._run(
            [
                str(bin_dir / "pg_ctl"),
                "start",
                "--pgdata",
                str(self.data_dir),
                "--log",
                str(self.log_file),
                "--wait",
                "--timeout",
                str(max(1, round(timeout))),
                "--silent",
            ],
            timeout=timeout + 10,
        )
        pid = self._running_pid()
        if result.returncode != 0 or pid is None:
            raise PlatformError(
                f"postgres did not start on port {self.port} (pg_ctl exit {result.returncode}); "
                f"see {self.log_file}:\n" + _tail(self.log_file, result.stdout + result.stderr)
            )
        _LOG.info("postgres ready on %s:%d (pid %d, log %s)", self.host, self.port, pid, self.log_file)
        return self._status(pid, started=True)

    def stop(self, timeout: float = 30.0) -> bool:
        """Stop the server (fast shutdown, immediate after ``timeout``); true when it was running."""
        pid = self._running_pid()
        if pid is None:
            return False
        bin_dir = self._bin()
        _LOG.info("stopping postgres (pid %d)", pid)
        for mode in ("fast", "immediate"):
            result = self._run(
                [
                    str(bin_dir / "pg_ctl"),
                    "stop",
                    "--pgdata",
                    str(self.data_dir),
                    "--mode",
                    mode,
                    "--wait",
                    "--timeout",
                    str(max(1, round(timeout))),
                    "--silent",
                ],
                timeout=timeout + 10,
            )
            if result.returncode == 0 or self._running_pid() is None:
                return True
            _LOG.warning("postgres did not stop in %s mode: %s", mode, result.stderr.strip())
        raise PlatformError(f"postgres (pid {pid}) did not stop; see {self.log_file}:\n" + _tail(self.log_file))

    def restart(self, timeout: float = 60.0) -> PostgresStatus:
        self.stop(timeout=timeout)
        return self.start(timeout=timeout)

    def status(self) -> PostgresStatus:
        return self._status(self._running_pid())

    # -- databases -------------------------------------------------------------------------------

    def create_database(self, name: str) -> bool:
        """Create database ``name`` unless it exists; true when it was created."""
        psycopg, sql = _psycopg()
        with psycopg.connect(self.conninfo(), autocommit=True, connect_timeout=10) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
            if exists:
                return False
            try:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            except psycopg.errors.DuplicateDatabase:
                return False  # created concurrently
        _LOG.info("created postgres database %r", name)
        return True

    def drop_database(self, name: str) -> bool:
        """Drop database ``name`` (closing its connections) if it exists; true when it was dropped."""
        psycopg, sql = _psycopg()
        with psycopg.connect(self.conninfo(), autocommit=True, connect_timeout=10) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
            if not exists:
                return False
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        _LOG.info("dropped postgres database %r", name)
        return True

    # -- internals -------------------------------------------------------------------------------

    def _status(self, pid: int | None, *, started: bool = False) -> PostgresStatus:
        return PostgresStatus(
            running=pid is not None,
            pid=pid,
            host=self.host,
            port=self.port,
            data_dir=self.data_dir,
            log_file=self.log_file,
            started=started,
        )

    def _running_pid(self) -> int | None:
        """The postmaster's pid from its ``postmaster.pid``, if that process is alive."""
        try:
            first_line = (self.data_dir / "postmaster.pid").read_text(encoding="ascii").split("\n", 1)[0]
        except (FileNotFoundError, NotADirectoryError):
            return None
        except PermissionError:
            raise PlatformError(
                f"cannot read {self.data_dir / 'postmaster.pid'}: run as root or as the user owning {self.data_dir}"
            ) from None
        if not first_line.strip().isdigit():
            return None
        pid = int(first_line)
        # A stale postmaster.pid (crash, reboot) is the server's own business: it replaces the file
        # on the next start. Here it only must not count as running.
        return pid if pid_alive(pid) and _is_postgres(pid) else None

    def _bin(self) -> Path:
        if self._bin_dir is not None:
            if not (self._bin_dir / "pg_ctl").exists():
                raise PlatformError(f"no pg_ctl in {str(self._bin_dir)!r}: {_SETUP_HINT}")
            return self._bin_dir
        return find_postgres_bin()

    def _server_user(self) -> pwd.struct_passwd | None:
        """The OS user the server runs as when we are root; None to run as ourselves."""
        if os.geteuid() != 0:
            return None
        name = self._os_user or "postgres"
        try:
            return pwd.getpwnam(name)
        except KeyError:
            raise PlatformError(
                f"PostgreSQL refuses to run as root and OS user {name!r} does not exist: create it "
                f"(`useradd --system --user-group {name}`) or {_SETUP_HINT}"
            ) from None

    def _give_to_server_user(self, *paths: Path) -> None:
        user = self._server_user()
        if user is None:
            return
        for path in paths:
            os.chown(path, user.pw_uid, user.pw_gid)

    def _command(self, args: list[str]) -> list[str]:
        user = self._server_user()
        if user is None:
            return args
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            raise PlatformError("running postgres as root needs `setpriv` (util-linux) to switch user")
        switch = [setpriv, f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups"]
        if self._needs_traverse_cap is None:
            probe = subprocess.run([*switch, "--", "test", "-x", str(self.state_dir)], capture_output=True, check=False)
            self._needs_traverse_cap = probe.returncode != 0
            if self._needs_traverse_cap:
                _LOG.info(
                    "OS user %r cannot reach %s: the server gets CAP_DAC_READ_SEARCH to traverse its parents",
                    user.pw_name,
                    self.state_dir,
                )
        if self._needs_traverse_cap:
            switch += ["--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search"]
        return [*switch, "--", *args]

    def _run(self, args: list[str], *, timeout: float) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
        env.pop("PGDATA", None)
        try:
            return subprocess.run(
                self._command(args),
                cwd=self.state_dir,  # the server user may not be allowed into our working directory
                env=env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
                start_new_session=True,
            )
        except subprocess.TimeoutExpired:
            raise PlatformError(f"{Path(args[0]).name} {args[1]} timed out after {timeout:.0f}s") from None

    def _initdb(self, bin_dir: Path, timeout: float) -> None:
        result = self._run(
            [
                str(bin_dir / "initdb"),
                "--pgdata",
                str(self.data_dir),
                "--username",
                _SUPERUSER,
                "--auth",
                "trust",
                "--encoding",
                "UTF8",
                "--locale",
                "C",
                "--no-sync",
                "--no-instructions",
            ],
            timeout=max(timeout, 120.0),
        )
        if result.returncode != 0:
            raise PlatformError(
                f"initdb in {self.data_dir} failed (exit {result.returncode}):\n"
                + _last_lines(result.stdout + result.stderr)
            )
        hba = self.data_dir / "pg_hba.conf"
        hba.write_text(
            "# Written by fitbit_stream.platform.postgres: a throwaway test server, loopback only.\n"
            "# TYPE  DATABASE  USER  ADDRESS       METHOD\n"
            "local   all       all                 trust\n"
            "host    all       all   127.0.0.1/32  trust\n",
            encoding="utf-8",
        )
        with (self.data_dir / "postgresql.conf").open("a", encoding="utf-8") as conf:
            conf.write(f"\n# fitbit_stream: settings rewritten on every start\ninclude_if_exists = '{_CONF_NAME}'\n")
        _LOG.info("initialised postgres cluster in %s", self.data_dir)

    def _write_conf(self) -> None:
        socket_path = self.socket_dir / f".s.PGSQL.{self.port}"
        if len(os.fsencode(socket_path)) <= _MAX_SOCKET_PATH:
            socket_dirs = str(self.socket_dir)
        else:
            # Too long for a Unix socket: TCP on loopback only (all our clients use TCP anyway).
            _LOG.info("state directory path too long for a Unix socket: postgres listens on TCP only")
            socket_dirs = ""
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": socket_dirs,
            "timezone": "UTC",
            "log_timezone": "UTC",
            # Test data only: durability buys nothing and costs seconds per test run.
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "logging_collector": "off",
            "log_checkpoints": "off",
        }
        conf = self.data_dir / _CONF_NAME
        conf.write_text(
            "# Written by fitbit_stream.platform.postgres on every start; edits are overwritten.\n"
            + "".join(f"{key} = {_conf_value(value)}\n" for key, value in settings.items()),
            encoding="utf-8",
        )
        self._give_to_server_user(conf, self.data_dir / "pg_hba.conf", self.data_dir / "postgresql.conf")


def _psycopg() -> tuple[Any, Any]:
    try:
        import psycopg
        from psycopg import sql
    except ImportError:
        raise PlatformError("psycopg is not installed: pip install 'fitbit-stream[platform]'") from None
    return psycopg, sql


def _port_from_url(url: str) -> int | None:
    match = re.match(r"jdbc:postgresql://(?:localhost|127\.0\.0\.1)(?::(\d+))?/", url)
    if match is None:
        return None
    return int(match.group(1)) if match.group(1) else 5432


def _conninfo_value(value: str) -> str:
    if value and not re.search(r"[\s'\\]", value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _conf_value(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _is_postgres(pid: int) -> bool:
    # A reused pid (the old server died with the machine) must not count as the server.
    try:
        return b"postgres" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return False
    except OSError:
        return True  # no /proc (not Linux): trust postmaster.pid


def _rotate(log_file: Path) -> None:
    if log_file.exists():
        log_file.replace(log_file.with_name(log_file.name + ".1"))


def _last_lines(text: str, lines: int = _LOG_TAIL_LINES) -> str:
    return "\n".join(f"  {line}" for line in text.splitlines()[-lines:]) or "  (no output)"


def _tail(path: Path, fallback: str = "") -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        text = ""
    return _last_lines(text or fallback)
