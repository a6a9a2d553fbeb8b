"""The incremental run: ``fitbit-stream run --once`` as a scheduled job runs it, timed as a whole.

After a drain, the command runs as a subprocess on the drained tables and checkpoints, twice: with
nothing new in the sources, then after ``records`` new heart-rate readings were produced. Each is
timed from spawn to exit (interpreter, Spark's JVM, the session, the pipeline's set-up, the
drain and the exit), which is what a Databricks job pays on every run. The command's own "drained
in" figure (after Spark started) and its Kafka query's rows are read from its output.

The command gets the benchmark's configuration (its broker, SQLite source, table and checkpoint
roots) as a YAML file, with the user's Spark settings but not the benchmark's UI ones, and
``--as-of`` the drain's date, so the batch tail computes ``user_bins`` for the same day the drain did
(as a job run later the same day does).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from fitbit_stream.bench.report import CommandRun
from fitbit_stream.topology import Mode, kafka_queries

if TYPE_CHECKING:
    from fitbit_stream.config import Config

__all__ = ["command", "parse_run_output", "timed_run", "write_config"]

_DRAINED = re.compile(r"drained in ([0-9]+(?:\.[0-9]+)?)s")


def write_config(config: Config, path: Path) -> Path:
    """``config`` as a YAML file ``fitbit-stream --config`` reads back to the same settings."""
    data = config.model_dump(mode="json", exclude_none=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def command(config_path: Path, *, as_of: str) -> list[str]:
    """``fitbit-stream run --once --config <file> --as-of <date>``: the console script installed
    beside this interpreter, else the module."""
    script = Path(sys.executable).parent / "fitbit-stream"
    head = [str(script)] if script.exists() else [sys.executable, "-m", "fitbit_stream.cli"]
    return [*head, "run", "--once", "--config", str(config_path), "--as-of", as_of]


def parse_run_output(text: str, *, mode: Mode = "realtime") -> tuple[float | None, int | None]:
    """(the "drained in" seconds, the rows the Kafka queries of ``mode`` read) from a ``run --once`` output."""
    kafka = kafka_queries(mode)
    drained = _DRAINED.findall(text)
    rows: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] in kafka and parts[1].isdigit():
            rows[parts[0]] = int(parts[1])
    return (float(drained[-1]) if drained else None), (sum(rows.values()) if rows else None)


def timed_run(
    cmd: list[str], *, label: str, new_records: int, mode: Mode = "realtime", timeout: float = 1800.0
) -> tuple[CommandRun, str]:
    """Run ``cmd`` and time it from spawn to exit; the figures and the command's output."""
    started = time.monotonic()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, env=dict(os.environ))
        code, output = proc.returncode, (proc.stdout or "") + (proc.stderr or "")
    except subprocess.TimeoutExpired as exc:
        code = -1
        output = f"timed out after {timeout:g}s\n" + str(exc.stdout or "") + str(exc.stderr or "")
    wall = time.monotonic() - started
    drained, rows = parse_run_output(output, mode=mode)
    return CommandRun(label, new_records, round(wall, 3), code, drained, rows), output
