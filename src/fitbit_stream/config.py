"""Typed configuration: one frozen pydantic model tree, loaded from YAML plus ``--set`` overrides.

Secrets never live in the YAML: a secret setting names an environment variable (``*_env``) or a
Databricks secret scope, and is resolved into a ``SecretStr`` only when a connection is opened.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

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
    "Config",
    "KafkaConfig",
    "LandingConfig",
    "Layer",
    "Platform",
    "RulesConfig",
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

    @field_validator("bootstrap_servers")
    @classmethod
    def _servers(cls, v: str) -> str:
        for server in v.split(","):
            host, _, port = server.strip().rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"expected host:port[,host:port...], got {v!r}")
        return v

    @field_validator("options")
    @classmethod
    def _no_secret_options(cls, v: dict[str, str]) -> dict[str, str]:
        for key in v:
            if "jaas" in key.lower() or "password" in key.lower():
                raise ValueError(f"{key!r} carries a secret: set it through options_env instead")
        return v


class LandingConfig(_Model):
    """JSON-lines landing files (ADF / Kafka Connect) feeding the same bronze table as Kafka."""

    enabled: bool = False
    path: str = "data/landing"
    max_files_per_trigger: int | None = Field(default=None, ge=1)


class SqlConfig(_Model):
    """The SQL source: SQLite file locally, PostgreSQL in e2e tests, Azure SQL in production."""

    enabled: bool = True
    url: str = "jdbc:sqlite:data/source.db"
    user: str | None = None
    password_env: str | None = Field(default=None, description="name of the environment variable holding the password")
    registered_users_table: str = "registered_users"
    gym_logins_table: str = "gym_logins"
    poll_interval_seconds: float = Field(default=30.0, gt=0)

    @field_validator("url")
    @classmethod
    def _jdbc_url(cls, v: str) -> str:
        if not v.startswith("jdbc:"):
            raise ValueError(f"expected a JDBC URL starting with 'jdbc:', got {v!r}")
        if "password=" in v.lower():
            raise ValueError("the JDBC URL must not carry a password: use password_env")
        return v

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

    def password(self) -> SecretStr | None:
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
    trigger_interval_seconds: float = Field(default=10.0, gt=0)
    # Fixed for the life of a checkpoint: changing it breaks existing stateful checkpoints.
    shuffle_partitions: int = Field(default=4, ge=1)
    state_store: Literal["hdfs", "rocksdb"] = "rocksdb"


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
    # Where the local JVM artifacts were resolved (scripts/setup.sh); relative to the working dir.
    jars_dir: str = ".cache/jars"
    # Local platform state (Kafka broker logs and data).
    platform_dir: str = "data/platform"

    @model_validator(mode="after")
    def _one_source(self) -> Config:
        if not (self.kafka.enabled or self.landing.enabled or self.sql.enabled):
            raise ValueError("enable at least one source: kafka.enabled, landing.enabled or sql.enabled")
        return self


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``section.key=value`` into a key path and a YAML-parsed value."""
    key, sep, raw = text.partition("=")
    path = [part for part in key.strip().split(".") if part]
    if not sep or not path:
        raise InvalidConfigError(f"--set: expected section.key=value, got {text!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise InvalidConfigError(f"--set {key}: value {raw!r} is not valid YAML: {exc}") from None
    return path, value


def _apply_override(tree: dict[str, Any], path: list[str], value: Any) -> None:
    node = tree
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise InvalidConfigError(f"--set {'.'.join(path)}: {part!r} is not a section")
        node = child
    node[path[-1]] = value


# key=value secrets inside a rejected value (a JDBC URL, a JAAS line) are masked in messages.
_SECRET_IN_TEXT = re.compile(r"(?i)(password|pwd|secret|token|accountkey|sharedaccesskey)\s*=\s*[^;&'\"\s]*")


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
        if "secret" in loc.lower() or "password" in loc.lower() or "jaas" in loc.lower():
            value = "**********"
        shown = _SECRET_IN_TEXT.sub(r"\1=**********", repr(value))
        lines.append(f"{loc or '<root>'}: {err['msg']} (got {shown})")
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
