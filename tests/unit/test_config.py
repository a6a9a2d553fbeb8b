from __future__ import annotations

from pathlib import Path

import pytest

from fitbit_stream.config import OVERRIDE_SYNTAX, Config, load_config, parse_override
from fitbit_stream.errors import InvalidConfigError

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["local.yaml", "databricks.yaml"])
def test_shipped_configs_validate(name: str) -> None:
    config = load_config(ROOT / "conf" / name)
    assert isinstance(config, Config)


def test_defaults_follow_the_contract() -> None:
    config = load_config(None)
    assert (config.rules.heartrate_min, config.rules.heartrate_max) == (25.0, 250.0)
    assert config.rules.max_session_hours == 3.0
    assert config.rules.clock_skew_minutes == 10.0
    assert config.rules.lateness_horizon_minutes == 60.0
    assert config.kafka.topics.names() == ["user_info", "bpm", "workout"]


@pytest.mark.parametrize(
    ("override", "attribute", "expected"),
    [
        ("kafka.bootstrap_servers=broker:29092", ("kafka", "bootstrap_servers"), "broker:29092"),
        ("rules.heartrate_max=220", ("rules", "heartrate_max"), 220.0),
        ("streaming.shuffle_partitions=2", ("streaming", "shuffle_partitions"), 2),
        ("kafka.topics.bpm=heart", ("kafka", "topics"), None),
        (
            "sql.url=jdbc:postgresql://127.0.0.1:5432/fitbit",
            ("sql", "url"),
            "jdbc:postgresql://127.0.0.1:5432/fitbit",
        ),
        ("landing.enabled=true", ("landing", "enabled"), True),
    ],
)
def test_valid_overrides(override: str, attribute: tuple[str, str], expected: object) -> None:
    config = load_config(ROOT / "conf" / "local.yaml", [override])
    value = getattr(getattr(config, attribute[0]), attribute[1])
    if attribute == ("kafka", "topics"):
        assert value.bpm == "heart"
    else:
        assert value == expected


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("kafka.bogus=1", "kafka.bogus: Extra inputs are not permitted (got 1)"),
        ("rules.heartrate_min=300", "heartrate_min (300.0) must be below heartrate_max (250.0)"),
        (
            "streaming.shuffle_partitions=0",
            "streaming.shuffle_partitions: Input should be greater than or equal to 1 (got 0)",
        ),
        ("kafka.bootstrap_servers=nohostport", "expected host:port[,host:port...], got 'nohostport'"),
        ("sql.url=postgresql://x", "expected a JDBC URL starting with 'jdbc:', got 'postgresql://x'"),
        ("sql.url=jdbc:postgresql://h/db?password=hunter2", "must not carry a password"),
        (
            "rules.lateness_horizon_minutes=30",
            "rules.lateness_horizon_minutes: Input should be greater than or equal to 60",
        ),
        ("kafka.starting_offsets=middle", "kafka.starting_offsets: Input should be 'earliest' or 'latest'"),
        ("kafka.options={'sasl.jaas.config': 'secret'}", "carries a secret: set it through options_env"),
        ("platform=mainframe", "platform: Input should be 'local' or 'databricks'"),
        ("kafka.enabled=false", None),
        (
            "streaming.query_trigger_seconds={bronze_kafka_user_info: 10}",
            "names no streaming query 'bronze_kafka_user_info' (did you mean 'bronze_kafka_user_info_workout'?)",
        ),
        ("streaming.query_trigger_seconds={bronze_sql: 10}", "names no streaming query 'bronze_sql': choose from"),
        (
            "streaming.query_trigger_seconds={bronze_kafka_bpm: 0}",
            "query_trigger_seconds[bronze_kafka_bpm] must be above 0",
        ),
    ],
)
def test_invalid_values_name_key_and_value(override: str, message: str | None) -> None:
    overrides = [override] if message else [override, "sql.enabled=false", "landing.enabled=false"]
    with pytest.raises(InvalidConfigError) as info:
        load_config(ROOT / "conf" / "local.yaml", overrides)
    assert (message or "enable at least one source") in str(info.value)


def test_secret_in_rejected_url_is_not_echoed() -> None:
    with pytest.raises(InvalidConfigError) as info:
        load_config(None, ["sql.url=jdbc:sqlserver://h;password=hunter2"])
    assert "must not carry a password" in str(info.value)
    assert "hunter2" not in str(info.value)


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(InvalidConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("kafka: [unclosed\n")
    with pytest.raises(InvalidConfigError, match="not valid YAML"):
        load_config(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("just a string\n")
    with pytest.raises(InvalidConfigError, match="expected a mapping"):
        load_config(scalar)


def test_config_is_frozen() -> None:
    config = load_config(None)
    with pytest.raises(Exception, match="frozen"):
        config.rules.heartrate_min = 1.0  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a.b=1", (["a", "b"], 1)),
        ("a.b=x", (["a", "b"], "x")),
        ("a=", (["a"], "")),
        ("a.b=[1, 2]", (["a", "b"], [1, 2])),
    ],
)
def test_parse_override(text: str, expected: tuple[list[str], object]) -> None:
    assert parse_override(text) == expected


@pytest.mark.parametrize("text", ["novalue", "=1", "."])
def test_parse_override_rejects(text: str) -> None:
    with pytest.raises(InvalidConfigError, match=r"expected section\.key=value"):
        parse_override(text)


def test_password_comes_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    config = load_config(None, ["sql.password_env=FITBIT_TEST_PW"])
    monkeypatch.delenv("FITBIT_TEST_PW", raising=False)
    with pytest.raises(InvalidConfigError, match="'FITBIT_TEST_PW' is not set"):
        config.sql.password()
    monkeypatch.setenv("FITBIT_TEST_PW", "canary-3f9a")
    secret = config.sql.password()
    assert secret is not None
    assert secret.get_secret_value() == "canary-3f9a"
    assert "canary-3f9a" not in repr(secret)
    assert "canary-3f9a" not in config.model_dump_json()


# --- --set: keys with dots inside maps, whole YAML values, suggestions -----------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('kafka.options."security.protocol"=SASL_SSL', (["kafka", "options", "security.protocol"], "SASL_SSL")),
        ("kafka.options.'sasl.mechanism'=PLAIN", (["kafka", "options", "sasl.mechanism"], "PLAIN")),
        ("spark_conf[spark.ui.enabled]=false", (["spark_conf", "spark.ui.enabled"], False)),
        ('spark_conf["spark.sql.x"]=1', (["spark_conf", "spark.sql.x"], 1)),
        ("kafka.options[a.b].c=1", (["kafka", "options", "a.b", "c"], 1)),
        ('a."b=c"=d=e', (["a", "b=c"], "d=e")),
        ("sql.url=jdbc:sqlite:/x/y.db?mode=ro", (["sql", "url"], "jdbc:sqlite:/x/y.db?mode=ro")),
        ("kafka.topics={bpm: heart, workout: w}", (["kafka", "topics"], {"bpm": "heart", "workout": "w"})),
    ],
)
def test_parse_override_quoted_and_bracketed_keys(text: str, expected: tuple[list[str], object]) -> None:
    assert parse_override(text) == expected


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ('kafka.options."security.protocol=x', 'unclosed " in the key'),
        ("spark_conf[spark.ui.enabled=x", "unclosed [ in the key"),
        ("a..b=1", "empty key part"),
        ("[x]=1", "a [key] must follow a section"),
        ("spark_conf[]=1", "empty [key]"),
        ('kafka."options"x=1', "unexpected 'x' after a quoted or bracketed key"),
    ],
)
def test_parse_override_rejects_malformed_keys(text: str, why: str) -> None:
    with pytest.raises(InvalidConfigError) as info:
        parse_override(text)
    assert str(info.value) == f"--set {text!r}: {why}; expected {OVERRIDE_SYNTAX}"


def test_dotted_map_keys_reach_the_config() -> None:
    config = load_config(
        ROOT / "conf" / "local.yaml",
        [
            'kafka.options."security.protocol"=SASL_SSL',
            "kafka.options[sasl.mechanism]=PLAIN",
            "spark_conf[spark.ui.enabled]=false",
            "spark_conf[spark.sql.shuffle.partitions]=8",
        ],
    )
    assert config.kafka.options == {"security.protocol": "SASL_SSL", "sasl.mechanism": "PLAIN"}
    # YAML reads false and 8 as a bool and a number: a map of settings keeps them as Spark's text
    assert config.spark_conf == {"spark.ui.enabled": "false", "spark.sql.shuffle.partitions": "8"}


def test_a_yaml_value_sets_a_whole_setting() -> None:
    config = load_config(
        ROOT / "conf" / "local.yaml",
        ["kafka.topics={user_info: users, bpm: heart, workout: sessions}", "kafka.options={client.id: fitbit}"],
    )
    assert config.kafka.topics.names() == ["users", "heart", "sessions"]
    assert config.kafka.options == {"client.id": "fitbit"}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "kafka.bootstrap_server=h:1",
            "kafka.bootstrap_server: Extra inputs are not permitted (got 'h:1'); did you mean kafka.bootstrap_servers?",
        ),
        ("kafak.enabled=false", "kafak: Extra inputs are not permitted (got {'enabled': False}); did you mean kafka?"),
        (
            "streaming.trigger_interval=5",
            "streaming.trigger_interval: Extra inputs are not permitted (got 5); "
            "did you mean streaming.trigger_interval_seconds?",
        ),
        (
            "landing.zzz=1",
            "landing.zzz: Extra inputs are not permitted (got 1); valid keys of landing: enabled, path, "
            "max_files_per_trigger",
        ),
        (
            "kafka.options.security.protocol=SASL_SSL",
            "kafka.options.security: Input should be a valid string (got {'protocol': 'SASL_SSL'}); "
            'a map key with dots is quoted: kafka.options."security.protocol"=VALUE',
        ),
        (
            "spark_conf.spark.ui.enabled=false",
            "spark_conf.spark: Input should be a valid string (got {'ui': {'enabled': False}}); "
            'a map key with dots is quoted: spark_conf."spark.ui.enabled"=VALUE',
        ),
    ],
)
def test_unknown_keys_suggest_the_nearest_valid_one(override: str, message: str) -> None:
    with pytest.raises(InvalidConfigError) as info:
        load_config(ROOT / "conf" / "local.yaml", [override])
    assert str(info.value) == f"invalid configuration:\n  {message}"


def test_a_query_trigger_is_the_querys_own_then_the_derived_one_then_the_default() -> None:
    config = load_config(
        ROOT / "conf" / "local.yaml",
        [
            "streaming.trigger_interval_seconds=2",
            "streaming.derived_trigger_interval_seconds=20",
            "streaming.query_trigger_seconds={bronze_kafka_user_info_workout: 15, derived_gym_summary: 60}",
        ],
    )
    streaming = config.streaming
    assert streaming.trigger_seconds("bronze_kafka_bpm", derived=False) == 2.0
    assert streaming.trigger_seconds("bronze_kafka_user_info_workout", derived=False) == 15.0
    assert streaming.trigger_seconds("derived_gym_occupancy", derived=True) == 20.0
    assert streaming.trigger_seconds("derived_gym_summary", derived=True) == 60.0
    unset = load_config(ROOT / "conf" / "local.yaml", ["streaming.trigger_interval_seconds=2"]).streaming
    assert unset.trigger_seconds("derived_gym_summary", derived=True) == 2.0
