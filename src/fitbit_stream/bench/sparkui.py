"""Spark's own status figures through the UI's REST API (``/api/v1``): stage peaks and job times.

The benchmark's session runs its UI on a free loopback port (see ``runner.session_conf``). Stage rows
carry ``peakExecutorMetrics`` (JVM heap, process-tree RSS while the stage ran); job rows carry
their description and times, which is where a micro-batch's time goes (parse, MERGE phases, ...).
In local mode the driver is the only executor, so "driver" and "executor" memory are one JVM.
"""

from __future__ import annotations

import json
import logging
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from fitbit_stream.bench.report import parse_time

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

__all__ = ["SparkUi", "job_profile", "query_of", "sql_label", "sql_profile"]

log = logging.getLogger(__name__)


# A micro-batch's jobs are described "<query>\nid = ...\nrunId = ...\nbatch = N"; Delta appends
# " - <operation>[: <step>]" and prefixes its own bookkeeping jobs with "Delta: ".
_BATCH_HEADER = re.compile(r"^.*?batch = \d+", re.S)
_NUMBER = re.compile(r"(?<=[:= ])\d+")  # line numbers, versions: not names like py4j
# Table paths in a plan: ".../<layer>/<table>" or ".../<table>/_delta_log" (local storage layout).
_TABLE = re.compile(r"file:\S*?/(bronze|silver|gold|ops)/(\w+)")


def _operation(description: str) -> str:
    """What a job or SQL execution did, from its description without the micro-batch header."""
    text = description.strip()
    if not text:
        return "-"
    delta = text.startswith("Delta: ")
    rest = _BATCH_HEADER.sub("", text, count=1) if "batch = " in text else text
    out = _NUMBER.sub("N", rest.strip().lstrip("-: ").strip())[:90] or "micro-batch"
    return f"Delta: {out}" if delta and not out.startswith("Delta: ") else out


def query_of(description: str) -> str:
    """The streaming query a job or execution ran for: the first line of its micro-batch header."""
    text = description.removeprefix("Delta: ")
    return text.split("\n", 1)[0] if "\nid = " in text else "-"


def _label(job: Mapping[str, Any]) -> str:
    # The call site names a DataFrame action only when it is made on the JVM side; actions from
    # Python (foreachBatch bodies) show py4j's or the reflection stub's, which is still a hint.
    name = _NUMBER.sub("N", str(job.get("name") or "").strip())[:60]
    return f"{_operation(str(job.get('description') or ''))} | {name or '?'}"


def sql_label(execution: Mapping[str, Any]) -> str:
    """An SQL execution by its operation, the root of its physical plan and the tables it reads."""
    plan = str(execution.get("planDescription") or "")
    lines = [line.strip() for line in plan.splitlines() if line.strip() and not line.startswith("==")]
    root = re.sub(r"\(\d+\)|\[codegen id : \d+\]", "", lines[0]).strip(" *+-:") if lines else "?"
    tables = sorted({f"{layer}.{table}" for layer, table in _TABLE.findall(plan)})
    return f"{_operation(str(execution.get('description') or ''))} | {root}" + (
        f" [{', '.join(tables)}]" if tables else ""
    )


def job_profile(
    jobs: Iterable[Mapping[str, Any]],
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    top: int = 8,
    by_query: bool = False,
) -> dict[str, Any]:
    """Where the jobs submitted in [since, until] spent their time: total job seconds, and the
    ``top`` job kinds (operation | call site) by summed duration, with their counts. With
    ``by_query`` the kinds are the streaming queries the jobs ran for."""
    timed = []
    for job in jobs:
        submitted, completed = job.get("submissionTime"), job.get("completionTime")
        if submitted is None or completed is None:
            continue
        start = parse_time(str(submitted))
        label = query_of(str(job.get("description") or "")) if by_query else _label(job)
        timed.append((label, start, max(0.0, (parse_time(str(completed)) - start).total_seconds())))
    return _ranked(timed, since=since, until=until, top=top, unit="jobs", total="job_seconds")


def sql_profile(
    executions: Iterable[Mapping[str, Any]],
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    top: int = 8,
    by_query: bool = False,
) -> dict[str, Any]:
    """The same for SQL executions (one per DataFrame action or command; a MERGE's inner
    executions are counted inside it too, so the sums overlap). With ``by_query`` each label is
    prefixed by the streaming query it ran for."""
    timed = []
    for execution in executions:
        submitted, duration = execution.get("submissionTime"), execution.get("duration")
        if submitted is None or duration is None:
            continue
        label = sql_label(execution)
        if by_query:
            label = f"{query_of(str(execution.get('description') or ''))}: {label}"
        timed.append((label, parse_time(str(submitted)), int(duration) / 1000))
    return _ranked(timed, since=since, until=until, top=top, unit="executions", total="execution_seconds")


def _ranked(
    timed: Iterable[tuple[str, datetime, float]],
    *,
    since: datetime | None,
    until: datetime | None,
    top: int,
    unit: str,
    total: str,
) -> dict[str, Any]:
    groups: dict[str, list[float]] = {}
    for label, start, seconds in timed:
        if (since is not None and start < since) or (until is not None and start > until):
            continue
        groups.setdefault(label, []).append(seconds)
    ranked = sorted(groups.items(), key=lambda kv: (-sum(kv[1]), kv[0]))[:top]
    return {
        unit: sum(len(v) for v in groups.values()),
        total: round(sum(sum(v) for v in groups.values()), 3),
        "top": [{"what": label, "count": len(times), "seconds": round(sum(times), 3)} for label, times in ranked],
    }


class SparkUi:
    """A reader of one application's REST API; a failed read gives no figures, never an error."""

    def __init__(self, base_url: str, app_id: str, *, timeout: float = 30.0) -> None:
        self.base = f"{base_url.rstrip('/')}/api/v1/applications/{urllib.parse.quote(app_id)}"
        self.timeout = timeout

    @classmethod
    def of(cls, spark: SparkSession) -> SparkUi | None:
        """The UI of ``spark`` on loopback, or None when the session runs without one."""
        url = spark.sparkContext.uiWebUrl
        if not url:
            return None
        port = urllib.parse.urlsplit(url).port
        return cls(f"http://127.0.0.1:{port}", spark.sparkContext.applicationId)

    def _get(self, path: str) -> list[dict[str, Any]]:
        try:
            with urllib.request.urlopen(self.base + path, timeout=self.timeout) as response:
                data = json.load(response)
        except (OSError, urllib.error.URLError, ValueError) as exc:
            log.warning("Spark UI %s%s unreadable: %s", self.base, path, exc)
            return []
        return data if isinstance(data, list) else []

    def stages(self) -> list[dict[str, Any]]:
        return self._get("/stages")

    def jobs(self) -> list[dict[str, Any]]:
        return self._get("/jobs")

    def sql(self) -> list[dict[str, Any]]:
        return self._get("/sql?details=false&planDescription=true&offset=0&length=10000000")

    def executors(self) -> list[dict[str, Any]]:
        return self._get("/executors")

    def process_peak(self) -> tuple[int | None, int | None]:
        """(JVM heap, RSS) peaks of the whole application so far, from the executors' peak metrics."""
        heap: int | None = None
        rss: int | None = None
        for executor in self.executors():
            peak = executor.get("peakMemoryMetrics") or {}
            if "JVMHeapMemory" in peak:
                heap = max(heap or 0, int(peak["JVMHeapMemory"]))
            if int(peak.get("ProcessTreeJVMRSSMemory", 0)) > 0:
                rss = max(rss or 0, int(peak["ProcessTreeJVMRSSMemory"]))
        return heap, rss
