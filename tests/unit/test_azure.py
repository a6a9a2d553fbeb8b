"""Azure sign-in settings, pinned key by key for each auth mode, with tokens from a fake credential.

No test here touches the network: tokens come from :class:`FakeCredential`, and the azure-identity
credentials that are built are only constructed (construction does not contact Microsoft Entra).
"""

from __future__ import annotations

import traceback
from pathlib import Path
from typing import Any

import pytest
from azure.core.credentials import AccessToken

from fitbit_stream.azure import (
    SQL_SCOPE,
    STORAGE_SCOPE,
    AzureAuth,
    CredentialError,
    SecretOptions,
    auth_for,
)
from fitbit_stream.config import Config, load_config
from fitbit_stream.errors import InvalidConfigError

TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
CLIENT = "5a1b2c3d-0000-4000-8000-00000000c11e"
SECRET = "sp-secret-3e8a91d0"
ACCOUNT = "fitbitlake"
HOST = f"{ACCOUNT}.dfs.core.windows.net"


class FakeCredential:
    """A TokenCredential that hands out a fixed token (or raises) and remembers the scopes asked for."""

    def __init__(self, token: str = "tok-5c0ffee", error: Exception | None = None) -> None:
        self.token, self.error = token, error
        self.scopes: list[tuple[str, ...]] = []

    def get_token(self, *scopes: str, **_: Any) -> AccessToken:
        self.scopes.append(scopes)
        if self.error is not None:
            raise self.error
        return AccessToken(self.token, 4_102_444_800)


class FakeSecrets:
    def __init__(self, values: dict[tuple[str, str], str]) -> None:
        self.values = values
        self.reads: list[tuple[str, str]] = []

    def get(self, scope: str, key: str) -> str:
        self.reads.append((scope, key))
        if (scope, key) not in self.values:
            raise RuntimeError(f"Secret does not exist with scope: {scope} and key: {key}")
        return self.values[(scope, key)]


class FakeDBUtils:
    def __init__(self, values: dict[tuple[str, str], str]) -> None:
        self.secrets = FakeSecrets(values)


@pytest.fixture(autouse=True)
def _no_databricks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATABRICKS_RUNTIME_VERSION", raising=False)
    monkeypatch.delenv("AZURE_FEDERATED_TOKEN_FILE", raising=False)


def azure_config(*overrides: str) -> Config:
    return load_config(None, ["kafka.enabled=false", "sql.enabled=false", "landing.enabled=true", *overrides])


def sp(*extra: str) -> Config:
    return azure_config(
        "azure.auth=service_principal",
        f"azure.tenant_id={TENANT}",
        f"azure.client_id={CLIENT}",
        "azure.client_secret={env: FITBIT_TEST_SP_SECRET}",
        f"azure.storage_accounts=[{ACCOUNT}]",
        *extra,
    )


# --- ADLS Gen2 -----------------------------------------------------------------------------------


def test_service_principal_adls_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FITBIT_TEST_SP_SECRET", SECRET)
    conf = AzureAuth(sp()).adls_spark_conf()
    assert dict(conf) == {
        f"fs.azure.account.auth.type.{HOST}": "OAuth",
        f"fs.azure.account.oauth.provider.type.{HOST}": "org.apache.hadoop.fs.azurebfs.oauth2.ClientCredsTokenProvider",
        f"fs.azure.account.oauth2.client.id.{HOST}": CLIENT,
        f"fs.azure.account.oauth2.client.secret.{HOST}": SECRET,
        f"fs.azure.account.oauth2.client.endpoint.{HOST}": f"https://login.microsoftonline.com/{TENANT}/oauth2/token",
    }
    assert conf.secret_keys == {f"fs.azure.account.oauth2.client.secret.{HOST}"}
    assert SECRET not in repr(conf)
    assert SECRET not in str(conf)
    assert conf.masked()[f"fs.azure.account.oauth2.client.secret.{HOST}"] == "**********"


def test_managed_identity_adls_settings_user_assigned_and_system_assigned() -> None:
    user_assigned = azure_config(
        "azure.auth=managed_identity",
        f"azure.tenant_id={TENANT}",
        f"azure.client_id={CLIENT}",
        f"azure.storage_accounts=[{ACCOUNT}]",
    )
    assert dict(AzureAuth(user_assigned).adls_spark_conf()) == {
        f"fs.azure.account.auth.type.{HOST}": "OAuth",
        f"fs.azure.account.oauth.provider.type.{HOST}": "org.apache.hadoop.fs.azurebfs.oauth2.MsiTokenProvider",
        f"fs.azure.account.oauth2.msi.tenant.{HOST}": TENANT,
        f"fs.azure.account.oauth2.client.id.{HOST}": CLIENT,
        f"fs.azure.account.oauth2.msi.authority.{HOST}": "https://login.microsoftonline.com/",
    }
    system_assigned = azure_config("azure.auth=managed_identity", "azure.storage_accounts=[lake1, lake2]")
    conf = AzureAuth(system_assigned).adls_spark_conf()
    assert dict(conf) == {
        f"fs.azure.account.{name}.{account}.dfs.core.windows.net": value
        for account in ("lake1", "lake2")
        for name, value in (
            ("auth.type", "OAuth"),
            ("oauth.provider.type", "org.apache.hadoop.fs.azurebfs.oauth2.MsiTokenProvider"),
            ("oauth2.msi.authority", "https://login.microsoftonline.com/"),
        )
    }
    assert conf.secret_keys == frozenset()


def test_workload_identity_adls_settings_token_file_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    config = azure_config(
        "azure.auth=workload_identity",
        f"azure.tenant_id={TENANT}",
        f"azure.client_id={CLIENT}",
        f"azure.storage_accounts=[{ACCOUNT}]",
        "azure.authority_host=login.microsoftonline.us",
    )
    with pytest.raises(InvalidConfigError, match="'AZURE_FEDERATED_TOKEN_FILE' is not set"):
        AzureAuth(config).adls_spark_conf()
    monkeypatch.setenv("AZURE_FEDERATED_TOKEN_FILE", "/var/run/secrets/azure/tokens/azure-identity-token")
    assert dict(AzureAuth(config).adls_spark_conf()) == {
        f"fs.azure.account.auth.type.{HOST}": "OAuth",
        f"fs.azure.account.oauth.provider.type.{HOST}": (
            "org.apache.hadoop.fs.azurebfs.oauth2.WorkloadIdentityTokenProvider"
        ),
        f"fs.azure.account.oauth2.msi.tenant.{HOST}": TENANT,
        f"fs.azure.account.oauth2.client.id.{HOST}": CLIENT,
        f"fs.azure.account.oauth2.token.file.{HOST}": "/var/run/secrets/azure/tokens/azure-identity-token",
        f"fs.azure.account.oauth2.msi.authority.{HOST}": "https://login.microsoftonline.us/",
    }
    explicit = config.model_copy(
        update={"azure": config.azure.model_copy(update={"federated_token_file": "/tokens/t"})}  # type: ignore[union-attr]
    )
    assert AzureAuth(explicit).adls_spark_conf()[f"fs.azure.account.oauth2.token.file.{HOST}"] == "/tokens/t"


def test_no_azure_section_means_no_settings() -> None:
    auth = AzureAuth(load_config(None))
    assert dict(auth.adls_spark_conf()) == {}
    assert dict(auth.kafka_auth_options()) == {}
    assert dict(auth.jdbc_options()) == {}


# --- the azure-identity credential of each mode ----------------------------------------------------


def test_credentials_built_per_mode_without_network(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from azure.identity import ClientSecretCredential, ManagedIdentityCredential, WorkloadIdentityCredential

    monkeypatch.setenv("FITBIT_TEST_SP_SECRET", SECRET)
    assert isinstance(AzureAuth(sp()).credential(), ClientSecretCredential)
    mi = azure_config("azure.auth=managed_identity", f"azure.client_id={CLIENT}")
    assert isinstance(AzureAuth(mi).credential(), ManagedIdentityCredential)
    token_file = tmp_path / "token"
    token_file.write_text("federated-jwt")
    wi = azure_config(
        "azure.auth=workload_identity",
        f"azure.tenant_id={TENANT}",
        f"azure.client_id={CLIENT}",
        f"azure.federated_token_file={token_file}",
    )
    assert isinstance(AzureAuth(wi).credential(), WorkloadIdentityCredential)


def test_azure_identity_is_imported_lazily() -> None:
    import subprocess
    import sys

    code = (
        "import sys, fitbit_stream.azure, fitbit_stream.session, fitbit_stream.jobs, fitbit_stream.config\n"
        "print(sorted(m for m in sys.modules if m.startswith(('azure.identity', 'pyspark'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"


# --- Azure SQL ------------------------------------------------------------------------------------


def azure_sql(*extra: str) -> Config:
    return load_config(
        None,
        [
            "kafka.enabled=false",
            "sql.url=jdbc:sqlserver://fitbit-sql.database.windows.net:1433;database=fitbit;encrypt=true",
            "sql.auth=azure_ad",
            "azure.auth=managed_identity",
            *extra,
        ],
    )


def test_azure_sql_gets_an_access_token_property() -> None:
    credential = FakeCredential(token="eyJ0eXAiOiJKV1Qi.sql")
    options = AzureAuth(azure_sql(), credential=credential).jdbc_options()
    assert dict(options) == {"accessToken": "eyJ0eXAiOiJKV1Qi.sql"}
    assert credential.scopes == [("https://database.windows.net/.default",)]
    assert SQL_SCOPE == "https://database.windows.net/.default"
    assert "eyJ0eXAiOiJKV1Qi" not in repr(options)


def test_sql_password_from_env_or_secret_scope(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FITBIT_TEST_SQL_PW", "pw-77a1")
    by_env = load_config(None, ["sql.user=reader", "sql.password_env=FITBIT_TEST_SQL_PW"])
    options = AzureAuth(by_env).jdbc_options()
    assert dict(options) == {"user": "reader", "password": "pw-77a1"}
    assert "pw-77a1" not in repr(options)

    by_scope = load_config(
        None, ["sql.user=reader", "sql.password_secret={secret_scope: fitbit, secret_key: sql-password}"]
    )
    dbutils = FakeDBUtils({("fitbit", "sql-password"): "pw-scope-19"})
    assert dict(AzureAuth(by_scope, dbutils=dbutils).jdbc_options()) == {"user": "reader", "password": "pw-scope-19"}
    assert dbutils.secrets.reads == [("fitbit", "sql-password")]


# --- Event Hubs' Kafka endpoint -------------------------------------------------------------------

CONNECTION = "Endpoint=sb://fitbit-ns.servicebus.windows.net/;SharedAccessKeyName=listen;SharedAccessKey=k3y+/="


def event_hubs(*extra: str) -> Config:
    return load_config(
        None,
        [
            "kafka.bootstrap_servers=fitbit-ns.servicebus.windows.net:9093",
            "kafka.event_hubs={connection_string: {env: FITBIT_TEST_EH}}",
            *extra,
        ],
    )


@pytest.mark.parametrize(
    ("extra", "runtime", "login_module"),
    [
        ((), None, "org.apache.kafka.common.security.plain.PlainLoginModule"),
        (("platform=databricks",), None, "kafkashaded.org.apache.kafka.common.security.plain.PlainLoginModule"),
        ((), "17.3", "kafkashaded.org.apache.kafka.common.security.plain.PlainLoginModule"),
    ],
)
def test_event_hubs_kafka_options(
    monkeypatch: pytest.MonkeyPatch, extra: tuple[str, ...], runtime: str | None, login_module: str
) -> None:
    monkeypatch.setenv("FITBIT_TEST_EH", CONNECTION)
    if runtime:
        monkeypatch.setenv("DATABRICKS_RUNTIME_VERSION", runtime)
    options = AzureAuth(event_hubs(*extra)).kafka_auth_options()
    assert dict(options) == {
        "kafka.security.protocol": "SASL_SSL",
        "kafka.sasl.mechanism": "PLAIN",
        "kafka.sasl.jaas.config": f'{login_module} required username="$ConnectionString" password="{CONNECTION}";',
    }
    assert CONNECTION not in repr(options)
    assert "SharedAccessKey=k3y" not in str(options)


def test_event_hubs_settings_for_librdkafka_clients(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FITBIT_TEST_EH", CONNECTION)
    settings = AzureAuth(event_hubs()).librdkafka_auth_settings()
    assert dict(settings) == {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "PLAIN",
        "sasl.username": "$ConnectionString",
        "sasl.password": CONNECTION,
    }
    assert CONNECTION not in repr(settings)
    assert dict(AzureAuth(load_config(None)).librdkafka_auth_settings()) == {}


def test_event_hubs_connection_string_with_a_quote_is_refused_without_echo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FITBIT_TEST_EH", 'Endpoint=sb://x/;SharedAccessKey=ab"cd')
    with pytest.raises(InvalidConfigError, match="quote or backslash") as info:
        AzureAuth(event_hubs()).kafka_auth_options()
    assert 'ab"cd' not in str(info.value)


# --- the up-front check ---------------------------------------------------------------------------


def test_check_resolves_everything_and_gets_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FITBIT_TEST_EH", CONNECTION)
    monkeypatch.setenv("FITBIT_TEST_SP_SECRET", SECRET)
    config = load_config(
        None,
        [
            "kafka.bootstrap_servers=fitbit-ns.servicebus.windows.net:9093",
            "kafka.event_hubs={connection_string: {env: FITBIT_TEST_EH}}",
            "sql.url=jdbc:sqlserver://fitbit-sql.database.windows.net:1433;database=fitbit",
            "sql.auth=azure_ad",
            "azure.auth=service_principal",
            f"azure.tenant_id={TENANT}",
            f"azure.client_id={CLIENT}",
            "azure.client_secret={env: FITBIT_TEST_SP_SECRET}",
            f"azure.storage_accounts=[{ACCOUNT}]",
        ],
    )
    credential = FakeCredential()
    auth = AzureAuth(config, credential=credential)
    assert auth.check() == [
        "kafka: Event Hubs connection string from environment variable 'FITBIT_TEST_EH'",
        "sql: Microsoft Entra access token for https://database.windows.net/.default",
        f"adls: service_principal token for {ACCOUNT}",
    ]
    assert credential.scopes == [(SQL_SCOPE,), (STORAGE_SCOPE,)]
    assert auth.checked
    assert auth_for(config) is auth
    assert SECRET not in repr(auth)
    assert CONNECTION not in repr(auth)


def test_check_names_the_missing_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FITBIT_TEST_SP_SECRET", raising=False)
    with pytest.raises(
        InvalidConfigError,
        match=r"azure\.client_secret\.env: environment variable "
        r"'FITBIT_TEST_SP_SECRET' is not set",
    ):
        AzureAuth(sp(), credential=FakeCredential()).check()
    monkeypatch.setenv("FITBIT_TEST_SP_SECRET", "")
    with pytest.raises(InvalidConfigError, match="'FITBIT_TEST_SP_SECRET' is empty"):
        AzureAuth(sp(), credential=FakeCredential()).check()


def test_refused_token_is_a_credential_error_scrubbed_of_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    from azure.core.exceptions import ClientAuthenticationError

    monkeypatch.setenv("FITBIT_TEST_SP_SECRET", SECRET)
    # An SDK message that (wrongly) echoes the secret must not carry it further.
    refusal = ClientAuthenticationError(f"AADSTS7000215: Invalid client secret provided: {SECRET}")
    with pytest.raises(CredentialError) as info:
        AzureAuth(sp(), credential=FakeCredential(error=refusal)).check()
    message = str(info.value)
    assert message.startswith(
        "azure (service_principal): cannot get a token for https://storage.azure.com/.default: "
        "ClientAuthenticationError: AADSTS7000215: Invalid client secret provided: **********"
    )
    assert SECRET not in repr(info.value)
    assert SECRET not in "".join(traceback.format_exception(info.value))


def test_workload_identity_check_needs_a_readable_token_file(tmp_path: Path) -> None:
    config = azure_config(
        "azure.auth=workload_identity",
        f"azure.tenant_id={TENANT}",
        f"azure.client_id={CLIENT}",
        f"azure.federated_token_file={tmp_path / 'missing'}",
        f"azure.storage_accounts=[{ACCOUNT}]",
    )
    with pytest.raises(CredentialError, match="is not a readable file"):
        AzureAuth(config, credential=FakeCredential()).check()


def test_secret_options_refuse_unknown_secret_keys() -> None:
    with pytest.raises(ValueError, match="secret keys without a value"):
        SecretOptions({"a": "1"}, {"b"})


# --- validation of the azure settings -------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["azure.auth=service_principal", f"azure.tenant_id={TENANT}"],
            "auth service_principal needs client_id, client_secret",
        ),
        (["azure.auth=workload_identity", f"azure.client_id={CLIENT}"], "auth workload_identity needs tenant_id"),
        (
            ["azure.auth=managed_identity", "azure.client_secret={env: X}"],
            "auth managed_identity uses no client_secret",
        ),
        (
            ["azure.auth=managed_identity", "azure.federated_token_file=/t"],
            "federated_token_file belongs to auth workload_identity",
        ),
        (["azure.auth=managed_identity", "azure.storage_accounts=[Fitbit_Lake]"], "3-24 lower-case letters"),
        (
            ["azure.auth=managed_identity", "azure.authority_host=https://login.microsoftonline.com/"],
            "expected a host name",
        ),
        (
            ["azure.auth=password"],
            "azure.auth: Input should be 'service_principal', 'managed_identity' or 'workload_identity'",
        ),
        (["sql.auth=azure_ad", "sql.url=jdbc:sqlserver://h;database=d"], "sql.auth azure_ad needs an azure section"),
        (["sql.auth=azure_ad", "azure.auth=managed_identity"], "auth azure_ad needs a jdbc:sqlserver: URL"),
        (
            ["sql.auth=azure_ad", "sql.url=jdbc:sqlserver://h", "sql.user=u", "azure.auth=managed_identity"],
            "auth azure_ad uses an access token: remove user/password_env/password_secret",
        ),
        (["sql.password_env=A", "sql.password_secret={env: B}"], "set password_env or password_secret, not both"),
        (["sql.url=jdbc:sqlserver://h;accessToken=eyJhbGci"], "must not carry a password"),
        (
            [
                "kafka.bootstrap_servers=ns.servicebus.windows.net:9092",
                "kafka.event_hubs={connection_string: {env: E}}",
            ],
            "listens on port 9093",
        ),
        (
            [
                "kafka.bootstrap_servers=ns.servicebus.windows.net:9093",
                "kafka.event_hubs={connection_string: {env: E}}",
                "kafka.options={sasl.mechanism: PLAIN}",
            ],
            "event_hubs sets the SASL options itself: remove ['sasl.mechanism']",
        ),
        (
            ["kafka.options_env={sasl.jaas.config: 'org.apache...PlainLoginModule required'}"],
            "must be the NAME of an environment variable",
        ),
    ],
)
def test_invalid_azure_settings_are_named(overrides: list[str], message: str) -> None:
    with pytest.raises(InvalidConfigError) as info:
        load_config(None, overrides)
    assert message in str(info.value)
    assert "eyJhbGci" not in str(info.value)
