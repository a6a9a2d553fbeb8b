"""The local driver's class-data-sharing archive: named per Java and jar set, handed to a local driver
only when it exists, never over a configuration's own choice, a failed training said in one line and
not retried, and the archive setup trained really mapped by the tests' JVM."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import pytest
from pyspark.sql import SparkSession

from fitbit_stream import class_archive, session
from fitbit_stream.config import load_config


@pytest.fixture(autouse=True)
def _own_jars_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FITBIT_STREAM_JARS_DIR", raising=False)
    for name in ("JDK_JAVA_OPTIONS", "JAVA_TOOL_OPTIONS", "_JAVA_OPTIONS"):
        monkeypatch.delenv(name, raising=False)


def _jars(base: Path, *names: str) -> list[str]:
    folder = base / "spark"
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        if not (folder / name).exists():
            (folder / name).write_bytes(b"jar " + name.encode())
    return sorted(str(p.resolve()) for p in folder.glob("*.jar"))


def _trained(base: Path, *names: str) -> Path:
    archive = class_archive.archive_path(base, _jars(base, *names))
    assert archive is not None
    archive.parent.mkdir(parents=True, exist_ok=True)
    archive.write_bytes(b"trained")
    return archive


def _java_options(jars_dir: Path, *overrides: str) -> list[str]:
    conf = session._local_conf(load_config(None, [f"jars_dir={jars_dir}", *overrides]))
    return shlex.split(conf["spark.driver.extraJavaOptions"])


def test_the_archive_is_named_per_jar_set_and_jar_time_under_the_jars_dir(tmp_path: Path) -> None:
    one = class_archive.archive_path(tmp_path, _jars(tmp_path, "delta.jar", "kafka.jar"))
    assert one is not None
    assert one.parent == tmp_path.resolve() / "cds"
    assert one.name.startswith("driver-")
    assert one.suffix == ".jsa"
    assert class_archive.archive_path(tmp_path, _jars(tmp_path, "delta.jar", "kafka.jar")) == one
    more = class_archive.archive_path(tmp_path, _jars(tmp_path, "delta.jar", "kafka.jar", "sqlite.jar"))
    assert more not in (None, one)  # a new jar set: an archive of its own
    jar = tmp_path / "spark" / "delta.jar"
    os.utime(jar, ns=(jar.stat().st_atime_ns, jar.stat().st_mtime_ns + 10**9))
    touched = class_archive.archive_path(tmp_path, _jars(tmp_path, "delta.jar", "kafka.jar", "sqlite.jar"))
    assert touched not in (None, one, more)  # the JVM checks each jar's time: so does the name


def test_a_local_driver_gets_the_archive_only_when_it_was_trained(tmp_path: Path) -> None:
    jars = _jars(tmp_path, "delta.jar")
    assert not any("SharedArchiveFile" in o for o in _java_options(tmp_path))  # none trained
    archive = _trained(tmp_path, "delta.jar")
    assert class_archive.usable(tmp_path, jars) == archive
    options = _java_options(tmp_path)
    assert options[-2:] == [f"-XX:SharedArchiveFile={archive}", class_archive.QUIET]


def test_an_archive_under_a_path_with_a_space_is_quoted_as_one_option(tmp_path: Path) -> None:
    base = tmp_path / "a b"
    archive = _trained(base, "delta.jar")
    assert f"-XX:SharedArchiveFile={archive}" in _java_options(base)


def test_debug_shows_the_jvms_own_notes_on_the_archive(tmp_path: Path) -> None:
    _trained(tmp_path, "delta.jar")
    session.set_verbosity("debug")
    try:
        options = _java_options(tmp_path)
    finally:
        session.set_verbosity("quiet")
    assert any(o.startswith("-XX:SharedArchiveFile=") for o in options)
    assert class_archive.QUIET not in options


@pytest.mark.parametrize(
    "own",
    [
        "-Xshare:off",
        "-XX:SharedArchiveFile=/elsewhere.jsa",
        "-XX:ArchiveClassesAtExit=/x.jsa",
        "-XX:-UseSharedSpaces",
        "-Xlog:cds=info",
    ],
)
def test_a_configuration_that_decides_class_sharing_itself_keeps_its_choice(tmp_path: Path, own: str) -> None:
    archive = _trained(tmp_path, "delta.jar")
    options = _java_options(tmp_path, f"spark_conf[spark.driver.extraJavaOptions]={own}")
    assert options[0] == own
    assert not any(str(archive) in o for o in options)


def test_the_jvms_option_variables_are_a_choice_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = _trained(tmp_path, "delta.jar")
    monkeypatch.setenv("JAVA_TOOL_OPTIONS", "-Xshare:off")
    assert not any(str(archive) in o for o in _java_options(tmp_path))


def test_a_failed_training_is_one_line_and_not_retried(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    jars = _jars(tmp_path, "delta.jar")
    archive = class_archive.archive_path(tmp_path, jars)
    assert archive is not None

    def broken(written: Path, work: Path, jars_dir: str | Path) -> None:
        raise class_archive.PlatformError("the training's `run --once` exited with 1: no sqlite driver")

    monkeypatch.setattr(class_archive, "_run_training", broken)
    assert class_archive.main(["--check", str(tmp_path)]) == 1
    assert capsys.readouterr().out == "class archive: to be trained\n"
    assert class_archive.main([str(tmp_path)]) == 1
    failed = class_archive.failure(archive)
    assert capsys.readouterr().out == (
        "class archive: not trained (the training's `run --once` exited with 1: no sqlite driver); "
        f"local sessions start without it; delete {failed} to try again\n"
    )
    assert not archive.exists()
    assert list(archive.parent.glob(".training-*")) == []  # its work folder is gone
    assert class_archive.main(["--check", str(tmp_path)]) == 0  # setup does not train again
    assert capsys.readouterr().out == (
        "class archive: not trained (the training's `run --once` exited with 1: no sqlite driver); "
        f"delete {failed} to try again\n"
    )


def test_check_without_resolved_jars_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert class_archive.main(["--check", str(tmp_path / "nowhere")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("class archive: not trained (no JVM artifacts under ")
    assert out.count("\n") == 1


def test_the_test_sessions_jvm_maps_the_archive_setup_trained(spark: SparkSession) -> None:
    """setup.sh trains the archive (the suite's command runs it first); a JVM that turned it down
    (another Java or class path) would start as slowly as before without a word: this says so."""
    jvm = spark.sparkContext._jvm
    assert jvm is not None
    arguments = list(jvm.java.lang.management.ManagementFactory.getRuntimeMXBean().getInputArguments())
    given = [a.removeprefix("-XX:SharedArchiveFile=") for a in arguments if a.startswith("-XX:SharedArchiveFile=")]
    assert len(given) == 1, f"no class archive given to the JVM (did setup train it?): {arguments}"
    pid = jvm.java.lang.ProcessHandle.current().pid()
    maps = Path(f"/proc/{pid}/maps").read_text(encoding="utf-8")
    assert given[0] in maps, f"the JVM turned the archive down: {given[0]}"
