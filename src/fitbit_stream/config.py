"""Typed configuration: one frozen pydantic model tree, loaded from YAML plus ``--set`` overrides.

Secrets never live in the YAML: a secret setting names an environment variable (``*_env``, or a
:class:`SecretRef` with ``env``) or a Databricks secret scope (``secret_scope``/``secret_key``), and is
resolved into a ``SecretStr`` only when credentials are checked or a connection is opened.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterable, Mapping
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal, Protocol, get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from fitbit_stream.errors import InvalidConfigError

__all__ = [
    "OVERRIDE_SYNTAX",
    "AzureAuthMode",
    "AzureConfig",
    "Config",
    "EventHubsConfig",
    "KafkaConfig",
    "LandingConfig",
    "Layer",
    "Platform",
    "RulesConfig",
    "SecretRef",
    "SecretsReader",
    "SqlConfig",
    "StorageConfig",
    "StreamingConfig",
    "load_config",
    "parse_override",
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Platform(StrEnum):
    LOCAL = "local"
    DATABRICKS = "databricks"


class Layer(StrEnum):
    BRONZE = "bronze"
    SILVER = "silver"
    GOLD = "gold"
    OPS = "ops"


class SecretsReader(Protocol):
    """What ``dbutils.secrets`` offers: the value of one key of one Databricks secret scope."""

    def get(self, scope: str, key: str) -> str: ...


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _text_values(value: Any) -> Any:
    """Map values as text: YAML reads ``false`` or ``5`` in a map of settings (``spark_conf``, Kafka
    options) as a bool or a number, while Spark and Kafka take them as the strings they wrote."""
    if not isinstance(value, Mapping):
        return value
    return {
        k: ("true" if v else "false") if isinstance(v, bool) else str(v) if isinstance(v, int | float) else v
        for k, v in value.items()
    }


def _env_name(value: str) -> str:
    # The message never repeats the value: a value that is not a name may be the secret itself.
    if not _ENV_NAME.fullmatch(value):
        raise ValueError("must be the NAME of an environment variable ([A-Za-z_][A-Za-z0-9_]*), not a value")
    return value


class SecretRef(_Model):
    """Where one secret comes from: an environment variable, or a key of a Databricks secret scope.

    The configuration holds only this reference; the value is read by :meth:`resolve`.
    """

    env: str | None = None
    secret_scope: str | None = None
    secret_key: str | None = None

    @field_validator("env")
    @classmethod
    def _env(cls, v: str | None) -> str | None:
        return None if v is None else _env_name(v)

    @model_validator(mode="after")
    def _one_source(self) -> SecretRef:
        scoped = (self.secret_scope is not None, self.secret_key is not None)
        if scoped[0] != scoped[1]:
            raise ValueError("secret_scope and secret_key go together")
        if (self.env is None) == (not scoped[0]):
            raise ValueError("set exactly one of env, or secret_scope with secret_key")
        return self

    def describe(self) -> str:
        """Where the secret comes from (never its value)."""
        if self.env is not None:
            return f"environment variable {self.env!r}"
        return f"Databricks secret scope {self.secret_scope!r} key {self.secret_key!r}"

    def resolve(self, where: str, *, dbutils_secrets: SecretsReader | None = None) -> SecretStr:
        """The secret's value; errors name ``where`` and the source, never the value."""
        if self.env is not None:
            value = os.environ.get(self.env)
            if value is None:
                raise InvalidConfigError(f"{where}.env: environment variable {self.env!r} is not set")
            if not value:
                raise InvalidConfigError(f"{where}.env: environment variable {self.env!r} is empty")
            return SecretStr(value)
        if dbutils_secrets is None:
            raise InvalidConfigError(
                f"{where}: {self.describe()} can only be read on Databricks (dbutils.secrets); "
                "elsewhere name an environment variable with env"
            )
        scope, key = str(self.secret_scope), str(self.secret_key)
        try:
            value = dbutils_secrets.get(scope, key)
        except Exception as exc:  # dbutils raises py4j/Databricks errors of its own types
            # A failed read knows no value to leak; its first line says why (no such scope, no access).
            reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
            raise InvalidConfigError(
                f"{where}: cannot read {self.describe()}: {type(exc).__name__}" + (f": {reason}" if reason else "")
            ) from None
        if not value:
            raise InvalidConfigError(f"{where}: {self.describe()} is empty")
        return SecretStr(value)


class StorageConfig(_Model):
    """Where tables and checkpoints live.

    Locally a table is ``<root>/<layer>/<table>``; with ``catalog`` set (Unity Catalog) it is
    ``<catalog>.<schemas[layer]>.<table>`` and ``root`` is only used for checkpoints.
    """

    root: str = "data/lake"
    checkpoint_root: str = "data/checkpoints"
    catalog: str | None = None
    schemas: dict[Layer, str] = Field(
        default_factory=lambda: {layer: layer.value for layer in Layer},
    )

    @field_validator("root", "checkpoint_root")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        return v

    @field_validator("schemas")
    @classmethod
    def _all_layers(cls, v: dict[Layer, str]) -> dict[Layer, str]:
        missing = [layer.value for layer in Layer if layer not in v]
        if missing:
            raise ValueError(f"missing schema for layer(s) {missing}")
        return v


class KafkaTopics(_Model):
    user_info: str = "user_info"
    bpm: str = "bpm"
    workout: str = "workout"

    def names(self) -> list[str]:
        return [self.user_info, self.bpm, self.workout]


class EventHubsConfig(_Model):
    """Azure Event Hubs through its Kafka endpoint (SASL_SSL, PLAIN, the namespace connection string)."""

    connection_string: SecretRef


class KafkaConfig(_Model):
    enabled: bool = True
    bootstrap_servers: str = "localhost:9092"
    topics: KafkaTopics = KafkaTopics()
    partitions: int = Field(default=3, ge=1, description="partitions per topic the local platform creates")
    starting_offsets: Literal["earliest", "latest"] = "earliest"
    max_offsets_per_trigger: int | None = Field(default=None, ge=1)
    # A gap in the offsets (retention passed before the data was read) stops the query unless
    # the operator opts in; the gap is then visible in the query's progress.
    fail_on_data_loss: bool = True
    # Extra consumer options passed through as ``kafka.<name>`` (security settings, timeouts).
    # Values are plain settings; secrets belong in options_env.
    options: dict[str, str] = Field(default_factory=dict)
    # Consumer options whose value is read from an environment variable: {option: ENV_NAME}.
    options_env: dict[str, str] = Field(default_factory=dict)
    # Set for Azure Event Hubs: the SASL settings are then derived (see fitbit_stream.azure).
    event_hubs: EventHubsConfig | None = None

    @field_validator("bootstrap_servers")
    @classmethod
    def _servers(cls, v: str) -> str:
        for server in v.split(","):
            host, _, port = server.strip().rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"expected host:port[,host:port...], got {v!r}")
        return v

    _options_text = field_validator("options", mode="before")(_text_values)

    @field_validator("options")
    @classmethod
    def _no_secret_options(cls, v: dict[str, str]) -> dict[str, str]:
        for key in v:
            if "jaas" in key.lower() or "password" in key.lower():
                raise ValueError(f"{key!r} carries a secret: set it through options_env instead")
        return v

    @field_validator("options_env")
    @classmethod
    def _env_names(cls, v: dict[str, str]) -> dict[str, str]:
        for key, env in v.items():
            try:
                _env_name(env)
            except ValueError as exc:
                raise ValueError(f"{key!r}: {exc}") from None
        return v

    @model_validator(mode="after")
    def _event_hubs(self) -> KafkaConfig:
        if self.event_hubs is None:
            return self
        clashing = sorted(
            k for k in (*self.options, *self.options_env) if k.startswith("sasl.") or k == "security.protocol"
        )
        if clashing:
            raise ValueError(f"event_hubs sets the SASL options itself: remove {clashing} from options/options_env")
        ports = {server.strip().rpartition(":")[2] for server in self.bootstrap_servers.split(",")}
        if ports != {"9093"}:
            raise ValueError(
                f"event_hubs: the Kafka endpoint of Event Hubs listens on port 9093, got {self.bootstrap_servers!r}"
            )
        return self


class LandingConfig(_Model):
    """JSON-lines landing files (ADF / Kafka Connect) feeding the same bronze table as Kafka."""

    enabled: bool = False
    path: str = "data/landing"
    max_files_per_trigger: int | None = Field(default=None, ge=1)


class SqlConfig(_Model):
    """The SQL source: SQLite file locally, PostgreSQL in e2e tests, Azure SQL in production."""

    enabled: bool = True
    url: str = "jdbc:sqlite:data/source.db"
    # password: user + password (password_env or password_secret); azure_ad: a Microsoft Entra
    # access token from the ``azure`` identity, passed as the JDBC ``accessToken`` property.
    auth: Literal["password", "azure_ad"] = "password"
    user: str | None = None
    password_env: str | None = Field(default=None, description="name of the environment variable holding the password")
    password_secret: SecretRef | None = Field(default=None, description="the password: env or Databricks secret scope")
    registered_users_table: str = "registered_users"
    gym_logins_table: str = "gym_logins"
    poll_interval_seconds: float = Field(default=30.0, gt=0)

    @field_validator("url")
    @classmethod
    def _jdbc_url(cls, v: str) -> str:
        if not v.startswith("jdbc:"):
            raise ValueError(f"expected a JDBC URL starting with 'jdbc:', got {v!r}")
        if "password=" in v.lower() or "accesstoken=" in v.lower():
            raise ValueError("the JDBC URL must not carry a password: use password_env")
        return v

    @field_validator("password_env")
    @classmethod
    def _password_env(cls, v: str | None) -> str | None:
        return None if v is None else _env_name(v)

    @model_validator(mode="after")
    def _auth(self) -> SqlConfig:
        if self.password_env is not None and self.password_secret is not None:
            raise ValueError("set password_env or password_secret, not both")
        if self.auth == "azure_ad":
            if self.user is not None or self.password_env is not None or self.password_secret is not None:
                raise ValueError("auth azure_ad uses an access token: remove user/password_env/password_secret")
            if self.url.split(":", 2)[1] != "sqlserver":
                raise ValueError(f"auth azure_ad needs a jdbc:sqlserver: URL (Azure SQL), got {self.url!r}")
        return self

    @property
    def dialect(self) -> Literal["sqlite", "postgresql", "sqlserver"]:
        scheme = self.url.split(":", 2)[1]
        if scheme == "sqlite":
            return "sqlite"
        if scheme == "postgresql":
            return "postgresql"
        if scheme == "sqlserver":
            return "sqlserver"
        raise InvalidConfigError(f"sql.url: unsupported JDBC scheme {scheme!r} in {self.url!r}")

    def password(self, *, dbutils_secrets: SecretsReader | None = None) -> SecretStr | None:
        if self.password_secret is not None:
            return self.password_secret.resolve("sql.password_secret", dbutils_secrets=dbutils_secrets)
        if self.password_env is None:
            return None
        value = os.environ.get(self.password_env)
        if value is None:
            raise InvalidConfigError(f"sql.password_env: environment variable {self.password_env!r} is not set")
        return SecretStr(value)


class RulesConfig(_Model):
    """Business rules of the contract that are configurable (CONTRACT.md §2.2, §3.6)."""

    heartrate_min: float = 25.0
    heartrate_max: float = 250.0
    max_session_hours: float = Field(default=3.0, gt=0)
    clock_skew_minutes: float = Field(default=10.0, ge=0)
    lateness_horizon_minutes: float = Field(default=60.0, ge=60.0)
    tombstone_retention_days: float = Field(default=30.0, gt=0)

    @model_validator(mode="after")
    def _bounds(self) -> RulesConfig:
        if self.heartrate_min >= self.heartrate_max:
            raise ValueError(f"heartrate_min ({self.heartrate_min}) must be below heartrate_max ({self.heartrate_max})")
        return self


class StreamingConfig(_Model):
    # How records reach silver. ``realtime``: the Kafka (or landing) query writes the silver topic
    # tables and bronze from the same micro-batch, one hop. ``layered``: the ingest query writes
    # bronze only and one query per topic reads bronze into silver (two hops; each layer its own
    # job). A checkpoint belongs to one mode: switch with `fitbit-stream rebuild --yes --set
    # streaming.mode=...` (docs/streaming.md).
    mode: Literal["realtime", "layered"] = "realtime"
    trigger_interval_seconds: float = Field(default=10.0, gt=0)
    # The derived queries' trigger (workout_bpm and the gold tables) when it should differ from the
    # bronze and silver queries': a longer one leaves the cores to the silver path (event -> silver
    # latency) at the cost of gold freshness. Unset: the same trigger for every query.
    derived_trigger_interval_seconds: float | None = Field(default=None, gt=0)
    # One query's trigger, by query name (the names of docs/streaming.md's query graph), over the
    # two above: e.g. {bronze_kafka_user_info_workout: 10} runs the low-volume topics' query every
    # 10 s, leaving the cores to the readings' query between its batches.
    query_trigger_seconds: dict[str, float] = Field(default_factory=dict)
    # Fixed for the life of a checkpoint: changing it breaks existing stateful checkpoints.
    shuffle_partitions: int = Field(default=4, ge=1)
    state_store: Literal["hdfs", "rocksdb"] = "rocksdb"

    @field_validator("query_trigger_seconds")
    @classmethod
    def _query_triggers(cls, v: dict[str, float]) -> dict[str, float]:
        from fitbit_stream import topology

        names = topology.checkpointed()
        for name, seconds in v.items():
            if name not in names:
                near = difflib.get_close_matches(name, names, n=1)
                hint = f" (did you mean {near[0]!r}?)" if near else f": choose from {', '.join(names)}"
                raise ValueError(f"query_trigger_seconds names no streaming query {name!r}{hint}")
            if not seconds > 0:
                raise ValueError(f"query_trigger_seconds[{name}] must be above 0 (got {seconds})")
        return v

    def trigger_seconds(self, query: str, *, derived: bool) -> float:
        """The processing-time trigger of ``query`` (``derived``: a change-feed query)."""
        if query in self.query_trigger_seconds:
            return self.query_trigger_seconds[query]
        if derived and self.derived_trigger_interval_seconds is not None:
            return self.derived_trigger_interval_seconds
        return self.trigger_interval_seconds


class AzureAuthMode(StrEnum):
    SERVICE_PRINCIPAL = "service_principal"
    MANAGED_IDENTITY = "managed_identity"
    WORKLOAD_IDENTITY = "workload_identity"


_STORAGE_ACCOUNT = re.compile(r"[a-z0-9]{3,24}")


class AzureConfig(_Model):
    """One Microsoft Entra identity for ADLS Gen2 (OAuth) and Azure SQL (access token).

    - service_principal: tenant_id, client_id and client_secret (a SecretRef).
    - managed_identity: the VM's identity; client_id picks a user-assigned one.
    - workload_identity: tenant_id, client_id and a federated token file (AKS; the file defaults to
      ``$AZURE_FEDERATED_TOKEN_FILE``).
    """

    auth: AzureAuthMode
    tenant_id: str | None = None
    client_id: str | None = None
    client_secret: SecretRef | None = None
    federated_token_file: str | None = None
    # Microsoft Entra authority host; sovereign clouds have their own (login.microsoftonline.us, ...).
    authority_host: str = "login.microsoftonline.com"
    # Managed identity token endpoint override (Hadoop's default is the VM's IMDS endpoint).
    msi_endpoint: str | None = None
    # ADLS Gen2 accounts the Spark session authenticates to (``<account>.<dfs_suffix>``).
    storage_accounts: tuple[str, ...] = ()
    dfs_suffix: str = "dfs.core.windows.net"

    @field_validator("storage_accounts")
    @classmethod
    def _accounts(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        bad = [a for a in v if not _STORAGE_ACCOUNT.fullmatch(a)]
        if bad:
            raise ValueError(f"storage account names are 3-24 lower-case letters and digits, got {bad}")
        return v

    @field_validator("authority_host")
    @classmethod
    def _host(cls, v: str) -> str:
        if "/" in v or not v.strip():
            raise ValueError(f"expected a host name such as 'login.microsoftonline.com', got {v!r}")
        return v

    @model_validator(mode="after")
    def _mode(self) -> AzureConfig:
        mode = self.auth.value
        if self.auth is AzureAuthMode.SERVICE_PRINCIPAL:
            missing = [n for n in ("tenant_id", "client_id", "client_secret") if getattr(self, n) is None]
        elif self.auth is AzureAuthMode.WORKLOAD_IDENTITY:
            missing = [n for n in ("tenant_id", "client_id") if getattr(self, n) is None]
        else:
            missing = []
        if missing:
            raise ValueError(f"auth {mode} needs {', '.join(missing)}")
        if self.client_secret is not None and self.auth is not AzureAuthMode.SERVICE_PRINCIPAL:
            raise ValueError(f"auth {mode} uses no client_secret: remove it")
        if self.federated_token_file is not None and self.auth is not AzureAuthMode.WORKLOAD_IDENTITY:
            raise ValueError(f"federated_token_file belongs to auth workload_identity, not {mode}")
        return self


class Config(_Model):
    platform: Platform = Platform.LOCAL
    app_name: str = "fitbit-stream"
    storage: StorageConfig = StorageConfig()
    kafka: KafkaConfig = KafkaConfig()
    landing: LandingConfig = LandingConfig()
    sql: SqlConfig = SqlConfig()
    rules: RulesConfig = RulesConfig()
    streaming: StreamingConfig = StreamingConfig()
    # Extra Spark settings for the local session factory (ignored on Databricks, whose cluster
    # owns its session).
    spark_conf: dict[str, str] = Field(default_factory=dict)
    _spark_conf_text = field_validator("spark_conf", mode="before")(_text_values)
    # Where the local JVM artifacts were resolved (scripts/setup.sh); relative to the working dir.
    jars_dir: str = ".cache/jars"
    # Local platform state (Kafka broker logs and data).
    platform_dir: str = "data/platform"
    # Microsoft Entra identity for ADLS Gen2 and Azure SQL (None: no Azure sign-in).
    azure: AzureConfig | None = None

    @model_validator(mode="after")
    def _one_source(self) -> Config:
        if not (self.kafka.enabled or self.landing.enabled or self.sql.enabled):
            raise ValueError("enable at least one source: kafka.enabled, landing.enabled or sql.enabled")
        if self.sql.auth == "azure_ad" and self.azure is None:
            raise ValueError("sql.auth azure_ad needs an azure section (the identity that gets the token)")
        return self

    def on_databricks(self) -> bool:
        """Databricks by configuration, or because this process runs in a Databricks runtime."""
        return self.platform is Platform.DATABRICKS or "DATABRICKS_RUNTIME_VERSION" in os.environ


OVERRIDE_SYNTAX = (
    "section.key=value, the value in YAML (a number, true/false, text, a [list] or a {mapping}, which replaces "
    'the whole setting); a map key holding dots is quoted or bracketed: kafka.options."security.protocol"=SASL_SSL '
    "or spark_conf[spark.ui.enabled]=false"
)


def _split_override(text: str) -> tuple[str, str, str]:
    """``key``, ``=``, ``value`` at the first ``=`` outside quotes and brackets (map keys may hold one)."""
    quote: str | None = None
    depth = 0
    for i, char in enumerate(text):
        if quote is not None:
            quote = None if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char == "[":
            depth += 1
        elif char == "]":
            depth = max(0, depth - 1)
        elif char == "=" and depth == 0:
            return text[:i], "=", text[i + 1 :]
    # An unclosed quote or bracket swallowed the "=": split at the first one, so that the key's own
    # check can say what is unclosed.
    return text.partition("=")


def _key_path(key: str, text: str) -> list[str]:
    """``a.b."c.d"`` or ``a.b[c.d]`` -> ``["a", "b", "c.d"]``: dots split, except inside quotes or brackets."""

    def bad(why: str) -> InvalidConfigError:
        return InvalidConfigError(f"--set {text!r}: {why}; expected {OVERRIDE_SYNTAX}")

    path: list[str] = []
    part = ""
    closed = False  # the part just ended with a quote or a bracket: a dot, a bracket or the end follow
    i = 0
    while i < len(key):
        char = key[i]
        if char == ".":
            if not part and not closed:
                raise bad("empty key part")
            if part:
                path.append(part)
            part, closed = "", False
        elif char in "\"'" and not part and not closed:
            end = key.find(char, i + 1)
            if end < 0:
                raise bad(f"unclosed {char} in the key")
            path.append(key[i + 1 : end])
            closed, i = True, end
        elif char == "[":
            end = key.find("]", i + 1)
            if end < 0:
                raise bad("unclosed [ in the key")
            if part:
                path.append(part)
            elif not path:
                raise bad("a [key] must follow a section")
            inner = key[i + 1 : end].strip()
            if len(inner) >= 2 and inner[0] == inner[-1] and inner[0] in "\"'":
                inner = inner[1:-1]
            if not inner:
                raise bad("empty [key]")
            path.append(inner)
            part, closed, i = "", True, end
        elif closed:
            raise bad(f"unexpected {char!r} after a quoted or bracketed key")
        else:
            part += char
        i += 1
    if part:
        path.append(part)
    elif not closed and path:
        raise bad("empty key part")
    if not path or any(not p for p in path):
        raise bad("empty key")
    return path


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``section.key=value`` into a key path and a YAML-parsed value.

    A key part that holds dots (a Kafka option, a Spark setting: keys of a map) is quoted
    (``kafka.options."security.protocol"=SASL_SSL``) or bracketed (``spark_conf[spark.ui.enabled]=false``).
    The value is YAML, so a list or a mapping sets a whole setting at once.
    """
    key, sep, raw = _split_override(text)
    if not sep or not key.strip():
        raise InvalidConfigError(f"--set: expected {OVERRIDE_SYNTAX}, got {text!r}")
    path = _key_path(key.strip(), text)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        reason = " ".join(str(exc).split())
        raise InvalidConfigError(f"--set {key}: value {raw!r} is not valid YAML: {reason}") from None
    return path, value


def _apply_override(tree: dict[str, Any], path: list[str], value: Any) -> None:
    node = tree
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise InvalidConfigError(f"--set {'.'.join(path)}: {part!r} is not a section")
        node = child
    node[path[-1]] = value


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The model class of a field annotation (``KafkaConfig``, ``AzureConfig | None``), else None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        model = _model_of(arg)
        if model is not None:
            return model
    return None


def _section_at(loc: tuple[Any, ...]) -> tuple[type[BaseModel], int] | None:
    """The deepest model along ``loc`` and how many parts of ``loc`` lead to it (None: not a model path)."""
    model: type[BaseModel] = Config
    for depth, part in enumerate(loc[:-1]):
        field = model.model_fields.get(part) if isinstance(part, str) else None
        child = None if field is None else _model_of(field.annotation)
        if child is None:
            return (model, depth) if field is not None and get_origin(field.annotation) is dict else None
        model = child
    return model, len(loc) - 1


def _hint(err: Mapping[str, Any]) -> str:
    """A nearer valid key for an unknown one; the quoting syntax for a dotted key split inside a map."""
    loc = tuple(err["loc"])
    found = _section_at(loc) if loc else None
    if found is None:
        return ""
    model, depth = found
    prefix = ".".join(str(p) for p in loc[:depth])
    if err["type"] == "extra_forbidden" and depth == len(loc) - 1:
        name, valid = str(loc[-1]), list(model.model_fields)
        nearest = difflib.get_close_matches(name, valid, n=1, cutoff=0.6)
        if nearest:
            return f"; did you mean {prefix + '.' if prefix else ''}{nearest[0]}?"
        return f"; valid keys{' of ' + prefix if prefix else ''}: {', '.join(valid)}"
    value = err.get("input")
    if depth < len(loc) - 1 and isinstance(value, Mapping):
        # ``kafka.options.security.protocol=X`` made {"security": {"protocol": X}} inside a map.
        key = [str(p) for p in loc[depth + 1 :]]
        while isinstance(value, Mapping) and len(value) == 1:
            (name, value), *_ = value.items()
            key.append(str(name))
        section = ".".join(str(p) for p in loc[: depth + 1])
        return f'; a map key with dots is quoted: {section}."{".".join(key)}"=VALUE'
    return ""


# key=value secrets inside a rejected value (a JDBC URL, a JAAS line) are masked in messages.
_SECRET_IN_TEXT = re.compile(r"(?i)(password|pwd|secret|token|accountkey|sharedaccesskey)\s*=\s*[^;&'\"\s]*")
# A rejected value at a key like these is never shown at all.
_SECRET_KEY = re.compile(r"(?i)secret|password|jaas|connection_string|token|credential")


def _format_error(exc: ValidationError, data: Mapping[str, Any]) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        value: Any = data
        for part in err["loc"]:
            if isinstance(value, Mapping) and part in value:
                value = value[part]
            else:
                value = err.get("input")
                break
        if _SECRET_KEY.search(loc):
            value = "**********"
        shown = _SECRET_IN_TEXT.sub(r"\1=**********", repr(value))
        lines.append(f"{loc or '<root>'}: {err['msg']} (got {shown}){_hint(err)}")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def load_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> Config:
    """Read the YAML file (or the defaults), apply ``section.key=value`` overrides, validate."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise InvalidConfigError(f"config file {str(p)!r} does not exist")
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise InvalidConfigError(f"config file {str(p)!r} is not valid YAML: {exc}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise InvalidConfigError(f"config file {str(p)!r}: expected a mapping at the top, got {loaded!r}")
        data = loaded
    for text in overrides:
        key_path, value = parse_override(text)
        _apply_override(data, key_path, value)
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise InvalidConfigError(_format_error(exc, data)) from None
