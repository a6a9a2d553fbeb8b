"""Issue 4's dashboard bar: the page, written over real Delta gold tables, in a real headless Chromium.

A small dataset with hand-computed figures is written as the gold and silver Delta tables;
`fitbit-stream dashboard` writes the page; Chromium opens it from a file:// URL under the page's
own Content-Security-Policy. No console message, page error or failed request is allowed, every
chart must draw SVG marks, and the figures the page shows must equal the known ones, before and
after filtering by gender, date range and city.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
from pyspark.sql import SparkSession

from fitbit_stream.cli import main
from fitbit_stream.config import Config, load_config
from fitbit_stream.dashboard.kpis import CHARTS, TILES
from fitbit_stream.io.tables import Tables
from fitbit_stream.schemas import GYM_OCCUPANCY, GYM_SUMMARY, USER_BINS, USERS, WORKOUT_BPM_SUMMARY

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
    tables = Tables(config)
    for name, rows, schema in (
        ("users", users, USERS),
        ("user_bins", bins, USER_BINS),
        ("workout_bpm_summary", workouts, WORKOUT_BPM_SUMMARY),
        ("gym_summary", visits, GYM_SUMMARY),
        ("gym_occupancy", occupancy, GYM_OCCUPANCY),
    ):
        spark.createDataFrame(rows, schema).write.format("delta").save(tables.ref(name).path)


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
        self.page.wait_for_function(f"Number(document.body.getAttribute('data-renders')) > {before}")

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
def browser(page_file: Path) -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: run `scripts/setup.sh --with-e2e`")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            context = chromium.new_context(viewport={"width": 1400, "height": 900})
            b = Browser(context.new_page())
            b.page.goto(page_file.as_uri())
            b.page.wait_for_function("Number(document.body.getAttribute('data-renders')) >= 1")
            yield b
        finally:
            chromium.close()


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
        "minutes_in_gym": ("285", "285.00"),
        "minutes_exercising": ("185.75", "185.75"),
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
    assert browser.bar_labels("gym_vs_exercise", "user 1") == ["150.00", "115.75"]

    logins = browser.figures("logins_vs_hours")
    assert {k: (r["logins"], _num(r["hours"])) for k, r in logins.items()} == {
        "user 1": ("2", pytest.approx(115.75 / 60)),
        "user 2": ("2", pytest.approx(70 / 60)),
        f"unregistered {DD}": ("1", 0.0),
    }
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
            "minutes_in_gym": ("150", "150.00"),
            "minutes_exercising": ("115.75", "115.75"),
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
            "minutes_in_gym": ("60", "60.00"),
            "minutes_exercising": ("40.25", "40.25"),
            "avg_bpm": ("110", "110.0"),
        }
        hr = browser.figures("hr_by_group")
        assert [(r["workouts"], r["min"], r["avg"], r["max"]) for r in hr.values()] == [("1", "80", "110", "140")]
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
        for kpi in ("hr_by_group", "gym_vs_exercise", "logins_vs_hours", "workout_share", "occupancy_heatmap"):
            assert page.locator(f'[data-kpi="{kpi}"] svg.empty').count() == 1, kpi
        assert browser.tiles()["avg_bpm"] == ("", "\u2013")
    finally:
        browser.change(lambda: page.click("#filter-reset"))
    assert browser.tiles()["total_workouts"] == ("6", "6")
    assert browser.errors == []
    assert browser.console == []
    assert browser.failed == []
