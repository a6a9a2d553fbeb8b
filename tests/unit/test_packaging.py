"""The wheel as shipped: its files, its metadata, and its console script working without Spark.

On Databricks the runtime provides pyspark and delta-spark; a wheel that required them would make pip
install a second Spark over the cluster's own. So they may only appear behind an extra, and the parts
of the package that need no Spark (the CLI's parser, ``config``) must not import it.

The wheel carries the runtime only: the development tools (the local platform, the data generator,
the benchmark) stay in the source tree, and the CLI commands that need them say so in one line.
``tests/integration/test_wheel_install.py`` installs the wheel with its requirements from the index
into a fresh environment and imports everything the jobs import.
"""

from __future__ import annotations

import configparser
import email.parser
import email.policy
import json
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "src" / "fitbit_stream"
SPARK_DISTRIBUTIONS = {"pyspark", "delta-spark"}
# Top-level modules of the Spark distributions (py4j comes with pyspark).
SPARK_MODULES = ("pyspark", "delta", "py4j")
#: Every console script of the wheel: the CLI and one per Databricks job (python_wheel_task).
CONSOLE_SCRIPTS = {
    "fitbit-stream": "fitbit_stream.cli:main",
    "fitbit-stream-bronze": "fitbit_stream.jobs:bronze",
    "fitbit-stream-silver": "fitbit_stream.jobs:silver",
    "fitbit-stream-gold": "fitbit_stream.jobs:gold",
    "fitbit-stream-all": "fitbit_stream.jobs:all_layers",
}
SUBPACKAGES = ("transforms", "io", "dashboard")
#: In the source tree (an editable install imports them), never in the wheel.
DEV_PACKAGES = ("platform", "generator", "bench")
#: The CLI commands that need the development tools, with the arguments they are run with here.
DEV_COMMANDS = {
    "platform": ["platform", "status"],
    "generate": ["generate"],
    "demo": ["demo"],
    "bench": ["bench"],
}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the build inputs (the checkout is shared and may change while the tests run).

    A copy, so the build neither writes ``build/`` and ``*.egg-info`` into the shared checkout nor
    picks up a stale ``build/lib`` left there by an earlier build (setuptools reuses it).
    """
    copy = tmp_path_factory.mktemp("project")
    for name in ("pyproject.toml", "setup.cfg", "README.md", "MANIFEST.in", "LICENSE"):
        if (ROOT / name).exists():
            shutil.copy2(ROOT / name, copy / name)
    shutil.copytree(
        PACKAGE,
        copy / "src" / "fitbit_stream",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"),
    )
    return copy


@pytest.fixture(scope="module")
def wheel(project: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    dist = tmp_path_factory.mktemp("dist")
    result = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(dist), str(project)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, f"build failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    wheels = list(dist.glob("*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def _names(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as zf:
        return set(zf.namelist())


def _dist_info(wheel: Path) -> str:
    dirs = {name.split("/")[0] for name in _names(wheel) if name.split("/")[0].endswith(".dist-info")}
    assert len(dirs) == 1, dirs
    return dirs.pop()


def _read(wheel: Path, name: str) -> str:
    with zipfile.ZipFile(wheel) as zf:
        return zf.read(name).decode("utf-8")


def test_wheel_ships_every_module_and_the_typing_marker_and_nothing_else(project: Path, wheel: Path) -> None:
    names = _names(wheel)
    dist_info = _dist_info(wheel)

    package = project / "src" / "fitbit_stream"
    for dev in DEV_PACKAGES:
        assert (package / dev / "__init__.py").is_file(), f"{dev} is no longer in the source tree?"
    expected_modules = {
        "fitbit_stream/" + p.relative_to(package).as_posix()
        for p in package.rglob("*.py")
        if p.relative_to(package).parts[0] not in DEV_PACKAGES
    }
    # The dashboard's script and style sheet are inlined into the page it writes: they must ship.
    assets = {
        "fitbit_stream/" + p.relative_to(package).as_posix()
        for p in (package / "dashboard" / "assets").iterdir()
        if p.suffix in (".js", ".css")
    }
    assert assets, "the dashboard assets are missing from the source tree"
    package_files = {n for n in names if n.startswith("fitbit_stream/")}
    assert package_files == expected_modules | assets | {"fitbit_stream/py.typed"}
    for sub in SUBPACKAGES:
        assert f"fitbit_stream/{sub}/__init__.py" in names
    assert not [n for n in names if n.split("/")[:2] in (["fitbit_stream", dev] for dev in DEV_PACKAGES)]
    # Only the package and its metadata: no tests, data, config, caches or compiled files.
    assert {n.split("/")[0] for n in names} == {"fitbit_stream", dist_info}
    assert not [n for n in names if "__pycache__" in n or n.endswith((".pyc", ".pyo"))]


def test_metadata_needs_no_spark_unless_an_extra_asks_for_it(wheel: Path) -> None:
    metadata = email.parser.Parser(policy=email.policy.compat32).parsestr(_read(wheel, f"{_dist_info(wheel)}/METADATA"))
    assert metadata["Name"] == "fitbit-stream"
    assert metadata["Requires-Python"] == ">=3.11"
    requirements = [Requirement(r) for r in metadata.get_all("Requires-Dist") or []]

    unconditional = {canonicalize_name(r.name) for r in requirements if r.marker is None}
    # azure-identity signs in to ADLS and Azure SQL (imported lazily, see fitbit_stream.azure);
    # confluent-kafka looks up Kafka offsets on the cluster (retention check, resume after a reset).
    assert unconditional >= {"pydantic", "pyyaml", "azure-identity", "confluent-kafka"}
    assert not unconditional & SPARK_DISTRIBUTIONS

    for extra in ("local", "dev"):
        pulled = {
            canonicalize_name(r.name)
            for r in requirements
            if r.marker is not None and r.marker.evaluate({"extra": extra})
        }
        assert pulled >= SPARK_DISTRIBUTIONS, extra
    # Every Spark requirement sits behind an extra: with none selected, none applies.
    assert not [
        r
        for r in requirements
        if canonicalize_name(r.name) in SPARK_DISTRIBUTIONS and (r.marker is None or r.marker.evaluate({"extra": ""}))
    ]


def test_console_script_is_declared(wheel: Path) -> None:
    entry_points = configparser.ConfigParser()
    entry_points.read_string(_read(wheel, f"{_dist_info(wheel)}/entry_points.txt"))
    assert dict(entry_points["console_scripts"]) == CONSOLE_SCRIPTS


def test_installed_console_script_runs_without_spark(wheel: Path, tmp_path: Path) -> None:
    """Install the wheel into a fresh venv and run its ``fitbit-stream`` script with Spark absent.

    The venv gets the wheel alone (``--no-deps``, offline). Its runtime dependencies come from this
    interpreter's site-packages through a ``.pth`` file, which also marks the Spark modules as
    missing: a ``.pth`` file added that way does not process the editable install's own ``.pth``, so
    the package imported is the installed wheel's.
    """
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    bin_dir = env_dir / ("Scripts" if sys.platform == "win32" else "bin")
    python = bin_dir / ("python.exe" if sys.platform == "win32" else "python")
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert install.returncode == 0, install.stdout + install.stderr

    site_packages = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    blocked = ", ".join(repr(m) for m in SPARK_MODULES)
    (site_packages / "zz_test_deps.pth").write_text(
        f"{sysconfig.get_path('purelib')}\nimport sys; sys.modules.update(dict.fromkeys(({blocked}), None))\n"
    )

    probe = subprocess.run(
        [
            str(python),
            "-c",
            "import importlib.util, fitbit_stream.cli; print(fitbit_stream.cli.__file__); "
            f"print(any(importlib.util.find_spec(m) is not None for m in ({blocked},)))",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert probe.returncode == 0, probe.stderr
    module_file, spark_visible = probe.stdout.split()
    assert Path(module_file).is_relative_to(site_packages)
    assert spark_visible == "False"

    script = bin_dir / ("fitbit-stream.exe" if sys.platform == "win32" else "fitbit-stream")
    usage = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60, check=False)
    assert usage.returncode == 0, usage.stderr
    for command in ("run", "platform", "generate", "demo", "config"):
        assert f"    {command} " in usage.stdout, command
    for name in CONSOLE_SCRIPTS.keys() - {"fitbit-stream"}:
        job = bin_dir / (f"{name}.exe" if sys.platform == "win32" else name)
        job_usage = subprocess.run([str(job), "--help"], capture_output=True, text=True, timeout=60, check=False)
        assert job_usage.returncode == 0, job_usage.stderr
        assert job_usage.stdout.startswith(f"usage: {name} "), job_usage.stdout
        for option in ("--config", "--set", "--once"):
            assert option in job_usage.stdout, (name, option)

    # The commands of the development tools fail with one line naming what is missing and the fix
    # (one process runs all four: each is main() as the console script calls it).
    dev_probe = subprocess.run(
        [
            str(python),
            "-c",
            "import contextlib, io, json, sys; from fitbit_stream.cli import main\n"
            "out = {}\n"
            f"for name, argv in {DEV_COMMANDS!r}.items():\n"
            "    err = io.StringIO()\n"
            "    with contextlib.redirect_stderr(err): code = main(argv)\n"
            "    out[name] = [code, err.getvalue()]\n"
            "print(json.dumps(out))",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert dev_probe.returncode == 0, dev_probe.stderr
    needs = {
        "platform": "fitbit_stream.platform",
        "generate": "fitbit_stream.generator",
        "demo": "fitbit_stream.platform, fitbit_stream.generator",
        "bench": "fitbit_stream.bench, fitbit_stream.platform, fitbit_stream.generator",
    }
    assert json.loads(dev_probe.stdout) == {
        name: [
            2,
            f"fitbit-stream: error: {name} needs the development tools ({needs[name]}), which the wheel does not "
            "ship: clone the repository and run ./scripts/setup.sh\n",
        ]
        for name in DEV_COMMANDS
    }

    shown = subprocess.run(
        [str(script), "config", "--config", "conf/local.yaml"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert shown.returncode == 0, shown.stderr
    assert '"platform": "local"' in shown.stdout
