"""The offline HTML dashboard: one self-contained page over the gold tables.

The datasets are embedded as JSON, the charts drawn by a small hand-written script as inline SVG.
The page loads nothing: its Content-Security-Policy allows no source at all besides its own inline
script and style (and data: images), so a chart that reached for a CDN would fail visibly instead
of silently depending on the network.
"""

from __future__ import annotations

import html
import json
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fitbit_stream.config import Config
from fitbit_stream.dashboard.datasets import DashboardData, load_data
from fitbit_stream.dashboard.kpis import AGE_ORDER, CHARTS, TILES, UNKNOWN

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

__all__ = ["CONTENT_SECURITY_POLICY", "render_html", "write_dashboard"]

CONTENT_SECURITY_POLICY = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:"

#: Charts that take the full width of the page.
_WIDE = {"occupancy_heatmap"}


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


def render_html(
    data: DashboardData, *, title: str = "fitbit_stream KPIs", source: str = "", generated_at: datetime
) -> str:
    """The dashboard page for ``data``: one HTML document with everything it needs inline."""
    payload = {
        "unknown": UNKNOWN,
        "age_order": list(AGE_ORDER),
        "datasets": {name: rows for name, rows in data.datasets.items()},
    }
    stamp = generated_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
    subtitle = f"Gold tables{f' of {source}' if source else ''}, generated {stamp}"
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{CONTENT_SECURITY_POLICY}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>{html.escape(title)}</title>
<style>
{_asset("dashboard.css")}
</style>
</head>
<body>
<header>
<h1>{html.escape(title)}</h1>
<p>{html.escape(subtitle)}</p>
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
</main>
<footer>Workouts follow the demographics in effect at the workout; visits and members follow the
member's current profile; occupancy is over all members and follows the date range only.
Dates and hours are UTC.</footer>
<script type="application/json" id="fitbit-data">{_json_for_script(payload)}</script>
<script>
{_asset("dashboard.js")}
</script>
</body>
</html>
"""


def write_dashboard(spark: SparkSession, config: Config, out: Path, *, generated_at: datetime | None = None) -> Path:
    """Read the gold tables of ``config`` and write the dashboard page to ``out``; returns its path."""
    data = load_data(spark, config)
    storage = config.storage
    source = storage.catalog or str(Path(storage.root).absolute())
    page = render_html(data, source=source, generated_at=generated_at or datetime.now(UTC))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return out.absolute()
