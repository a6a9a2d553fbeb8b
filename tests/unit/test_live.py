"""The live progress view: its rows, the table as a terminal shows it, the plain lines, the latency registry."""

from __future__ import annotations

import importlib.util
import io
import logging
import sys
import threading
import time
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
from rich.console import Console

from fitbit_stream import cli, jobs
from fitbit_stream.io.live import COLUMNS, LatencyRegistry, LiveProgress, duration_text, live_wanted
from fitbit_stream.io.progress import ProgressRecord, record_of

#: 2026-11-28 10:00:00 UTC
T0 = datetime(2026, 11, 28, 10, 0, tzinfo=UTC).timestamp()
MICROS = 1_000_000


def micros(seconds_after_t0: float) -> int:
    """A Kafka record timestamp as the ingest writer reads it: unix microseconds."""
    return int((T0 + seconds_after_t0) * MICROS)


def progress(
    name: str, batch: int, rows: int, *, rate: float, ms: int, at: str = "10:00:00", **extra: Any
) -> ProgressRecord:
    """A StreamingQueryProgress as the listener delivers it (its JSON dict), read as the ops table's row."""
    return record_of(
        {
            "id": f"id-{name}",
            "runId": f"run-{name}",
            "name": name,
            "timestamp": f"2026-11-28T{at}.000Z",
            "batchId": batch,
            "numInputRows": rows,
            "processedRowsPerSecond": rate,
            "durationMs": {"triggerExecution": ms},
            "sources": extra.get("sources", []),
        }
    )


def kafka_source(behind: int) -> dict[str, Any]:
    return {
        "description": "KafkaV2[Subscribe[bpm, workout, user_info]]",
        "endOffset": {"bpm": {"0": 1000}},
        "latestOffset": {"bpm": {"0": 1000 + behind}},
    }


DELTA_SOURCE = {
    "description": "DeltaSource[file:/lake/silver/heart_rate]",
    "metrics": {"numFilesOutstanding": "3", "numBytesOutstanding": "5120"},
}

QUERIES = ["bronze_kafka_multiplex", "silver_users", "derived_workout_bpm"]


def clock_at(seconds: float) -> list[float]:
    return [T0 + seconds]


def fed_view(*, live: bool, said: list[str] | None = None) -> tuple[LiveProgress, LatencyRegistry, list[float]]:
    """A view started at T0 with two Kafka batches (latency published), one derived batch, a quarantine."""
    now = clock_at(0)
    latency = LatencyRegistry()
    view = LiveProgress(
        QUERIES,
        say=(said if said is not None else []).append,
        live=live,
        latency=latency,
        title="fitbit_stream all",
        clock=lambda: now[0],
    )
    # Batch 7: records from 10:00:00.5 (bpm) to 10:00:02.5 (workout), in silver at 10:00:02.9.
    latency.publish(
        "bronze_kafka_multiplex",
        7,
        {
            "bpm": (int((T0 + 0.5) * MICROS), int((T0 + 2) * MICROS)),
            "workout": (int((T0 + 1.5) * MICROS), int((T0 + 2.5) * MICROS)),
        },
        now=T0 + 2.9,
    )
    view.on_progress(progress("bronze_kafka_multiplex", 7, 1200, rate=9800.4, ms=3000, sources=[kafka_source(40)]))
    latency.publish(
        "bronze_kafka_multiplex", 8, {"bpm": (int((T0 + 3) * MICROS), int((T0 + 4) * MICROS))}, now=T0 + 4.4
    )
    view.on_progress(
        progress("bronze_kafka_multiplex", 8, 300, rate=2500, ms=1500, at="10:00:03", sources=[kafka_source(0)])
    )
    view.on_progress(progress("derived_workout_bpm", 12, 42, rate=14.0, ms=2250, sources=[DELTA_SOURCE]))
    view.set_quarantine({"malformed_json": 2, "late": 5})
    view.set_quarantine({"malformed_json": 2, "late": 7, "future": 1})
    now[0] = T0 + 12.5
    return view, latency, now


def test_each_query_is_one_row_of_literal_figures() -> None:
    view, _, _ = fed_view(live=True)
    assert view.rows() == [
        # batch, batches and rows of this run, rows/s, backlog, last batch (duration, age), event->silver
        ("bronze_kafka_multiplex", "8", "2", "1,500", "2,500", "0 offsets", "1.5s, 8.0s ago", "0.4s-1.4s"),
        ("silver_users", "-", "0", "0", "-", "-", "waiting", "-"),
        ("derived_workout_bpm", "12", "1", "42", "14", "3 files, 5.0 KB", "2.2s, 10s ago", "-"),
    ]
    assert view.quarantine_text() == "quarantine: future 1 (+1), late 7 (+2), malformed_json 2"


def test_the_table_renders_every_query_as_a_terminal_shows_it() -> None:
    view, _, _ = fed_view(live=True)
    console = Console(file=io.StringIO(), width=120, record=True, color_system=None)
    console.print(view.table())
    text = console.export_text()
    lines = [line.rstrip() for line in text.splitlines()]
    assert lines == [
        "fitbit_stream all · 12s",
        "",
        "  query                    batch   batches    rows   rows/s   backlog           last batch       event→silver",
        " " + "─" * 109,
        "  bronze_kafka_multiplex       8         2   1,500    2,500   0 offsets         1.5s, 8.0s ago      0.4s-1.4s",
        "  silver_users                 -         0       0        -   -                 waiting                     -",
        "  derived_workout_bpm         12         1      42       14   3 files, 5.0 KB   2.2s, 10s ago               -",
        "",
        "quarantine: future 1 (+1), late 7 (+2), malformed_json 2",
    ]
    assert lines[2].split() == " ".join(COLUMNS).split()


def test_without_a_terminal_each_batch_is_one_plain_line_and_quarantine_changes_too() -> None:
    said: list[str] = []
    view, _, _ = fed_view(live=False, said=said)
    assert said == [
        "bronze_kafka_multiplex batch 7: 1200 rows, 9,800 rows/s, 3.0s, backlog 40 offsets, event->silver 0.4s-2.4s",
        "bronze_kafka_multiplex batch 8: 300 rows, 2,500 rows/s, 1.5s, backlog 0 offsets, event->silver 0.4s-1.4s",
        "derived_workout_bpm batch 12: 42 rows, 14 rows/s, 2.2s, backlog 3 files/5120 bytes",
        "quarantine: late 5, malformed_json 2",
        "quarantine: future 1 (+1), late 7 (+2), malformed_json 2",
    ]
    # A later copy of a batch, an earlier batch, the same counts again: no new line.
    view.on_progress(progress("derived_workout_bpm", 12, 42, rate=14.0, ms=2250))
    view.on_progress(progress("derived_workout_bpm", 11, 5, rate=1.0, ms=100))
    view.set_quarantine({"malformed_json": 2, "late": 7, "future": 1})
    assert len(said) == 5
    assert view.rows()[2][1:3] == ("12", "1")
    # A restarted query (new run id) starts again from its checkpoint's next batch.
    restarted = progress("derived_workout_bpm", 13, 1, rate=1.0, ms=100)
    view.on_progress(replace(restarted, run_id="run-2"))
    assert said[-1] == "derived_workout_bpm batch 13: 1 rows, 1 rows/s, 0.1s, backlog n/a"


def test_the_latency_registry_keeps_the_latest_batch_per_query() -> None:
    registry = LatencyRegistry()
    first = registry.publish("q", 3, {"bpm": (int(T0 * MICROS), int((T0 + 1) * MICROS))}, now=T0 + 2)
    assert first is not None
    assert (first.batch_id, first.oldest, first.newest, dict(first.topics)) == (3, 2.0, 1.0, {"bpm": (2.0, 1.0)})
    # Topics whose records carry no timestamp are left out; a batch with none publishes nothing.
    assert registry.publish("q", 4, {"bpm": (None, None)}, now=T0 + 3) is None
    assert registry.get("q") == first
    second = registry.publish(
        "q", 5, {"bpm": (int(T0 * MICROS), int(T0 * MICROS)), "workout": (int((T0 + 4) * MICROS),) * 2}, now=T0 + 5
    )
    assert second is not None
    assert (second.oldest, second.newest, second.text()) == (5.0, 1.0, "1.0s-5.0s")
    assert registry.get("q") == second
    assert registry.get("other") is None

    # Writers on many threads, a reader meanwhile: every value read is one that was published whole.
    def write(n: int) -> None:
        for i in range(200):
            registry.publish(f"q{n}", i, {"t": (int(T0 * MICROS), int(T0 * MICROS))}, now=T0 + i)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [(lat.batch_id, lat.oldest) for lat in (registry.get(f"q{n}") for n in range(4)) if lat] == [
        (199, 199.0)
    ] * 4


def test_a_latency_from_before_the_view_started_is_not_shown() -> None:
    latency = LatencyRegistry()
    latency.publish("bronze_kafka_multiplex", 7, {"bpm": (int(T0 * MICROS), int(T0 * MICROS))}, now=T0 - 60)
    view = LiveProgress(["bronze_kafka_multiplex"], latency=latency, say=[].append, clock=lambda: T0)
    view.on_progress(progress("bronze_kafka_multiplex", 7, 1, rate=1.0, ms=100))
    assert view.rows()[0][-1] == "-"


def test_durations_read_as_people_read_them() -> None:
    assert [duration_text(s) for s in (-1, 0.04, 9.96, 12.7, 245, 11_520, 187_200)] == [
        "0.0s",
        "0.0s",
        "10.0s",
        "12s",
        "4m05s",
        "3h12m",
        "2d04h",
    ]


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_live_table_only_on_a_terminal_and_not_with_no_live() -> None:
    assert live_wanted(_Tty()) is True
    assert live_wanted(_Tty(), no_live=True) is False
    assert live_wanted(io.StringIO()) is False  # CI, a log file, Databricks job output
    assert jobs.build_parser("all").parse_args(["--no-live"]).no_live is True
    assert cli.build_parser().parse_args(["run", "--no-live"]).no_live is True
    assert cli.build_parser().parse_args(["run"]).no_live is False


def test_showing_live_redraws_polls_the_quarantine_and_puts_logging_back() -> None:
    out = _Tty()
    console = Console(file=out, width=120, force_terminal=True, color_system=None)
    polled = threading.Event()
    counts = iter([{"late": 1}, None, None])

    def quarantine() -> dict[str, int] | None:
        polled.set()
        return next(counts, None)

    handler = logging.StreamHandler(sys.__stderr__)
    root = logging.getLogger()
    root.addHandler(handler)
    view = LiveProgress(QUERIES[:1], live=True, console=console, quarantine=quarantine, quarantine_every=0.01)
    try:
        with view.showing(refresh_per_second=20):
            assert handler.stream is not sys.__stderr__  # logging prints above the table meanwhile
            view.on_progress(progress("bronze_kafka_multiplex", 1, 10, rate=5.0, ms=2000))
            assert polled.wait(5)
            deadline = time.monotonic() + 5
            while view.quarantine_text() != "quarantine: late 1" and time.monotonic() < deadline:
                time.sleep(0.01)
    finally:
        root.removeHandler(handler)
    assert handler.stream is sys.__stderr__
    assert view.quarantine_text() == "quarantine: late 1"
    screen = out.getvalue()
    rows = [line.split()[:6] for line in screen.splitlines() if "bronze_kafka_multiplex" in line]
    assert rows
    assert rows[-1] == ["bronze_kafka_multiplex", "1", "1", "10", "5", "-"]
    assert "quarantine: late 1" in screen


def test_without_rich_a_terminal_gets_the_plain_lines_and_one_line_saying_why(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "rich" else real(name, *a))
    said: list[str] = []
    assert live_wanted(_Tty(), say=said.append) is False
    assert said == ["live view off: the 'rich' package is not installed (pip install 'fitbit-stream[local]')"]
