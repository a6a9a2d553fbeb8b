"""The committed Lakeview dashboard (dashboards/fitbit_kpis.lvdash.json) against the contract.

Every dataset query is analysed by Spark over empty views with the contract schemas, so a table or
column that does not exist fails here rather than on Databricks; every widget field names a column
of its dataset; and the dashboard has a widget for every KPI of the HTML page.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pyspark.sql import SparkSession

from fitbit_stream.cli import main
from fitbit_stream.config import load_config
from fitbit_stream.dashboard import FILTERS, KPIS, DashboardData, lakeview_dashboard, render_html
from fitbit_stream.dashboard.kpis import CHARTS, TILES
from fitbit_stream.errors import InvalidConfigError
from fitbit_stream.schemas import TABLES

ROOT = Path(__file__).resolve().parents[2]
FILE = ROOT / "dashboards" / "fitbit_kpis.lvdash.json"
DATABRICKS = load_config(ROOT / "conf" / "databricks.yaml")

Json = dict[str, Any]


@pytest.fixture(scope="module")
def dashboard() -> Json:
    loaded: Json = json.loads(FILE.read_text(encoding="utf-8"))
    return loaded


def _widgets(dashboard: Json) -> list[Json]:
    return [item["widget"] for page in dashboard["pages"] for item in page["layout"]]


def test_committed_file_is_the_generated_one(dashboard: Json) -> None:
    """Regenerate with `fitbit-stream dashboard --config conf/databricks.yaml --lakeview <file>`."""
    assert dashboard == lakeview_dashboard(DATABRICKS)


def test_needs_a_catalog() -> None:
    with pytest.raises(InvalidConfigError, match=r"storage\.catalog"):
        lakeview_dashboard(load_config(None))


@pytest.fixture(scope="module")
def dataset_columns(spark: SparkSession, dashboard: Json) -> dict[str, list[str]]:
    """Each dataset's output columns, from Spark's analysis of its query over empty contract tables."""
    storage = DATABRICKS.storage
    layer_of = {schema: layer.value for layer, schema in storage.schemas.items()}
    pattern = re.compile(rf"\b{re.escape(str(storage.catalog))}\.(\w+)\.(\w+)\b")
    columns: dict[str, list[str]] = {}
    for ds in dashboard["datasets"]:
        sql = "".join(ds["queryLines"])
        for schema, table in pattern.findall(sql):
            layer, spec = layer_of.get(schema), TABLES.get(table)
            assert spec is not None, f"{ds['name']}: {table} is not a contract table"
            assert spec.layer == layer, f"{ds['name']}: {table} is a {spec.layer} table, read from {schema}"
            assert layer in ("silver", "gold"), f"{ds['name']}: reads {layer} table {table}"
            spark.createDataFrame([], spec.schema).createOrReplaceTempView(f"lv_{layer}_{table}")
        local_sql, replaced = pattern.subn(lambda m: f"lv_{layer_of[m.group(1)]}_{m.group(2)}", sql)
        assert replaced > 0, f"{ds['name']}: reads no {storage.catalog} table"
        # Analysis resolves every table and column (an unknown one raises AnalysisException).
        columns[ds["name"]] = spark.sql(local_sql).columns
    return columns


def test_datasets_read_only_contract_tables_and_columns(dataset_columns: dict[str, list[str]]) -> None:
    assert set(dataset_columns) == {"workouts", "visits", "occupancy", "members"}
    for name, cols in dataset_columns.items():
        assert len(cols) == len(set(cols)), f"{name}: duplicate column names {cols}"


def test_widget_fields_name_dataset_columns(dashboard: Json, dataset_columns: dict[str, list[str]]) -> None:
    for widget in _widgets(dashboard):
        if "multilineTextboxSpec" in widget:
            continue
        names = set()
        for q in widget["queries"]:
            query = q["query"]
            assert query["datasetName"] in dataset_columns, widget["name"]
            for field in query["fields"]:
                used = re.findall(r"`(\w+)`", field["expression"])
                assert used, f"{widget['name']}: {field}"
                assert set(used) <= set(dataset_columns[query["datasetName"]]), f"{widget['name']}: {field}"
                names.add(field["name"])
        encoded = json.dumps(widget["spec"]["encodings"])
        for field_name in re.findall(r'"fieldName": "([^"]+)"', encoded):
            assert field_name in names, f"{widget['name']}: encoding {field_name!r} is not a query field"


def test_every_kpi_of_the_html_page_has_a_widget(dashboard: Json) -> None:
    canvas = next(p for p in dashboard["pages"] if p["pageType"] == "PAGE_TYPE_CANVAS")
    widgets = {item["widget"]["name"]: item["widget"] for item in canvas["layout"]}
    page = render_html(
        DashboardData({"workouts": [], "visits": [], "occupancy": [], "members": []}),
        generated_at=datetime(2024, 1, 1, tzinfo=UTC),
    )
    html_kpis = set(re.findall(r'data-kpi="(\w+)"', page))
    assert html_kpis == {k.id for k in KPIS}
    assert html_kpis <= set(widgets)
    for kpi in TILES:
        assert widgets[kpi.id]["spec"]["widgetType"] == "counter"
    for kpi in CHARTS:
        assert widgets[kpi.id]["queries"][0]["query"]["datasetName"] == kpi.dataset


def test_every_filter_of_the_html_page_is_a_global_filter(
    dashboard: Json, dataset_columns: dict[str, list[str]]
) -> None:
    page = next(p for p in dashboard["pages"] if p["pageType"] == "PAGE_TYPE_GLOBAL_FILTERS")
    widgets = {item["widget"]["name"]: item["widget"] for item in page["layout"]}
    assert set(widgets) == {f"filter_{f.id}" for f in FILTERS}
    for f in FILTERS:
        widget = widgets[f"filter_{f.id}"]
        expected_type = "filter-date-range-picker" if f.id == "date" else "filter-single-select"
        assert widget["spec"]["widgetType"] == expected_type
        filtered = {q["query"]["datasetName"] for q in widget["queries"]}
        assert filtered == set(f.datasets)
        # a dataset without the column would ignore the filter silently
        assert all(f.column in dataset_columns[ds] for ds in filtered)
        # ...and a dataset with it must follow it, or a chart would disagree with its neighbours
        assert {ds for ds, cols in dataset_columns.items() if f.column in cols} == filtered


def test_layout_fits_the_six_column_grid_without_overlaps(dashboard: Json) -> None:
    for page in dashboard["pages"]:
        cells: set[tuple[int, int]] = set()
        for item in page["layout"]:
            p = item["position"]
            assert p["x"] >= 0, item["widget"]["name"]
            assert p["x"] + p["width"] <= 6, item["widget"]["name"]
            mine = {(x, y) for x in range(p["x"], p["x"] + p["width"]) for y in range(p["y"], p["y"] + p["height"])}
            assert not cells & mine, f"{item['widget']['name']} overlaps another widget"
            cells |= mine


def test_cli_writes_the_definition_without_spark(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "kpis.lvdash.json"
    args = ["dashboard", "--config", str(ROOT / "conf" / "databricks.yaml"), "--lakeview", str(out)]
    assert main(args) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert out.read_text(encoding="utf-8") == FILE.read_text(encoding="utf-8")
