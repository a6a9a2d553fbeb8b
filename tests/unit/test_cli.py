"""The command line: source failures stop a run before Spark starts, in one line with exit code 2;
``--set`` reach, ``--as-of``, ``--debug``; one argument definition for ``fitbit-stream run`` and the jobs.
No Spark is started here."""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest

from fitbit_stream import cli, jobs, session
from fitbit_stream.errors import PipelineError


@pytest.fixture(autouse=True)
def no_spark(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every command here must fail before a session is asked for; the verbosity is put back after."""

    def refuse(*_: object, **__: object) -> None:
        raise AssertionError("a Spark session was requested")

    monkeypatch.setattr("pyspark.sql.SparkSession.Builder.getOrCreate", refuse)
    saved = session._verbosity
    yield
    session.set_verbosity(saved)


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def source_db(tmp_path: Path) -> Path:
    import sqlite3

    path = tmp_path / "source.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE registered_users (x INTEGER)")
        db.execute("CREATE TABLE gym_logins (x INTEGER)")
    return path


def stderr_lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def test_run_with_an_unreachable_broker_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    port = closed_port()
    code = cli.main(
        [
            "run",
            "--once",
            "--set",
            f"kafka.bootstrap_servers=127.0.0.1:{port}",
            "--set",
            f"sql.url=jdbc:sqlite:{source_db(tmp_path)}",
        ]
    )
    assert code == 2
    assert stderr_lines(capsys) == [
        f"fitbit-stream: error: kafka.bootstrap_servers=127.0.0.1:{port}: cannot connect (connection refused); "
        "start the local broker (fitbit-stream platform start --config conf/local.yaml), or set "
        "kafka.bootstrap_servers to a reachable broker's host:port"
    ]


def test_run_with_a_sqlite_file_in_a_missing_directory_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(
        ["run", "--once", "--set", "kafka.enabled=false", "--set", "sql.url=jdbc:sqlite:/nonexistent/dir/x.db"]
    )
    assert code == 2
    assert stderr_lines(capsys) == [
        "fitbit-stream: error: sql.url=jdbc:sqlite:/nonexistent/dir/x.db: directory '/nonexistent/dir' does not "
        "exist; set sql.url=jdbc:sqlite:PATH to the source database file"
    ]


def test_jobs_check_the_sources_too(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    landing = tmp_path / "landing"
    code = jobs.run_job(
        "bronze",
        [
            "--once",
            "--set",
            "kafka.enabled=false",
            "--set",
            "sql.enabled=false",
            "--set",
            "landing.enabled=true",
            "--set",
            f"landing.path={landing}",
        ],
    )
    assert code == 2
    assert stderr_lines(capsys) == [
        f"fitbit-stream-bronze: error: landing.path={landing}: the directory does not exist; create it or point "
        "landing.path at the landing files, or set landing.enabled=false"
    ]


def test_debug_adds_the_stack_trace(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(
        [
            "--debug",
            "run",
            "--once",
            "--set",
            "kafka.enabled=false",
            "--set",
            "sql.url=jdbc:sqlite:/nonexistent/dir/x.db",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err
    assert "fitbit_stream.errors.PreflightError: sql.url=jdbc:sqlite:/nonexistent/dir/x.db" in err
    assert err.rstrip().splitlines()[-1].startswith("fitbit-stream: error: sql.url=jdbc:sqlite:/nonexistent/dir/x.db")


@pytest.mark.parametrize(
    "argv",
    [["--debug", "run"], ["run", "--debug"], ["-v", "run", "--debug"]],
)
def test_output_flags_go_before_or_after_the_command(argv: list[str]) -> None:
    args = cli.build_parser().parse_args(argv)
    assert args.debug is True


def test_run_takes_as_of_like_the_jobs() -> None:
    args = cli.build_parser().parse_args(["run", "--once", "--as-of", "2025-03-04", "--job", "silver"])
    assert (args.as_of, args.once, args.job) == (date(2025, 3, 4), True, "silver")
    job_args = jobs.build_parser("silver").parse_args(["--once", "--as-of", "2025-03-04"])
    assert job_args.as_of == date(2025, 3, 4)
    # one definition: the run command has every option of the job scripts
    commands = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    run_options = {a.dest for a in commands.choices["run"]._actions}
    job_options = {a.dest for a in jobs.build_parser("all")._actions} - {"version"}
    assert job_options <= run_options


def test_set_help_documents_dotted_map_keys(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["run", "--help"])
    usage = " ".join(capsys.readouterr().out.split())
    assert """--set 'kafka.options."security.protocol"=SASL_SSL'""" in usage
    assert "--set 'spark_conf[spark.ui.enabled]=false'" in usage
    assert "--as-of" in usage


def test_unknown_key_suggests_the_nearest(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["config", "--set", "kafka.bootstrap_server=h:1"]) == 2
    assert "did you mean kafka.bootstrap_servers?" in capsys.readouterr().err


def test_config_prints_dotted_map_keys(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["config", "--set", 'kafka.options."security.protocol"=SASL_SSL']) == 0
    assert '"security.protocol": "SASL_SSL"' in capsys.readouterr().out


def test_an_unexpected_error_is_one_line_without_debug(capsys: pytest.CaptureFixture[str]) -> None:
    class Py4JLike(Exception):
        pass

    error = Py4JLike(
        "An error occurred while calling o51.load.\n: java.sql.SQLException: path to 'x' does not exist\n"
        "\tat org.sqlite.SQLiteConnection.open(SQLiteConnection.java:1)\n"
    )
    assert jobs.report_error("fitbit-stream", error) == 1
    assert stderr_lines(capsys) == [
        "fitbit-stream: error: Py4JLike: java.sql.SQLException: path to 'x' does not exist "
        "(--debug shows the stack trace)"
    ]
    assert jobs.report_error("fitbit-stream", PipelineError("query 'x' failed: boom")) == 2
    assert stderr_lines(capsys) == ["fitbit-stream: error: query 'x' failed: boom"]
    assert jobs.report_error("fitbit-stream", KeyboardInterrupt()) == 130


def test_the_bar_in_a_fresh_directory(tmp_path: Path) -> None:
    """`fitbit-stream run --once --set kafka.bootstrap_servers=127.0.0.1:1` in a fresh checkout: exit 2,
    one line naming 127.0.0.1:1 (and the missing SQLite source beside it), no traceback, in seconds."""
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "fitbit_stream.cli", "run", "--once", "--set", "kafka.bootstrap_servers=127.0.0.1:1"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert time.monotonic() - started < 30
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("fitbit-stream: error: kafka.bootstrap_servers=127.0.0.1:1: cannot connect")
    assert " | sql.url=jdbc:sqlite:data/source.db: directory 'data' does not exist" in lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    assert not (tmp_path / "data").exists()  # nothing was created on the way


# --- quiet by default: what a local session is built with -----------------------------------------


def _java_options(conf: dict[str, str]) -> dict[str, str]:
    options = conf["spark.driver.extraJavaOptions"].split()
    return dict(o.removeprefix("-D").partition("=")[::2] for o in options if o.startswith("-D"))


def test_a_local_session_is_quiet_and_declares_a_pool_per_query() -> None:
    from fitbit_stream.config import load_config
    from fitbit_stream.topology import QUERIES

    conf = session._local_conf(load_config(None))
    assert conf["spark.sql.adaptive.enabled"] == "false"
    assert conf["spark.sql.codegen.wholeStage"] == "false"
    assert conf["spark.sql.codegen.factoryMode"] == "NO_CODEGEN"
    assert conf["spark.scheduler.mode"] == "FAIR"
    pools = Path(conf["spark.scheduler.allocation.file"]).read_text(encoding="utf-8")
    for spec in QUERIES:
        assert f'<pool name="{spec.name}">' in pools
    java = _java_options(conf)
    assert java["user.timezone"] == "UTC"
    assert session.THREAD_STACK in conf["spark.driver.extraJavaOptions"].split()
    log4j = Path(java["log4j2.configurationFile"]).read_text(encoding="utf-8").splitlines()
    assert "rootLogger.level = error" in log4j
    assert "appender.console.layout.alwaysWriteExceptions = false" in log4j
    assert "logger.gateway.level = error" in log4j


def test_a_local_driver_keeps_bounded_status_and_the_config_can_raise_it() -> None:
    """Spark's status store keeps jobs, stages and SQL executions (with their plans) even with the UI
    off; the defaults (1,000 each) ran a 2 GB driver out of memory after 40 minutes of micro-batches."""
    from fitbit_stream.config import load_config

    conf = session._local_conf(load_config(None))
    assert conf["spark.ui.enabled"] == "false"
    assert {k: conf[k] for k in conf if "retained" in k} == {
        "spark.ui.retainedJobs": "200",
        "spark.ui.retainedStages": "200",
        "spark.ui.retainedTasks": "20000",
        "spark.sql.ui.retainedExecutions": "100",
        "spark.sql.streaming.ui.retainedQueries": "50",
        "spark.sql.streaming.ui.retainedProgressUpdates": "100",
    }
    raised = session._local_conf(load_config(None, ["spark_conf[spark.sql.ui.retainedExecutions]=5000"]))
    assert raised["spark.sql.ui.retainedExecutions"] == "5000"


@pytest.mark.parametrize(("verbosity", "level", "traces"), [("verbose", "warn", "false"), ("debug", "warn", "true")])
def test_verbose_and_debug_bring_spark_warnings_and_traces_back(verbosity: str, level: str, traces: str) -> None:
    from fitbit_stream.config import load_config

    session.set_verbosity(verbosity)  # type: ignore[arg-type]
    java = _java_options(session._local_conf(load_config(None)))
    log4j = Path(java["log4j2.configurationFile"]).read_text(encoding="utf-8").splitlines()
    assert f"rootLogger.level = {level}" in log4j
    assert f"appender.console.layout.alwaysWriteExceptions = {traces}" in log4j


def test_java_options_of_the_config_are_kept() -> None:
    from fitbit_stream.config import load_config

    conf = session._local_conf(load_config(None, ["spark_conf[spark.driver.extraJavaOptions]=-Dx=1 -Xss8m"]))
    options = conf["spark.driver.extraJavaOptions"].split()
    assert options[:2] == ["-Dx=1", "-Xss8m"]
    assert session.THREAD_STACK not in options  # the configuration's own stack size wins
    assert any(o.startswith("-Dlog4j2.configurationFile=") for o in options)


@pytest.mark.parametrize(
    ("master", "driver_host"),
    [("spark://127.0.0.1:7077", "127.0.0.1"), ("spark://localhost:7077", "127.0.0.1"), ("spark://10.0.0.5:7077", None)],
)
def test_a_standalone_master_gets_this_python_and_a_loopback_one_a_loopback_driver(
    master: str, driver_host: str | None
) -> None:
    from fitbit_stream.config import load_config

    conf = session._local_conf(load_config(None, [f"spark_conf[spark.master]={master}"]))
    assert conf["spark.master"] == master
    assert conf["spark.pyspark.python"] == sys.executable  # the executors' Python workers
    assert conf.get("spark.driver.host") == driver_host
    assert conf.get("spark.driver.bindAddress") == driver_host
    assert "spark.pyspark.python" not in session._local_conf(load_config(None))  # local[*]: unchanged


def test_platform_cluster_start_and_stop_name_the_master_and_the_setting(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from fitbit_stream.platform import cluster

    status = cluster.ClusterStatus(
        True,
        "spark://127.0.0.1:7177",
        "http://127.0.0.1:8180",
        {"w1": ("ALIVE", 1, 2048), "w2": ("ALIVE", 1, 2048)},
        True,
    )
    seen: list[tuple[int, int]] = []

    def start(self: cluster.SparkCluster, timeout: float = 90.0) -> cluster.ClusterStatus:
        seen.append((self.port, self.web_port))
        return status

    monkeypatch.setattr(cluster.SparkCluster, "start", start)
    monkeypatch.setattr(cluster.SparkCluster, "stop", lambda self, timeout=30.0: True)
    args = ["platform", "start", "--cluster", "--cluster-port", "7177", "--set", f"platform_dir={tmp_path}"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert seen == [(7177, 8180)]
    assert "[platform] spark cluster started: spark://127.0.0.1:7177, 2 workers" in out
    assert "fitbit-stream run --set 'spark_conf[spark.master]=spark://127.0.0.1:7177'" in out
    assert cli.main(["platform", "stop", "--cluster", "--set", f"platform_dir={tmp_path}"]) == 0
    assert "[platform] spark cluster stopped" in capsys.readouterr().out


# --- stopping a continuous run --------------------------------------------------------------------


class FakeQuery:
    """A query whose micro-batch runs for the first ``busy`` status reads."""

    def __init__(self, busy: int, *, active: bool = True) -> None:
        self.busy = busy
        self.isActive = active
        self.stopped_mid_batch: bool | None = None

    @property
    def status(self) -> dict[str, object]:
        self.busy -= 1
        return {"isTriggerActive": self.busy >= 0}

    def stop(self) -> None:
        self.stopped_mid_batch = self.busy >= 0
        self.isActive = False


def test_queries_stop_between_batches() -> None:
    from fitbit_stream.io.progress import stop_between_batches

    idle, busy, done = FakeQuery(0), FakeQuery(3), FakeQuery(0, active=False)
    stop_between_batches([idle, busy, done], poll=0.01)  # type: ignore[list-item]
    assert (idle.stopped_mid_batch, busy.stopped_mid_batch, done.stopped_mid_batch) == (False, False, None)
    assert not busy.isActive


def test_a_query_that_never_pauses_is_stopped_at_the_timeout() -> None:
    from fitbit_stream.io.progress import stop_between_batches

    endless = FakeQuery(10**9)
    started = time.monotonic()
    stop_between_batches([endless], timeout=0.2, poll=0.01)  # type: ignore[list-item]
    assert endless.stopped_mid_batch is True
    assert 0.2 <= time.monotonic() - started < 2


def test_a_local_driver_gets_a_quarter_of_the_memory_unless_the_config_says(monkeypatch: pytest.MonkeyPatch) -> None:
    from fitbit_stream.config import load_config

    pages = {"SC_PAGE_SIZE": 4096, "SC_PHYS_PAGES": 24 * 2**30 // 4096}
    monkeypatch.setattr(session.os, "sysconf", lambda name: pages[name])
    assert session._local_conf(load_config(None))["spark.driver.memory"] == "6g"
    pages["SC_PHYS_PAGES"] = 2 * 2**30 // 4096  # a small machine: never under 1 GB
    assert session.default_driver_memory() == "1g"
    pages["SC_PHYS_PAGES"] = 256 * 2**30 // 4096  # a large one: 8 GB at most
    assert session.default_driver_memory() == "8g"
    own = session._local_conf(load_config(None, ["spark_conf[spark.driver.memory]=3g"]))
    assert own["spark.driver.memory"] == "3g"


@pytest.mark.parametrize(
    ("own", "expected"),
    [
        ("-Dx=1", ["-Dx=1", session.JIT_THRESHOLDS]),
        ("-XX:CompileThresholdScaling=1", ["-XX:CompileThresholdScaling=1"]),
        ("-XX:TieredStopAtLevel=1", ["-XX:TieredStopAtLevel=1"]),  # C1 only: its thresholds stay
    ],
)
def test_the_jit_thresholds_are_raised_unless_the_config_decides(own: str, expected: list[str]) -> None:
    from fitbit_stream.config import load_config

    conf = session._local_conf(load_config(None, [f"spark_conf[spark.driver.extraJavaOptions]={own}"]))
    options = conf["spark.driver.extraJavaOptions"].split()
    assert [o for o in options if o.startswith(("-Dx", "-XX:Compile", "-XX:Tiered"))] == expected
