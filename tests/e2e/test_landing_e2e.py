"""The landing-files twin of test_bronze_e2e: generator -> JSON-lines landing files -> `run --once` ->
``kafka_multiplex_bz`` holds every landed record exactly once (CONTRACT.md §1.3, §2.1, §3.5).

The oracle is the landing directory itself, read line by line with Python's json module: every line
of every visible file (hidden ``.``/``_`` names are a writer's work in progress or its state) is one
record, and its timestamp is converted from the line's own decimal text, never through a float.
The generator's delivery reports cross-check that oracle, so an empty or misread directory cannot
make the test pass.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from chispa import assert_df_equality
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.types import (
    DateType,
    IntegerType,
    LongType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

from fitbit_stream.config import Config, load_config
from fitbit_stream.generator import (
    Delivery,
    GeneratorConfig,
    KafkaEmission,
    LandingSink,
    build_world,
    emit,
)
from fitbit_stream.io.bronze import LANDING_BRONZE_QUERY
from fitbit_stream.io.tables import Tables
from fitbit_stream.pipeline import Pipeline, RunReport

pytestmark = pytest.mark.e2e

START = datetime(2025, 3, 3, tzinfo=UTC)
MID = START + timedelta(hours=11, minutes=45)  # seed 2: 1045 / 901 records, a workout spans it
EPOCH = datetime(1970, 1, 1)  # naive UTC: what Spark hands back with TZ=UTC (tests/conftest.py)

# Hand-written like an ADF / Kafka Connect file, in a nested folder with a non-.jsonl name.
# Each line must land untouched: a value that is not JSON, an empty value, a NULL key, escapes and
# non-ASCII text, six fractional digits, a microsecond before midnight on 31 December (a FLOAT or a
# rounding slip moves it into the next day, year and week) and old "late" records (2023) among 2025.
EDGE_LINES = (
    '{"key":"7","value":"not json {","topic":"workout","partition":0,"offset":900000,"timestamp":1700000000.123456}',
    '{"key":null,"value":"{\\"device_id\\":1,\\"time\\":1704067199.999999,\\"heartrate\\":null}",'
    '"topic":"bpm","partition":2,"offset":900000,"timestamp":1704067199.999999}',
    '{"key":"8","value":"{\\"first_name\\":\\"Zoë\\",\\"note\\":\\"tab\\\\there \\\\\\"q\\\\\\"\\"}",'
    '"topic":"user_info","partition":1,"offset":900000,"timestamp":1704067200}',
    '{"key":"9","value":"","topic":"user_info","partition":1,"offset":900001,"timestamp":1700000000.000001}',
)

BRONZE_COLUMNS = ["key", "value", "topic", "partition", "offset", "timestamp", "date", "week_part"]
EXPECTED_SCHEMA = StructType(
    [
        StructField("key", StringType()),
        StructField("value", StringType()),
        StructField("topic", StringType()),
        StructField("partition", IntegerType()),
        StructField("offset", LongType()),
        StructField("timestamp", TimestampType()),
        StructField("date", DateType()),
        StructField("week_part", StringType()),
    ]
)

Record = tuple[str | None, str | None, str, int, int, Decimal]


def _visible(path: Path, root: Path) -> bool:
    # Hadoop's listing skips every file or folder whose name starts with "." or "_".
    return path.is_file() and not any(part.startswith((".", "_")) for part in path.relative_to(root).parts)


def _landed(root: Path) -> list[Record]:
    """Every line of every visible landing file; numbers kept as their exact decimal text."""
    records: list[Record] = []
    for path in sorted(p for p in root.rglob("*") if _visible(p, root)):
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            r = json.loads(line, parse_float=Decimal, parse_int=Decimal)
            coordinates = (r["topic"], int(r["partition"]), int(r["offset"]))
            records.append((r["key"], r["value"], *coordinates, r["timestamp"]))
    return records


def _instant(seconds: Decimal) -> datetime:
    micros = seconds.scaleb(6)
    assert micros == micros.to_integral_value(), f"{seconds} has sub-microsecond digits"
    return EPOCH + timedelta(microseconds=int(micros))


def _week_part(day: date) -> str:
    # CONTRACT.md §3.5: week 1 holds 1 January, weeks start on Sunday.
    jan1_dow = date(day.year, 1, 1).isoweekday() % 7 + 1  # 1 = Sunday ... 7 = Saturday
    week = (day.timetuple().tm_yday + jan1_dow - 2) // 7 + 1
    return f"{day.year}-{week}"


def _expected(spark: SparkSession, records: list[Record]) -> DataFrame:
    rows = []
    for key, value, topic, partition, offset, seconds in records:
        ts = _instant(seconds)
        rows.append((key, value, topic, partition, offset, ts, ts.date(), _week_part(ts.date())))
    return spark.createDataFrame(rows, EXPECTED_SCHEMA)


def _sent(emissions: list[KafkaEmission], deliveries: list[Delivery]) -> list[tuple[object, ...]]:
    """(key, value, topic, partition, offset, timestamp ms) per the generator's delivery reports."""
    return [
        (e.key, e.value, d.topic, d.partition, d.offset, d.timestamp_ms)
        for e, d in zip(emissions, deliveries, strict=True)
    ]


def _as_sent(records: list[Record]) -> list[tuple[object, ...]]:
    return [(k, v, t, p, o, int(s.scaleb(3))) for k, v, t, p, o, s in records]


def _landed_rows(report: RunReport) -> int:
    """Input rows of this run's landing -> bronze query (the other stages read bronze, not files)."""
    (stage,) = [s for s in report.stages if s.name == LANDING_BRONZE_QUERY]
    return stage.rows


def test_landing_files_land_in_bronze_exactly_once(spark: SparkSession, spark_config: Config, tmp_path: Path) -> None:
    landing = tmp_path / "landing"
    config = load_config(
        None,
        [
            f"storage.root={tmp_path / 'lake'}",
            f"storage.checkpoint_root={tmp_path / 'checkpoints'}",
            f"jars_dir={spark_config.jars_dir}",
            "kafka.enabled=false",
            "sql.enabled=false",
            "landing.enabled=true",
            f"landing.path={landing}",
        ],
    )
    world = build_world(GeneratorConfig(seed=2, users=2, days=0.5, start=START))
    mid_us = int((MID - datetime(1970, 1, 1, tzinfo=UTC)) / timedelta(microseconds=1))
    first = [e for e in world.emissions(until_us=mid_us) if isinstance(e, KafkaEmission)]
    second = [e for e in world.emissions(since_us=mid_us) if isinstance(e, KafkaEmission)]
    assert first
    assert second
    pipeline = Pipeline(spark, config)
    tables = Tables(config)

    def bronze() -> DataFrame:
        return tables.read(spark, tables.ref("kafka_multiplex_bz"))

    def assert_bronze_is_landed() -> list[Record]:
        records = _landed(landing)
        assert_df_equality(
            bronze().select(*BRONZE_COLUMNS),
            _expected(spark, records),
            ignore_row_order=True,
            ignore_nullable=True,
        )
        return records

    # slice 1 through the generator's sink, plus the hand-written file
    result = emit(world, [LandingSink(landing, partitions=3, records_per_file=250)], until=MID)
    delivered = _sent(first, result.deliveries)
    edge_file = landing / "adf" / "2023" / "12" / "31" / "edge-lines.json"
    edge_file.parent.mkdir(parents=True)
    edge_file.write_text("\n".join(EDGE_LINES) + "\n", encoding="utf-8")
    edge = _landed(edge_file.parent)
    assert len(edge) == len(EDGE_LINES)

    report = pipeline.run_once(layers="bronze")
    records = assert_bronze_is_landed()
    assert sorted(_as_sent(records), key=repr) == sorted(delivered + _as_sent(edge), key=repr)
    assert _landed_rows(report) == len(records)

    # slice 2 while the writer is still busy: its open file is hidden and must not be read yet
    sink = LandingSink(landing, partitions=3, records_per_file=250)
    for emission in second:
        sink.write(emission)
    in_progress = [p for p in landing.iterdir() if p.name.startswith(".") and p.name.endswith(".inprogress")]
    assert len(in_progress) == 1
    report = pipeline.run_once(layers="bronze")
    partial = assert_bronze_is_landed()
    assert len(records) < len(partial) < len(records) + len(second)
    assert _landed_rows(report) == len(partial) - len(records)

    # the writer renames its last file: the next run picks it up, and only it
    delivered += _sent(second, sink.finish())
    assert not any(p.name.endswith(".inprogress") for p in landing.iterdir())
    report = pipeline.run_once(layers="bronze")
    records = assert_bronze_is_landed()
    assert sorted(_as_sent(records), key=repr) == sorted(delivered + _as_sent(edge), key=repr)
    assert _landed_rows(report) == len(records) - len(partial)

    # nothing new: nothing added
    report = pipeline.run_once(layers="bronze")
    assert _landed_rows(report) == 0
    assert_bronze_is_landed()

    # the edge lines, literally: calendar from the record timestamp, US weeks, exact microseconds
    edge_rows = bronze().where("offset = 900000 or offset = 900001").select(*BRONZE_COLUMNS)
    assert_df_equality(
        edge_rows,
        spark.createDataFrame(
            [
                (
                    "7",
                    "not json {",
                    "workout",
                    0,
                    900000,
                    datetime(2023, 11, 14, 22, 13, 20, 123456),
                    date(2023, 11, 14),
                    "2023-46",
                ),
                (
                    None,
                    '{"device_id":1,"time":1704067199.999999,"heartrate":null}',
                    "bpm",
                    2,
                    900000,
                    datetime(2023, 12, 31, 23, 59, 59, 999999),
                    date(2023, 12, 31),
                    "2023-53",
                ),
                (
                    "8",
                    '{"first_name":"Zoë","note":"tab\\there \\"q\\""}',
                    "user_info",
                    1,
                    900000,
                    datetime(2024, 1, 1),
                    date(2024, 1, 1),
                    "2024-1",
                ),
                (
                    "9",
                    "",
                    "user_info",
                    1,
                    900001,
                    datetime(2023, 11, 14, 22, 13, 20, 1),
                    date(2023, 11, 14),
                    "2023-46",
                ),
            ],
            EXPECTED_SCHEMA,
        ),
        ignore_row_order=True,
        ignore_nullable=True,
    )
    # the generated records all fall on Monday 3 March 2025: US week 10
    calendar = bronze().where("offset < 900000").select("date", "week_part").distinct().collect()
    assert {(r["date"], r["week_part"]) for r in calendar} == {(date(2025, 3, 3), "2025-10")}
    assert bronze().where("load_time is null").count() == 0
