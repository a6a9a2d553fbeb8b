"""Azure sign-in: ADLS Gen2 OAuth settings, an Azure SQL access token, Event Hubs' Kafka endpoint.

One :class:`AzureAuth` per configuration resolves every secret the configuration references (from
environment variables, or from Databricks secret scopes through ``dbutils.secrets``) and gets tokens
through azure-identity. :meth:`AzureAuth.check` does all of that up front, so a missing variable or
a refused identity stops the job before any query starts, with an error that names the setting and
the variable but never a value.

Everything secret is kept in ``SecretStr`` or in :class:`SecretOptions`, whose ``repr``/``str`` mask
the secret values; error messages are scrubbed of every value resolved so far.

azure-identity is imported inside the functions that need it: configurations without an ``azure``
section never import it, and tests inject a credential (any ``get_token(scope)`` object).
"""

from __future__ import annotations

import importlib
import logging
import os
import re
import threading
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import SecretStr

from fitbit_stream.config import AzureAuthMode, AzureConfig, Config, SecretRef, SecretsReader
from fitbit_stream.errors import FitbitStreamError, InvalidConfigError

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential
    from pyspark.sql import SparkSession

__all__ = [
    "ADLS_PROVIDERS",
    "SQL_SCOPE",
    "STORAGE_SCOPE",
    "AzureAuth",
    "CredentialError",
    "DBUtils",
    "SecretOptions",
    "auth_for",
    "databricks_dbutils",
]

log = logging.getLogger(__name__)

#: Token scopes (Microsoft Entra ``.default`` scopes of the resources).
STORAGE_SCOPE = "https://storage.azure.com/.default"
SQL_SCOPE = "https://database.windows.net/.default"

#: Hadoop ABFS token providers (hadoop-azure; WorkloadIdentityTokenProvider since Hadoop 3.4.1).
ADLS_PROVIDERS: Mapping[AzureAuthMode, str] = {
    AzureAuthMode.SERVICE_PRINCIPAL: "org.apache.hadoop.fs.azurebfs.oauth2.ClientCredsTokenProvider",
    AzureAuthMode.MANAGED_IDENTITY: "org.apache.hadoop.fs.azurebfs.oauth2.MsiTokenProvider",
    AzureAuthMode.WORKLOAD_IDENTITY: "org.apache.hadoop.fs.azurebfs.oauth2.WorkloadIdentityTokenProvider",
}

_PLAIN_LOGIN = "org.apache.kafka.common.security.plain.PlainLoginModule"
# Databricks runtimes ship the Kafka client relocated under this package prefix.
_DATABRICKS_KAFKA_PREFIX = "kafkashaded."
_FEDERATED_TOKEN_ENV = "AZURE_FEDERATED_TOKEN_FILE"
_MASK = "**********"
_SECRET_IN_TEXT = re.compile(r"(?i)(password|pwd|secret|token|accountkey|sharedaccesskey)\s*[=:]\s*[^;&'\"\s,]*")


class CredentialError(FitbitStreamError):
    """A configured identity or secret cannot be used (no token, unreadable token file, ...)."""


def _required(value: str | None, where: str) -> str:
    # AzureConfig's validator already demands these per mode; this keeps the types honest.
    if not value:
        raise InvalidConfigError(f"{where} is required for this azure.auth")
    return value


class DBUtils(Protocol):
    """The part of Databricks' ``dbutils`` used here."""

    @property
    def secrets(self) -> SecretsReader: ...


class SecretOptions(Mapping[str, str]):
    """Spark, JDBC or Kafka options of which some values are secret.

    Reading a key gives the real value (it has to reach Spark); ``repr``, ``str`` and
    :meth:`masked` show the secret ones as ``**********``.
    """

    def __init__(self, values: Mapping[str, str] | None = None, secret: Iterable[str] = ()) -> None:
        self._values = dict(values or {})
        self._secret = frozenset(secret)
        unknown = self._secret - self._values.keys()
        if unknown:
            raise ValueError(f"secret keys without a value: {sorted(unknown)}")

    def __getitem__(self, key: str) -> str:
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    @property
    def secret_keys(self) -> frozenset[str]:
        return self._secret

    def masked(self) -> dict[str, str]:
        return {k: (_MASK if k in self._secret else v) for k, v in self._values.items()}

    def __repr__(self) -> str:
        return f"SecretOptions({self.masked()!r})"

    __str__ = __repr__


def databricks_dbutils() -> DBUtils:
    """The runtime's ``dbutils`` (jobs, notebooks and wheel tasks on Databricks)."""
    try:
        runtime = importlib.import_module("databricks.sdk.runtime")
        dbutils: DBUtils = runtime.dbutils
        return dbutils
    except (ImportError, AttributeError):
        pass
    try:
        from pyspark.sql import SparkSession

        dbutils_class: Any = importlib.import_module("pyspark.dbutils").DBUtils
        dbutils = dbutils_class(SparkSession.getActiveSession())
        return dbutils
    except (ImportError, AttributeError):
        raise CredentialError(
            "Databricks secret scopes need dbutils (databricks.sdk.runtime or pyspark.dbutils), which this "
            "Python does not have: run on Databricks, or reference environment variables (env) instead"
        ) from None


class AzureAuth:
    """Every credential one configuration needs: secrets, tokens and the settings derived from them.

    ``credential`` (tests, or an application's own) replaces the azure-identity credential built
    from ``config.azure``; ``dbutils`` replaces the runtime's for secret scopes.
    """

    def __init__(
        self,
        config: Config,
        *,
        credential: TokenCredential | None = None,
        dbutils: DBUtils | None = None,
    ) -> None:
        self._config = config
        self._credential = credential
        self._dbutils = dbutils
        self._secrets: dict[str, SecretStr] = {}
        self._lock = threading.Lock()
        self.checked = False

    def __repr__(self) -> str:
        azure = self._config.azure
        mode = azure.auth.value if azure else "none"
        return f"AzureAuth(auth={mode}, secrets={sorted(self._secrets)}, checked={self.checked})"

    @property
    def config(self) -> Config:
        return self._config

    # --- secrets ---------------------------------------------------------------------------------

    def _dbutils_secrets(self, ref: SecretRef) -> SecretsReader | None:
        if ref.env is not None:
            return None
        if self._dbutils is None and self._config.on_databricks():
            self._dbutils = databricks_dbutils()
        return self._dbutils.secrets if self._dbutils is not None else None

    def secret(self, ref: SecretRef, where: str) -> SecretStr:
        """Resolve one secret reference (once; later calls reuse the value)."""
        with self._lock:
            if where not in self._secrets:
                self._secrets[where] = ref.resolve(where, dbutils_secrets=self._dbutils_secrets(ref))
            return self._secrets[where]

    def _scrub(self, text: str) -> str:
        for value in self._secrets.values():
            raw = value.get_secret_value()
            if raw:
                text = text.replace(raw, _MASK)
        return _SECRET_IN_TEXT.sub(lambda m: f"{m.group(1)}={_MASK}", text)

    # --- identity --------------------------------------------------------------------------------

    def _azure(self, purpose: str) -> AzureConfig:
        azure = self._config.azure
        if azure is None:
            raise InvalidConfigError(f"{purpose} needs an azure section (auth, tenant_id, client_id, ...)")
        return azure

    def federated_token_file(self) -> str:
        """Workload identity's token file: ``azure.federated_token_file`` or ``$AZURE_FEDERATED_TOKEN_FILE``."""
        azure = self._azure("workload identity")
        path = azure.federated_token_file or os.environ.get(_FEDERATED_TOKEN_ENV)
        if not path:
            raise InvalidConfigError(
                f"azure.federated_token_file: not set, and environment variable {_FEDERATED_TOKEN_ENV!r} is not set"
            )
        return path

    def credential(self) -> TokenCredential:
        """The azure-identity credential of ``config.azure`` (built once)."""
        with self._lock:
            if self._credential is not None:
                return self._credential
        azure = self._azure("an Azure token")
        credential = self._build_credential(azure)
        with self._lock:
            if self._credential is None:
                self._credential = credential
            return self._credential

    def _client_secret(self, azure: AzureConfig) -> SecretStr:
        if azure.client_secret is None:
            raise InvalidConfigError("azure.client_secret is required for azure.auth service_principal")
        return self.secret(azure.client_secret, "azure.client_secret")

    def _build_credential(self, azure: AzureConfig) -> TokenCredential:
        from azure.identity import ClientSecretCredential, ManagedIdentityCredential, WorkloadIdentityCredential

        if azure.auth is AzureAuthMode.SERVICE_PRINCIPAL:
            return ClientSecretCredential(
                _required(azure.tenant_id, "azure.tenant_id"),
                _required(azure.client_id, "azure.client_id"),
                self._client_secret(azure).get_secret_value(),
                authority=azure.authority_host,
            )
        if azure.auth is AzureAuthMode.MANAGED_IDENTITY:
            if azure.client_id:
                return ManagedIdentityCredential(client_id=azure.client_id)
            return ManagedIdentityCredential()
        return WorkloadIdentityCredential(
            tenant_id=azure.tenant_id,
            client_id=azure.client_id,
            token_file_path=self.federated_token_file(),
            authority=azure.authority_host,
        )

    def token(self, scope: str) -> SecretStr:
        """An access token for ``scope`` (the credential caches and refreshes it)."""
        credential = self.credential()
        try:
            access = credential.get_token(scope)
        except Exception as exc:  # azure-identity raises several unrelated types; all mean "no token"
            mode = self._config.azure.auth.value if self._config.azure else "injected credential"
            raise CredentialError(
                f"azure ({mode}): cannot get a token for {scope}: {type(exc).__name__}: {self._scrub(str(exc))}"
            ) from None
        if not access.token:
            raise CredentialError(f"azure: the credential returned an empty token for {scope}")
        token = SecretStr(access.token)
        with self._lock:
            # Known, so that a later error message echoing it is scrubbed too.
            self._secrets[f"token {scope}"] = token
        return token

    # --- settings derived from the identity -------------------------------------------------------

    def adls_spark_conf(self) -> SecretOptions:
        """ABFS OAuth settings, per storage account, for the session (``spark.conf.set``)."""
        azure = self._config.azure
        if azure is None or not azure.storage_accounts:
            return SecretOptions()
        values: dict[str, str] = {}
        secret: set[str] = set()
        authority = f"https://{azure.authority_host}/"
        for account in azure.storage_accounts:
            host = f"{account}.{azure.dfs_suffix}"

            def key(name: str, host: str = host) -> str:
                return f"fs.azure.account.{name}.{host}"

            values[key("auth.type")] = "OAuth"
            values[key("oauth.provider.type")] = ADLS_PROVIDERS[azure.auth]
            if azure.auth is AzureAuthMode.SERVICE_PRINCIPAL:
                values[key("oauth2.client.id")] = _required(azure.client_id, "azure.client_id")
                values[key("oauth2.client.secret")] = self._client_secret(azure).get_secret_value()
                secret.add(key("oauth2.client.secret"))
                tenant = _required(azure.tenant_id, "azure.tenant_id")
                values[key("oauth2.client.endpoint")] = f"{authority}{tenant}/oauth2/token"
            elif azure.auth is AzureAuthMode.MANAGED_IDENTITY:
                if azure.tenant_id:
                    values[key("oauth2.msi.tenant")] = azure.tenant_id
                if azure.client_id:
                    values[key("oauth2.client.id")] = azure.client_id
                if azure.msi_endpoint:
                    values[key("oauth2.msi.endpoint")] = azure.msi_endpoint
                values[key("oauth2.msi.authority")] = authority
            else:
                values[key("oauth2.msi.tenant")] = _required(azure.tenant_id, "azure.tenant_id")
                values[key("oauth2.client.id")] = _required(azure.client_id, "azure.client_id")
                values[key("oauth2.token.file")] = self.federated_token_file()
                values[key("oauth2.msi.authority")] = authority
        return SecretOptions(values, secret)

    def jdbc_options(self) -> SecretOptions:
        """Sign-in options for the SQL source: user/password, or an Entra ``accessToken`` (Azure SQL)."""
        sql = self._config.sql
        if sql.auth == "azure_ad":
            return SecretOptions({"accessToken": self.token(SQL_SCOPE).get_secret_value()}, {"accessToken"})
        values: dict[str, str] = {}
        if sql.user:
            values["user"] = sql.user
        password: SecretStr | None
        if sql.password_secret is not None:
            password = self.secret(sql.password_secret, "sql.password_secret")
        else:
            password = sql.password()
            if password is not None:
                with self._lock:
                    self._secrets["sql.password_env"] = password
        if password is None:
            return SecretOptions(values)
        values["password"] = password.get_secret_value()
        return SecretOptions(values, {"password"})

    def kafka_auth_options(self) -> SecretOptions:
        """Spark Kafka source options that sign in to Azure Event Hubs (empty for plain Kafka)."""
        kafka = self._config.kafka
        if kafka.event_hubs is None:
            return SecretOptions()
        connection = self.secret(kafka.event_hubs.connection_string, "kafka.event_hubs.connection_string")
        text = connection.get_secret_value()
        if '"' in text or "\\" in text:
            raise InvalidConfigError(
                "kafka.event_hubs.connection_string: the value holds a quote or backslash, which a JAAS "
                "line cannot carry; expected Endpoint=sb://...;SharedAccessKeyName=...;SharedAccessKey=..."
            )
        module = (_DATABRICKS_KAFKA_PREFIX if self._config.on_databricks() else "") + _PLAIN_LOGIN
        return SecretOptions(
            {
                "kafka.security.protocol": "SASL_SSL",
                "kafka.sasl.mechanism": "PLAIN",
                "kafka.sasl.jaas.config": f'{module} required username="$ConnectionString" password="{text}";',
            },
            {"kafka.sasl.jaas.config"},
        )

    def librdkafka_auth_settings(self) -> SecretOptions:
        """The same Event Hubs sign-in for librdkafka clients (confluent-kafka): no JAAS, user + password."""
        kafka = self._config.kafka
        if kafka.event_hubs is None:
            return SecretOptions()
        connection = self.secret(kafka.event_hubs.connection_string, "kafka.event_hubs.connection_string")
        return SecretOptions(
            {
                "security.protocol": "SASL_SSL",
                "sasl.mechanism": "PLAIN",
                "sasl.username": "$ConnectionString",
                "sasl.password": connection.get_secret_value(),
            },
            {"sasl.password"},
        )

    # --- the check and its application ----------------------------------------------------------

    def check(self) -> list[str]:
        """Resolve every secret and get every token the enabled sources and sinks need.

        Returns one line per credential (where it came from, never its value); raises
        InvalidConfigError (a setting or variable is missing) or CredentialError (it was refused).
        """
        config = self._config
        lines: list[str] = []
        if config.kafka.enabled:
            for option, env in config.kafka.options_env.items():
                value = os.environ.get(env)
                if not value:
                    raise InvalidConfigError(f"kafka.options_env.{option}: environment variable {env!r} is not set")
                with self._lock:
                    self._secrets[f"kafka.options_env.{option}"] = SecretStr(value)
                lines.append(f"kafka.{option}: from environment variable {env!r}")
            if config.kafka.event_hubs is not None:
                self.kafka_auth_options()
                ref = config.kafka.event_hubs.connection_string
                lines.append(f"kafka: Event Hubs connection string from {ref.describe()}")
        if config.sql.enabled:
            sql_options = self.jdbc_options()
            if "accessToken" in sql_options:
                lines.append(f"sql: Microsoft Entra access token for {SQL_SCOPE}")
            elif "password" in sql_options:
                source = config.sql.password_secret or SecretRef(env=config.sql.password_env)
                lines.append(f"sql: password from {source.describe()}")
        azure = config.azure
        if azure is not None and azure.storage_accounts:
            if azure.auth is AzureAuthMode.WORKLOAD_IDENTITY:
                token_file = Path(self.federated_token_file())
                if not token_file.is_file():
                    raise CredentialError(f"azure.federated_token_file: {str(token_file)!r} is not a readable file")
            self.adls_spark_conf()
            self.token(STORAGE_SCOPE)
            lines.append(f"adls: {azure.auth.value} token for {', '.join(azure.storage_accounts)}")
        self.checked = True
        _activate(self)
        for line in lines:
            log.info("credentials: %s", line)
        return lines

    def apply(self, spark: SparkSession) -> None:
        """Set the ABFS OAuth settings on the session (session scoped: every query of it uses them)."""
        for key, value in self.adls_spark_conf().items():
            spark.conf.set(key, value)


# The credentials a process checked, by configuration: the sources read their options here, so a
# token credential (and its token cache) is built once per configuration, not once per poll.
_ACTIVE: dict[str, AzureAuth] = {}
_ACTIVE_LOCK = threading.Lock()


def _activate(auth: AzureAuth) -> None:
    with _ACTIVE_LOCK:
        _ACTIVE[auth.config.model_dump_json()] = auth


def auth_for(config: Config) -> AzureAuth:
    """The checked :class:`AzureAuth` of ``config`` in this process (a fresh one if none was checked)."""
    key = config.model_dump_json()
    with _ACTIVE_LOCK:
        auth = _ACTIVE.get(key)
        if auth is None:
            auth = _ACTIVE[key] = AzureAuth(config)
        return auth
