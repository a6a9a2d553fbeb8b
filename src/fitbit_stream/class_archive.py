"""The local driver JVM's class-data-sharing archive: a cold local session starts in about half the time.

Every local run's JVM spends its first seconds loading and verifying the same ~17,000 classes from
Spark's, Delta's and the connectors' jars. The JDK's dynamic class-data sharing (JEP 350) writes the
classes a run loaded into an archive when that JVM exits; a later JVM with the same Java build and
class path maps them instead of loading them again. ``scripts/setup.sh`` trains one archive per Java
and jar set (``python -m fitbit_stream.class_archive``: a small pipeline run over generated landing
files and SQLite, no broker needed), and :func:`fitbit_stream.session.get_spark` hands it to a local
driver when it exists.

The JVM checks the archive itself (the Java build, each class-path jar's size and time); when it
cannot use it, it loads the classes from the jars as before, without a warning. The archive changes
how fast a session starts, never what it does. Its name carries a digest of what the JVM checks, so
a new Java, PySpark install or jar set gets an archive of its own rather than one the JVM turns
down. A training that failed leaves ``<name>.failed`` with its reason, and setup does not try again
until that file is deleted.

On Databricks and under spark-submit someone else starts the JVM: nothing changes there. A
configuration that decides class sharing itself (``-Xshare``, ``-XX:SharedArchiveFile``,
``-XX:ArchiveClassesAtExit``, ``-XX:±UseSharedSpaces``, ``-Xlog:cds``, in
``spark.driver.extraJavaOptions`` or the JVM's own option variables) keeps its choice.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from fitbit_stream.errors import FitbitStreamError, PlatformError

__all__ = ["QUIET", "archive_path", "failure", "names_its_own", "train", "usable"]

#: The JVM's notes about the archive (one it cannot use, classes it skips when writing one) are off.
QUIET = "-Xlog:cds=off,cds+dynamic=off"
_OWN = ("SharedArchiveFile", "ArchiveClassesAtExit", "-Xshare", "SharedSpaces", "-Xlog:cds")
#: Options the JVM reads from its environment, whatever its command line says.
_JVM_ENV = ("JDK_JAVA_OPTIONS", "JAVA_TOOL_OPTIONS", "_JAVA_OPTIONS")
#: How long a training run may take (it takes about a minute and a half on two cores).
TRAINING_TIMEOUT_S = 900
#: Archives of other Java or jar sets kept beside the current one (each is about 200 MB).
_KEEP_OTHERS = 1


def _java() -> Path | None:
    """The java that PySpark's launcher runs: ``$JAVA_HOME/bin/java``, else the first on ``PATH``."""
    home = os.environ.get("JAVA_HOME")
    found = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    return Path(found).resolve() if found and Path(found).is_file() else None


def _class_path_jars() -> list[Path]:
    """The jars on the driver's class path: ``$SPARK_HOME/jars`` when set, else PySpark's own."""
    import pyspark

    home = os.environ.get("SPARK_HOME")
    folder = Path(home) / "jars" if home else Path(pyspark.__file__).parent / "jars"
    return sorted(folder.glob("*.jar"))


def _stamp(path: Path) -> str:
    try:
        stat = path.stat()
    except OSError:
        return f"{path}|missing"
    return f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"


def archive_path(jars_base: Path, jars: Sequence[str]) -> Path | None:
    """Where the archive for this Java, these class-path jars and these Spark jars lives
    (``<jars_base>/cds``); None when no java is found.

    The digest covers what the JVM validates before it maps an archive: the Java build (its
    ``java`` and runtime image) and each jar's place, size and modification time.
    """
    java = _java()
    if java is None:
        return None
    digest = hashlib.sha256()
    for path in [java, java.parent.parent / "lib" / "modules", *_class_path_jars(), *map(Path, jars)]:
        digest.update(f"{_stamp(path)}\n".encode())
    return jars_base.resolve() / "cds" / f"driver-{digest.hexdigest()[:16]}.jsa"


def failure(archive: Path) -> Path:
    """The file that records why training ``archive`` failed (setup does not retry while it exists)."""
    return archive.with_name(f"{archive.stem}.failed")


def names_its_own(java_options: str) -> bool:
    """Whether the driver's Java options (or the JVM's option variables) decide class sharing."""
    texts = [java_options, *(os.environ.get(name, "") for name in _JVM_ENV)]
    return any(flag in text for text in texts for flag in _OWN)


def usable(jars_base: Path, jars: Sequence[str]) -> Path | None:
    """The trained archive for this Java and these jars, when there is one a JVM option can name.

    JDK 17 reads a ``:`` in ``-XX:SharedArchiveFile`` as the separator of two archives, so a path
    holding one is left alone.
    """
    archive = archive_path(jars_base, jars)
    if archive is None or ":" in str(archive) or not archive.is_file():
        return None
    return archive


def _quietly(label: str, command: list[str], cwd: Path) -> None:
    """Run a training step; its output only when it fails (the JVM's exit under a live Python is noisy)."""
    try:
        done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False, timeout=TRAINING_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise PlatformError(f"the training's `{label}` took over {TRAINING_TIMEOUT_S} s") from None
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        raise PlatformError(f"the training's `{label}` exited with {done.returncode}: {lines[-1] if lines else ''}")


# The JVM writes the archive as it exits, which is after the Python process that started it has
# ended: the training run waits for its JVM (PySpark's gateway process) and fails when the JVM did.
_RUN_AND_WAIT = """
import sys
from fitbit_stream.cli import main
code = main(sys.argv[1:])
from pyspark import SparkContext
proc = getattr(SparkContext._gateway, "proc", None)
if proc is not None:
    proc.stdin.close()
    code = code or proc.wait(timeout=600)
sys.exit(code)
"""


def train(target: Path, jars_dir: str | Path) -> Path:
    """Write ``target`` (:func:`archive_path` of the current Java and jars); kept when it exists.

    A pipeline run over a small generated world (landing files and SQLite, so no broker is needed)
    in a child process whose JVM writes the classes it loaded on exit, into a folder of its own that
    is renamed into place only when the JVM exited cleanly: a concurrent session never maps half an
    archive, and a JVM that outlives an interrupted training writes into a folder that is gone.
    """
    if ":" in str(target):
        raise PlatformError(f"{str(target.parent)!r} holds a ':', which a JVM option cannot name")
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    _sweep(target)
    work = Path(tempfile.mkdtemp(dir=target.parent, prefix=".training-"))
    try:
        written = work / target.name
        _run_training(written, work, jars_dir)
        if not written.is_file():
            raise PlatformError("the training run's JVM wrote no archive")
        written.replace(target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def _run_training(written: Path, work: Path, jars_dir: str | Path) -> None:
    from fitbit_stream.session import _java_option  # quoted as Spark splits extraJavaOptions

    java = f"-Duser.timezone=UTC -XX:ArchiveClassesAtExit={_java_option(written)} {QUIET}"
    settings = [
        "kafka.enabled=false",
        "landing.enabled=true",
        f"landing.path={work / 'landing'}",
        f"sql.url=jdbc:sqlite:{work / 'source.db'}",
        f"storage.root={work / 'lake'}",
        f"storage.checkpoint_root={work / 'checkpoints'}",
        f"platform_dir={work / 'platform'}",
        f"jars_dir={Path(jars_dir).resolve()}",
        f"spark_conf[spark.driver.extraJavaOptions]={java}",
    ]
    sets = [arg for setting in settings for arg in ("--set", setting)]
    cli = [sys.executable, "-m", "fitbit_stream.cli"]
    _quietly("generate", [*cli, "generate", "--users", "3", "--days", "1", *sets], work)
    _quietly("run --once", [sys.executable, "-c", _RUN_AND_WAIT, "run", "--once", "--no-live", *sets], work)


def _sweep(target: Path) -> None:
    """Leftovers of trainings a day old, and all but the newest archive of other Java or jar sets."""
    day_ago = time.time() - 86_400
    for left in target.parent.glob(".training-*"):
        if left.stat().st_mtime < day_ago:
            shutil.rmtree(left, ignore_errors=True)
    others = sorted(
        (p for p in target.parent.glob("driver-*.jsa") if p != target), key=lambda p: p.stat().st_mtime, reverse=True
    )
    for stale in others[_KEEP_OTHERS:]:
        stale.unlink(missing_ok=True)
        failure(stale).unlink(missing_ok=True)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m fitbit_stream.class_archive [--check] [JARS_DIR]``: train the archive (setup's step).

    ``--check`` says in one line whether it is trained, failed before, or to be trained (exit 0 when
    there is nothing to do). A failed training writes its reason next to the archive's name and
    prints one line; setup carries on (the archive only makes sessions start faster).
    """
    from fitbit_stream.session import jars_base, local_jars

    args = list(sys.argv[1:] if argv is None else argv)
    check = "--check" in args
    rest = [a for a in args if a != "--check"]
    jars_dir = rest[0] if rest else ".cache/jars"
    try:
        base, jars = jars_base(jars_dir), local_jars(jars_dir)
        target = archive_path(base, jars)
        if target is None:
            raise PlatformError("no java found (JAVA_HOME or PATH)")
    except FitbitStreamError as exc:
        print(f"class archive: not trained ({exc})")
        return 0 if check else 1
    failed = failure(target)
    if target.is_file() or failed.is_file():
        why = "" if target.is_file() else failed.read_text(encoding="utf-8").strip()
        done = f"not trained ({why}); delete {failed} to try again" if why else "up to date"
        print(f"class archive: {done}")
        return 0
    if check:
        print("class archive: to be trained")
        return 1
    try:
        path = train(target, jars_dir)
    except (FitbitStreamError, OSError) as exc:
        failed.parent.mkdir(parents=True, exist_ok=True)
        failed.write_text(f"{exc}\n", encoding="utf-8")
        print(f"class archive: not trained ({exc}); local sessions start without it; delete {failed} to try again")
        return 1
    print(f"class archive: {path} ({path.stat().st_size // 2**20} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
