"""Databricks and portability: the bundle's jobs, Unity Catalog names, per-platform session settings.

The bundle test reads databricks.yml the way the Databricks CLI would resolve it (variables at their
defaults, ``${workspace.file_path}`` = the bundle root) and checks that every task runs something
that exists (a console script declared in setup.cfg that imports, or a script file) with arguments
the job's own parser accepts and a configuration that validates.
"""

from __future__ import annotations

import configparser
import importlib
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from azure.core.credentials import AccessToken

from fitbit_stream import jobs
from fitbit_stream.azure import AzureAuth
from fitbit_stream.config import Config, Platform, load_config
from fitbit_stream.errors import InvalidConfigError
from fitbit_stream.io.tables import Tables
from fitbit_stream.schemas import TABLES
from fitbit_stream.session import (
    DATABRICKS_ROCKSDB_PROVIDER,
    HDFS_STATE_STORE_PROVIDER,
    OSS_ROCKSDB_PROVIDER,
    get_spark,
    state_store_provider,
)

ROOT = Path(__file__).resolve().parents[2]
BUNDLE: dict[str, Any] = yaml.safe_load((ROOT / "databricks.yml").read_text(encoding="utf-8"))
JOB_FUNCTIONS: dict[Callable[[], None], jobs.Job] = {
    jobs.bronze: "bronze",
    jobs.silver: "silver",
    jobs.gold: "gold",
    jobs.all_layers: "all",
}
#: The console scripts the wheel must declare for the bundle's wheel tasks (lines of setup.cfg).
JOB_SCRIPTS = {
    "fitbit-stream-bronze": "fitbit_stream.jobs:bronze",
    "fitbit-stream-silver": "fitbit_stream.jobs:silver",
    "fitbit-stream-gold": "fitbit_stream.jobs:gold",
    "fitbit-stream-all": "fitbit_stream.jobs:all_layers",
}


class FakeCredential:
    def __init__(self) -> None:
        self.scopes: list[tuple[str, ...]] = []

    def get_token(self, *scopes: str, **_: Any) -> AccessToken:
        self.scopes.append(scopes)
        return AccessToken("tok-dbx", 4_102_444_800)


class FakeSecrets:
    def __init__(self, values: dict[tuple[str, str], str]) -> None:
        self.values = values

    def get(self, scope: str, key: str) -> str:
        return self.values[(scope, key)]


class FakeDBUtils:
    def __init__(self, values: dict[tuple[str, str], str]) -> None:
        self.secrets = FakeSecrets(values)


class FakeConf:
    def __init__(self) -> None:
        self.values: dict[str, str] = {}

    def set(self, key: str, value: str) -> None:
        self.values[key] = value


class FakeSession:
    """What a Databricks cluster hands out, reduced to the session settings it receives."""

    def __init__(self) -> None:
        self.conf = FakeConf()


@pytest.fixture(autouse=True)
def _no_runtime(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATABRICKS_RUNTIME_VERSION", raising=False)


# --- the bundle ------------------------------------------------------------------------------------


def console_scripts() -> dict[str, str]:
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg", encoding="utf-8")
    lines = parser["options.entry_points"]["console_scripts"].strip().splitlines()
    return {name.strip(): target.strip() for name, _, target in (line.partition("=") for line in lines if line.strip())}


def resolve(text: str, target: str | None = None) -> str:
    """``${var.x}`` (target's value, else the default) and ``${workspace.file_path}`` (the bundle root)."""
    variables = {name: spec.get("default") for name, spec in BUNDLE["variables"].items()}
    if target is not None:
        variables.update(BUNDLE["targets"][target].get("variables") or {})

    def value(match: re.Match[str]) -> str:
        ref = match.group(1)
        if ref == "workspace.file_path":
            return str(ROOT)
        if ref.startswith("var.") and variables.get(ref[4:]) is not None:
            return str(variables[ref[4:]])
        raise AssertionError(f"unresolvable reference ${{{ref}}} in {text!r}")

    return re.sub(r"\$\{([^}]+)\}", value, text)


TASKS = [
    pytest.param(job, task, id=f"{name}.{task['task_key']}")
    for name, job in BUNDLE["resources"]["jobs"].items()
    for task in job["tasks"]
]


@pytest.mark.parametrize(("job", "task"), TASKS)
def test_every_task_runs_a_real_entry_point_with_a_valid_config(job: dict[str, Any], task: dict[str, Any]) -> None:
    if "python_wheel_task" in task:
        wheel_task = task["python_wheel_task"]
        assert wheel_task["package_name"] == "fitbit_stream"
        scripts = console_scripts()
        entry_point = wheel_task["entry_point"]
        assert entry_point in scripts, (
            f"setup.cfg [options.entry_points] console_scripts lacks {entry_point} = {JOB_SCRIPTS.get(entry_point)}"
        )
        module, _, name = scripts[entry_point].partition(":")
        function = getattr(importlib.import_module(module), name)
        assert callable(function)
        job_name = JOB_FUNCTIONS[function]
        parameters = wheel_task["parameters"]
    else:
        script_task = task["spark_python_task"]
        script = ROOT / script_task["python_file"]
        assert script.is_file(), script
        called = re.findall(r'run_job\("(\w+)", sys\.argv\[1:\]\)', script.read_text(encoding="utf-8"))
        assert len(called) == 1, f"{script} must call run_job(<job>, sys.argv[1:]) once"
        job_name = called[0]
        parameters = script_task["parameters"]
    assert task["libraries"] == [{"whl": "./dist/*.whl"}]
    assert task["job_cluster_key"] in {c["job_cluster_key"] for c in job["job_clusters"]}

    args = jobs.build_parser(job_name).parse_args([resolve(p) for p in parameters])
    assert args.config is not None
    config = load_config(args.config, args.overrides)
    assert config.platform is Platform.DATABRICKS
    assert config.storage.catalog == resolve("${var.catalog}")
    assert config.storage.checkpoint_root.startswith(f"/Volumes/{config.storage.catalog}/")
    # A scheduled job drains and exits; a continuous one keeps its queries running.
    assert args.once == ("continuous" not in job)


def test_the_wheel_artifact_is_what_the_tasks_install() -> None:
    (artifact,) = BUNDLE["artifacts"].values()
    assert artifact["type"] == "whl"
    assert artifact["path"] == "."
    assert "--outdir dist" in artifact["build"]


def test_the_scheduled_job_runs_the_layers_in_dependency_order() -> None:
    tasks = BUNDLE["resources"]["jobs"]["fitbit_stream_layers"]["tasks"]
    order = [(t["task_key"], [d["task_key"] for d in t.get("depends_on", [])]) for t in tasks]
    assert order == [("bronze", []), ("silver", ["bronze"]), ("gold", ["silver"])]


@pytest.mark.parametrize("target", sorted(BUNDLE["targets"]))
def test_schedule_and_continuous_run_are_never_both_on(target: str) -> None:
    resources = BUNDLE["resources"]["jobs"]
    schedule = resolve(resources["fitbit_stream_layers"]["schedule"]["pause_status"], target)
    continuous = resolve(resources["fitbit_stream_continuous"]["continuous"]["pause_status"], target)
    assert {schedule, continuous} <= {"PAUSED", "UNPAUSED"}
    assert (schedule, continuous) != ("UNPAUSED", "UNPAUSED")


def test_the_bundle_creates_the_schemas_and_the_checkpoint_volume_the_config_names() -> None:
    config = load_config(ROOT / "conf" / "databricks.yaml", [f"storage.catalog={resolve('${var.catalog}')}"])
    schemas = BUNDLE["resources"]["schemas"]
    assert {resolve(s["catalog_name"]) for s in schemas.values()} == {config.storage.catalog}
    assert {s["name"] for s in schemas.values()} == set(config.storage.schemas.values())
    (volume,) = BUNDLE["resources"]["volumes"].values()
    schema = volume["schema_name"].removeprefix("${resources.schemas.").removesuffix(".name}")
    path = f"/Volumes/{resolve(volume['catalog_name'])}/{schemas[schema]['name']}/{volume['name']}"
    assert config.storage.checkpoint_root == path


def test_the_dashboard_resource_points_at_the_dashboard_file() -> None:
    dashboard = BUNDLE["resources"]["dashboards"]["fitbit_kpis"]
    path = ROOT / dashboard["file_path"]
    assert path.is_file(), f"{path} is missing (helper H3 writes it)"
    assert isinstance(json.loads(path.read_text(encoding="utf-8")), dict)
    assert dashboard["warehouse_id"] == "${var.warehouse_id}"


@pytest.mark.parametrize("job", jobs.JOBS)
def test_each_job_has_its_spark_submit_script(job: str) -> None:
    script = ROOT / "entrypoints" / f"{job}.py"
    assert re.findall(r'run_job\("(\w+)", sys\.argv\[1:\]\)', script.read_text(encoding="utf-8")) == [job]


@pytest.mark.parametrize("job", jobs.JOBS)
def test_job_help_lists_its_arguments(job: jobs.Job, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        jobs.build_parser(job).parse_args(["--help"])
    assert info.value.code == 0
    usage = capsys.readouterr().out
    assert usage.startswith(f"usage: fitbit-stream-{job} ")
    for option in ("--config", "--set", "--once", "--as-of"):
        assert option in usage


def test_a_job_with_a_missing_secret_stops_before_spark_starts(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("FITBIT_TEST_ABSENT", raising=False)

    def no_spark(*_: object, **__: object) -> None:
        raise AssertionError("a session was requested before the credentials were checked")

    monkeypatch.setattr("pyspark.sql.SparkSession.Builder.getOrCreate", no_spark)
    code = jobs.run_job("bronze", ["--once", "--set", "sql.password_env=FITBIT_TEST_ABSENT"])
    assert code == 2
    assert capsys.readouterr().err == (
        "fitbit-stream-bronze: error: sql.password_env: environment variable 'FITBIT_TEST_ABSENT' is not set\n"
    )


def test_console_functions_exit_non_zero_on_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.argv", ["fitbit-stream-gold", "--config", "/nonexistent.yaml"])
    with pytest.raises(SystemExit) as info:
        jobs.gold()
    assert info.value.code == 2


# --- platform: state store, session settings, table names -------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "runtime", "expected"),
    [
        ([], None, OSS_ROCKSDB_PROVIDER),
        (["platform=databricks"], None, DATABRICKS_ROCKSDB_PROVIDER),
        ([], "17.3", DATABRICKS_ROCKSDB_PROVIDER),
        (["streaming.state_store=hdfs"], None, HDFS_STATE_STORE_PROVIDER),
        (["platform=databricks", "streaming.state_store=hdfs"], None, HDFS_STATE_STORE_PROVIDER),
    ],
)
def test_state_store_provider_per_platform(
    monkeypatch: pytest.MonkeyPatch, overrides: list[str], runtime: str | None, expected: str
) -> None:
    if runtime:
        monkeypatch.setenv("DATABRICKS_RUNTIME_VERSION", runtime)
    assert state_store_provider(load_config(None, overrides)) == expected
    assert OSS_ROCKSDB_PROVIDER == "org.apache.spark.sql.execution.streaming.state.RocksDBStateStoreProvider"
    assert DATABRICKS_ROCKSDB_PROVIDER == "com.databricks.sql.streaming.state.RocksDBStateStoreProvider"


SECRETS = {("fitbit", "sp-client-secret"): "sp-dbx-31", ("fitbit", "eventhubs-connection-string"): "Endpoint=sb://x/"}


def test_databricks_session_gets_checked_credentials_then_its_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """The shipped Databricks config on a cluster: the session is taken, never built, and configured."""
    from pyspark.sql import SparkSession

    cluster = FakeSession()
    monkeypatch.setattr(SparkSession, "getActiveSession", classmethod(lambda cls: cluster))
    config = load_config(ROOT / "conf" / "databricks.yaml")
    credential = FakeCredential()
    auth = AzureAuth(config, credential=credential, dbutils=FakeDBUtils(SECRETS))
    session: object = get_spark(config, auth=auth)
    assert session is cluster
    host = "fitbitlake.dfs.core.windows.net"
    assert cluster.conf.values == {
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.shuffle.partitions": "8",
        "spark.sql.streaming.stateStore.providerClass": "com.databricks.sql.streaming.state.RocksDBStateStoreProvider",
        f"fs.azure.account.auth.type.{host}": "OAuth",
        f"fs.azure.account.oauth.provider.type.{host}": "org.apache.hadoop.fs.azurebfs.oauth2.ClientCredsTokenProvider",
        f"fs.azure.account.oauth2.client.id.{host}": "00000000-0000-0000-0000-000000000001",
        f"fs.azure.account.oauth2.client.secret.{host}": "sp-dbx-31",
        f"fs.azure.account.oauth2.client.endpoint.{host}": (
            "https://login.microsoftonline.com/00000000-0000-0000-0000-000000000000/oauth2/token"
        ),
    }
    assert credential.scopes == [("https://database.windows.net/.default",), ("https://storage.azure.com/.default",)]


def test_databricks_session_is_not_touched_when_a_secret_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    from pyspark.sql import SparkSession

    cluster = FakeSession()
    monkeypatch.setattr(SparkSession, "getActiveSession", classmethod(lambda cls: cluster))
    config = load_config(ROOT / "conf" / "databricks.yaml")
    secrets = {("fitbit", "eventhubs-connection-string"): "Endpoint=sb://x/"}
    auth = AzureAuth(config, credential=FakeCredential(), dbutils=FakeDBUtils(secrets))
    with pytest.raises(InvalidConfigError, match=r"azure\.client_secret: cannot read Databricks secret scope 'fitbit'"):
        get_spark(config, auth=auth)
    assert cluster.conf.values == {}


def test_table_names_resolve_per_platform_from_the_same_code(tmp_path: Path) -> None:
    databricks = Tables(load_config(ROOT / "conf" / "databricks.yaml"))
    local_config: Config = load_config(ROOT / "conf" / "local.yaml", [f"storage.root={tmp_path / 'lake'}"])
    local = Tables(local_config)
    for name, spec in TABLES.items():
        uc = databricks.ref(name)
        assert (uc.path, uc.qualified_name) == (None, f"fitbit.{spec.layer}.{name}")
        here = local.ref(name)
        assert (here.path, here.qualified_name) == (str(tmp_path / "lake" / spec.layer / name), None)
    assert str(databricks.ref("_query_progress", layer="ops")) == "fitbit.ops._query_progress"
    assert databricks.checkpoint("bronze_kafka_multiplex") == "/Volumes/fitbit/ops/checkpoints/bronze_kafka_multiplex"
    assert TABLES["heart_rate"].layer == "silver"
    assert str(databricks.ref("heart_rate")) == "fitbit.silver.heart_rate"


# --- portability: no private JVM handles, no input_file_name() -------------------------------------

FORBIDDEN = re.compile(r"\._jdf\b|\._jvm\b|\._jsc\b|\._jsparkSession\b|\._jconf\b|\binput_file_name\b")


def test_no_private_jvm_handles_or_input_file_name_in_the_library() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in sorted((ROOT / "src" / "fitbit_stream").rglob("*.py"))
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        if FORBIDDEN.search(line)
    ]
    assert offenders == [], "use public APIs (batch.sparkSession, _metadata.file_path):\n" + "\n".join(offenders)
