"""The sign-in options of :mod:`fitbit_stream.azure` reach the readers that need them.

The readers are driven with a recording stand-in for ``spark.read``/``spark.readStream`` (nothing
here can reach Azure): the test pins the exact options each reader hands to Spark for Azure SQL
with an Entra token, Event Hubs' Kafka endpoint, and plain local Kafka and SQL.
"""

from __future__ import annotations

from typing import Any

import pytest
from azure.core.credentials import AccessToken

from fitbit_stream.azure import AzureAuth, auth_for
from fitbit_stream.config import Config, load_config
from fitbit_stream.io import bronze
from fitbit_stream.io.sources import kafka_options, read_kafka_stream, read_sql_table
from fitbit_stream.io.tables import Tables

TOKEN = "eyJ0eXAiOiJKV1Qi.wired"
CONNECTION = "Endpoint=sb://fitbit-ns.servicebus.windows.net/;SharedAccessKeyName=listen;SharedAccessKey=k3y+/="


class FakeCredential:
    def get_token(self, *scopes: str, **_: Any) -> AccessToken:
        return AccessToken(TOKEN, 4_102_444_800)


class RecordingReader:
    """Stands in for DataFrameReader/DataStreamReader: records the options, returns itself."""

    def __init__(self) -> None:
        self.recorded: dict[str, str] = {}

    def format(self, source: str) -> RecordingReader:
        self.recorded["<format>"] = source
        return self

    def option(self, key: str, value: str) -> RecordingReader:
        self.recorded[key] = value
        return self

    def options(self, **values: str) -> RecordingReader:
        self.recorded.update(values)
        return self

    def load(self) -> RecordingReader:
        return self


def recording_spark() -> tuple[Any, RecordingReader]:
    reader = RecordingReader()
    return type("Spark", (), {"read": reader, "readStream": reader})(), reader


@pytest.fixture(autouse=True)
def _no_databricks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATABRICKS_RUNTIME_VERSION", raising=False)


def azure_sql() -> Config:
    return load_config(
        None,
        [
            "kafka.enabled=false",
            "sql.url=jdbc:sqlserver://fitbit-sql.database.windows.net:1433;database=fitbit;encrypt=true",
            "sql.auth=azure_ad",
            "azure.auth=managed_identity",
        ],
    )


def test_azure_sql_reader_gets_the_entra_token_and_no_password() -> None:
    config = azure_sql()
    AzureAuth(config, credential=FakeCredential()).check()  # what the entrypoints do before Spark starts
    spark, reader = recording_spark()
    read_sql_table(spark, config.sql, "gym_logins", auth=auth_for(config).jdbc_options())
    options = reader.recorded
    assert options["accessToken"] == TOKEN
    assert "password" not in options
    assert "user" not in options
    assert options["driver"] == "com.microsoft.sqlserver.jdbc.SQLServerDriver"


def test_bronze_sql_poll_passes_the_checked_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    config = azure_sql()
    AzureAuth(config, credential=FakeCredential()).check()
    seen: list[dict[str, str]] = []

    class Stop(Exception):
        pass

    def fake_read(spark: object, sql: object, logical: str, *, auth: Any = None) -> None:
        seen.append(dict(auth))
        raise Stop

    monkeypatch.setattr(bronze, "read_sql_table", fake_read)
    monkeypatch.setattr(Tables, "ensure", lambda self, spark, name, **_: None)
    with pytest.raises(Stop):
        bronze.ingest_sql_sources(object(), config)  # type: ignore[arg-type]
    assert seen == [{"accessToken": TOKEN}]


def test_local_sql_reader_signs_in_with_user_and_password_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FITBIT_TEST_WIRED_PW", "pw-wired-41")
    config = load_config(
        None,
        [
            "sql.url=jdbc:postgresql://127.0.0.1:5432/fitbit",
            "sql.user=reader",
            "sql.password_env=FITBIT_TEST_WIRED_PW",
        ],
    )
    spark, reader = recording_spark()
    read_sql_table(spark, config.sql, "registered_users", auth=auth_for(config).jdbc_options())
    assert (reader.recorded["user"], reader.recorded["password"]) == ("reader", "pw-wired-41")


def test_event_hubs_kafka_reader_gets_sasl_ssl(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FITBIT_TEST_EH_WIRED", CONNECTION)
    config = load_config(
        None,
        [
            "kafka.bootstrap_servers=fitbit-ns.servicebus.windows.net:9093",
            "kafka.event_hubs={connection_string: {env: FITBIT_TEST_EH_WIRED}}",
        ],
    )
    spark, reader = recording_spark()
    read_kafka_stream(spark, config)
    options = reader.recorded
    assert options["kafka.bootstrap.servers"] == "fitbit-ns.servicebus.windows.net:9093"
    assert options["kafka.security.protocol"] == "SASL_SSL"
    assert options["kafka.sasl.mechanism"] == "PLAIN"
    assert options["kafka.sasl.jaas.config"] == (
        "org.apache.kafka.common.security.plain.PlainLoginModule required "
        f'username="$ConnectionString" password="{CONNECTION}";'
    )


def test_plain_kafka_reader_has_no_sign_in_options() -> None:
    config = load_config(None)
    spark, reader = recording_spark()
    read_kafka_stream(spark, config)
    assert reader.recorded == {"<format>": "kafka", **kafka_options(config.kafka)}
    assert not [k for k in reader.recorded if "sasl" in k or "security" in k]


def test_a_kafka_reader_subscribes_to_the_topics_it_is_given() -> None:
    config = load_config(None, ["kafka.topics={user_info: u, bpm: readings, workout: w}"])
    spark, reader = recording_spark()
    read_kafka_stream(spark, config, topics=["readings"])
    assert reader.recorded["subscribe"] == "readings"
    read_kafka_stream(spark, config)
    assert reader.recorded["subscribe"] == "u,readings,w"
