"""Databricks and portability: the bundle, Unity Catalog names, per-platform session settings.

The bundle tests read databricks.yml (with the files it includes) the way the Databricks CLI
resolves it for each target: variables (the required ones as a user passes them), target overrides,
development mode's name prefix and concurrency default, and references to the bundle's own
resources. They check that every task runs something that exists (a console script declared in
setup.cfg that imports, or a script file) with arguments the job's own parser accepts and a
configuration that validates, and that the bundle has none of the problems the CLI (or a first
run) would hit; each of those checks is shown to fail on a bundle that reintroduces the problem.
"""

from __future__ import annotations

import ast
import configparser
import copy
import importlib
import importlib.metadata
import importlib.util
import json
import logging
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from azure.core.credentials import AccessToken

from fitbit_stream import jobs
from fitbit_stream.azure import AzureAuth
from fitbit_stream.config import Config, Layer, Platform, load_config
from fitbit_stream.dashboard.lakeview import BUNDLE_DASHBOARD_FILE
from fitbit_stream.errors import InvalidConfigError, PlatformError
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

    def __init__(self, version: str = "4.2.0") -> None:
        self.conf = FakeConf()
        self.version = version


@pytest.fixture(autouse=True)
def _no_runtime(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATABRICKS_RUNTIME_VERSION", raising=False)


# --- the bundle, as the Databricks CLI resolves it ---------------------------------------------------
#
# The rules below are the Databricks CLI's own (github.com/databricks/cli, read at v1.13.0, commit
# 7bbe285); each check names the file it mirrors:
#
# - bundle/config/mutator/resourcemutator/validate_target_mode.go: validateProductionMode errors with
#   "target with 'mode: production' must set 'workspace.root_path' to make sure only one copy is
#   deployed" unless the TARGET sets workspace.root_path (isExplicitRootSet); run_as on every job (or
#   a service principal) lowers it to a recommendation (isRunAsSet). validateDevelopmentMode rejects
#   presets.trigger_pause_status UNPAUSED and workspace paths without the user's name (findNonUserPath).
# - bundle/config/mutator/resourcemutator/apply_target_mode.go: development mode sets the name prefix
#   "[dev <short_name>] " and `developmentConcurrentRuns = 4` as the jobs' max_concurrent_runs preset.
# - bundle/config/mutator/resourcemutator/apply_presets.go: a job's max_concurrent_runs takes the
#   preset only when it is unset (0); schema names get normalizePrefix(prefix) ("dev_<short_name>_",
#   libs/textutil/textutil.go NormalizeString); volume names get no prefix.
# - bundle/config/mutator/set_variables.go: a variable with no default and no value from --var,
#   BUNDLE_VAR_<name> or the target's variable-overrides.json fails: "no value assigned to required
#   variable".
# - bundle/config/validate/required.go: "dashboard warehouse_id is required".
# - bundle/config/mutator/resourcemutator/configure_dashboards_serialized_dashboard.go: a dashboard's
#   file_path is read into serialized_dashboard as it is (a ${var.catalog} in the file fails the plan:
#   'invalid dependency "${var.catalog}", no such node'); bundle/config/resources/dashboard.go
#   dataset_catalog / dataset_schema set ONE default catalog and schema for all datasets and do not
#   touch fully qualified names (databricks/cli#4130).
#
# The CLI built from that source (`databricks bundle validate` / `plan` against a stand-in workspace
# on loopback) agreed: the previous bundle failed prod with the root_path error and gave the
# continuous and backfill jobs max_concurrent_runs 4 and the schemas dev_<user>_* names in dev; this
# one validates in both targets and its plan passes dev_<user>_* names to the jobs and the dashboard.
# - bundle/config/validate/unique_resource_keys.go: an included file may not define a resource key
#   that another file defines.

#: Who deploys in these tests (workspace.current_user), and what they pass for the required variables.
USER_NAME, SHORT_NAME = "someone@example.com", "someone"
USER_VARIABLES = {"catalog": "main", "warehouse_id": "5f1a2b3c4d5e6f70"}
#: Variables that must be required (no default, no value in any target): a placeholder would deploy.
REQUIRED_VARIABLES = ("catalog", "warehouse_id")
PLACEHOLDER = re.compile(r"^0+$|^<.*>$|changeme|placeholder|^todo$|^x+$", re.IGNORECASE)
#: Databricks runtime keys and their Apache Spark (the runtime release notes: 17.3 LTS "includes
#: Apache Spark 4.0.0", 18 LTS 4.1.0, 19 (GA 2026-07-23) 4.2.0).
RUNTIME_SPARK = {"17.3.x-scala2.13": "4.0", "18.x-scala2.13": "4.1", "19.x-scala2.13": "4.2"}
REFERENCE = re.compile(r"\$\{([a-zA-Z][\w-]*(?:\.[a-zA-Z][\w-]*(?:\[\d+\])*)+)\}")


def console_scripts() -> dict[str, str]:
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg", encoding="utf-8")
    lines = parser["options.entry_points"]["console_scripts"].strip().splitlines()
    return {name.strip(): target.strip() for name, _, target in (line.partition("=") for line in lines if line.strip())}


def load_bundle(root: Path = ROOT) -> dict[str, Any]:
    """databricks.yml with the files it ``include``s merged in, as the CLI loads them."""
    bundle: dict[str, Any] = yaml.safe_load((root / "databricks.yml").read_text(encoding="utf-8"))
    for pattern in bundle.get("include", []):
        paths = sorted(root.glob(pattern))
        assert paths, f"include {pattern!r} matches no file"
        for path in paths:
            included: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))
            for kind, resources in (included.get("resources") or {}).items():
                mine = bundle.setdefault("resources", {}).setdefault(kind, {})
                for key, resource in resources.items():
                    # unique_resource_keys.go
                    assert key not in mine, f"{path.name}: resources.{kind}.{key} is defined twice"
                    mine[key] = resource
    return bundle


BUNDLE = load_bundle()


def _merge(base: Any, override: Any) -> Any:
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            merged[key] = _merge(base.get(key), value) if key in base else value
        return merged
    return override


def normalize_prefix(prefix: str) -> str:
    """apply_presets.go normalizePrefix: '[dev someone] ' -> 'dev_someone_'."""
    prefix = prefix.replace("[", "").strip(" ")
    suffix = "_" if prefix.endswith("]") else ""
    name = re.sub(r"_+", "_", "".join(c if c.isalnum() else "_" for c in prefix.lower())).strip("_")
    return name + suffix


@dataclass
class Target:
    """One target of a bundle as the CLI sees it after loading: merged config and resolved references."""

    name: str
    config: dict[str, Any]
    user_variables: dict[str, str]

    @classmethod
    def of(cls, bundle: dict[str, Any], name: str, user_variables: dict[str, str] | None = None) -> Target:
        override = bundle["targets"][name] or {}
        config = {k: v for k, v in bundle.items() if k != "targets"}
        for section in ("bundle", "workspace", "resources", "presets", "run_as", "artifacts"):
            if section in override:
                config[section] = _merge(config.get(section) or {}, override[section])
        if "mode" in override:
            config.setdefault("bundle", {})["mode"] = override["mode"]
        config["_target_workspace"] = override.get("workspace") or {}
        config["_target_variables"] = override.get("variables") or {}
        return cls(name, config, USER_VARIABLES if user_variables is None else user_variables)

    @property
    def mode(self) -> str:
        return str(self.config.get("bundle", {}).get("mode", ""))

    @property
    def presets(self) -> dict[str, Any]:
        return dict(self.config.get("presets") or {})

    @property
    def name_prefix(self) -> str:
        """apply_target_mode.go: development mode's default prefix; else presets.name_prefix."""
        prefix = self.presets.get("name_prefix", "")
        if self.mode == "development" and not prefix:
            prefix = f"[dev {SHORT_NAME}] "
        return str(prefix)

    def variable(self, name: str) -> str:
        spec = self.config.get("variables", {}).get(name)
        if spec is None:
            raise LookupError(f"reference to undeclared variable {name!r}")
        if name in self.config["_target_variables"]:
            return str(self.config["_target_variables"][name])
        if name in self.user_variables:  # --var / BUNDLE_VAR_<name>
            return self.user_variables[name]
        if "default" in spec:
            return str(spec["default"])
        raise LookupError(f"no value assigned to required variable {name}")  # set_variables.go

    def resource_field(self, path: list[str]) -> str:
        kind, key, field = path[0], path[1], ".".join(path[2:])
        resource = self.config.get("resources", {}).get(kind, {}).get(key)
        if resource is None or field not in resource:
            raise LookupError(f"reference to resources.{kind}.{key}.{field}, which the bundle does not define")
        value = self.resolve(str(resource[field]))
        if kind == "schemas" and field == "name":  # apply_presets.go: schemas get the normalized prefix
            value = normalize_prefix(self.name_prefix) + value if self.name_prefix else value
        return value

    def resolve(self, text: str) -> str:
        """Every ``${...}`` reference of ``text`` as the CLI substitutes it in this target."""

        def value(match: re.Match[str]) -> str:
            ref = match.group(1)
            parts = ref.split(".")
            if parts[0] == "var":
                return self.variable(parts[1])
            if ref == "workspace.file_path":
                return str(ROOT)  # the synced bundle root; locally, the checkout
            if ref in ("workspace.current_user.userName", "workspace.current_user.user_name"):
                return USER_NAME
            if ref == "workspace.current_user.short_name":
                return SHORT_NAME
            if ref == "bundle.name":
                return str(self.config["bundle"]["name"])
            if ref == "bundle.target":
                return self.name
            if parts[0] == "resources" and len(parts) >= 4:
                return self.resource_field(parts[1:])
            raise LookupError(f"unresolvable reference ${{{ref}}}")

        return REFERENCE.sub(value, text)

    def jobs(self) -> dict[str, dict[str, Any]]:
        return dict(self.config.get("resources", {}).get("jobs") or {})


def task_job(task: dict[str, Any]) -> tuple[jobs.Job, list[str]]:
    """The pipeline job a task runs (a wheel console script or a spark-submit script) and its parameters."""
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
        return JOB_FUNCTIONS[function], list(wheel_task["parameters"])
    script_task = task["spark_python_task"]
    script = ROOT / script_task["python_file"]
    assert script.is_file(), script
    called = re.findall(r'run_job\("(\w+)", sys\.argv\[1:\]\)', script.read_text(encoding="utf-8"))
    assert len(called) == 1, f"{script} must call run_job(<job>, sys.argv[1:]) once"
    job: jobs.Job = called[0]
    return job, list(script_task["parameters"])


def task_config(target: Target, task: dict[str, Any]) -> tuple[jobs.Job, Any, Config]:
    """What a task's job would run with in ``target``: its job, parsed arguments and configuration."""
    job, parameters = task_job(task)
    args = jobs.build_parser(job).parse_args([target.resolve(p) for p in parameters])
    return job, args, load_config(args.config, args.overrides)


# -- the checks ---------------------------------------------------------------------------------------


def _target_mode_problems(target: Target) -> Iterator[str]:
    """validate_target_mode.go, for the target modes this bundle uses."""
    where = f"target {target.name!r}"
    if target.mode not in ("", "development", "production"):
        yield f"{where}: unsupported value '{target.mode}' specified for 'mode'"
    if target.mode == "production" and not target.config["_target_workspace"].get("root_path"):
        run_as_everywhere = bool(target.config.get("run_as")) or all(
            job.get("run_as") for job in target.jobs().values()
        )
        if not run_as_everywhere:
            yield f"{where}: target with 'mode: production' must set 'workspace.root_path'"
    if target.mode == "development":
        if str(target.presets.get("trigger_pause_status", "")).upper() == "UNPAUSED":
            yield f"{where}: target with 'mode: development' cannot set trigger pause status to UNPAUSED"
        for field in ("root_path", "file_path", "resource_path", "artifact_path", "state_path"):
            raw = target.config.get("workspace", {}).get(field)
            if raw and not raw.startswith("~/"):
                path = target.resolve(str(raw))
                if USER_NAME not in path and SHORT_NAME not in path:
                    yield f"{where}: workspace.{field} must start with '~/' or contain the current username"


def _variable_problems(bundle: dict[str, Any]) -> Iterator[str]:
    variables = bundle.get("variables") or {}
    for name in REQUIRED_VARIABLES:
        spec = variables.get(name)
        if spec is None:
            yield f"variable {name!r} is not declared"
        elif "default" in spec:
            yield f"variable {name!r} has a default ({spec['default']!r}): it must be required (set_variables.go)"
        for target, override in (bundle.get("targets") or {}).items():
            if name in ((override or {}).get("variables") or {}):
                yield f"target {target!r} gives variable {name!r} a value: it must come from the user"
    targets = [t or {} for t in (bundle.get("targets") or {}).values()]
    for name, spec in variables.items():
        for value in [spec.get("default"), *((t.get("variables") or {}).get(name) for t in targets)]:
            if isinstance(value, str) and PLACEHOLDER.search(value):
                yield f"variable {name!r} has a placeholder value {value!r}"


def _name_problems(target: Target) -> Iterator[str]:
    """Every writing task's catalog, schemas and checkpoint volume are the ones the bundle creates."""
    resources = target.config.get("resources", {})
    schemas: set[tuple[str, str]] = set()
    for key, schema in (resources.get("schemas") or {}).items():
        if schema.get("catalog_name") != "${var.catalog}":
            yield f"schema resource {key!r}: catalog_name is {schema.get('catalog_name')!r}, not ${{var.catalog}}"
        schemas.add((target.resolve(schema["catalog_name"]), target.resource_field(["schemas", key, "name"])))
    volumes: set[str] = set()
    for key, volume in (resources.get("volumes") or {}).items():
        try:
            catalog, schema = target.resolve(volume["catalog_name"]), target.resolve(volume["schema_name"])
        except LookupError as exc:
            yield f"volume resource {key!r}: {exc}"
            continue
        if (catalog, schema) not in schemas:
            yield f"volume resource {key!r} is in {catalog}.{schema}, a schema the bundle does not create"
        volumes.add(f"/Volumes/{catalog}/{schema}/{target.resolve(volume['name'])}")
    created = ", ".join(sorted(f"{c}.{s}" for c, s in schemas)) or "no schema"
    for job_key, job in target.jobs().items():
        for task in job.get("tasks", []):
            where = f"target {target.name!r}, job {job_key}, task {task['task_key']}"
            try:
                _, _, config = task_config(target, task)
            except (LookupError, InvalidConfigError) as exc:
                yield f"{where}: {exc}"
                continue
            catalog = str(config.storage.catalog)
            for layer in Layer:
                schema = config.storage.schemas[layer]
                if (catalog, schema) not in schemas:
                    yield (
                        f"{where}: storage.schemas.{layer.value} is {catalog}.{schema}, but the bundle creates "
                        f"{created} (development mode prefixes schema names)"
                    )
            root = config.storage.checkpoint_root.rstrip("/")
            if not any(root == v or root.startswith(v + "/") for v in volumes):
                yield f"{where}: storage.checkpoint_root {root} is in no volume the bundle creates ({sorted(volumes)})"


_SQL_REF = re.compile(r"(?i)\b(?:from|join)\s+((?:`[^`]*`|[\w]+)(?:\s*\.\s*(?:`[^`]*`|[\w]+))*)")
_CTE = re.compile(r"(?i)(?:\bwith|,)\s*(\w+)\s+as\s*\(")
_NAME_PART = re.compile(r"`([^`]*)`|(\w+)")
_SCHEMA_REF = re.compile(r"^\$\{resources\.schemas\.(\w+)\.name\}$")


def dashboard_definition(resource: dict[str, Any], root: Path = ROOT) -> tuple[dict[str, Any], bool]:
    """A dashboard resource's definition, and whether it comes from a file (which the CLI reads as is)."""
    if "file_path" in resource:
        path = root / resource["file_path"]
        definition: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        return definition, True
    serialized = resource["serialized_dashboard"]
    return (json.loads(serialized) if isinstance(serialized, str) else serialized), False


def table_references(sql: str) -> list[list[str]]:
    """The tables a query reads (FROM / JOIN targets that are not its CTEs), as name parts."""
    refs: dict[str, str] = {}

    def protect(match: re.Match[str]) -> str:  # `${var.catalog}` holds dots: keep it one token
        token = f"REF{len(refs)}X"
        refs[token] = match.group(0)
        return token

    text = REFERENCE.sub(protect, sql)
    ctes = {name.lower() for name in _CTE.findall(text)}
    tables = []
    for match in _SQL_REF.finditer(text):
        parts = [refs.get(quoted or bare, quoted or bare) for quoted, bare in _NAME_PART.findall(match.group(1))]
        if len(parts) == 1 and parts[0].lower() in ctes:
            continue
        tables.append(parts)
    return tables


def _dashboard_problems(bundle: dict[str, Any], root: Path) -> Iterator[str]:
    schema_keys = set(bundle.get("resources", {}).get("schemas") or {})
    for key, resource in (bundle.get("resources", {}).get("dashboards") or {}).items():
        where = f"dashboard {key!r}"
        if resource.get("warehouse_id") != "${var.warehouse_id}":  # required.go needs one; ours is the user's
            yield f"{where}: warehouse_id is {resource.get('warehouse_id')!r}, not ${{var.warehouse_id}}"
        definition, from_file = dashboard_definition(resource, root)
        default_catalog = resource.get("dataset_catalog")
        default_schema = resource.get("dataset_schema")
        for dataset in definition.get("datasets", []):
            sql = "".join(dataset.get("queryLines", [])) or dataset.get("query", "")
            if from_file and "${" in sql:
                yield f"{where}: dataset {dataset['name']} has ${{...}} references in a file_path dashboard"
            for parts in table_references(sql):
                name = ".".join(parts)
                catalog = parts[0] if len(parts) == 3 else default_catalog
                schema = parts[-2] if len(parts) >= 2 else default_schema
                if catalog != "${var.catalog}":
                    yield f"{where}: dataset {dataset['name']} reads {name} in catalog {catalog!r}, not the variable"
                found = _SCHEMA_REF.match(schema or "")
                if not found or found.group(1) not in schema_keys:
                    yield f"{where}: dataset {dataset['name']} reads {name} in schema {schema!r}, not a schema resource"
                elif parts[-1] in TABLES and TABLES[parts[-1]].layer != found.group(1):
                    yield (
                        f"{where}: dataset {dataset['name']} reads {parts[-1]} from schema resource "
                        f"{found.group(1)!r}, but it is a {TABLES[parts[-1]].layer} table"
                    )


def _concurrency_problems(target: Target) -> Iterator[str]:
    """Every job that runs the pipeline is limited to one run; unset means the target's preset."""
    preset = target.presets.get("jobs_max_concurrent_runs") or (4 if target.mode == "development" else 0)
    for key, job in target.jobs().items():
        writes = []
        for task in job.get("tasks", []):
            try:
                writes.append(task_job(task)[0])
            except (AssertionError, KeyError):
                continue
        runs = job.get("max_concurrent_runs") or preset or 1  # the Jobs API's default is 1
        if writes and runs != 1:
            source = "" if job.get("max_concurrent_runs") else " (unset: the target's preset)"
            yield f"target {target.name!r}, job {key}: max_concurrent_runs is {runs}{source}, must be 1"


def bundle_problems(bundle: dict[str, Any], root: Path = ROOT) -> list[str]:
    """Everything in ``bundle`` that the CLI would reject or that would fail the first run."""
    problems = [*_variable_problems(bundle), *_dashboard_problems(bundle, root)]
    for name in bundle.get("targets") or {}:
        target = Target.of(bundle, name)
        problems += [*_target_mode_problems(target), *_name_problems(target), *_concurrency_problems(target)]
    return problems


def test_the_bundle_has_none_of_the_problems_the_cli_or_a_first_run_would_hit() -> None:
    assert bundle_problems(BUNDLE) == []


def _drop(path: str) -> Callable[[dict[str, Any]], None]:
    def mutate(bundle: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = bundle
        for part in parents:
            node = node[part]
        del node[last]

    return mutate


def _put(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(bundle: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = bundle
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value

    return mutate


def _bronze_parameters(edit: Callable[[list[str]], list[str]]) -> Callable[[dict[str, Any]], None]:
    def mutate(bundle: dict[str, Any]) -> None:
        task = bundle["resources"]["jobs"]["fitbit_stream_layers"]["tasks"][0]
        task["python_wheel_task"]["parameters"] = edit(list(task["python_wheel_task"]["parameters"]))

    return mutate


def _without_schema_overrides(parameters: list[str]) -> list[str]:
    kept: list[str] = []
    for p in parameters:
        if p.startswith("storage.schemas."):
            kept.pop()  # its --set
        else:
            kept.append(p)
    return kept


def _dashboard_sql(old: str, new: str) -> Callable[[dict[str, Any]], None]:
    def mutate(bundle: dict[str, Any]) -> None:
        resource = bundle["resources"]["dashboards"]["fitbit_kpis"]
        resource["serialized_dashboard"] = resource["serialized_dashboard"].replace(old, new)

    return mutate


def _dashboard_file(tmp: Path, extra: dict[str, str], *, unqualified: bool = False) -> Callable[[dict[str, Any]], None]:
    """The dashboard as it was: the .lvdash.json of conf/databricks.yaml (fitbit.gold.*), by file_path.

    ``unqualified``: the tables by bare name, for the resource's dataset_catalog / dataset_schema.
    """

    def mutate(bundle: dict[str, Any]) -> None:
        from fitbit_stream.dashboard.lakeview import lakeview_dashboard

        text = json.dumps(lakeview_dashboard(load_config(ROOT / "conf" / "databricks.yaml")))
        if unqualified:
            text = re.sub(r"\bfitbit\.\w+\.(\w+)", r"\1", text)
        path = tmp / "fitbit_kpis.lvdash.json"
        path.write_text(text, encoding="utf-8")
        resource = bundle["resources"]["dashboards"]["fitbit_kpis"]
        del resource["serialized_dashboard"]
        resource.update({"file_path": str(path), **extra})

    return mutate


#: (mutation, what bundle_problems must then report): each reintroduces one problem of issue 15.
MUTATIONS: dict[str, tuple[Callable[[Path], Callable[[dict[str, Any]], None]], str]] = {
    "prod without root_path": (
        lambda _: _drop("targets.prod.workspace"),
        r"target 'prod': target with 'mode: production' must set 'workspace.root_path'",
    ),
    "unsupported mode": (lambda _: _put("targets.prod.mode", "staging"), r"unsupported value 'staging'"),
    "dev preset unpauses triggers": (
        lambda _: _put("targets.dev.presets", {"trigger_pause_status": "UNPAUSED"}),
        r"'mode: development' cannot set trigger pause status to UNPAUSED",
    ),
    "dev root_path without the user": (
        lambda _: _put("workspace", {"root_path": "/Workspace/Shared/fitbit_stream"}),
        r"target 'dev': workspace.root_path must start with '~/' or contain the current username",
    ),
    "a task hard-codes a schema": (
        lambda _: _bronze_parameters(lambda ps: [p.replace("${resources.schemas.bronze.name}", "bronze") for p in ps]),
        r"target 'dev', job fitbit_stream_layers, task bronze: storage.schemas.bronze is main.bronze, but the "
        r"bundle creates .*main.dev_someone_bronze",
    ),
    "a task takes the schemas of conf/databricks.yaml": (
        lambda _: _bronze_parameters(_without_schema_overrides),
        r"target 'dev', job fitbit_stream_layers, task \w+: storage.schemas.gold is main.gold",
    ),
    "a task hard-codes the checkpoint volume": (
        lambda _: _bronze_parameters(
            lambda ps: [
                "storage.checkpoint_root=/Volumes/${var.catalog}/ops/checkpoints"
                if p.startswith("storage.checkpoint_root=")
                else p
                for p in ps
            ]
        ),
        r"target 'dev', .*storage.checkpoint_root /Volumes/main/ops/checkpoints is in no volume",
    ),
    "the schemas are not bundle resources": (
        lambda _: _drop("resources.schemas"),
        r"reference to resources.schemas.\w+.name, which the bundle does not define",
    ),
    "a schema in a literal catalog": (
        lambda _: _put("resources.schemas.gold.catalog_name", "fitbit"),
        r"schema resource 'gold': catalog_name is 'fitbit'",
    ),
    "placeholder warehouse": (
        lambda _: _put("variables.warehouse_id.default", "0000000000000000"),
        r"variable 'warehouse_id' has a default \('0000000000000000'\)",
    ),
    "catalog with a default": (
        lambda _: _put("variables.catalog.default", "fitbit"),
        r"variable 'catalog' has a default \('fitbit'\)",
    ),
    "a target fills in the warehouse": (
        lambda _: _put("targets.prod.variables.warehouse_id", "0000000000000000"),
        r"target 'prod' gives variable 'warehouse_id' a value",
    ),
    "dashboard on a literal warehouse": (
        lambda _: _put("resources.dashboards.fitbit_kpis.warehouse_id", "0000000000000000"),
        r"dashboard 'fitbit_kpis': warehouse_id is '0000000000000000'",
    ),
    "hard-coded catalog in the dashboard": (
        lambda _: _dashboard_sql("`${var.catalog}`", "fitbit"),
        r"dashboard 'fitbit_kpis': dataset workouts reads fitbit\.\$\{resources.schemas.gold.name\}"
        r"\.workout_bpm_summary in catalog 'fitbit'",
    ),
    "hard-coded schema in the dashboard": (
        lambda _: _dashboard_sql("`${resources.schemas.silver.name}`", "silver"),
        r"dashboard 'fitbit_kpis': dataset visits reads .*silver\.users in schema 'silver'",
    ),
    "dashboard .lvdash.json with fitbit.gold.*": (
        lambda tmp: _dashboard_file(tmp, {}),
        r"dataset workouts reads fitbit\.gold\.workout_bpm_summary in catalog 'fitbit'",
    ),
    # dataset_catalog / dataset_schema name one schema; the datasets read gold AND silver tables.
    "dashboard .lvdash.json with dataset_catalog and dataset_schema": (
        lambda tmp: _dashboard_file(
            tmp,
            {"dataset_catalog": "${var.catalog}", "dataset_schema": "${resources.schemas.gold.name}"},
            unqualified=True,
        ),
        r"dataset visits reads users from schema resource 'gold', but it is a silver table",
    ),
    "continuous job without a concurrency limit": (
        lambda _: _drop("resources.jobs.fitbit_stream_continuous.max_concurrent_runs"),
        r"target 'dev', job fitbit_stream_continuous: max_concurrent_runs is 4 \(unset: the target's preset\)",
    ),
    "backfill job without a concurrency limit": (
        lambda _: _drop("resources.jobs.fitbit_stream_backfill.max_concurrent_runs"),
        r"target 'dev', job fitbit_stream_backfill: max_concurrent_runs is 4",
    ),
    "scheduled job allows two runs": (
        lambda _: _put("resources.jobs.fitbit_stream_layers.max_concurrent_runs", 2),
        r"target 'prod', job fitbit_stream_layers: max_concurrent_runs is 2, must be 1",
    ),
}


@pytest.mark.parametrize("problem", list(MUTATIONS))
def test_each_problem_is_reported_when_reintroduced(problem: str, tmp_path: Path) -> None:
    make, expected = MUTATIONS[problem]
    bundle = copy.deepcopy(BUNDLE)
    make(tmp_path)(bundle)
    problems = bundle_problems(bundle)
    assert any(re.search(expected, p) for p in problems), "\n".join(problems) or "no problem reported"


# -- what the jobs run --------------------------------------------------------------------------------

TASKS = [
    pytest.param(target, key, task, id=f"{target}.{key}.{task['task_key']}")
    for target in sorted(BUNDLE["targets"])
    for key, job in Target.of(BUNDLE, target).jobs().items()
    for task in job["tasks"]
]


@pytest.mark.parametrize(("target_name", "job_key", "task"), TASKS)
def test_every_task_runs_a_real_entry_point_with_a_valid_config(
    target_name: str, job_key: str, task: dict[str, Any]
) -> None:
    target = Target.of(BUNDLE, target_name)
    job = target.jobs()[job_key]
    assert task["job_cluster_key"] in {c["job_cluster_key"] for c in job["job_clusters"]}
    _, args, config = task_config(target, task)
    assert args.config == str(ROOT / "conf" / "databricks.yaml")
    assert config.platform is Platform.DATABRICKS
    # A scheduled job drains and exits; a continuous one keeps its queries running.
    assert args.once == ("continuous" not in job)


@pytest.mark.parametrize(
    ("target_name", "prefix"), [("dev", "dev_someone_"), ("prod", "")], ids=["dev (prefixed)", "prod"]
)
def test_jobs_use_the_schemas_and_volume_the_bundle_creates_in_each_target(target_name: str, prefix: str) -> None:
    target = Target.of(BUNDLE, target_name)
    for job in target.jobs().values():
        for task in job["tasks"]:
            _, _, config = task_config(target, task)
            assert config.storage.catalog == "main"
            assert {layer.value: name for layer, name in config.storage.schemas.items()} == {
                layer.value: f"{prefix}{layer.value}" for layer in Layer
            }
            assert config.storage.checkpoint_root == f"/Volumes/main/{prefix}ops/checkpoints"
            tables = Tables(config)
            assert str(tables.ref("heart_rate")) == f"main.{prefix}silver.heart_rate"


def test_required_variables_stop_the_cli_until_the_user_gives_them() -> None:
    target = Target.of(BUNDLE, "dev", user_variables={})
    with pytest.raises(LookupError, match="no value assigned to required variable catalog"):
        target.resolve("${var.catalog}")
    with pytest.raises(LookupError, match="no value assigned to required variable warehouse_id"):
        target.resolve("${var.warehouse_id}")


def test_the_production_target_deploys_to_one_root_path_per_user() -> None:
    target = Target.of(BUNDLE, "prod")
    root = target.resolve(target.config["_target_workspace"]["root_path"])
    assert root == f"/Workspace/Users/{USER_NAME}/.bundle/fitbit_stream/prod"


def test_the_wheel_artifact_is_what_the_tasks_install() -> None:
    (artifact,) = BUNDLE["artifacts"].values()
    assert artifact["type"] == "whl"
    assert artifact["path"] == "."
    assert "--outdir dist" in artifact["build"]
    for job in BUNDLE["resources"]["jobs"].values():
        for task in job["tasks"]:
            assert {"whl": "./dist/*.whl"} in task["libraries"]


def test_the_scheduled_job_runs_the_layers_in_dependency_order() -> None:
    tasks = BUNDLE["resources"]["jobs"]["fitbit_stream_layers"]["tasks"]
    order = [(t["task_key"], [d["task_key"] for d in t.get("depends_on", [])]) for t in tasks]
    assert order == [("bronze", []), ("silver", ["bronze"]), ("gold", ["silver"])]


@pytest.mark.parametrize("target_name", sorted(BUNDLE["targets"]))
def test_schedule_and_continuous_run_are_never_both_on(target_name: str) -> None:
    target = Target.of(BUNDLE, target_name)
    resources = target.jobs()
    schedule = target.resolve(resources["fitbit_stream_layers"]["schedule"]["pause_status"])
    continuous = target.resolve(resources["fitbit_stream_continuous"]["continuous"]["pause_status"])
    assert {schedule, continuous} <= {"PAUSED", "UNPAUSED"}
    assert (schedule, continuous) != ("UNPAUSED", "UNPAUSED")


def test_the_dashboard_resource_is_the_generated_file_the_bundle_includes() -> None:
    assert str(BUNDLE_DASHBOARD_FILE) in BUNDLE["include"]
    dashboard = BUNDLE["resources"]["dashboards"]["fitbit_kpis"]
    definition, from_file = dashboard_definition(dashboard)
    assert not from_file
    assert {d["name"] for d in definition["datasets"]} == {"workouts", "visits", "occupancy", "members"}


def test_the_runtime_ships_the_spark_the_tests_run() -> None:
    runtime = BUNDLE["variables"]["spark_version"]["default"]
    assert runtime in RUNTIME_SPARK, f"{runtime}: which Apache Spark does it ship? (runtime release notes)"
    tested = ".".join(importlib.metadata.version("pyspark").split(".")[:2])
    assert RUNTIME_SPARK[runtime] == tested


# -- what the jobs import on a cluster ----------------------------------------------------------------

#: Provided by the Databricks runtime itself (a pip-installed copy would shadow the cluster's own).
RUNTIME_PROVIDED = {"pyspark", "delta-spark", "py4j"}


def _module_file(module: str) -> Path | None:
    base = ROOT / "src" / Path(*module.split("."))
    for path in (base / "__init__.py", base.with_suffix(".py")):
        if path.is_file():
            return path
    return None


def job_imports() -> dict[str, set[str]]:
    """Third-party modules that the job entry points can import, with the modules importing them.

    Follows every import of fitbit_stream.jobs, function-local ones too (those are the imports that
    happen only on the cluster, e.g. the Kafka offset lookup).
    """
    seen: set[str] = set()
    found: dict[str, set[str]] = {}
    todo = ["fitbit_stream.jobs"]
    while todo:
        module = todo.pop()
        path = _module_file(module)
        if module in seen or path is None:
            continue
        seen.add(module)
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*parts, base] if base else parts)
                names = [base]
                if base.startswith("fitbit_stream"):  # `from fitbit_stream.io import merge` imports a module
                    names += [f"{base}.{alias.name}" for alias in node.names]
            for name in names:
                top = name.partition(".")[0]
                if top == "fitbit_stream":
                    parts = name.split(".")
                    todo += [".".join(parts[: i + 1]) for i in range(1, len(parts))]
                elif top and top not in sys.stdlib_module_names and top != "__future__":
                    found.setdefault(name, set()).add(module)
    return found


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(requirement: str) -> str:
    return _normalize(re.split(r"[\s<>=!~;\[(]", requirement.strip(), maxsplit=1)[0])


def _distribution_of(module: str, files: dict[Path, str]) -> str:
    spec = importlib.util.find_spec(module)
    assert spec is not None, f"{module} is not installed here"
    assert spec.origin, f"{module} has no file"
    return files[Path(spec.origin).resolve()]


def _with_dependencies(names: set[str]) -> set[str]:
    """``names`` and everything they require (the unconditional requirements, transitively)."""
    todo, closed = list(names), set()
    while todo:
        name = todo.pop()
        if name in closed:
            continue
        closed.add(name)
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        todo += [_requirement_name(r) for r in requires if "extra ==" not in r]
    return closed


def test_every_task_installs_what_the_jobs_import() -> None:
    """Outcome 4 of issue 15: no documented guarantee degrades to a warning for want of a package."""
    files = {
        Path(str(dist.locate_file(f))).resolve(): _normalize(dist.metadata["Name"])
        for dist in importlib.metadata.distributions()
        for f in dist.files or []
        if f.suffix == ".py"
    }
    needed: dict[str, set[str]] = {}
    for module, importers in job_imports().items():
        needed.setdefault(_distribution_of(module, files), set()).update(importers)
    assert "confluent-kafka" in needed, "the Kafka offset lookup no longer imports confluent_kafka?"
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg", encoding="utf-8")
    required = {_requirement_name(r) for r in parser["options"]["install_requires"].splitlines() if r.strip()}
    for job in BUNDLE["resources"]["jobs"].values():
        for task in job["tasks"]:
            libraries = {_requirement_name(lib["pypi"]["package"]) for lib in task["libraries"] if "pypi" in lib}
            installed = _with_dependencies(required | libraries) | RUNTIME_PROVIDED
            missing = {dist: sorted(importers) for dist, importers in needed.items() if dist not in installed}
            assert missing == {}, f"task {task['task_key']}: imported at run time but not installed: {missing}"


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


@pytest.mark.parametrize(
    ("version", "refused", "warning"),
    [
        ("3.5.2", "Spark 3.5.2 is too old: fitbit-stream needs Spark 4.0 or newer", None),
        ("4.0.0", None, "Spark 4.0.0: fitbit-stream is tested on Spark 4.2 (Databricks runtime 19)"),
        ("4.2.0", None, None),
        ("4.2.1-SNAPSHOT", None, None),
    ],
)
def test_the_runtime_spark_version_is_checked_before_the_session_is_touched(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    version: str,
    refused: str | None,
    warning: str | None,
) -> None:
    """A cluster whose Spark lacks what the transforms use is refused in one line that names the
    version and the fix, before any credential or setting; an untested 4.x gets one warning line."""
    from pyspark.sql import SparkSession

    cluster = FakeSession(version)
    monkeypatch.setattr(SparkSession, "getActiveSession", classmethod(lambda cls: cluster))
    config = load_config(ROOT / "conf" / "databricks.yaml")
    credential = FakeCredential()
    auth = AzureAuth(config, credential=credential, dbutils=FakeDBUtils(SECRETS))
    caplog.set_level(logging.WARNING, logger="fitbit_stream.session")
    if refused is not None:
        with pytest.raises(PlatformError, match=re.escape(refused)) as info:
            get_spark(config, auth=auth)
        assert "\n" not in str(info.value)
        assert "runtime 17.3 LTS or newer" in str(info.value)
        assert cluster.conf.values == {}
        assert credential.scopes == []
        return
    get_spark(config, auth=auth)
    assert cluster.conf.values["spark.sql.session.timeZone"] == "UTC"
    assert [r.getMessage() for r in caplog.records if r.name == "fitbit_stream.session"] == (
        [] if warning is None else [warning]
    )


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
