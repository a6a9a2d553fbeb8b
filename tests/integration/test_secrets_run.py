"""The canary run: the bronze job for real (landing files + SQLite over JDBC) with canary values
behind every secret reference of the config: the SQL password, the service principal's client secret
(set on the session as an ADLS OAuth setting) and the access token of the (fake) credential. It then
looks for the canaries in everything the run left behind: stdout/stderr (the JVM's too), log
records, the printed and dumped configuration, streaming progress (listener events and the ops
table ``_query_progress``), exceptions, and every file under the storage and checkpoint roots.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import traceback
from pathlib import Path

import pytest
from azure.core.exceptions import ClientAuthenticationError
from chispa import assert_df_equality
from pyspark.sql import SparkSession
from pyspark.sql.streaming.listener import (
    QueryIdleEvent,
    QueryProgressEvent,
    QueryStartedEvent,
    QueryTerminatedEvent,
    StreamingQueryListener,
)

from fitbit_stream import cli
from fitbit_stream.azure import STORAGE_SCOPE, AzureAuth, CredentialError
from fitbit_stream.config import Config, load_config
from fitbit_stream.io.tables import Tables
from fitbit_stream.jobs import run_job
from support.secrets import CANARY_SP, CANARY_SQL, CANARY_TOKEN, FakeCredential, leaks

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _not_on_databricks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATABRICKS_RUNTIME_VERSION", raising=False)


# --- the canary run --------------------------------------------------------------------------------


class ProgressCollector(StreamingQueryListener):
    def __init__(self) -> None:
        self.json: list[str] = []

    def onQueryStarted(self, event: QueryStartedEvent) -> None:
        pass

    def onQueryProgress(self, event: QueryProgressEvent) -> None:
        self.json.append(event.progress.json)

    def onQueryIdle(self, event: QueryIdleEvent) -> None:
        pass

    def onQueryTerminated(self, event: QueryTerminatedEvent) -> None:
        pass


def _world(tmp_path: Path) -> tuple[Path, list[str]]:
    db = tmp_path / "source.db"
    with sqlite3.connect(db) as conn:
        conn.execute(
            "CREATE TABLE registered_users "
            "(user_id BIGINT, device_id BIGINT, mac_address TEXT, registration_timestamp TIMESTAMP)"
        )
        conn.execute("CREATE TABLE gym_logins (mac_address TEXT, gym BIGINT, login TIMESTAMP, logout TIMESTAMP)")
        conn.execute("INSERT INTO registered_users VALUES (1, 101, 'aa:bb:cc:dd:ee:01', '2025-03-01 08:00:00')")
        conn.execute("INSERT INTO gym_logins VALUES ('aa:bb:cc:dd:ee:01', 1, '2025-03-03 10:00:00', NULL)")
    landing = tmp_path / "landing"
    landing.mkdir()
    (landing / "part-0.json").write_text(
        '{"key":"101","value":"{\\"device_id\\":101,\\"time\\":1740996000,\\"heartrate\\":null}",'
        '"topic":"bpm","partition":0,"offset":7,"timestamp":1740996000.5}\n'
        '{"key":null,"value":"not json","topic":"workout","partition":1,"offset":3,"timestamp":1740996001}\n'
    )
    # Only references in the file: the values live in the environment.
    config_file = tmp_path / "canary.yaml"
    config_file.write_text(
        "sql: {user: reader, password_env: FITBIT_CANARY_SQL_PASSWORD}\n"
        "azure:\n"
        "  auth: service_principal\n"
        "  tenant_id: 72f988bf-86f1-41af-91ab-2d7cd011db47\n"
        "  client_id: 5a1b2c3d-0000-4000-8000-00000000c11e\n"
        "  client_secret: {env: FITBIT_CANARY_SP_SECRET}\n"
        "  storage_accounts: [canarylake]\n"
    )
    overrides = [
        f"storage.root={tmp_path / 'lake'}",
        f"storage.checkpoint_root={tmp_path / 'checkpoints'}",
        f"jars_dir={ROOT / '.cache' / 'jars'}",
        "kafka.enabled=false",
        "landing.enabled=true",
        f"landing.path={landing}",
        f"sql.url=jdbc:sqlite:{db}",
        "streaming.shuffle_partitions=1",
    ]
    return config_file, overrides


def _files_holding_canaries(*roots: Path) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file():
                text = path.read_bytes().decode("latin-1")
                if leaks(text):
                    found[str(path)] = leaks(text)
    return found


def test_canary_secrets_never_leak_from_a_real_bronze_run(
    spark: SparkSession,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("FITBIT_CANARY_SQL_PASSWORD", CANARY_SQL)
    monkeypatch.setenv("FITBIT_CANARY_SP_SECRET", CANARY_SP)
    config_file, overrides = _world(tmp_path)
    argv = ["--config", str(config_file), *[a for o in overrides for a in ("--set", o)]]
    config: Config = load_config(config_file, overrides)
    credential = FakeCredential()
    auth = AzureAuth(config, credential=credential)
    adls_keys = list(auth.adls_spark_conf())

    collector = ProgressCollector()
    spark.streams.addListener(collector)
    try:
        code = run_job("bronze", [*argv, "--once"], spark=spark, auth=auth)
        # The session really carries the client secret (ABFS needs it) ...
        assert spark.conf.get("fs.azure.account.oauth2.client.secret.canarylake.dfs.core.windows.net") == CANARY_SP
    finally:
        spark.streams.removeListener(collector)
        for key in adls_keys:
            spark.conf.unset(key)
    assert code == 0

    tables = Tables(config)
    bronze = tables.read(spark, tables.ref("kafka_multiplex_bz")).select("key", "value", "topic", "partition", "offset")
    expected = spark.createDataFrame(
        [
            ("101", '{"device_id":101,"time":1740996000,"heartrate":null}', "bpm", 0, 7),
            (None, "not json", "workout", 1, 3),
        ],
        bronze.schema,
    )
    assert_df_equality(bronze, expected, ignore_row_order=True, ignore_nullable=True)
    users = tables.read(spark, tables.ref("registered_users_bz")).select("user_id", "device_id", "mac_address")
    assert [tuple(r) for r in users.collect()] == [(1, 101, "aa:bb:cc:dd:ee:01")]

    # ... and nothing else does: progress (listener events and the ops table), files, output, logs.
    assert not [j for j in collector.json if leaks(j)]
    # Every ops table row by row (the query progress and the checkpoint registry at least), not only
    # their compressed Parquet bytes; then every file, checkpoint files included.
    ops_tables = sorted(p.name for p in (tmp_path / "lake" / "ops").iterdir() if (p / "_delta_log").is_dir())
    assert {"_query_progress", "_checkpoints"} <= set(ops_tables)
    for name in ops_tables:
        rows = [
            json.dumps(r.asDict(), default=str) for r in tables.read(spark, tables.ref(name, layer="ops")).collect()
        ]
        assert name not in {"_query_progress", "_checkpoints"} or any("bronze_landing_multiplex" in r for r in rows)
        assert not [r for r in rows if leaks(r)], name
    checkpoint = tmp_path / "checkpoints" / "bronze_landing_multiplex"
    assert (checkpoint / "metadata").is_file()
    assert (checkpoint / "commits" / "0").is_file()
    assert _files_holding_canaries(tmp_path / "lake", tmp_path / "checkpoints") == {}

    assert cli.main(["config", *argv]) == 0
    dumps = config.model_dump_json() + repr(config) + str(config.model_dump()) + repr(auth)
    dumps += repr(auth.adls_spark_conf()) + repr(auth.jdbc_options()) + str(auth.check())
    assert not leaks(dumps)

    # An SDK error that echoes secrets this process holds: the error carries neither further.
    credential.error = ClientAuthenticationError(f"AADSTS7000215: bad secret {CANARY_SP}, old token {CANARY_TOKEN}")
    with pytest.raises(CredentialError) as info:
        auth.token(STORAGE_SCOPE)
    assert "bad secret **********, old token **********" in str(info.value)
    assert not leaks(str(info.value) + repr(info.value) + "".join(traceback.format_exception(info.value)))
    # A refused credential stops the job before any query starts, and says why without the secret.
    refused = FakeCredential(error=ClientAuthenticationError(f"AADSTS7000215: invalid client secret {CANARY_SP}"))
    assert run_job("bronze", [*argv, "--once"], spark=spark, auth=AzureAuth(config, credential=refused)) == 2

    out, err = capfd.readouterr()
    assert "cannot get a token for https://storage.azure.com/.default" in err
    assert '"password_env": "FITBIT_CANARY_SQL_PASSWORD"' in out
    assert not leaks(out)
    assert not leaks(err)
    assert not leaks(caplog.text)
    assert not [r for r in caplog.records if leaks(r.getMessage())]
