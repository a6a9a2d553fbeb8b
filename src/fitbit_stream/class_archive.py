"""The local driver JVM's class-data-sharing archive: a cold local session starts in about half the time.

Every local run's JVM spends its first seconds loading and verifying the same ~20,000 classes from
Spark's, Delta's and the connectors' jars. The JDK's dynamic class-data sharing (JEP 350) writes the
classes a run loaded into an archive when that JVM exits; a later JVM with the same Java build and
class path maps them instead of loading them again. ``scripts/setup.sh`` trains one archive per Java
and jar set (``python -m fitbit_stream.class_archive``: a small pipeline run over generated landing
files and SQLite, no broker needed), and :func:`fitbit_stream.session.get_spark` hands it to a local
driver when it exists.

The JVM checks the archive itself; when it cannot use it (another Java, another class path) it loads
the classes from the jars as before, without a warning. The archive changes how fast a session
starts, never what it does. On Databricks and under spark-submit someone else starts the JVM:
nothing changes there. A configuration that names its own ``-XX:SharedArchiveFile``,
``-XX:ArchiveClassesAtExit`` or ``-Xshare`` option in ``spark.driver.extraJavaOptions`` keeps it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from fitbit_stream.errors import FitbitStreamError

__all__ = ["QUIET", "archive_path", "driver_options", "names_its_own", "train"]

#: The JVM's notes about the archive (one it cannot use, classes it skips when writing one) are off.
QUIET = "-Xlog:cds=off,cds+dynamic=off"
_OWN = ("SharedArchiveFile", "ArchiveClassesAtExit", "-Xshare")


def _java() -> Path | None:
    """The java that PySpark's launcher runs: ``$JAVA_HOME/bin/java``, else the first on ``PATH``."""
    home = os.environ.get("JAVA_HOME")
    found = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    return Path(found).resolve() if found and Path(found).is_file() else None


def archive_path(jars_base: Path, jars: Sequence[str]) -> Path | None:
    """Where the archive for this Java, this PySpark and these jars lives (``<jars_base>/cds``).

    The name carries a digest of all three, so a new Java, PySpark or jar set gets its own archive
    rather than one the JVM would turn down. None when no java is found.
    """
    java = _java()
    if java is None:
        return None
    import pyspark

    digest = hashlib.sha256()
    stat = java.stat()
    digest.update(f"{java}|{stat.st_size}|{stat.st_mtime_ns}|{pyspark.__version__}\n".encode())
    for jar in [*sorted((Path(pyspark.__file__).parent / "jars").glob("*.jar")), *map(Path, jars)]:
        digest.update(f"{jar.name}|{jar.stat().st_size if jar.exists() else -1}\n".encode())
    return jars_base.resolve() / "cds" / f"driver-{digest.hexdigest()[:16]}.jsa"


def names_its_own(java_options: str) -> bool:
    """Whether driver Java options already decide class-data sharing themselves."""
    return any(flag in java_options for flag in _OWN)


def driver_options(jars_base: Path, jars: Sequence[str]) -> str:
    """The Java options that hand a trained archive to a local driver ('' when there is none)."""
    archive = archive_path(jars_base, jars)
    if archive is None or not archive.is_file():
        return ""
    text = f'"{archive}"' if " " in str(archive) else str(archive)
    return f"-XX:SharedArchiveFile={text} {QUIET}"


# The JVM writes the archive as it exits, which is after the Python process that started it has
# ended: the training run waits for its JVM (PySpark's gateway process) before it returns.
_RUN_AND_WAIT = """
import sys
from fitbit_stream.cli import main
code = main(sys.argv[1:])
from pyspark import SparkContext
proc = getattr(SparkContext._gateway, "proc", None)
if proc is not None:
    proc.stdin.close()
    proc.wait(timeout=300)
sys.exit(code)
"""


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "fitbit_stream.cli", *args]


def _quietly(command: list[str], cwd: Path) -> None:
    """Run a training step; its output only when it fails (the JVM's exit under a live Python is noisy)."""
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
        raise RuntimeError(f"`{' '.join(command[:4])} ...` exited with {done.returncode}: {tail}")


def train(jars_dir: str | Path) -> Path:
    """Write the archive for the current Java and jars; return its path (kept when it exists).

    A pipeline run over a small generated world (landing files and SQLite, so no broker is needed)
    in a child process whose JVM writes the classes it loaded on exit. Written under a temporary
    name and renamed, so a concurrent session never maps half an archive.
    """
    from fitbit_stream.session import jars_base, local_jars

    jars = local_jars(jars_dir)
    base = jars_base(jars_dir)
    target = archive_path(base, jars)
    if target is None:
        raise RuntimeError("no java found (JAVA_HOME or PATH): no archive to train")
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.stem}.{os.getpid()}.tmp")
    try:
        _train_into(partial, jars_dir)
        if not partial.is_file():
            raise RuntimeError(f"the training run's JVM wrote no archive at {partial}")
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)
    for stale in target.parent.glob("driver-*.jsa"):
        if stale != target:
            stale.unlink(missing_ok=True)
    return target


def _train_into(partial: Path, jars_dir: str | Path) -> None:
    with tempfile.TemporaryDirectory(prefix="fitbit-cds-") as work:
        root = Path(work)
        settings = [
            "kafka.enabled=false",
            "landing.enabled=true",
            f"landing.path={root / 'landing'}",
            f"sql.url=jdbc:sqlite:{root / 'source.db'}",
            f"storage.root={root / 'lake'}",
            f"storage.checkpoint_root={root / 'checkpoints'}",
            f"platform_dir={root / 'platform'}",
            f"jars_dir={Path(jars_dir).resolve()}",
            f"spark_conf[spark.driver.extraJavaOptions]=-Duser.timezone=UTC -XX:ArchiveClassesAtExit={partial} {QUIET}",
        ]
        sets = [arg for setting in settings for arg in ("--set", setting)]
        _quietly(_cli("generate", "--users", "3", "--days", "1", *sets), root)
        _quietly([sys.executable, "-c", _RUN_AND_WAIT, "run", "--once", "--no-live", *sets], root)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    jars_dir = args[0] if args else ".cache/jars"
    try:
        path = train(jars_dir)
    except (FitbitStreamError, RuntimeError, OSError) as exc:
        print(f"class archive: not trained ({exc}); local sessions start without it", file=sys.stderr)
        return 1
    print(f"class archive: {path} ({path.stat().st_size // 2**20} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
