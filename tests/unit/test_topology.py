"""The declared query graph: which query reads which topics and writes which tables."""

from __future__ import annotations

from fitbit_stream.config import load_config
from fitbit_stream.io.ingest import enabled_ingest_queries, late_state_keys
from fitbit_stream.topology import ALL_QUERIES, queries, waves


def test_realtime_reads_the_readings_with_a_kafka_query_of_their_own() -> None:
    kafka = [(q.name, q.kinds, q.writes) for q in queries("realtime") if q.source == "kafka"]
    assert kafka == [
        ("bronze_kafka_bpm", ("bpm",), ("quarantine", "heart_rate", "kafka_multiplex_bz")),
        (
            "bronze_kafka_user_info_workout",
            ("user_info", "workout"),
            (
                "quarantine",
                "_user_profile_changes",
                "user_profile",
                "user_profile_history",
                "_workout_events",
                "workouts",
                "completed_workouts",
                "kafka_multiplex_bz",
            ),
        ),
    ]
    (landing,) = [q for q in queries("realtime") if q.source == "landing"]
    assert landing.kinds == ("user_info", "bpm", "workout")
    # both Kafka queries start at once, and the landing query after them (it skips what bronze holds)
    assert waves(queries("realtime"))[0] == ["bronze_kafka_bpm", "bronze_kafka_user_info_workout", "bronze_sql"]
    assert "bronze_landing_multiplex" in waves(queries("realtime"))[1]


def test_layered_mode_keeps_one_kafka_query_for_bronze() -> None:
    kafka = [(q.name, q.kinds, q.writes) for q in queries("layered") if q.source == "kafka"]
    assert kafka == [("bronze_kafka_multiplex", ("user_info", "bpm", "workout"), ("quarantine", "kafka_multiplex_bz"))]
    names = [q.name for q in ALL_QUERIES]
    assert len(names) == len(set(names))
    assert {"bronze_kafka_bpm", "bronze_kafka_user_info_workout", "bronze_kafka_multiplex"} <= set(names)


def test_a_topics_late_state_belongs_to_the_ingest_queries_that_read_it() -> None:
    kafka_only = load_config(None)
    assert late_state_keys(kafka_only, "bpm") == ["bronze_kafka_bpm/bpm"]
    assert late_state_keys(kafka_only, "workout") == ["bronze_kafka_user_info_workout/workout"]
    both = load_config(None, ["landing.enabled=true"])
    assert late_state_keys(both, "user_info") == [
        "bronze_kafka_user_info_workout/user_info",
        "bronze_landing_multiplex/user_info",
    ]
    assert enabled_ingest_queries(both, "bpm") == ["bronze_kafka_bpm", "bronze_landing_multiplex"]
    layered = load_config(None, ["streaming.mode=layered"])
    assert late_state_keys(layered, "bpm") == ["silver_bpm"]
