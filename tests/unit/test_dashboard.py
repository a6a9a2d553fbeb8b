"""The dashboard's data layer (one row per workout, visit, gym-hour, member) on literal gold rows.

The datasets are the SQL the Lakeview dashboard runs too; here they read temporary views holding
literal rows. The member with two visits and several workouts must appear once per visit and once
per workout (no fan-out), a mac shared by two users gives its visits to one of them, and NULL
demographics show as (unknown).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from chispa import assert_df_equality
from pyspark.sql import DataFrame, SparkSession

from fitbit_stream.config import load_config
from fitbit_stream.dashboard import KPIS, DashboardData, load_data, render_html
from fitbit_stream.dashboard.datasets import Dataset, dataset_frames, dataset_sql
from fitbit_stream.dashboard.html import CONTENT_SECURITY_POLICY
from fitbit_stream.errors import PipelineError
from fitbit_stream.schemas import GYM_OCCUPANCY, GYM_SUMMARY, USER_BINS, USERS, WORKOUT_BPM_SUMMARY

AA, BB, CC = "aa:bb:cc:dd:ee:0a", "aa:bb:cc:dd:ee:0b", "aa:bb:cc:dd:ee:0c"
U = "(unknown)"


def ts(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def d(text: str) -> date:
    return date.fromisoformat(text)


@pytest.fixture(scope="module")
def resolve(spark: SparkSession) -> Callable[[str, str], str]:
    """Literal silver and gold tables as temporary views; the resolver names them."""
    users = spark.createDataFrame(
        [
            (1, 101, AA, ts("2024-01-01 00:00")),
            (1, 101, AA, ts("2024-01-01 00:00")),  # duplicate row: still one member, one owner
            (2, 102, BB, ts("2024-01-01 00:00")),
            (3, 103, BB, ts("2024-02-01 00:00")),  # shares BB with user 2, registered later: owns it
            (4, 104, None, ts("2024-01-01 00:00")),  # NULL mac, no profile
        ],
        USERS,
    )
    bins = spark.createDataFrame(
        [
            (1, "25-35", "F", "Austin", "TX"),
            (2, "35-45", "M", "Boston", "MA"),
            (3, None, None, None, None),  # NULL demographics
            (5, "18-25", "F", "Austin", "TX"),  # a profile without a registration
        ],
        USER_BINS,
    )
    visits = spark.createDataFrame(
        [
            (1, AA, ts("2024-03-01 10:00"), d("2024-03-01"), ts("2024-03-01 11:05"), [1, 2, 3], 3, 65.0, 90.01),
            (2, AA, ts("2024-03-02 13:00"), d("2024-03-02"), ts("2024-03-02 14:00"), [1], 1, 60.0, 15.0),
            (1, BB, ts("2024-03-01 12:00"), d("2024-03-01"), ts("2024-03-01 12:10"), [], 0, 10.0, 0.0),
            (2, CC, ts("2024-03-01 23:59"), d("2024-03-01"), ts("2024-03-02 00:10:20"), [], 0, 11.33, 0.0),
        ],
        GYM_SUMMARY,
    )
    workouts = spark.createDataFrame(
        [
            (1, 1, 1, d("2024-03-01"), "25-35", "F", "F", "Austin", "TX", 90.0, 110.0, 130.0, 10),
            (1, 2, 2, d("2024-03-01"), "25-35", "F", "F", "Austin", "TX", 100.0, 120.0, 150.0, 20),
            (1, 3, 3, d("2024-03-01"), "25-35", "F", "F", "Austin", "TX", 95.0, 105.5, 120.0, 5),
            (1, 1, 6, d("2024-03-02"), "25-35", "F", "F", "Boston", "MA", 80.0, 100.0, 140.0, 7),
            (2, 1, 1, d("2024-03-01"), None, None, None, None, None, 60.0, 70.0, 80.0, 3),  # no version
        ],
        WORKOUT_BPM_SUMMARY,
    )
    occupancy = spark.createDataFrame(
        [
            (1, ts("2024-03-01 10:00"), 1, 1.0, 1),
            (2, ts("2024-03-02 23:00"), 1, 0.25, 1),
        ],
        GYM_OCCUPANCY,
    )
    tag = uuid.uuid4().hex[:8]
    views = {
        ("silver", "users"): users,
        ("silver", "user_bins"): bins,
        ("gold", "gym_summary"): visits,
        ("gold", "workout_bpm_summary"): workouts,
        ("gold", "gym_occupancy"): occupancy,
    }
    for (layer, table), df in views.items():
        df.createOrReplaceTempView(f"dash_{tag}_{layer}_{table}")
    return lambda layer, table: f"dash_{tag}_{layer}_{table}"


def _frames(spark: SparkSession, resolve: Callable[[str, str], str]) -> dict[str, DataFrame]:
    return dataset_frames(spark, resolve)


def test_workouts_one_row_per_workout(spark: SparkSession, resolve: Callable[[str, str], str]) -> None:
    actual = _frames(spark, resolve)["workouts"]
    expected = spark.createDataFrame(
        [
            (1, 1, 1, d("2024-03-01"), "25-35", "F", "Austin", "25-35 / F", 90.0, 110.0, 130.0, 10),
            (1, 2, 2, d("2024-03-01"), "25-35", "F", "Austin", "25-35 / F", 100.0, 120.0, 150.0, 20),
            (1, 3, 3, d("2024-03-01"), "25-35", "F", "Austin", "25-35 / F", 95.0, 105.5, 120.0, 5),
            # the demographics in effect at the workout, not the member's current ones
            (1, 1, 6, d("2024-03-02"), "25-35", "F", "Boston", "25-35 / F", 80.0, 100.0, 140.0, 7),
            (2, 1, 1, d("2024-03-01"), U, U, U, f"{U} / {U}", 60.0, 70.0, 80.0, 3),
        ],
        "user_id BIGINT, workout_id INT, session_id INT, date DATE, age STRING, gender STRING, city STRING, "
        "age_gender STRING, min_bpm DOUBLE, avg_bpm DOUBLE, max_bpm DOUBLE, num_recordings BIGINT",
    )
    assert_df_equality(actual, expected, ignore_row_order=True, ignore_nullable=True)


def test_visits_one_row_per_visit_with_one_member(spark: SparkSession, resolve: Callable[[str, str], str]) -> None:
    actual = _frames(spark, resolve)["visits"]
    expected = spark.createDataFrame(
        [
            # user 1's two visits stay two rows, whatever number of workouts they hold
            (1, AA, d("2024-03-01"), 1, "user 1", "25-35", "F", "Austin", 3, 65.0, 90.01, 90.01 / 60),
            (2, AA, d("2024-03-02"), 1, "user 1", "25-35", "F", "Austin", 1, 60.0, 15.0, 15.0 / 60),
            # BB is registered by users 2 and 3: the visit goes to the latest registration only
            (1, BB, d("2024-03-01"), 3, "user 3", U, U, U, 0, 10.0, 0.0, 0.0),
            (2, CC, d("2024-03-01"), None, f"unregistered {CC}", U, U, U, 0, 11.33, 0.0, 0.0),
        ],
        "gym BIGINT, mac_address STRING, date DATE, user_id BIGINT, member STRING, age STRING, gender STRING, "
        "city STRING, num_sessions INT, minutes_in_gym DOUBLE, minutes_exercising DOUBLE, hours_exercising DOUBLE",
    )
    assert_df_equality(actual, expected, ignore_row_order=True, ignore_nullable=True)


def test_occupancy_one_row_per_gym_hour(spark: SparkSession, resolve: Callable[[str, str], str]) -> None:
    actual = _frames(spark, resolve)["occupancy"]
    expected = spark.createDataFrame(
        [
            (1, d("2024-03-01"), 10, "gym 1 2024-03-01", 1, 1.0, 1),
            (2, d("2024-03-02"), 23, "gym 2 2024-03-02", 1, 0.25, 1),
        ],
        "gym BIGINT, date DATE, hour_of_day INT, gym_day STRING, visitors BIGINT, avg_occupancy DOUBLE, "
        "peak_occupancy BIGINT",
    )
    assert_df_equality(actual, expected, ignore_row_order=True, ignore_nullable=True)


def test_occupancy_does_not_depend_on_the_session_time_zone(
    spark: SparkSession, resolve: Callable[[str, str], str]
) -> None:
    before = spark.conf.get("spark.sql.session.timeZone")
    spark.conf.set("spark.sql.session.timeZone", "America/Los_Angeles")
    try:
        rows = sorted(_frames(spark, resolve)["occupancy"].select("gym", "date", "hour_of_day").collect())
    finally:
        spark.conf.set("spark.sql.session.timeZone", str(before))
    assert [tuple(r) for r in rows] == [(1, d("2024-03-01"), 10), (2, d("2024-03-02"), 23)]


def test_members_one_row_per_user(spark: SparkSession, resolve: Callable[[str, str], str]) -> None:
    actual = _frames(spark, resolve)["members"]
    expected = spark.createDataFrame(
        [
            (1, "user 1", "25-35", "F", "Austin"),
            (2, "user 2", "35-45", "M", "Boston"),
            (3, "user 3", U, U, U),
            (4, "user 4", U, U, U),  # registered, no profile
            (5, "user 5", "18-25", "F", "Austin"),  # profile, not registered
        ],
        "user_id BIGINT, member STRING, age STRING, gender STRING, city STRING",
    )
    assert_df_equality(actual, expected, ignore_row_order=True, ignore_nullable=True)


def test_re_aggregation_equals_gold(spark: SparkSession, resolve: Callable[[str, str], str]) -> None:
    """Summing a dataset gives the gold totals: no join multiplied a row."""
    data = DashboardData.from_frames(_frames(spark, resolve))
    visits = data.datasets["visits"]
    assert len(visits) == 4
    assert round(sum(v["minutes_in_gym"] for v in visits), 2) == 146.33
    assert round(sum(v["minutes_exercising"] for v in visits), 2) == 105.01
    member_1 = [v for v in visits if v["member"] == "user 1"]
    assert (len(member_1), sum(v["minutes_exercising"] for v in member_1)) == (2, 105.01)
    assert len(data.datasets["workouts"]) == 5
    assert len(data.datasets["members"]) == 5


def test_dashboard_data_is_plain_json_sorted_by_grain(spark: SparkSession, resolve: Callable[[str, str], str]) -> None:
    data = DashboardData.from_frames(_frames(spark, resolve))
    assert [(r["gym"], r["date"], r["hour_of_day"]) for r in data.datasets["occupancy"]] == [
        (1, "2024-03-01", 10),
        (2, "2024-03-02", 23),
    ]
    assert [r["user_id"] for r in data.datasets["members"]] == [1, 2, 3, 4, 5]
    json.dumps(data.datasets, allow_nan=False)  # dates became ISO text, nothing else needs converting


def test_dataset_sql_rejects_a_table_outside_the_contract() -> None:
    bad = Dataset("bad", "Bad", ("x",), "SELECT x FROM {gold.no_such_table}")
    with pytest.raises(PipelineError, match=r"gold\.no_such_table"):
        dataset_sql(bad, lambda layer, table: f"{layer}_{table}")
    wrong_layer = Dataset("bad", "Bad", ("x",), "SELECT x FROM {silver.gym_summary}")
    with pytest.raises(PipelineError, match=r"silver\.gym_summary"):
        dataset_sql(wrong_layer, lambda layer, table: f"{layer}_{table}")


def test_load_data_names_missing_tables(spark: SparkSession, tmp_path: Path) -> None:
    config = load_config(None, [f"storage.root={tmp_path / 'lake'}"])
    with pytest.raises(PipelineError, match=r"gold/gym_summary.*run --once"):
        load_data(spark, config)


# --- the page ------------------------------------------------------------------------------------


def _page(datasets: dict[str, list[dict[str, object]]]) -> str:
    return render_html(DashboardData(datasets), generated_at=datetime(2024, 3, 3, 12, 0, tzinfo=UTC))


def test_page_is_self_contained_and_escapes_data() -> None:
    hostile = '</script><script>alert("x")</script>'
    page = _page(
        {
            "workouts": [],
            "visits": [],
            "occupancy": [],
            "members": [{"user_id": 1, "member": "user 1", "age": U, "gender": U, "city": hostile}],
        }
    )
    assert f'content="{CONTENT_SECURITY_POLICY}"' in page
    assert "default-src 'none'" in CONTENT_SECURITY_POLICY
    # nothing to fetch: no URL besides the SVG namespace name, no src/href but the data: icon
    urls = set(re.findall(r"[a-z]+://[^\s\"'<>)]+", page))
    assert urls == {"http://www.w3.org/2000/svg"}
    assert re.findall(r"\b(?:src|href)\s*=\s*\"([^\"]*)\"", page) == ["data:,"]
    # the hostile city cannot close the data element: exactly two <script> elements, as written
    assert page.count("</script>") == 2
    blob = page.split('<script type="application/json" id="fitbit-data">')[1].split("</script>")[0]
    assert json.loads(blob)["datasets"]["members"][0]["city"] == hostile
    assert set(re.findall(r'data-kpi="(\w+)"', page)) == {k.id for k in KPIS}
    assert "generated 2024-03-03 12:00 UTC" in page
