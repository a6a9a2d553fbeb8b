"""The Databricks (Lakeview / AI/BI) dashboard: the HTML page's KPIs over the Unity Catalog tables.

The definition is generated from the same datasets (:mod:`.datasets`) and KPI list (:mod:`.kpis`)
as the HTML page. Widgets aggregate the row-grain datasets themselves, so the global filters (age
group, city, gender, date range) narrow the rows before any sum, count or average, as on the HTML
page. It comes in two forms:

- :func:`lakeview_dashboard` names the tables of one configuration (``<catalog>.<schema>.<table>``):
  a ``.lvdash.json`` to import by hand (``fitbit-stream dashboard --lakeview FILE``);
- :func:`bundle_dashboard` names them by the bundle's own references, ``${var.catalog}`` and
  ``${resources.schemas.<layer>.name}``, which the Databricks CLI resolves per target (development
  mode prefixes schema names with the user's). It is committed as the bundle resource
  ``dashboards/fitbit_kpis.dashboard.yml`` (:func:`write_bundle_dashboard`; a unit test keeps the
  file and the generator in step). Why not a ``.lvdash.json`` with the bundle's
  ``dataset_catalog``/``dataset_schema``: those set one default catalog and ONE schema, while the
  datasets join gold with silver tables, and the CLI reads a ``file_path`` dashboard as it is.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fitbit_stream.config import Config
from fitbit_stream.dashboard.datasets import DATASETS, dataset_sql, table_resolver
from fitbit_stream.dashboard.kpis import CHARTS, FILTERS, TILES, Filter, Kpi
from fitbit_stream.errors import InvalidConfigError

__all__ = [
    "BUNDLE_DASHBOARD_FILE",
    "bundle_dashboard",
    "bundle_dashboard_yaml",
    "bundle_table",
    "lakeview_dashboard",
    "write_bundle_dashboard",
    "write_lakeview",
]

_Json = dict[str, Any]

TITLE = "fitbit_stream KPIs"

#: A widget's aggregate: (field name, expression over the dataset's columns, display name).
_Field = tuple[str, str, str]

_TILE_FIELDS: dict[str, _Field] = {
    "total_workouts": ("count(session_id)", "COUNT(`session_id`)", "Workouts"),
    "total_visits": ("count(mac_address)", "COUNT(`mac_address`)", "Gym logins"),
    "total_members": ("countdistinct(user_id)", "COUNT(DISTINCT `user_id`)", "Members"),
    "minutes_in_gym": ("sum(minutes_in_gym)", "SUM(`minutes_in_gym`)", "Minutes in gym"),
    "minutes_exercising": ("sum(minutes_exercising)", "SUM(`minutes_exercising`)", "Minutes exercising"),
    "avg_bpm": ("avg(avg_bpm)", "AVG(`avg_bpm`)", "Average bpm"),
}


def _col(name: str) -> _Field:
    return (name, f"`{name}`", name.replace("_", " "))


#: Notes that differ here: a Lakeview counter shows the minutes as a number, not as hours:minutes.
_NOTES = {
    "minutes_in_gym": "sum of minutes over visits",
    "minutes_exercising": "sum of minutes over visits of sessions started in the gym",
}


def _frame(kpi: Kpi) -> _Json:
    note = _NOTES.get(kpi.id, kpi.note)
    return {"showTitle": True, "title": kpi.title, "showDescription": True, "description": note}


def _query(dataset: str, fields: list[_Field], *, name: str = "main_query") -> _Json:
    return {
        "name": name,
        "query": {
            "datasetName": dataset,
            "fields": [{"name": n, "expression": e} for n, e, _ in fields],
            "disaggregated": False,
        },
    }


def _enc(field: _Field, scale: str) -> _Json:
    return {"fieldName": field[0], "scale": {"type": scale}, "displayName": field[2]}


def _widget(kpi: Kpi, fields: list[_Field], spec: _Json, position: _Json) -> _Json:
    return {
        "widget": {"name": kpi.id, "queries": [_query(kpi.dataset, fields)], "spec": {**spec, "frame": _frame(kpi)}},
        "position": position,
    }


def _pos(x: int, y: int, width: int, height: int) -> _Json:
    return {"x": x, "y": y, "width": width, "height": height}


def _counter(kpi: Kpi, position: _Json) -> _Json:
    field = _TILE_FIELDS[kpi.id]
    spec = {
        "version": 2,
        "widgetType": "counter",
        "encodings": {"value": {"fieldName": field[0], "displayName": field[2]}},
    }
    return _widget(kpi, [field], spec, position)


def _bars(kpi: Kpi, x: _Field, ys: list[_Field], position: _Json) -> _Json:
    y: _Json = (
        _enc(ys[0], "quantitative")
        if len(ys) == 1
        else {"scale": {"type": "quantitative"}, "fields": [{"fieldName": f[0], "displayName": f[2]} for f in ys]}
    )
    spec: _Json = {"version": 3, "widgetType": "bar", "encodings": {"x": _enc(x, "categorical"), "y": y}}
    if len(ys) > 1:
        spec["mark"] = {"layout": "group"}
    return _widget(kpi, [x, *ys], spec, position)


def _line(kpi: Kpi, x: _Field, ys: list[_Field], position: _Json) -> _Json:
    y = {"scale": {"type": "quantitative"}, "fields": [{"fieldName": f[0], "displayName": f[2]} for f in ys]}
    spec: _Json = {"version": 3, "widgetType": "line", "encodings": {"x": _enc(x, "temporal"), "y": y}}
    return _widget(kpi, [x, *ys], spec, position)


def _chart_widgets(y: int) -> list[_Json]:
    by_id = {k.id: k for k in CHARTS}
    day: _Field = ("daily(date)", 'DATE_TRUNC("DAY", `date`)', "date")
    # The HTML page's trend draws the visits' minutes under the workouts: here a second widget over
    # the visits dataset, beside the one named after the KPI (a widget reads one dataset).
    minutes_kpi = Kpi(
        "daily_trend_minutes", "Daily time in gym and exercising", "visits", "minutes per UTC day, sums over visits"
    )
    trend = [
        _line(
            by_id["daily_trend"],
            day,
            [("count(session_id)", "COUNT(`session_id`)", "workouts"), ("avg(avg_bpm)", "AVG(`avg_bpm`)", "avg bpm")],
            _pos(0, y, 3, 6),
        ),
        _bars(
            minutes_kpi,
            day,
            [
                ("sum(minutes_in_gym)", "SUM(`minutes_in_gym`)", "minutes in gym"),
                ("sum(minutes_exercising)", "SUM(`minutes_exercising`)", "minutes exercising"),
            ],
            _pos(3, y, 3, 6),
        ),
    ]
    return trend + _kpi_chart_widgets(y + 6)


def _kpi_chart_widgets(y: int) -> list[_Json]:
    by_id = {k.id: k for k in CHARTS}
    member = _col("member")
    minutes_ex: _Field = ("sum(minutes_exercising)", "SUM(`minutes_exercising`)", "minutes exercising")
    logins: _Field = ("count(mac_address)", "COUNT(`mac_address`)", "gym logins")
    hours: _Field = ("sum(hours_exercising)", "SUM(`hours_exercising`)", "workout hours")
    occupancy: _Field = ("sum(avg_occupancy)", "SUM(`avg_occupancy`)", "avg occupancy")
    members: _Field = ("countdistinct(user_id)", "COUNT(DISTINCT `user_id`)", "members")
    return [
        _bars(
            by_id["hr_by_group"],
            _col("age_gender"),
            [
                ("min(min_bpm)", "MIN(`min_bpm`)", "min bpm"),
                ("avg(avg_bpm)", "AVG(`avg_bpm`)", "avg bpm"),
                ("max(max_bpm)", "MAX(`max_bpm`)", "max bpm"),
            ],
            _pos(0, y, 3, 6),
        ),
        _bars(
            by_id["gym_vs_exercise"],
            member,
            [("sum(minutes_in_gym)", "SUM(`minutes_in_gym`)", "minutes in gym"), minutes_ex],
            _pos(3, y, 3, 6),
        ),
        _widget(
            by_id["logins_vs_hours"],
            [member, logins, hours],
            {
                "version": 3,
                "widgetType": "scatter",
                "encodings": {
                    "x": _enc(logins, "quantitative"),
                    "y": _enc(hours, "quantitative"),
                    "color": _enc(member, "categorical"),
                },
            },
            _pos(0, y + 6, 3, 6),
        ),
        _widget(
            by_id["workout_share"],
            [member, minutes_ex],
            {
                "version": 3,
                "widgetType": "pie",
                "encodings": {"angle": _enc(minutes_ex, "quantitative"), "color": _enc(member, "categorical")},
            },
            _pos(3, y + 6, 3, 6),
        ),
        # One row per gym and day, a column per UTC hour: the HTML page's per-gym grids side by side.
        _widget(
            by_id["occupancy_heatmap"],
            [_col("hour_of_day"), _col("gym_day"), occupancy],
            {
                "version": 3,
                "widgetType": "heatmap",
                "encodings": {
                    "x": _enc(_col("hour_of_day"), "categorical"),
                    "y": _enc(_col("gym_day"), "categorical"),
                    "color": _enc(occupancy, "quantitative"),
                },
            },
            _pos(0, y + 12, 6, 7),
        ),
        _bars(by_id["age_distribution"], _col("age"), [members], _pos(0, y + 19, 2, 6)),
        _bars(by_id["gender_distribution"], _col("gender"), [members], _pos(2, y + 19, 2, 6)),
        _bars(by_id["city_distribution"], _col("city"), [members], _pos(4, y + 19, 2, 6)),
    ]


def _filter(f: Filter, y: int) -> _Json:
    queries = [_query(ds, [_col(f.column)], name=f"filter_{f.id}_{ds}") for ds in f.datasets]
    return {
        "widget": {
            "name": f"filter_{f.id}",
            "queries": queries,
            "spec": {
                "version": 2,
                "widgetType": "filter-date-range-picker" if f.id == "date" else "filter-single-select",
                "encodings": {
                    "fields": [{"fieldName": f.column, "displayName": f.title, "queryName": q["name"]} for q in queries]
                },
                "frame": {"showTitle": True, "title": f.title},
            },
        },
        "position": _pos(0, y, 2, 2),
    }


def _lines(sql: str) -> list[str]:
    return sql.splitlines(keepends=True)


def _definition(resolve: Callable[[str, str], str], title: str) -> _Json:
    datasets = [
        {"name": d.name, "displayName": d.title, "queryLines": _lines(dataset_sql(d, resolve))}
        for d in DATASETS.values()
    ]
    layout: list[_Json] = [
        {
            "widget": {"name": "title", "multilineTextboxSpec": {"lines": [f"## {title}"]}},
            "position": _pos(0, 0, 6, 1),
        }
    ]
    layout += [_counter(k, _pos(2 * (i % 3), 1 + 3 * (i // 3), 2, 3)) for i, k in enumerate(TILES)]
    layout += _chart_widgets(1 + 3 * ((len(TILES) + 2) // 3))
    pages = [
        {"name": "kpis", "displayName": "KPIs", "pageType": "PAGE_TYPE_CANVAS", "layout": layout},
        {
            "name": "filters",
            "displayName": "Filters",
            "pageType": "PAGE_TYPE_GLOBAL_FILTERS",
            "layout": [_filter(f, 2 * i) for i, f in enumerate(FILTERS)],
        },
    ]
    return {"datasets": datasets, "pages": pages}


def lakeview_dashboard(config: Config, *, title: str = TITLE) -> _Json:
    """The Lakeview dashboard definition (``.lvdash.json`` content) over the tables of ``config``.

    ``config.storage.catalog`` must be set: Lakeview datasets query Unity Catalog tables.
    """
    if not config.storage.catalog:
        raise InvalidConfigError("storage.catalog: a Lakeview dashboard needs Unity Catalog tables, got no catalog")
    return _definition(table_resolver(config), title)


def bundle_table(layer: str, table: str) -> str:
    """A table as the bundle's dashboard names it: the catalog variable and the schema resource.

    Quoted, so any catalog or schema name the CLI substitutes stays one identifier.
    """
    return f"`${{var.catalog}}`.`${{resources.schemas.{layer}.name}}`.{table}"


def bundle_dashboard(*, title: str = TITLE) -> _Json:
    """The dashboard definition with the bundle's references in place of catalog and schema names."""
    return _definition(bundle_table, title)


#: The bundle resource file (``include``d by databricks.yml), relative to the bundle root.
BUNDLE_DASHBOARD_FILE = Path("dashboards") / "fitbit_kpis.dashboard.yml"

_BUNDLE_HEADER = """\
# Generated by fitbit_stream.dashboard.lakeview; do not edit. Regenerate with
#   .venv/bin/python -c 'from fitbit_stream.dashboard.lakeview import write_bundle_dashboard as w; w()'
# The KPI dashboard as a bundle resource (databricks.yml includes this file). The definition is
# inline (serialized_dashboard) rather than a .lvdash.json file_path so that the CLI substitutes the
# catalog variable and each layer's schema resource name (prefixed in development mode) into the
# dataset queries, as it does for the jobs' parameters.
"""


def bundle_dashboard_yaml(*, key: str = "fitbit_kpis", display_name: str = "Fitbit KPIs") -> str:
    """The bundle resource file's text: the dashboard resource with :func:`bundle_dashboard` inline.

    The definition is a YAML literal block holding indented JSON: one dataset line per line, so a
    change to a query reads as a one-line diff.
    """
    body = json.dumps(bundle_dashboard(), indent=2, ensure_ascii=False)
    lines = [
        "resources:",
        "  dashboards:",
        f"    {key}:",
        f"      display_name: {display_name}",
        "      warehouse_id: ${var.warehouse_id}",
        "      serialized_dashboard: |",
        *(f"        {line}" for line in body.splitlines()),
    ]
    return _BUNDLE_HEADER + "\n".join(lines) + "\n"


def write_bundle_dashboard(root: Path = Path()) -> Path:
    """Write :func:`bundle_dashboard_yaml` to ``root / BUNDLE_DASHBOARD_FILE``; returns its path."""
    out = Path(root) / BUNDLE_DASHBOARD_FILE
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(bundle_dashboard_yaml(), encoding="utf-8")
    return out.absolute()


def write_lakeview(config: Config, out: Path) -> Path:
    """Write :func:`lakeview_dashboard` for ``config`` as JSON to ``out``; returns its path."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(lakeview_dashboard(config), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return out.absolute()
