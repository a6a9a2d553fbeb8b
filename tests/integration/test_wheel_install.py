"""The wheel on a cluster: installed WITHOUT extras, it imports everything the jobs import but Spark.

A Databricks job installs ``dist/*.whl`` with its ``install_requires`` (pip, from the index) and runs
an entry point of :mod:`fitbit_stream.jobs`; the runtime brings pyspark, delta-spark and py4j. This
test does the same in a fresh virtual environment with no Spark at all:

- the import closure of ``fitbit_stream.jobs`` is followed in the INSTALLED files, function-local
  imports included (``run_pipeline`` imports the pipeline, the session and the sources lazily; the
  Kafka offset lookup imports confluent_kafka only when it runs) and ``if TYPE_CHECKING:`` blocks
  left out (never executed): every module of it must be in the wheel, none of it a development
  tool (platform, generator, bench);
- every third-party module those files import, at the top or inside a function, is imported: each
  must succeed, except pyspark, delta and py4j, which must be absent (the install pulled no Spark);
- every module of the closure is imported: each either succeeds or fails with a
  ``ModuleNotFoundError`` for pyspark, delta or py4j, and for nothing else.

The second point is what keeps the third honest: a module that stops at its ``import pyspark`` line
never reaches the imports below it, but those were imported one by one. Finally the same modules
are imported with Spark present, as on the cluster (this environment's pyspark, py4j and delta
linked onto the path, standing in for the runtime's): every one of them then imports.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import venv
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: What the Databricks runtime provides (py4j comes with pyspark).
RUNTIME_PROVIDED = ("pyspark", "delta", "py4j")
DEV_PACKAGES = ("fitbit_stream.platform", "fitbit_stream.generator", "fitbit_stream.bench")
#: The job entry points: the console scripts of python_wheel_task and entrypoints/*.py call these.
ROOTS = ("fitbit_stream.jobs",)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built from a copy of the build inputs (the checkout is shared and may change)."""
    project = tmp_path_factory.mktemp("project")
    for name in ("pyproject.toml", "setup.cfg", "README.md", "MANIFEST.in", "LICENSE"):
        if (ROOT / name).exists():
            shutil.copy2(ROOT / name, project / name)
    shutil.copytree(
        ROOT / "src" / "fitbit_stream",
        project / "src" / "fitbit_stream",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"),
    )
    dist = tmp_path_factory.mktemp("dist")
    built = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(dist), str(project)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert built.returncode == 0, f"build failed:\n{built.stdout[-4000:]}\n{built.stderr[-4000:]}"
    (found,) = dist.glob("*.whl")
    return found


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "SPARK_HOME")}


@pytest.fixture(scope="module")
def runtime_env(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(python, site-packages) of a fresh venv holding the wheel and its requirements, no extras."""
    env_dir = tmp_path_factory.mktemp("cluster") / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    # pip of this environment installs into the new one; requirements come from the index, pinned
    # by the project's constraints (they constrain versions, they add nothing).
    installed = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-c",
            str(ROOT / "constraints.txt"),
            str(wheel),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env=_clean_env(),
    )
    assert installed.returncode == 0, installed.stdout[-4000:] + installed.stderr[-4000:]
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
        env=_clean_env(),
    )
    return python, Path(site.stdout.strip())


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(node: ast.AST, package: str) -> Iterator[str]:
    """Absolute names of the modules ``node`` imports at run time, anywhere in it (``from a import
    b``: a, and a.b when a is this package, where b may be a module or a name defined in a)."""
    if isinstance(node, ast.If) and _is_type_checking(node):
        for child in node.orelse:
            yield from _imports(child, package)
        return
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
            parts = package.split(".")[: len(package.split(".")) - node.level + 1]
            base = ".".join([*parts, base] if base else parts)
        yield base
        if base.partition(".")[0] == "fitbit_stream":
            yield from (f"{base}.{alias.name}" for alias in node.names)
    for child in ast.iter_child_nodes(node):
        yield from _imports(child, package)


def _closure(site: Path) -> tuple[set[str], set[str], set[str]]:
    """(fitbit_stream modules reached from ROOTS, those of them missing from ``site``, third-party
    modules they import), following the installed files."""
    reached: set[str] = set()
    missing: set[str] = set()
    third_party: set[str] = set()
    todo = list(ROOTS)
    while todo:
        module = todo.pop()
        if module in reached or module in missing:
            continue
        base = site / Path(*module.split("."))
        path = next((p for p in (base / "__init__.py", base.with_suffix(".py")) if p.is_file()), None)
        if path is None:
            # ``from fitbit_stream.io import merge`` names a module, ``from fitbit_stream.x import f``
            # a function: only a name whose parent module exists and does not define it is missing.
            missing.add(module)
            continue
        reached.add(module)
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for name in _imports(ast.parse(path.read_text(encoding="utf-8")), package):
            top = name.partition(".")[0]
            if top == "fitbit_stream":
                parts = name.split(".")
                todo += [".".join(parts[: i + 1]) for i in range(1, len(parts))]
            elif top and top != "__future__" and top not in sys.stdlib_module_names:
                third_party.add(name)
    return reached, missing, third_party


def _defined_in_parent(site: Path, name: str) -> bool:
    """Whether ``name`` (a.b.c) is an attribute its parent module's source defines or imports."""
    parent, _, attr = name.rpartition(".")
    base = site / Path(*parent.split("."))
    path = next((p for p in (base / "__init__.py", base.with_suffix(".py")) if p.is_file()), None)
    if path is None:
        return False
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and node.name == attr:
            return True
        if isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == attr for t in targets):
                return True
        if isinstance(node, ast.ImportFrom | ast.Import) and any(
            (alias.asname or alias.name.partition(".")[0]) == attr for alias in node.names
        ):
            return True
    return False


_PROBE = """
import importlib, importlib.util, json, sys
modules, third_party, provided = json.loads(sys.argv[1])
def attempt(name):
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as exc:
        return ["ModuleNotFoundError", exc.name, str(exc)]
    except BaseException as exc:
        return [type(exc).__name__, None, str(exc)]
    return None
print(json.dumps({
    "modules": {m: attempt(m) for m in modules},
    "third_party": {m: attempt(m) for m in third_party},
    "provided": {m: importlib.util.find_spec(m) is not None for m in provided},
    "package": importlib.import_module("fitbit_stream").__file__,
}))
"""


def _spark(name: str | None) -> bool:
    return name is not None and name.partition(".")[0] in RUNTIME_PROVIDED


def test_the_wheel_alone_imports_everything_the_jobs_import_but_spark(
    runtime_env: tuple[Path, Path], tmp_path: Path
) -> None:
    python, site = runtime_env
    reached, names_not_modules, third_party = _closure(site)
    missing = {name for name in names_not_modules if not _defined_in_parent(site, name)}
    assert missing == set(), f"imported by the jobs but not in the wheel: {sorted(missing)}"
    assert not [m for m in reached if m.startswith(DEV_PACKAGES)], "a job imports a development tool"
    # The lazy imports of run_pipeline and of the Kafka offset lookup are followed.
    assert {"fitbit_stream.pipeline", "fitbit_stream.session", "fitbit_stream.io.sources"} <= reached
    assert any(name.startswith("confluent_kafka") for name in third_party), sorted(third_party)

    probe = subprocess.run(
        [str(python), "-c", _PROBE, json.dumps([sorted(reached), sorted(third_party), list(RUNTIME_PROVIDED)])],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=_clean_env(),
    )
    assert probe.returncode == 0, probe.stderr[-4000:]
    result = json.loads(probe.stdout)
    assert Path(result["package"]).is_relative_to(site), result["package"]
    # No Spark came with the wheel: the runtime's own must not be shadowed.
    assert result["provided"] == dict.fromkeys(RUNTIME_PROVIDED, False)

    # Every third-party import of the closure but Spark's works, wherever it sits in its module.
    broken = {name: why for name, why in result["third_party"].items() if why is not None and not _spark(name)}
    assert broken == {}, f"not installed by the wheel's requirements: {broken}"
    assert all(why is not None for name, why in result["third_party"].items() if _spark(name))

    # Every module imports, or stops at Spark and nothing else.
    failed = {name: why for name, why in result["modules"].items() if why is not None}
    other = {name: why for name, why in failed.items() if why[0] != "ModuleNotFoundError" or not _spark(why[1])}
    assert other == {}, f"modules failing for something other than the runtime's Spark: {other}"
    assert result["modules"]["fitbit_stream.jobs"] is None, "the entry points must import without Spark"

    # With the runtime's Spark on the path, the whole closure imports.
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    for name in RUNTIME_PROVIDED:
        spec = importlib.util.find_spec(name)
        assert spec is not None, f"{name} is not installed in the test environment"
        assert spec.origin is not None, name
        (runtime / name).symlink_to(Path(spec.origin).parent, target_is_directory=True)
    with_spark = subprocess.run(
        [str(python), "-c", _PROBE, json.dumps([sorted(reached), sorted(third_party), list(RUNTIME_PROVIDED)])],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**_clean_env(), "PYTHONPATH": str(runtime)},
    )
    assert with_spark.returncode == 0, with_spark.stderr[-4000:]
    on_cluster = json.loads(with_spark.stdout)
    assert on_cluster["provided"] == dict.fromkeys(RUNTIME_PROVIDED, True)
    assert Path(on_cluster["package"]).is_relative_to(site), on_cluster["package"]
    assert {name: why for name, why in on_cluster["modules"].items() if why is not None} == {}
    assert {name: why for name, why in on_cluster["third_party"].items() if why is not None} == {}
