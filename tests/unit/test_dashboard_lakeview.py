"""The committed Lakeview dashboard (the bundle resource dashboards/fitbit_kpis.dashboard.yml) against the contract.

Every dataset query is analysed by Spark over empty views with the contract schemas, so a table or
column that does not exist fails here rather than on Databricks; every widget field names a column
of its dataset; and the dashboard has a widget for every KPI of the HTML page. The bundle's
definition names its tables by the bundle's references (``${var.catalog}``, the schema resources);
with those replaced by a configuration's names it is that configuration's ``.lvdash.json``.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from pyspark.sql import SparkSession

from fitbit_stream.cli import main
from fitbit_stream.config import Layer, load_config
from fitbit_stream.dashboard import FILTERS, KPIS, DashboardData, lakeview_dashboard, render_html
from fitbit_stream.dashboard.kpis import CHARTS, TILES
from fitbit_stream.dashboard.lakeview import BUNDLE_DASHBOARD_FILE, bundle_dashboard, bundle_dashboard_yaml
from fitbit_stream.errors import InvalidConfigError
from fitbit_stream.schemas import TABLES

ROOT = Path(__file__).resolve().parents[2]
FILE = ROOT / BUNDLE_DASHBOARD_FILE
DATABRICKS = load_config(ROOT / "conf" / "databricks.yaml")
#: A table as the bundle's dashboard names it: catalog variable, schema resource (keyed by layer), table.
BUNDLE_TABLE = re.compile(r"`\$\{var\.catalog\}`\.`\$\{resources\.schemas\.(\w+)\.name\}`\.(\w+)\b")

Json = dict[str, Any]


@pytest.fixture(scope="module")
def dashboard() -> Json:
    resource = yaml.safe_load(FILE.read_text(encoding="utf-8"))["resources"]["dashboards"]["fitbit_kpis"]
    loaded: Json = json.loads(resource["serialized_dashboard"])
    return loaded


def _widgets(dashboard: Json) -> list[Json]:
    return [item["widget"] for page in dashboard["pages"] for item in page["layout"]]


def test_committed_file_is_the_generated_one(dashboard: Json) -> None:
    """Regenerate with the command in the file's header (write_bundle_dashboard)."""
    assert FILE.read_text(encoding="utf-8") == bundle_dashboard_yaml()
    assert dashboard == bundle_dashboard()


def test_with_a_configs_names_it_is_that_configs_dashboard(dashboard: Json) -> None:
    """The catalog and schema names are the only difference from the ``--lakeview`` file of a config."""
    storage = DATABRICKS.storage
    text, replaced = BUNDLE_TABLE.subn(
        lambda m: f"{storage.catalog}.{storage.schemas[Layer(m.group(1))]}.{m.group(2)}", json.dumps(dashboard)
    )
    assert replaced > 0
    assert "${" not in text
    assert json.loads(text) == lakeview_dashboard(DATABRICKS)


def test_needs_a_catalog() -> None:
    with pytest.raises(InvalidConfigError, match=r"storage\.catalog"):
        lakeview_dashboard(load_config(None))


@pytest.fixture(scope="module")
def dataset_columns(spark: SparkSession, dashboard: Json) -> dict[str, list[str]]:
    """Each dataset's output columns, from Spark's analysis of its query over empty contract tables."""
    columns: dict[str, list[str]] = {}
    for ds in dashboard["datasets"]:
        sql = "".join(ds["queryLines"])
        for layer, table in BUNDLE_TABLE.findall(sql):
            spec = TABLES.get(table)
            assert spec is not None, f"{ds['name']}: {table} is not a contract table"
            assert spec.layer == layer, f"{ds['name']}: {table} is a {spec.layer} table, read from {layer}"
            assert layer in ("silver", "gold"), f"{ds['name']}: reads {layer} table {table}"
            spark.createDataFrame([], spec.schema).createOrReplaceTempView(f"lv_{layer}_{table}")
        local_sql, replaced = BUNDLE_TABLE.subn(lambda m: f"lv_{m.group(1)}_{m.group(2)}", sql)
        assert replaced > 0, f"{ds['name']}: reads no table of the bundle's schemas"
        assert "${" not in local_sql, f"{ds['name']}: a reference other than catalog and schema: {local_sql}"
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
    assert json.loads(out.read_text(encoding="utf-8")) == lakeview_dashboard(DATABRICKS)
