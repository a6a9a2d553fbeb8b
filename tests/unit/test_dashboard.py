"""The dashboard's data layer (one row per workout, visit, gym-hour, member) on literal gold rows.

The datasets are the SQL the Lakeview dashboard runs too; here they read temporary views holding
literal rows. The member with two visits and several workouts must appear once per visit and once
per workout (no fan-out), a mac shared by two users gives its visits to one of them, and NULL
demographics show as (unknown).
"""

from __future__ import annotations

import http.client
import json
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from chispa import assert_df_equality
from pyspark.sql import DataFrame, SparkSession

from fitbit_stream.cli import main
from fitbit_stream.config import load_config
from fitbit_stream.dashboard import KPIS, DashboardData, load_data, render_html
from fitbit_stream.dashboard.datasets import Dataset, dataset_frames, dataset_sql
from fitbit_stream.dashboard.health import PipelineHealth, health_frames
from fitbit_stream.dashboard.html import CONTENT_SECURITY_POLICY, LIVE_CONTENT_SECURITY_POLICY, Live, page_payload
from fitbit_stream.dashboard.live import LiveDashboard, local_version, version_tag
from fitbit_stream.dashboard.server import API_PATH, DashboardServer
from fitbit_stream.errors import PipelineError
from fitbit_stream.io.progress import QUERY_PROGRESS
from fitbit_stream.schemas import GYM_OCCUPANCY, GYM_SUMMARY, QUARANTINE, USER_BINS, USERS, WORKOUT_BPM_SUMMARY

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
    assert 'generated <span id="generated">2024-03-03 12:00 UTC</span>' in page
    # offline: nothing to poll, and a policy that allows no request at all
    assert "<body>" in page
    assert "connect-src" not in page


def test_page_payload_is_the_embedded_data() -> None:
    data = DashboardData({"workouts": [], "visits": [], "occupancy": [], "members": []})
    health = PipelineHealth(progress=[{"query_name": "q", "batch_id": 1}], quarantine=[])
    at = datetime(2024, 3, 3, 12, 0, 5, tzinfo=UTC)
    page = render_html(data, generated_at=at, health=health, live=Live("/api/kpis", 500), version="v1", missing=["x"])
    blob = page.split('<script type="application/json" id="fitbit-data">')[1].split("</script>")[0]
    payload = page_payload(data, generated_at=at, health=health, version="v1", missing=["x"])
    assert json.loads(blob) == payload
    assert payload["version"] == "v1"
    assert payload["generated_at"] == "2024-03-03 12:00:05 UTC"
    assert payload["health"] == {"progress": [{"query_name": "q", "batch_id": 1}], "quarantine": []}
    assert payload["missing"] == ["x"]
    # served: the script polls the endpoint, which only the served page's policy allows
    assert 'data-live-api="/api/kpis" data-poll-ms="500"' in page
    assert f'content="{LIVE_CONTENT_SECURITY_POLICY}"' in page
    assert LIVE_CONTENT_SECURITY_POLICY.endswith("; connect-src 'self'")


# --- pipeline health -----------------------------------------------------------------------------


def _progress(query: str, run: str, batch: int, at: str, rows: int, **extra: object) -> dict[str, object]:
    row: dict[str, object] = {
        "query_name": query,
        "query_id": f"id-{query}",
        "run_id": run,
        "batch_id": batch,
        "timestamp": ts(at),
        "num_input_rows": rows,
        "input_rows_per_second": None,
        "processed_rows_per_second": None,
        "batch_duration_ms": None,
        "backlog_offsets": None,
        "backlog_files": None,
        "backlog_bytes": None,
        "state_rows": 0,
        "progress_json": "{}",
    }
    return {**row, **extra}


def test_health_keeps_each_querys_latest_batches_and_counts_quarantine(spark: SparkSession) -> None:
    progress = [
        _progress("bronze", "r1", 0, "2025-03-03 10:00:00", 10, batch_duration_ms=900, backlog_offsets=40),
        _progress("bronze", "r1", 1, "2025-03-03 10:00:05", 30, batch_duration_ms=1200, backlog_offsets=10),
        _progress("bronze", "r1", 2, "2025-03-03 10:00:10", 10, batch_duration_ms=800, backlog_offsets=0),
        _progress("silver_bpm", "r2", 7, "2025-03-03 10:00:07", 25, processed_rows_per_second=50.0, backlog_files=2),
        _progress("", "r3", 0, "2025-03-03 10:00:00", 1),  # a query without a name is nobody's line
    ]
    quarantine = [
        ("k", "v", "bpm", 0, 1, ts("2025-03-03 09:00"), "late", None, ts("2025-03-03 10:00:01")),
        ("k", "v", "bpm", 0, 2, ts("2025-03-03 09:00"), "late", None, ts("2025-03-03 10:00:03")),
        ("k", "v", "workout", 0, 3, ts("2025-03-03 09:00"), "late", None, ts("2025-03-03 10:00:02")),
        ("k", "v", "bpm", 0, 4, ts("2025-03-03 09:00"), "malformed", "x", ts("2025-03-03 10:00:00")),
        ("k", "v", "bpm", 0, 5, ts("2025-03-03 09:00"), None, None, None),
    ]
    tag = uuid.uuid4().hex[:8]
    spark.createDataFrame(progress, QUERY_PROGRESS).createOrReplaceTempView(f"health_{tag}_progress")
    spark.createDataFrame(quarantine, QUARANTINE).createOrReplaceTempView(f"health_{tag}_quarantine")
    views = {("ops", "_query_progress"): f"health_{tag}_progress", ("silver", "quarantine"): f"health_{tag}_quarantine"}

    health = PipelineHealth.from_frames(health_frames(spark, lambda layer, table: views[(layer, table)], limit=2))

    ms = 1740996000000  # 2025-03-03 10:00:00 UTC
    assert [
        (r["query_name"], r["run_id"], r["batch_id"], r["time_ms"], r["num_input_rows"], r["batch_duration_ms"])
        for r in health.progress
    ] == [
        ("bronze", "r1", 1, ms + 5000, 30, 1200),  # the two latest batches of each query, oldest first
        ("bronze", "r1", 2, ms + 10000, 10, 800),
        ("silver_bpm", "r2", 7, ms + 7000, 25, None),
    ]
    assert [(r["backlog_offsets"], r["backlog_files"]) for r in health.progress] == [(10, None), (0, None), (None, 2)]
    assert health.progress[2]["processed_rows_per_second"] == 50.0
    assert health.quarantine == [
        {"reason": U, "topic": "bpm", "records": 1, "last_ms": None},
        {"reason": "late", "topic": "bpm", "records": 2, "last_ms": ms + 3000},
        {"reason": "late", "topic": "workout", "records": 1, "last_ms": ms + 2000},
        {"reason": "malformed", "topic": "bpm", "records": 1, "last_ms": ms},
    ]
    json.dumps(health.as_json(), allow_nan=False)


# --- the live dashboard: version check, snapshots, JSON endpoint ---------------------------------


def test_local_version_reads_the_delta_log_names(tmp_path: Path) -> None:
    assert local_version(tmp_path / "nothing") is None
    log = tmp_path / "t" / "_delta_log"
    log.mkdir(parents=True)
    assert local_version(tmp_path / "t") is None  # created, nothing committed yet
    for name in (
        "00000000000000000000.json",
        "00000000000000000010.checkpoint.parquet",
        "00000000000000000011.json",
        ".00000000000000000012.json.0b1c.tmp",  # a commit being written: not there yet
        "00000000000000000011.crc",
        "_last_checkpoint",
    ):
        (log / name).write_text("")
    assert local_version(tmp_path / "t") == 11


class FakeTables:
    """Table versions a test moves by hand, and loaders that count their reads."""

    def __init__(self) -> None:
        self.versions: dict[str, int | None] = {"gold.g": 1, "silver.s": 4, "ops._query_progress": None}
        self.kpi_value = 100.0
        self.fail = False
        self.now = 1000.0

    def read_versions(self) -> dict[str, int | None]:
        if self.fail:
            raise RuntimeError("the log is being rewritten")
        return dict(self.versions)

    def kpis(self) -> tuple[DashboardData, tuple[str, ...]]:
        row = {"user_id": 1, "workout_id": 1, "session_id": 1, "date": "2025-03-03", "avg_bpm": self.kpi_value}
        return DashboardData({"workouts": [row], "visits": [], "occupancy": [], "members": []}), ()

    def health(self) -> PipelineHealth:
        return PipelineHealth(progress=[{"query_name": "q", "version": self.versions["ops._query_progress"]}])

    def live(self, min_interval: float = 1.0) -> LiveDashboard:
        return LiveDashboard(
            self.read_versions,
            self.kpis,
            self.health,
            kpi_tables={"gold.g", "silver.s"},
            health_tables={"ops._query_progress"},
            min_interval=min_interval,
            clock=lambda: self.now,
            now=lambda: datetime(2025, 3, 3, 12, 0, tzinfo=UTC),
        )


def test_live_dashboard_rereads_only_the_part_whose_version_moved() -> None:
    fake = FakeTables()
    live = fake.live()
    first = live.snapshot()
    assert dict(live.reads) == {"kpis": 1, "health": 1}
    assert first.version == version_tag(fake.versions)

    fake.kpi_value = 200.0  # a change no version shows is not looked for
    fake.now += 5
    assert live.snapshot() is first
    assert dict(live.reads) == {"kpis": 1, "health": 1}

    fake.versions["ops._query_progress"] = 0  # the ops table appears: health only
    fake.now += 5
    second = live.snapshot()
    assert dict(live.reads) == {"kpis": 1, "health": 2}
    assert second.version != first.version
    assert second.data is first.data
    assert second.health.progress == [{"query_name": "q", "version": 0}]

    fake.versions["gold.g"] = 2  # gold moves: the KPIs are read again, health is kept
    fake.now += 5
    third = live.snapshot()
    assert dict(live.reads) == {"kpis": 2, "health": 2}
    assert third.data.datasets["workouts"][0]["avg_bpm"] == 200.0
    assert third.health is second.health


def test_live_dashboard_checks_versions_at_most_once_per_interval() -> None:
    fake = FakeTables()
    calls = 0
    read = fake.read_versions

    def counted() -> dict[str, int | None]:
        nonlocal calls
        calls += 1
        return read()

    fake.read_versions = counted  # type: ignore[method-assign]
    live = fake.live(min_interval=2.0)
    live.snapshot()
    fake.versions["gold.g"] = 9
    fake.now += 1.5
    assert live.snapshot().versions["gold.g"] == 1  # too soon: not checked
    fake.now += 0.5
    assert live.snapshot().versions["gold.g"] == 9
    assert calls == 2


def test_live_dashboard_keeps_the_last_snapshot_when_a_refresh_fails() -> None:
    fake = FakeTables()
    live = fake.live()
    first = live.snapshot()
    fake.fail = True
    fake.now += 5
    assert live.snapshot() is first
    fake.fail = False
    fake.versions["gold.g"] = 3
    fake.now += 5
    assert live.snapshot().versions["gold.g"] == 3


@pytest.fixture
def served() -> Iterator[tuple[FakeTables, DashboardServer]]:
    fake = FakeTables()
    server = DashboardServer(fake.live(min_interval=0.0), "127.0.0.1", 0, source="/lake")
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield fake, server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _get(server: DashboardServer, path: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
    host, port = server.server_address[:2]
    connection = http.client.HTTPConnection(str(host), int(port), timeout=10)
    try:
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def test_endpoint_answers_the_data_and_304_while_the_versions_stand(
    served: tuple[FakeTables, DashboardServer],
) -> None:
    fake, server = served
    status, headers, body = _get(server, API_PATH)
    assert status == 200
    assert headers["content-type"] == "application/json"
    payload = json.loads(body)
    version = payload["version"]
    assert headers["etag"] == f'"{version}"'
    assert payload["datasets"]["workouts"][0]["avg_bpm"] == 100.0
    assert payload["health"] == {"progress": [{"query_name": "q", "version": None}], "quarantine": []}
    assert payload["generated_at"] == "2025-03-03 12:00:00 UTC"

    status, headers, body = _get(server, API_PATH, **{"If-None-Match": f'"{version}"'})
    assert (status, body, headers["etag"]) == (304, b"", f'"{version}"')

    fake.kpi_value = 130.0
    fake.versions["gold.g"] = 2
    status, headers, body = _get(server, API_PATH, **{"If-None-Match": f'"{version}"'})
    assert status == 200
    payload = json.loads(body)
    assert payload["version"] != version
    assert payload["datasets"]["workouts"][0]["avg_bpm"] == 130.0


def test_page_is_the_dashboard_with_the_endpoint(served: tuple[FakeTables, DashboardServer]) -> None:
    _, server = served
    status, headers, body = _get(server, "/")
    assert status == 200
    assert headers["content-type"] == "text/html; charset=utf-8"
    assert headers["content-security-policy"] == LIVE_CONTENT_SECURITY_POLICY
    page = body.decode()
    assert f'data-live-api="{API_PATH}"' in page
    assert "Gold tables of /lake" in page
    assert set(re.findall(r'data-kpi="(\w+)"', page)) == {k.id for k in KPIS}
    assert _get(server, "/nope")[0] == 404
    assert server.url.startswith("http://127.0.0.1:")


def test_server_refuses_a_foreign_host_name(served: tuple[FakeTables, DashboardServer]) -> None:
    """A DNS name rebound to 127.0.0.1 must not let another site's page read the dashboard."""
    _, server = served
    port = server.server_address[1]
    assert _get(server, API_PATH, Host=f"attacker.example:{port}")[0] == 403
    assert _get(server, API_PATH, Host=f"localhost:{port}")[0] == 200
    assert _get(server, API_PATH, Host=f"127.0.0.1:{port}")[0] == 200


def test_cli_serve_passes_host_and_port(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, object] = {}
    session = object()
    monkeypatch.setattr("fitbit_stream.session.get_spark", lambda config: session)

    def fake_serve(spark: object, config: object, *, host: str, port: int, say: Callable[[str], None]) -> None:
        seen.update(spark=spark, host=host, port=port)

    monkeypatch.setattr("fitbit_stream.dashboard.server.serve", fake_serve)
    assert main(["dashboard", "--serve", "--port", "0"]) == 0
    assert seen == {"spark": session, "host": "127.0.0.1", "port": 0}
    assert main(["dashboard", "--serve", "--host", "::1", "--port", "8123"]) == 0
    assert (seen["host"], seen["port"]) == ("::1", 8123)
