"""Issue 4's dashboard bar: the page, written over real Delta gold tables, in a real headless Chromium.

A small dataset with hand-computed figures is written as the gold and silver Delta tables (and the
ops progress and quarantine the health panel reads); `fitbit-stream dashboard` writes the page;
Chromium opens it from a file:// URL under the page's own Content-Security-Policy. No console
message, page error or failed request is allowed, every chart must draw SVG marks, and the figures
the page shows must equal the known ones, before and after filtering by gender, date range and city.

Issue 14: on a 390 px phone screen the page does not scroll sideways and its charts are drawn at
their real size; the scatter's labels never overlap; durations read h:mm; the daily trend shows the
known days. `dashboard --serve` serves the same page, and it shows a row appended to gold without
a reload.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
from pyspark.sql import SparkSession

from fitbit_stream.cli import main
from fitbit_stream.config import Config, load_config
from fitbit_stream.dashboard import DashboardData, render_html
from fitbit_stream.dashboard.kpis import CHARTS, TILES
from fitbit_stream.dashboard.server import API_PATH, DashboardServer, serve
from fitbit_stream.io.progress import QUERY_PROGRESS
from fitbit_stream.io.tables import Tables
from fitbit_stream.schemas import GYM_OCCUPANCY, GYM_SUMMARY, QUARANTINE, USER_BINS, USERS, WORKOUT_BPM_SUMMARY

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOT = Path("/tmp/dashboard.png")

AA, BB, CC, DD = (f"aa:bb:cc:dd:ee:{n}" for n in ("0a", "0b", "0c", "0d"))
U = "(unknown)"


def ts(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def d(text: str) -> date:
    return date.fromisoformat(text)


def _write_tables(spark: SparkSession, config: Config) -> None:
    users = [
        (1, 101, AA, ts("2025-01-01 00:00")),
        (2, 102, BB, ts("2025-01-01 00:00")),
        (3, 103, CC, ts("2025-01-01 00:00")),  # registered, no profile
    ]
    bins = [
        (1, "25-35", "F", "Austin", "TX"),
        (2, "35-45", "M", "Boston", "MA"),
        (4, "25-35", "F", "Boston", "MA"),  # a profile, not registered
    ]
    workouts = [
        (1, 1, 1, d("2025-03-03"), "25-35", "F", "F", "Austin", "TX", 90.0, 120.0, 150.0, 10),
        (1, 2, 2, d("2025-03-03"), "25-35", "F", "F", "Austin", "TX", 100.0, 130.0, 170.0, 12),
        (1, 1, 3, d("2025-03-04"), "25-35", "F", "F", "Austin", "TX", 80.0, 110.0, 140.0, 8),
        (2, 1, 1, d("2025-03-03"), "35-45", "M", "M", "Boston", "MA", 70.0, 95.0, 120.0, 5),
        (2, 3, 2, d("2025-03-04"), "35-45", "M", "M", "Boston", "MA", 75.0, 100.0, 130.0, 6),
        (3, 1, 1, d("2025-03-04"), None, None, None, None, None, 60.0, 90.0, 110.0, 4),  # no profile version
    ]
    visits = [
        (1, AA, ts("2025-03-03 08:00"), d("2025-03-03"), ts("2025-03-03 09:30"), [1, 2], 2, 90.0, 75.5),
        (2, AA, ts("2025-03-04 18:00"), d("2025-03-04"), ts("2025-03-04 19:00"), [1], 1, 60.0, 40.25),
        (1, BB, ts("2025-03-03 08:30"), d("2025-03-03"), ts("2025-03-03 09:00"), [1], 1, 30.0, 20.0),
        (1, BB, ts("2025-03-04 07:00"), d("2025-03-04"), ts("2025-03-04 08:15"), [3], 1, 75.0, 50.0),
        (2, DD, ts("2025-03-04 18:30"), d("2025-03-04"), ts("2025-03-04 19:00"), [], 0, 30.0, 0.0),  # nobody's mac
    ]
    occupancy = [
        (1, ts("2025-03-03 08:00"), 2, 1.5, 2),
        (1, ts("2025-03-03 09:00"), 1, 0.5, 1),
        (1, ts("2025-03-04 07:00"), 1, 1.0, 1),
        (1, ts("2025-03-04 08:00"), 1, 0.25, 1),
        (2, ts("2025-03-04 18:00"), 2, 1.5, 2),
    ]
    quarantine = [
        ("k", "v", "bpm", 0, 7, ts("2025-03-04 09:00"), "late", None, ts("2025-03-04 10:00:05")),
        ("k", "v", "bpm", 0, 9, ts("2025-03-04 09:00"), "late", None, ts("2025-03-04 10:00:05")),
        ("k", "v", "workout", 0, 3, ts("2025-03-04 09:00"), "malformed", "x", ts("2025-03-04 10:00:05")),
    ]
    tables = Tables(config)
    for name, rows, schema in (
        ("users", users, USERS),
        ("user_bins", bins, USER_BINS),
        ("workout_bpm_summary", workouts, WORKOUT_BPM_SUMMARY),
        ("gym_summary", visits, GYM_SUMMARY),
        ("gym_occupancy", occupancy, GYM_OCCUPANCY),
        ("quarantine", quarantine, QUARANTINE),
    ):
        spark.createDataFrame(rows, schema).write.format("delta").save(tables.ref(name).path)
    progress = [
        _progress("bronze_kafka_multiplex", 0, "2025-03-04 10:00:00", 200, 1500, 400.0, offsets=50),
        _progress("bronze_kafka_multiplex", 1, "2025-03-04 10:00:10", 50, 800, 60.0, offsets=0),
        _progress("silver_bpm", 3, "2025-03-04 10:00:12", 120, 2500, 48.0, files=1),
    ]
    _append_progress(spark, config, progress)


def _progress(
    query: str,
    batch: int,
    at: str,
    rows: int,
    ms: int,
    rate: float,
    *,
    offsets: int | None = None,
    files: int | None = None,
) -> tuple[Any, ...]:
    return (query, "qid", "run-1", batch, ts(at), rows, rate, rate, ms, offsets, files, None, 0, "{}")


def _append_progress(spark: SparkSession, config: Config, rows: list[tuple[Any, ...]]) -> None:
    ref = Tables(config).ref("_query_progress", layer="ops")
    spark.createDataFrame(rows, QUERY_PROGRESS).write.format("delta").mode("append").save(ref.path)


@pytest.fixture(scope="module")
def page_file(
    spark: SparkSession, tmp_path_factory: pytest.TempPathFactory, monkeypatch_module: pytest.MonkeyPatch
) -> Path:
    base = tmp_path_factory.mktemp("dashboard")
    overrides = [f"storage.root={base / 'lake'}", f"storage.checkpoint_root={base / 'checkpoints'}"]
    _write_tables(spark, load_config(None, overrides))
    # The command builds its session with get_spark; the suite's one session stands in for it.
    monkeypatch_module.setattr("fitbit_stream.session.get_spark", lambda config: spark)
    out = base / "out" / "dashboard.html"
    args = ["dashboard", *(a for o in overrides for a in ("--set", o)), "--out", str(out)]
    assert main(args) == 0
    return out


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as mp:
        yield mp


class Browser:
    """One page in headless Chromium, with every console message, page error and request recorded."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.console: list[str] = []
        self.errors: list[str] = []
        self.failed: list[str] = []
        self.requests: list[str] = []
        page.on("console", lambda m: self.console.append(f"{m.type}: {m.text}"))
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        page.on("requestfailed", lambda r: self.failed.append(f"{r.url}: {r.failure}"))
        page.on("request", lambda r: self.requests.append(r.url))

    def renders(self) -> int:
        return int(self.page.get_attribute("body", "data-renders") or 0)

    def change(self, action: Any) -> None:
        """Run a filter action and wait until the page has re-rendered."""
        before = self.renders()
        action()
        wait_for(self.page, f"Number(document.body.getAttribute('data-renders')) > {before}")

    def tiles(self) -> dict[str, tuple[str, str]]:
        found: dict[str, tuple[str, str]] = self.page.eval_on_selector_all(
            ".tile",
            "els => Object.fromEntries(els.map(e => "
            "[e.dataset.kpi, [e.dataset.value, e.querySelector('.value').textContent]]))",
        )
        return {k: (v[0], v[1]) for k, v in found.items()}

    def figures(self, kpi: str) -> dict[str, dict[str, Any]]:
        """The chart's table: row key -> its raw data-* values and, under 'cells', the shown text."""
        rows: list[dict[str, Any]] = self.page.eval_on_selector_all(
            f'[data-kpi="{kpi}"] .figures tbody tr',
            "els => els.map(e => ({...e.dataset, cells: [...e.cells].map(c => c.textContent)}))",
        )
        return {r["key"]: r for r in rows}

    def order(self, kpi: str) -> list[str]:
        return list(self.figures(kpi))

    def bar_labels(self, kpi: str, key: str) -> list[str]:
        labels: list[str] = self.page.eval_on_selector_all(
            f'[data-kpi="{kpi}"] g.row[data-key="{key}"] text.value', "els => els.map(e => e.textContent)"
        )
        return labels


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: run `scripts/setup.sh --with-e2e`")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


def open_page(chromium: Any, url: str, *, width: int = 1400, height: int = 900) -> Browser:
    """A new page (in its own context) at ``url``, once the dashboard has drawn."""
    context = chromium.new_context(viewport={"width": width, "height": height})
    b = Browser(context.new_page())
    b.page.goto(url)
    wait_for(b.page, "Number(document.body.getAttribute('data-renders')) >= 1")
    return b


def wait_for(page: Any, predicate: str, timeout: float = 30_000) -> None:
    """Wait until the JavaScript ``predicate`` holds; Playwright polls it, nothing sleeps.

    An arrow function, not a bare expression: Playwright evaluates a bare expression with eval in
    the page, which the page's Content-Security-Policy forbids once the predicate is not true at once.
    """
    page.wait_for_function(f"() => {predicate}", timeout=timeout)


@pytest.fixture(scope="module")
def browser(chromium: Any, page_file: Path) -> Iterator[Browser]:
    b = open_page(chromium, page_file.as_uri())
    try:
        yield b
    finally:
        b.page.context.close()


def _num(value: str) -> float:
    return float(value)


def test_page_loads_offline_without_console_errors(browser: Browser, page_file: Path) -> None:
    assert browser.errors == []
    assert browser.console == []
    assert browser.failed == []
    # the document itself is the only thing the page loaded (its icon is an inline data: URL)
    assert [u for u in browser.requests if not u.startswith("data:")] == [page_file.as_uri()]
    csp = browser.page.get_attribute('meta[http-equiv="Content-Security-Policy"]', "content")
    assert csp is not None
    assert "default-src 'none'" in csp


def test_every_chart_draws_svg_marks(browser: Browser) -> None:
    for kpi in CHARTS:
        marks = browser.page.eval_on_selector_all(
            f'[data-kpi="{kpi.id}"] svg.chart',
            "els => els.map(s => s.querySelectorAll('rect.bar, circle.dot, rect.cell').length)",
        )
        assert marks, f"{kpi.id}: no SVG"
        assert sum(marks) > 0, f"{kpi.id}: SVG without marks"
        assert browser.page.locator(f'[data-kpi="{kpi.id}"] svg.empty').count() == 0, kpi.id
    assert set(browser.tiles()) == {k.id for k in TILES}
    browser.page.screenshot(path=str(SCREENSHOT), full_page=True)


def test_figures_equal_the_known_values(browser: Browser) -> None:
    assert browser.page.input_value("#filter-date-from") == "2025-03-03"
    assert browser.page.input_value("#filter-date-to") == "2025-03-04"
    assert browser.tiles() == {
        "total_workouts": ("6", "6"),
        "total_visits": ("5", "5"),
        "total_members": ("4", "4"),
        "minutes_in_gym": ("285", "4:45"),  # h:mm; the raw minutes stay in data-value
        "minutes_exercising": ("185.75", "3:06"),  # 3 h 5.75 min, to the minute
        "avg_bpm": ("107.5", "107.5"),  # (120 + 130 + 110 + 95 + 100 + 90) / 6
    }

    hr = browser.figures("hr_by_group")
    assert list(hr) == ["25-35 / F", "35-45 / M", f"{U} / {U}"]
    assert [(r["workouts"], r["min"], r["avg"], r["max"]) for r in hr.values()] == [
        ("3", "80", "120", "170"),
        ("2", "70", "97.5", "130"),
        ("1", "60", "90", "110"),
    ]
    assert hr["35-45 / M"]["cells"] == ["35-45 / M", "2", "70.00", "97.50", "130.00"]
    assert browser.bar_labels("hr_by_group", "25-35 / F") == ["80.0", "120.0", "170.0"]

    gym = browser.figures("gym_vs_exercise")
    assert list(gym) == ["user 1", "user 2", f"unregistered {DD}"]
    assert [(r["logins"], r["minutes_in_gym"], r["minutes_exercising"]) for r in gym.values()] == [
        ("2", "150", "115.75"),
        ("2", "105", "70"),
        ("1", "30", "0"),
    ]
    assert browser.bar_labels("gym_vs_exercise", "user 1") == ["2:30", "1:56"]
    assert gym["user 1"]["cells"] == ["user 1", "2", "2:30", "1:56"]

    logins = browser.figures("logins_vs_hours")
    assert {k: (r["logins"], _num(r["hours"])) for k, r in logins.items()} == {
        "user 1": ("2", pytest.approx(115.75 / 60)),
        "user 2": ("2", pytest.approx(70 / 60)),
        f"unregistered {DD}": ("1", 0.0),
    }
    assert logins["user 1"]["cells"] == ["user 1", "2", "1:56"]  # workout time as h:mm
    dots = browser.page.eval_on_selector_all(
        '[data-kpi="logins_vs_hours"] circle.dot', "els => els.map(e => [e.dataset.key, e.dataset.x])"
    )
    assert sorted(dots) == sorted([["user 1", "2"], ["user 2", "2"], [f"unregistered {DD}", "1"]])

    share = browser.figures("workout_share")
    assert list(share) == ["user 1", "user 2", f"unregistered {DD}"]
    assert {k: _num(r["share"]) for k, r in share.items()} == {
        "user 1": pytest.approx(115.75 / 185.75),
        "user 2": pytest.approx(70 / 185.75),
        f"unregistered {DD}": 0.0,
    }
    assert [r["cells"][2] for r in share.values()] == ["62.3%", "37.7%", "0.0%"]
    assert [r["cells"][1] for r in share.values()] == ["1:56", "1:10", "0:00"]

    cells = browser.page.eval_on_selector_all(
        '[data-kpi="occupancy_heatmap"] rect.cell[data-gym]',
        "els => els.map(e => [e.dataset.gym, e.dataset.date, e.dataset.hour, e.dataset.visitors, "
        "e.dataset.avg, e.dataset.peak])",
    )
    assert sorted(cells) == sorted(
        [
            ["1", "2025-03-03", "8", "2", "1.5", "2"],
            ["1", "2025-03-03", "9", "1", "0.5", "1"],
            ["1", "2025-03-04", "7", "1", "1", "1"],
            ["1", "2025-03-04", "8", "1", "0.25", "1"],
            ["2", "2025-03-04", "18", "2", "1.5", "2"],
        ]
    )
    assert browser.page.locator('[data-kpi="occupancy_heatmap"] svg.heat').count() == 2  # one grid per gym

    assert {k: r["members"] for k, r in browser.figures("age_distribution").items()} == {
        "25-35": "2",
        "35-45": "1",
        U: "1",
    }
    assert {k: r["members"] for k, r in browser.figures("gender_distribution").items()} == {
        "F": "2",
        "M": "1",
        U: "1",
    }
    assert browser.order("city_distribution") == ["Boston", "Austin", U]
    assert [r["members"] for r in browser.figures("city_distribution").values()] == ["2", "1", "1"]


def test_filters_re_aggregate_every_chart(browser: Browser) -> None:
    page = browser.page
    try:
        browser.change(lambda: page.select_option("#filter-gender", "F"))
        assert browser.tiles() == {
            "total_workouts": ("3", "3"),
            "total_visits": ("2", "2"),
            "total_members": ("2", "2"),
            "minutes_in_gym": ("150", "2:30"),
            "minutes_exercising": ("115.75", "1:56"),
            "avg_bpm": ("120", "120.0"),
        }
        assert list(browser.figures("hr_by_group")) == ["25-35 / F"]
        assert {k: _num(r["share"]) for k, r in browser.figures("workout_share").items()} == {"user 1": 1.0}
        assert {k: r["members"] for k, r in browser.figures("gender_distribution").items()} == {"F": "2"}
        assert len(browser.figures("occupancy_heatmap")) == 5  # occupancy is over all members

        browser.change(lambda: page.fill("#filter-date-from", "2025-03-04"))
        assert browser.tiles() == {
            "total_workouts": ("1", "1"),
            "total_visits": ("1", "1"),
            "total_members": ("2", "2"),  # members have no date
            "minutes_in_gym": ("60", "1:00"),
            "minutes_exercising": ("40.25", "0:40"),
            "avg_bpm": ("110", "110.0"),
        }
        hr = browser.figures("hr_by_group")
        assert [(r["workouts"], r["min"], r["avg"], r["max"]) for r in hr.values()] == [("1", "80", "110", "140")]
        assert [r["cells"] for r in browser.figures("daily_trend").values()] == [
            ["2025-03-04", "1", "1:00", "0:40", "110.0"]
        ]
        assert {k: (r["logins"], r["minutes_in_gym"]) for k, r in browser.figures("gym_vs_exercise").items()} == {
            "user 1": ("1", "60")
        }
        assert sorted(browser.figures("occupancy_heatmap")) == [
            "1 2025-03-04 7",
            "1 2025-03-04 8",
            "2 2025-03-04 18",
        ]

        browser.change(lambda: page.click("#filter-reset"))
        browser.change(lambda: page.select_option("#filter-city", "Boston"))
        tiles = browser.tiles()
        # workouts by the city in effect at the workout, visits and members by the current one
        assert (tiles["total_workouts"], tiles["total_visits"], tiles["total_members"]) == (
            ("2", "2"),
            ("2", "2"),
            ("2", "2"),
        )
        assert list(browser.figures("gym_vs_exercise")) == ["user 2"]

        browser.change(lambda: page.fill("#filter-date-to", "2025-03-02"))  # before any data
        for kpi in (
            "daily_trend",
            "hr_by_group",
            "gym_vs_exercise",
            "logins_vs_hours",
            "workout_share",
            "occupancy_heatmap",
        ):
            assert page.locator(f'[data-kpi="{kpi}"] svg.empty').count() == 1, kpi
        assert browser.tiles()["avg_bpm"] == ("", "\u2013")
    finally:
        browser.change(lambda: page.click("#filter-reset"))
    assert browser.tiles()["total_workouts"] == ("6", "6")
    assert browser.errors == []
    assert browser.console == []
    assert browser.failed == []


def _eval(page: Any, selector: str, script: str) -> list[Any]:
    found: list[Any] = page.eval_on_selector_all(selector, script)
    return found


def test_daily_trend_shows_each_day(browser: Browser) -> None:
    trend = browser.figures("daily_trend")
    assert {
        k: (r["workouts"], r["minutes_in_gym"], r["minutes_exercising"], r["avg_bpm"]) for k, r in trend.items()
    } == {
        "2025-03-03": ("3", "120", "95.5", "115"),  # bpm (120 + 130 + 95) / 3; visits of AA and BB
        "2025-03-04": ("3", "165", "90.25", "100"),  # bpm (110 + 100 + 90) / 3; AA, BB and DD
    }
    assert [r["cells"] for r in trend.values()] == [
        ["2025-03-03", "3", "2:00", "1:36", "115.0"],
        ["2025-03-04", "3", "2:45", "1:30", "100.0"],
    ]
    marks = _eval(
        browser.page,
        '[data-kpi="daily_trend"] svg [data-value]',
        "els => els.map(e => [e.tagName, e.dataset.date, e.dataset.series, e.dataset.value])",
    )
    assert sorted(marks) == sorted(
        [
            ["rect", "2025-03-03", "workouts", "3"],
            ["rect", "2025-03-04", "workouts", "3"],
            ["rect", "2025-03-03", "minutes_in_gym", "120"],
            ["rect", "2025-03-04", "minutes_in_gym", "165"],
            ["rect", "2025-03-03", "minutes_exercising", "95.5"],
            ["rect", "2025-03-04", "minutes_exercising", "90.25"],
            ["circle", "2025-03-03", "avg_bpm", "115"],
            ["circle", "2025-03-04", "avg_bpm", "100"],
        ]
    )
    labels = _eval(
        browser.page,
        '[data-kpi="daily_trend"] text.value',
        "els => els.map(e => [e.dataset.date, e.dataset.series, e.textContent])",
    )
    assert sorted(labels) == sorted(
        [
            ["2025-03-03", "workouts", "3"],
            ["2025-03-04", "workouts", "3"],
            ["2025-03-03", "minutes_in_gym", "2:00"],
            ["2025-03-04", "minutes_in_gym", "2:45"],
            ["2025-03-03", "minutes_exercising", "1:36"],
            ["2025-03-04", "minutes_exercising", "1:30"],
            ["2025-03-03", "avg_bpm", "115.0"],
            ["2025-03-04", "avg_bpm", "100.0"],
        ]
    )


def _health_rows(page: Any, key: str, selector: str = "tbody tr") -> dict[str, list[str]]:
    rows = _eval(
        page,
        f'[data-health="{key}"] {selector}',
        "els => els.map(e => [e.dataset.key, [...e.cells].map(c => c.textContent)])",
    )
    return {k: v for k, v in rows}


def test_health_panel_shows_the_ops_tables(browser: Browser) -> None:
    page = browser.page
    assert _health_rows(page, "last_batch") == {
        "bronze_kafka_multiplex": [
            "bronze_kafka_multiplex",
            "1",
            "2025-03-04 10:00:10",
            "50",
            "60",
            "0.8",
            "0 offsets",
        ],
        "silver_bpm": ["silver_bpm", "3", "2025-03-04 10:00:12", "120", "48", "2.5", "1 file"],
    }
    # lag in each unit and latency over time: a line per query, its last point a dot with the value
    lag = _eval(page, '[data-health="lag"] circle.last', "els => els.map(e => [e.dataset.series, e.dataset.value])")
    assert sorted(lag) == [["bronze_kafka_multiplex", "0"], ["silver_bpm", "1"]]
    assert page.locator('[data-health="lag"] polyline.line').count() == 2
    latency = _eval(
        page, '[data-health="latency"] circle.last', "els => els.map(e => [e.dataset.series, e.dataset.value])"
    )
    assert sorted(latency) == [["bronze_kafka_multiplex", "0.8"], ["silver_bpm", "2.5"]]
    assert _health_rows(page, "latency", ".figures tbody tr") == {
        "bronze_kafka_multiplex": ["bronze_kafka_multiplex", "2", "1.1", "1.5"],
        "silver_bpm": ["silver_bpm", "1", "2.5", "2.5"],
    }
    bars = _eval(
        page, '[data-health="quarantine"] rect.bar', "els => els.map(e => [e.parentNode.dataset.key, e.dataset.value])"
    )
    assert bars == [["late", "2"], ["malformed", "1"]]
    assert _health_rows(page, "quarantine", ".figures tbody tr") == {
        "late bpm": ["late / bpm", "2"],
        "malformed workout": ["malformed / workout", "1"],
    }


# --- a phone's screen ---------------------------------------------------------------------------

PHONE = {"width": 390, "height": 844}


def test_phone_screen_has_no_sideways_scroll(chromium: Any, page_file: Path) -> None:
    b = open_page(chromium, page_file.as_uri(), **PHONE)
    try:
        page = b.page
        assert page.evaluate("document.scrollingElement.scrollWidth") <= PHONE["width"]
        rights = _eval(page, ".tile, .card, #filters label", "els => els.map(e => e.getBoundingClientRect().right)")
        assert max(rights) <= PHONE["width"]
        # Each chart is drawn at its real size (an SVG unit is a CSS pixel): its 10-11 px text is not
        # shrunk to fit, as it was when 640-unit drawings were scaled down to the screen.
        scales = _eval(
            page, "svg.chart", "els => els.map(e => e.getBoundingClientRect().width / e.width.baseVal.value)"
        )
        assert scales
        assert min(scales) > 0.99
        sizes = _eval(page, "svg text.point-label", "els => els.map(e => e.getBoundingClientRect().height)")
        assert min(sizes) >= 10
        # the occupancy grid turns on a narrow screen (a row per hour), with the same cells
        assert page.locator('[data-kpi="occupancy_heatmap"] svg.heat').count() == 2
        heights = _eval(page, '[data-kpi="occupancy_heatmap"] svg.heat', "els => els.map(e => e.height.baseVal.value)")
        assert min(heights) > 24 * 18
        assert page.locator('[data-kpi="occupancy_heatmap"] rect.cell[data-gym]').count() == 5
        assert b.tiles()["minutes_in_gym"] == ("285", "4:45")
        assert (b.errors, b.console, b.failed) == ([], [], [])
    finally:
        page.context.close()


# --- scatter labels ------------------------------------------------------------------------------


def _visit(i: int, gym: int, day: str, minutes: float) -> dict[str, Any]:
    return {
        "gym": gym,
        "mac_address": f"aa:bb:cc:dd:{i:02x}:01",
        "date": day,
        "user_id": 100 + i,
        "member": f"user {100 + i}",
        "age": "25-35",
        "gender": "F",
        "city": "Austin",
        "num_sessions": 1,
        "minutes_in_gym": 60.0,
        "minutes_exercising": minutes,
        "hours_exercising": minutes / 60,
    }


@pytest.fixture(scope="module")
def crowded_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """30 members on 1 to 3 logins with nearly equal workout time: the labels' worst case."""
    visits = [
        _visit(i, 1 + k % 2, f"2025-03-0{1 + k}", 20 + (i % 5) * 1.5) for i in range(30) for k in range(1 + i % 3)
    ]
    page = render_html(
        DashboardData({"workouts": [], "visits": visits, "occupancy": [], "members": []}),
        generated_at=datetime(2025, 3, 4, tzinfo=UTC),
    )
    out = tmp_path_factory.mktemp("crowded") / "dashboard.html"
    out.write_text(page, encoding="utf-8")
    return out


def _overlap(a: dict[str, float], b: dict[str, float], tolerance: float = 0.5) -> bool:
    return (
        a["left"] < b["right"] - tolerance
        and b["left"] < a["right"] - tolerance
        and a["top"] < b["bottom"] - tolerance
        and b["top"] < a["bottom"] - tolerance
    )


_RECT = "{left: r.left, right: r.right, top: r.top, bottom: r.bottom}"


@pytest.mark.parametrize("width", [PHONE["width"], 1400])
def test_scatter_labels_do_not_overlap(chromium: Any, crowded_file: Path, width: int) -> None:
    b = open_page(chromium, crowded_file.as_uri(), width=width)
    try:
        page = b.page
        labels = _eval(
            page,
            '[data-kpi="logins_vs_hours"] text.point-label',
            f"els => els.map(e => {{ const r = e.getBoundingClientRect(); return {_RECT}; }})",
        )
        dots = _eval(
            page,
            '[data-kpi="logins_vs_hours"] circle.dot',
            f"els => els.map(e => {{ const r = e.getBoundingClientRect(); return {_RECT}; }})",
        )
        (plot,) = _eval(
            page,
            '[data-kpi="logins_vs_hours"] svg.chart',
            f"els => els.map(e => {{ const r = e.getBoundingClientRect(); return {_RECT}; }})",
        )
        assert len(dots) == 30
        assert len(labels) >= 4, "most crowded spots still carry a label"
        for i, a in enumerate(labels):
            assert plot["left"] <= a["left"], a
            assert a["right"] <= plot["right"], a
            for other in labels[i + 1 :]:
                assert not _overlap(a, other), (a, other)
            for dot in dots:
                assert not _overlap(a, dot, tolerance=1.0), (a, dot)
        # a member whose label had no room is still in the figures, with its tooltip on the dot
        assert len(b.figures("logins_vs_hours")) == 30
        if width == PHONE["width"]:
            assert page.evaluate("document.scrollingElement.scrollWidth") <= PHONE["width"]
        assert (b.errors, b.console, b.failed) == ([], [], [])
    finally:
        page.context.close()


# --- dashboard --serve ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Config, DashboardServer]]:
    """`dashboard --serve` on a free port of 127.0.0.1, in a thread, over a lake of its own."""
    base = tmp_path_factory.mktemp("served")
    config = load_config(None, [f"storage.root={base / 'lake'}", f"storage.checkpoint_root={base / 'checkpoints'}"])
    _write_tables(spark, config)
    started: list[DashboardServer] = []
    failed: list[BaseException] = []
    said: list[str] = []
    ready = threading.Event()

    def run() -> None:
        try:
            serve(
                spark,
                config,
                host="127.0.0.1",
                port=0,
                say=said.append,
                ready=lambda s: (started.append(s), ready.set()),
            )
        except BaseException as exc:
            failed.append(exc)
            ready.set()

    thread = threading.Thread(target=run, name="dashboard-server", daemon=True)
    thread.start()
    assert ready.wait(300)
    assert not failed, failed
    server = started[0]
    try:
        assert said == [f"dashboard: {server.url} refreshes while the pipeline runs; Ctrl-C stops"]
        yield config, server
    finally:
        server.shutdown()
        thread.join(30)


def test_served_page_refreshes_when_gold_changes(
    chromium: Any, spark: SparkSession, served: tuple[Config, DashboardServer]
) -> None:
    config, server = served
    b = open_page(chromium, server.url)
    try:
        page = b.page
        assert page.get_attribute("body", "data-live-api") == API_PATH
        assert b.tiles()["total_workouts"] == ("6", "6")
        version = page.get_attribute("body", "data-version")
        # the first poll is answered (304: nothing moved), and nothing was read again for it
        wait_for(page, "document.getElementById('live-status').dataset.state === 'live'")
        with page.expect_response(lambda r: r.url.endswith(API_PATH)) as polled:
            pass
        assert polled.value.status == 304
        assert dict(server.live.reads) == {"kpis": 1, "health": 1}
        renders = b.renders()

        # A workout of a new day lands in gold: the page shows it without a reload.
        workout = [(2, 4, 3, d("2025-03-05"), "35-45", "M", "M", "Boston", "MA", 85.0, 140.0, 160.0, 9)]
        ref = Tables(config).ref("workout_bpm_summary")
        spark.createDataFrame(workout, WORKOUT_BPM_SUMMARY).write.format("delta").mode("append").save(ref.path)
        total = "document.querySelector('.tile[data-kpi=total_workouts]').dataset.value"
        wait_for(page, f"{total} === '7'", timeout=240_000)
        assert page.get_attribute("body", "data-version") != version
        assert b.renders() > renders
        tiles = b.tiles()
        assert tiles["total_workouts"] == ("7", "7")
        assert tiles["avg_bpm"][1] == "112.1"  # (645 + 140) / 7
        trend = b.figures("daily_trend")
        assert list(trend) == ["2025-03-03", "2025-03-04", "2025-03-05"]
        assert trend["2025-03-05"]["cells"] == ["2025-03-05", "1", "0:00", "0:00", "140.0"]
        assert page.input_value("#filter-date-to") == "2025-03-05"  # a range at the data's edge follows it
        assert dict(server.live.reads) == {"kpis": 2, "health": 1}  # only gold moved: health not read again

        # A batch recorded in the ops table: the health panel follows.
        _append_progress(spark, config, [_progress("bronze_kafka_multiplex", 2, "2025-03-04 10:00:20", 5, 700, 7.0)])
        bronze = "document.querySelector('[data-health=last_batch] tr[data-key=bronze_kafka_multiplex]')"
        wait_for(page, f"{bronze}.dataset.batch_id === '2'", timeout=240_000)
        assert dict(server.live.reads) == {"kpis": 2, "health": 2}
        assert (b.errors, b.console, b.failed) == ([], [], [])
        assert {u for u in b.requests if not u.startswith("data:")} == {server.url, server.url + API_PATH[1:]}
    finally:
        page.context.close()
