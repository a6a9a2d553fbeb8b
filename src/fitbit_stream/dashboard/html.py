"""The HTML dashboard: one self-contained page over the gold tables, offline or served live.

The datasets are embedded as JSON, the charts drawn by a small hand-written script as inline SVG.
The offline page loads nothing: its Content-Security-Policy allows no source at all besides its own
inline script and style (and data: images), so a chart that reached for a CDN would fail visibly
instead of silently depending on the network. The served page (:mod:`.server`) is the same
document with the same embedded data, plus the address of its JSON endpoint: only then does the
script poll, and only that page's policy allows a request, to its own origin.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fitbit_stream.config import Config
from fitbit_stream.dashboard.datasets import DashboardData, load_data
from fitbit_stream.dashboard.health import PipelineHealth, load_health
from fitbit_stream.dashboard.kpis import AGE_ORDER, CHARTS, TILES, UNKNOWN

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

__all__ = [
    "CONTENT_SECURITY_POLICY",
    "LIVE_CONTENT_SECURITY_POLICY",
    "Live",
    "page_payload",
    "render_html",
    "write_dashboard",
]

CONTENT_SECURITY_POLICY = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:"
#: The served page may fetch its own JSON endpoint, nothing else.
LIVE_CONTENT_SECURITY_POLICY = f"{CONTENT_SECURITY_POLICY}; connect-src 'self'"

#: Charts that take the full width of the page.
_WIDE = {"daily_trend", "occupancy_heatmap"}


@dataclass(frozen=True)
class Live:
    """How a served page refreshes: the JSON endpoint it polls, and how often."""

    api: str
    poll_ms: int = 2000


def _asset(name: str) -> str:
    return resources.files("fitbit_stream.dashboard").joinpath("assets", name).read_text(encoding="utf-8")


def _json_for_script(payload: Any) -> str:
    # Inside <script> only "</" could end the element early; escaping <, > and & as JSON unicode
    # escapes keeps any text from the data (a city named "</script>") inert. NaN is not JSON.
    text = json.dumps(payload, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _tiles() -> str:
    return "\n".join(
        f'<div class="tile" data-kpi="{k.id}" title="{html.escape(k.note)}">'
        f'<div class="label">{html.escape(k.title)}</div><div class="value">&#8211;</div></div>'
        for k in TILES
    )


def _cards() -> str:
    return "\n".join(
        f'<section class="card{" wide" if k.id in _WIDE else ""}" data-kpi="{k.id}" '
        f'data-title="{html.escape(k.title)}">'
        f"<h2>{html.escape(k.title)}</h2>"
        f'<p class="note">{html.escape(k.note)}</p>'
        '<div class="plot"></div>'
        '<details><summary>Figures</summary><div class="figures"></div></details>'
        "</section>"
        for k in CHARTS
    )


_HEALTH_CARDS = (
    ("last_batch", "Last batch per query", "the latest micro-batch each query recorded in _query_progress"),
    (
        "lag",
        "Lag per query",
        "input backlog after each batch: Kafka offsets behind the latest, or Delta files outstanding",
    ),
    ("latency", "Batch latency per query", "seconds from trigger to commit of each batch"),
    ("quarantine", "Quarantined records by reason", "silver quarantine table, all time"),
)


def _health() -> str:
    return "\n".join(
        f'<section class="card" data-health="{key}" data-title="{html.escape(title)}">'
        f"<h2>{html.escape(title)}</h2>"
        f'<p class="note">{html.escape(note)}</p>'
        + (
            '<div class="table-wrap"></div>'
            if key == "last_batch"
            else '<div class="plot"></div><details><summary>Figures</summary><div class="figures"></div></details>'
        )
        + "</section>"
        for key, title, note in _HEALTH_CARDS
    )


def _stamp(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def page_payload(
    data: DashboardData,
    *,
    generated_at: datetime,
    health: PipelineHealth | None = None,
    version: str | None = None,
    missing: Sequence[str] = (),
) -> dict[str, Any]:
    """What the page's script renders: embedded in the page, and the body of the live JSON endpoint."""
    return {
        "version": version,
        "generated_at": _stamp(generated_at),
        "unknown": UNKNOWN,
        "age_order": list(AGE_ORDER),
        "datasets": {name: rows for name, rows in data.datasets.items()},
        "health": health.as_json() if health is not None else None,
        "missing": list(missing),
    }


def render_html(
    data: DashboardData,
    *,
    title: str = "fitbit_stream KPIs",
    source: str = "",
    generated_at: datetime,
    health: PipelineHealth | None = None,
    live: Live | None = None,
    version: str | None = None,
    missing: Sequence[str] = (),
) -> str:
    """The dashboard page for ``data``: one HTML document with everything it needs inline.

    With ``live`` the page polls ``live.api`` and re-renders when the data's version changes.
    """
    payload = page_payload(data, generated_at=generated_at, health=health, version=version, missing=missing)
    policy = LIVE_CONTENT_SECURITY_POLICY if live else CONTENT_SECURITY_POLICY
    body = f' data-live-api="{html.escape(live.api)}" data-poll-ms="{int(live.poll_ms)}"' if live is not None else ""
    source_text = f" of {source}" if source else ""
    # The live page's script rewrites the time at each refresh; the offline one is written once.
    when = _stamp(generated_at) if live else generated_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
    stamp = f'{"updated" if live else "generated"} <span id="generated">{when}</span>'
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{policy}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>{html.escape(title)}</title>
<style>
{_asset("dashboard.css")}
</style>
</head>
<body{body}>
<header>
<h1>{html.escape(title)}</h1>
<p>Gold tables{html.escape(source_text)}, {stamp} <span id="live-status" aria-live="polite"></span></p>
<p id="notice" role="status" hidden></p>
</header>
<div id="filters" role="search">
<label>Age group <select id="filter-age" data-filter="age"></select></label>
<label>City <select id="filter-city" data-filter="city"></select></label>
<label>Gender <select id="filter-gender" data-filter="gender"></select></label>
<label>From <input type="date" id="filter-date-from" data-filter="date"></label>
<label>To <input type="date" id="filter-date-to" data-filter="date"></label>
<button type="button" id="filter-reset">Reset</button>
<span id="selection" aria-live="polite"></span>
</div>
<main>
<div class="tiles">
{_tiles()}
</div>
<div class="grid">
{_cards()}
</div>
<section id="health" aria-labelledby="health-title">
<h2 id="health-title">Pipeline health</h2>
<p class="note">From the ops table _query_progress and the silver quarantine; the filters above do not apply.</p>
<div class="grid">
{_health()}
</div>
</section>
</main>
<footer>Workouts follow the demographics in effect at the workout; visits and members follow the
member's current profile; occupancy is over all members and follows the date range only.
Dates and hours are UTC; durations are hours:minutes.</footer>
<script type="application/json" id="fitbit-data">{_json_for_script(payload)}</script>
<script>
{_asset("dashboard.js")}
</script>
</body>
</html>
"""


def source_of(config: Config) -> str:
    """How the page names where its tables are: the catalog, or the lake's directory."""
    storage = config.storage
    return storage.catalog or str(Path(storage.root).absolute())


def write_dashboard(spark: SparkSession, config: Config, out: Path, *, generated_at: datetime | None = None) -> Path:
    """Read the gold tables of ``config`` and write the dashboard page to ``out``; returns its path."""
    data = load_data(spark, config)
    health = load_health(spark, config)
    page = render_html(data, source=source_of(config), generated_at=generated_at or datetime.now(UTC), health=health)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return out.absolute()
