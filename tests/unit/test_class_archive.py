"""The local driver's class-data-sharing archive: named per Java and jar set, handed to a local driver
only when it exists, never over a configuration's own choice, and really mapped by the tests' JVM."""

from __future__ import annotations

from pathlib import Path

import pytest
from pyspark.sql import SparkSession

from fitbit_stream import class_archive, session
from fitbit_stream.config import load_config


def _jars(base: Path, *names: str) -> list[str]:
    folder = base / "spark"
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"jar " + name.encode())
    return sorted(str(p.resolve()) for p in folder.glob("*.jar"))


def _java_options(jars_dir: Path, *overrides: str) -> list[str]:
    conf = session._local_conf(load_config(None, [f"jars_dir={jars_dir}", *overrides]))
    return conf["spark.driver.extraJavaOptions"].split()


def test_the_archive_is_named_per_jar_set_under_the_jars_dir(tmp_path: Path) -> None:
    one = class_archive.archive_path(tmp_path, _jars(tmp_path, "delta.jar", "kafka.jar"))
    assert one is not None
    assert one.parent == tmp_path.resolve() / "cds"
    assert one.name.startswith("driver-")
    assert one.suffix == ".jsa"
    assert class_archive.archive_path(tmp_path, _jars(tmp_path, "delta.jar", "kafka.jar")) == one
    other = class_archive.archive_path(tmp_path, _jars(tmp_path, "delta.jar", "kafka.jar", "sqlite.jar"))
    assert other is not None
    assert other != one


def test_a_local_driver_gets_the_archive_only_when_it_was_trained(tmp_path: Path) -> None:
    jars = _jars(tmp_path, "delta.jar")
    archive = class_archive.archive_path(tmp_path, jars)
    assert archive is not None
    assert not any("SharedArchiveFile" in o for o in _java_options(tmp_path))  # none trained

    archive.parent.mkdir(parents=True)
    archive.write_bytes(b"trained")
    options = _java_options(tmp_path)
    assert f"-XX:SharedArchiveFile={archive}" in options
    assert class_archive.QUIET in options  # an archive the JVM turns down costs speed, not a warning
    assert "-Duser.timezone=UTC" in options


@pytest.mark.parametrize(
    "own", ["-Xshare:off", "-XX:SharedArchiveFile=/elsewhere.jsa", "-XX:ArchiveClassesAtExit=/x.jsa"]
)
def test_a_configuration_that_decides_class_sharing_itself_keeps_its_choice(tmp_path: Path, own: str) -> None:
    archive = class_archive.archive_path(tmp_path, _jars(tmp_path, "delta.jar"))
    assert archive is not None
    archive.parent.mkdir(parents=True)
    archive.write_bytes(b"trained")
    options = _java_options(tmp_path, f"spark_conf[spark.driver.extraJavaOptions]={own}")
    assert options[0] == own
    assert not any(str(archive) in o for o in options)


def test_the_test_sessions_jvm_maps_the_archive_setup_trained(spark: SparkSession) -> None:
    """setup.sh trains the archive (the suite's command runs it first); a JVM that turned it down
    (another Java or class path) would start as slowly as before without a word: this says so."""
    jvm = spark.sparkContext._jvm
    assert jvm is not None
    arguments = list(jvm.java.lang.management.ManagementFactory.getRuntimeMXBean().getInputArguments())
    given = [a.removeprefix("-XX:SharedArchiveFile=") for a in arguments if a.startswith("-XX:SharedArchiveFile=")]
    assert len(given) == 1, arguments
    pid = jvm.java.lang.ProcessHandle.current().pid()
    maps = Path(f"/proc/{pid}/maps").read_text(encoding="utf-8")
    assert given[0] in maps
