"""A lake and its checkpoints as files: commits per table, batches per query, a config written out
for a subprocess run. Shared by the fault suite and the cluster runs."""

from __future__ import annotations

import contextlib
from pathlib import Path

import yaml

from fitbit_stream.config import Config


def batches(directory: Path) -> list[int]:
    """The batch ids recorded in a checkpoint's ``offsets`` or ``commits`` directory."""
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit()) if directory.is_dir() else []


def lake_commits(lake: Path, tables: tuple[str, ...] | None = None) -> set[str]:
    """The commit files after version 0 (which only creates the empty table) of ``tables``
    ("<layer>/<table>"; default every table)."""
    logs = lake.glob("*/*/_delta_log") if tables is None else (lake / t / "_delta_log" for t in tables)
    found = set()
    for log in logs:
        table = f"{log.parent.parent.name}/{log.parent.name}"
        with contextlib.suppress(FileNotFoundError):  # a table not created yet
            names = [p.name for p in log.iterdir()]
            found |= {f"{table} {n}" for n in names if n.endswith(".json") and n[:-5].lstrip("0")}
    return found


def write_config(config: Config, path: Path) -> Path:
    path.write_text(yaml.safe_dump(config.model_dump(mode="json", exclude_none=True)), encoding="utf-8")
    return path
