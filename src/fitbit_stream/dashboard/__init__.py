"""KPI dashboards over the gold tables: an HTML page and a Databricks Lakeview definition.

Both show the same KPIs (:mod:`.kpis`) over the same datasets (:mod:`.datasets`). The HTML page is
written as an offline file or served live (:mod:`.server`, ``dashboard --serve``), where it
refreshes as the tables' Delta versions move (:mod:`.live`) and adds the pipeline's health
(:mod:`.health`).
"""

from __future__ import annotations

from fitbit_stream.dashboard.datasets import DATASETS, DashboardData, load_data
from fitbit_stream.dashboard.html import render_html, write_dashboard
from fitbit_stream.dashboard.kpis import FILTERS, KPIS
from fitbit_stream.dashboard.lakeview import lakeview_dashboard, write_lakeview

__all__ = [
    "DATASETS",
    "FILTERS",
    "KPIS",
    "DashboardData",
    "lakeview_dashboard",
    "load_data",
    "render_html",
    "write_dashboard",
    "write_lakeview",
]
