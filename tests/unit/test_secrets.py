"""Secrets: references in the config, values only where a connection needs them, never anywhere else.

The canary run of the bronze job (a whole-pipeline run) is tests/integration/test_secrets_run.py.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from pyspark.sql import SparkSession

from fitbit_stream.azure import AzureAuth
from fitbit_stream.config import SecretRef, load_config
from fitbit_stream.errors import InvalidConfigError
from fitbit_stream.session import configure_session
from support.secrets import (
    CANARY_EH,
    CANARY_SP,
    CANARY_SQL,
    FakeCredential,
    FakeDBUtils,
    FakeSecrets,
    leaks,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _not_on_databricks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATABRICKS_RUNTIME_VERSION", raising=False)


# --- SecretRef -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({}, "set exactly one of env, or secret_scope with secret_key"),
        ({"env": "A", "secret_scope": "s", "secret_key": "k"}, "set exactly one of env"),
        ({"secret_scope": "s"}, "secret_scope and secret_key go together"),
        ({"env": "A", "value": "x"}, "Extra inputs are not permitted"),
        ({"env": "Endpoint=sb://x/;SharedAccessKey=cnry-eh-5d7f0b62"}, "must be the NAME of an environment variable"),
    ],
)
def test_secret_ref_takes_exactly_one_source_and_never_echoes_a_value(value: dict[str, str], message: str) -> None:
    with pytest.raises(InvalidConfigError) as info:
        load_config(None, [f"sql.password_secret={json.dumps(value)}"])
    assert message in str(info.value)
    assert not leaks(str(info.value))


def test_a_secret_value_written_into_the_yaml_is_rejected_masked(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "azure: {auth: service_principal, tenant_id: t, client_id: c, client_secret: cnry-sp-90c3aa15}\n"
        f"kafka: {{bootstrap_servers: 'ns.servicebus.windows.net:9093', event_hubs: {{connection_string: "
        f"'{CANARY_EH}'}}}}\n"
    )
    with pytest.raises(InvalidConfigError) as info:
        load_config(path)
    assert "azure.client_secret: Input should be a valid dictionary" in str(info.value)
    assert "kafka.event_hubs.connection_string: Input should be a valid dictionary" in str(info.value)
    assert not leaks(str(info.value))


def test_secret_ref_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FITBIT_TEST_SECRET", CANARY_SQL)
    by_env = SecretRef(env="FITBIT_TEST_SECRET")
    assert by_env.resolve("x").get_secret_value() == CANARY_SQL
    assert not leaks(repr(by_env.resolve("x")))
    monkeypatch.delenv("FITBIT_TEST_SECRET")
    with pytest.raises(InvalidConfigError, match=r"^x\.env: environment variable 'FITBIT_TEST_SECRET' is not set$"):
        by_env.resolve("x")

    scoped = SecretRef(secret_scope="fitbit", secret_key="sp")
    secrets = FakeSecrets({("fitbit", "sp"): CANARY_SP})
    assert scoped.resolve("azure.client_secret", dbutils_secrets=secrets).get_secret_value() == CANARY_SP
    with pytest.raises(InvalidConfigError, match="can only be read on Databricks"):
        scoped.resolve("azure.client_secret")
    missing = SecretRef(secret_scope="fitbit", secret_key="nope")
    with pytest.raises(InvalidConfigError) as info:
        missing.resolve("azure.client_secret", dbutils_secrets=secrets)
    assert str(info.value) == (
        "azure.client_secret: cannot read Databricks secret scope 'fitbit' key 'nope': RuntimeError: "
        "Secret does not exist with scope: fitbit and key: nope"
    )


def test_secret_scopes_of_the_shipped_databricks_config_resolve_through_dbutils() -> None:
    config = load_config(ROOT / "conf" / "databricks.yaml")
    dbutils = FakeDBUtils(
        {("fitbit", "sp-client-secret"): CANARY_SP, ("fitbit", "eventhubs-connection-string"): CANARY_EH}
    )
    auth = AzureAuth(config, credential=FakeCredential(), dbutils=dbutils)
    assert auth.check() == [
        "kafka: Event Hubs connection string from Databricks secret scope 'fitbit' key 'eventhubs-connection-string'",
        "sql: Microsoft Entra access token for https://database.windows.net/.default",
        "adls: service_principal token for fitbitlake",
    ]
    jaas = auth.kafka_auth_options()["kafka.sasl.jaas.config"]
    assert jaas.startswith("kafkashaded.org.apache.kafka.common.security.plain.PlainLoginModule required")
    assert CANARY_EH in jaas
    assert not leaks(repr(auth) + repr(auth.kafka_auth_options()) + repr(auth.adls_spark_conf()))


def test_py4j_wire_log_that_echoes_secrets_is_kept_off(spark: SparkSession, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    # py4j logs each command it sends on "py4j.clientserver"; an earlier session build in this
    # process has already quietened both loggers, so the unguarded state is set up here.
    loggers = [logging.getLogger("py4j"), logging.getLogger("py4j.clientserver")]
    saved = [logger.level for logger in loggers]
    try:
        # What `-v` (root logger at DEBUG) would do without the guard: py4j logs the conf value sent.
        for logger in loggers:
            logger.setLevel(logging.NOTSET)
        spark.conf.set("fitbit.test.canary", CANARY_SQL)
        assert CANARY_SQL in caplog.text
        caplog.clear()

        config = load_config(None, ["streaming.shuffle_partitions=1"])
        configure_session(spark, config, AzureAuth(config))
        spark.conf.set("fitbit.test.canary", CANARY_SQL)
        assert not leaks(caplog.text)
    finally:
        spark.conf.unset("fitbit.test.canary")
        for logger, level in zip(loggers, saved, strict=True):
            logger.setLevel(level)
