"""Issues 3 and 4's bar: the whole pipeline against an independent reading of the contract.

The library's own generator emits a small chaotic world (bad records of every kind, duplicates,
shuffled delivery, invalid sessions, a re-registration, deletes, visits open across runs) to a real
Kafka broker and a real PostgreSQL database, and the pipeline drains it. Then:

- every silver and gold table equals what ``tests/reference/contract.py`` (pure Python, written
  from CONTRACT.md) derives from the same bronze rows;
- the quarantine holds exactly the records the generator's truth says must be quarantined, by
  reason, nothing more and nothing less; silver agrees with the truth files where they state facts
  directly (registrations, visits, readings, completed sessions and their readings);
- the same world emitted in two halves and run twice gives the very same tables.

The two scenarios run in different places. The world in one run (``one_run``) is drained on a real
multi-node Spark: a standalone master and two workers on loopback (``SparkCluster``, the code behind
``fitbit-stream platform start --cluster``), by ``fitbit-stream run --once`` in a subprocess with
its executors in JVMs of their own; right after the ingest query's first commit to a silver table
(inside its micro-batch), one executor JVM is SIGKILLed, and the run must recover (the tasks are
retried, the worker starts a new executor). The world in two halves (``two_runs``) is drained by
``Pipeline.run_once`` in this process's local session. Each equals the contract reference, and they
equal each other.

The late rule depends on micro-batch membership. The reference takes the pipeline runs as the
batches (a bronze row belongs to the run that ingested it), which is exact here: within one run
nothing can be late (delivery is shuffled within 20 s windows and delayed by at most 5 s, the horizon
is an hour), and the generator's late wave is emitted and ingested in a separate, later run.
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pyspark.sql import SparkSession

from fitbit_stream.config import Config
from fitbit_stream.platform.cluster import SparkCluster
from fitbit_stream.platform.kafka import KafkaBroker
from fitbit_stream.platform.postgres import PostgresServer
from reference.contract import diff_tables
from support.cluster import ExecutorKill, cluster_drain, cluster_overrides
from support.ground_truth import AS_OF, MID, NOT_FACTS, SILVER_GOLD, Scenario, run_scenario

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def executor_kill() -> ExecutorKill:
    return ExecutorKill()


@pytest.fixture(scope="module")
def one_run(
    spark: SparkSession,
    spark_config: Config,
    kafka_broker: KafkaBroker,
    postgres: PostgresServer,
    cluster: SparkCluster,
    executor_kill: ExecutorKill,
    tmp_path_factory: pytest.TempPathFactory,
) -> Scenario:
    base = tmp_path_factory.mktemp("one_run")
    return run_scenario(
        "one",
        [{}, {"main": False, "late_wave": True}],
        spark=spark,
        spark_config=spark_config,
        broker=kafka_broker,
        postgres=postgres,
        base=base,
        overrides=cluster_overrides(cluster),
        drain=cluster_drain(cluster, base, executor_kill, as_of=AS_OF),
    )


@pytest.fixture(scope="module")
def two_runs(
    spark: SparkSession,
    spark_config: Config,
    kafka_broker: KafkaBroker,
    postgres: PostgresServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Scenario:
    return run_scenario(
        "two",
        [{"until": MID}, {"since": MID}, {"main": False, "late_wave": True}],
        spark=spark,
        spark_config=spark_config,
        broker=kafka_broker,
        postgres=postgres,
        base=tmp_path_factory.mktemp("two_runs"),
    )


# --- helpers -------------------------------------------------------------------------------------


def _lines(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def _instant(text: str | None) -> datetime | None:
    """Truth file ISO text (``…Z``) to a naive UTC datetime, as Spark collects TIMESTAMPs."""
    return None if text is None else datetime.fromisoformat(text).astimezone(UTC).replace(tzinfo=None)


def _at(text: str) -> datetime:
    instant = _instant(text)
    assert instant is not None
    return instant


def _assert_no_problems(problems: list[str]) -> None:
    assert not problems, "\n" + "\n".join(problems)


def _counter_diff(expected: Counter[Any], actual: Counter[Any]) -> list[str]:
    missing = expected - actual
    extra = actual - expected
    return [f"missing x{n}: {k}" for k, n in sorted(missing.items(), key=repr)] + [
        f"unexpected x{n}: {k}" for k, n in sorted(extra.items(), key=repr)
    ]


# --- scenario a: one run of the main data, then the late wave ---------------------------------------


def test_the_cluster_has_a_master_and_two_one_core_workers_on_loopback(cluster: SparkCluster) -> None:
    status = cluster.status()
    assert status.running
    assert status.master_url.startswith("spark://127.0.0.1:")
    assert sorted(state for state, _, _ in status.workers.values()) == ["ALIVE", "ALIVE"]
    assert all(cores == 1 for _, cores, _ in status.workers.values())


def test_one_run_lost_an_executor_mid_batch_and_the_worker_replaced_it(
    one_run: Scenario, cluster: SparkCluster, executor_kill: ExecutorKill
) -> None:
    kill = executor_kill
    assert kill.killed is not None, f"no executor was killed in the first run: {kill}"
    assert kill.trigger.startswith("silver/"), kill
    # the kill landed inside a micro-batch: the checkpoint had planned a batch it had not committed
    assert kill.planned, kill
    assert not kill.committed or kill.planned[-1] > kill.committed[-1], kill
    assert kill.killed not in cluster.executor_pids()
    assert kill.replacements, "the worker never started an executor in place of the killed one"
    # ... and the run went on to the end (the drain asserts exit 0); the tables are checked below


def test_world_has_what_the_scenarios_need(one_run: Scenario) -> None:
    """Guards the choice of knobs: the world exercises every rule this file is about."""
    sessions = _lines(one_run.truth / "sessions.jsonl")
    assert {s["kind"] for s in sessions} == {"normal", "stop_before_start", "too_long", "no_stop"}
    assert {s["stop_delivery"] for s in sessions} >= {"main", "late", "not_sent"}
    assert len(_lines(one_run.truth / "registrations.jsonl")) > len(_lines(one_run.truth / "registered_users.jsonl"))
    changes = _lines(one_run.truth / "profile_changes.jsonl")
    assert {c["update_type"] for c in changes} == {"new", "update", "delete"}
    visits = _lines(one_run.truth / "visits.jsonl")
    assert any(v["logout"] is None for v in visits)
    mid = MID.replace(tzinfo=None)
    assert any(_at(v["login"]) < mid <= _at(v["logout"]) for v in visits if v["logout"])
    reasons = Counter(b["reason"] for b in _lines(one_run.truth / "bad_records.jsonl"))
    assert set(reasons) == {"malformed_json", "schema_violation", "future", "late", "invalid_session"}


@pytest.mark.parametrize("table", SILVER_GOLD)
def test_one_run_equals_the_contract_reference(one_run: Scenario, table: str) -> None:
    expected = one_run.reference()[table]
    assert expected, f"the reference derives no {table} rows: the world is too small to test it"
    _assert_no_problems(diff_tables(table, expected, one_run.tables[table], ignore=NOT_FACTS))


def test_one_run_quarantines_exactly_the_bad_records_of_the_truth(one_run: Scenario) -> None:
    truth = _lines(one_run.truth / "bad_records.jsonl")
    expected = Counter((b["reason"], b["topic"], b["key"], b["value"]) for b in truth)
    actual = Counter((q["reason"], q["topic"], q["key"], q["value"]) for q in one_run.tables["quarantine"])
    _assert_no_problems(_counter_diff(expected, actual))
    # a schema violation's detail names the field the generator broke
    details = {(q["topic"], q["key"], q["value"]): q["detail"] for q in one_run.tables["quarantine"]}
    unnamed = [
        (b["field"], details[(b["topic"], b["key"], b["value"])])
        for b in truth
        if b["reason"] == "schema_violation" and b["field"] not in (details[(b["topic"], b["key"], b["value"])] or "")
    ]
    assert not unnamed, unnamed


def test_one_run_silver_agrees_with_the_generator_truth(one_run: Scenario) -> None:
    tables = one_run.tables
    registered = {
        (r["user_id"], r["device_id"], r["mac_address"], _instant(r["registration_timestamp"]))
        for r in _lines(one_run.truth / "registered_users.jsonl")
    }
    assert {(r["user_id"], r["device_id"], r["mac_address"], r["registration_timestamp"]) for r in tables["users"]} == (
        registered
    )
    visits = {
        (v["mac_address"], v["gym"], _instant(v["login"]), _instant(v["logout"]))
        for v in _lines(one_run.truth / "visits.jsonl")
    }
    assert {(v["mac_address"], v["gym"], v["login"], v["logout"]) for v in tables["gym_logs"]} == visits

    # heart_rate: every reading delivered in time, exactly once, with its value and validity
    rules = one_run.config.rules
    late = {
        (b["source"]["device_id"], _instant(b["source"]["time"]))
        for b in _lines(one_run.truth / "bad_records.jsonl")
        if b["reason"] == "late" and b["source"]["entity"] == "reading"
    }
    readings: dict[tuple[int, datetime | None], float | None] = {}
    for r in _lines(one_run.truth / "readings.jsonl"):
        key = (r["device_id"], _instant(r["time"]))
        if key not in late:
            readings[key] = None if r["heartrate"] is None else float(r["heartrate"])
    assert late
    assert len(readings) == len(_lines(one_run.truth / "readings.jsonl")) - len(late)
    heart_rate = {(r["device_id"], r["time"]): (r["heartrate"], r["valid"]) for r in tables["heart_rate"]}
    assert len(heart_rate) == len(tables["heart_rate"])
    expected_hr = {
        k: (hr, hr is not None and rules.heartrate_min <= hr <= rules.heartrate_max) for k, hr in readings.items()
    }
    assert heart_rate == expected_hr

    # completed_workouts: the complete sessions whose stop was delivered in time
    sessions = _lines(one_run.truth / "sessions.jsonl")
    complete = {
        (s["user_id"], s["workout_id"], s["session_id"]): s
        for s in sessions
        if s["status"] == "complete" and s["stop_delivery"] == "main"
    }
    assert {
        (c["user_id"], c["workout_id"], c["session_id"]): (c["start_time"], c["end_time"])
        for c in tables["completed_workouts"]
    } == {k: (_instant(s["start"]), _instant(s["stop"])) for k, s in complete.items()}

    # workout_bpm: a session's valid readings of the user's device (via `users`: a device replaced
    # by a re-registration no longer belongs to the user, so its old sessions lose their readings)
    device_of = {r[0]: r[1] for r in registered}
    per_session: dict[tuple[int, int, int], set[tuple[datetime, float]]] = {k: set() for k in complete}
    for r in tables["workout_bpm"]:
        per_session[(r["user_id"], r["workout_id"], r["session_id"])].add((r["time"], r["heartrate"]))
    replaced = 0
    for k, s in complete.items():
        start, stop = _instant(s["start"]), _instant(s["stop"])
        assert start is not None
        assert stop is not None
        if s["device_id"] != device_of[s["user_id"]]:
            replaced += 1
            assert per_session[k] == set(), k
            continue
        want = {
            (t, hr)
            for (device, t), (hr, valid) in expected_hr.items()
            if device == s["device_id"] and t is not None and start < t <= stop and valid and hr is not None
        }
        assert want, f"session {k} has no valid readings in the truth"
        assert per_session[k] == want, k
    assert replaced, "no complete session of a replaced device: the re-registration rule is untested"


# --- scenario b: the same world in two halves, then the late wave -------------------------------------


@pytest.mark.parametrize("table", SILVER_GOLD)
def test_two_runs_equal_one_run(one_run: Scenario, two_runs: Scenario, table: str) -> None:
    def comparable(scenario: Scenario, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if table != "quarantine":
            return rows
        # topic names differ per scenario (each has its own topics): compare by role
        return [{**r, "topic": scenario.role(r["topic"])} for r in rows]

    ignore = ("quarantined_at", "load_time")
    expected = comparable(one_run, one_run.tables[table])
    actual = comparable(two_runs, two_runs.tables[table])
    _assert_no_problems(diff_tables(table, expected, actual, ignore=ignore))


def test_two_runs_equal_the_contract_reference(two_runs: Scenario) -> None:
    reference = two_runs.reference()
    problems: list[str] = []
    for table in SILVER_GOLD:
        problems += diff_tables(table, reference[table], two_runs.tables[table], ignore=NOT_FACTS)
    _assert_no_problems(problems)
    # a visit open at the first run was closed by the second: both row versions are in bronze
    versions = Counter((v["mac_address"], v["gym"], v["login"]) for v in two_runs.gym_logins)
    assert any(n == 2 for n in versions.values())
    assert len({two_runs.run_of(r["load_time"]) for r in two_runs.kafka}) == 3
