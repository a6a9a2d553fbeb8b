"""Payload parsing and validation (CONTRACT.md §1.1, §3.6): one table of literal cases per kind."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import pytest
from chispa import assert_df_equality
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import LongType, StringType, StructField, StructType

from fitbit_stream.errors import InvalidConfigError
from fitbit_stream.schemas import KAFKA_MULTIPLEX_BZ
from fitbit_stream.transforms.parse import PAYLOAD_COLUMNS, parse_payload

KAFKA_TIME = datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)
LOAD_TIME = datetime(2023, 11, 14, 22, 15, tzinfo=UTC)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def bronze(spark: SparkSession, topic: str, values: list[str | None]) -> DataFrame:
    """Bronze rows whose offset is the value's index in ``values``."""
    rows = [
        (f"k{i}", v, topic, 0, i, KAFKA_TIME, KAFKA_TIME.date(), "2023-46", LOAD_TIME) for i, v in enumerate(values)
    ]
    return spark.createDataFrame(rows, KAFKA_MULTIPLEX_BZ)


def expected(spark: SparkSession, kind: str, rows: list[tuple[Any, ...]]) -> DataFrame:
    schema = StructType(
        [
            StructField("offset", LongType()),
            *PAYLOAD_COLUMNS[kind].fields,
            StructField("reason", StringType()),
            StructField("detail", StringType()),
        ]
    )
    return spark.createDataFrame(rows, schema)


def check(spark: SparkSession, kind: str, cases: list[tuple[str | None, tuple[Any, ...]]]) -> None:
    """Each case is (value, expected typed columns + reason + detail); the offset ties them."""
    actual = parse_payload(bronze(spark, kind, [v for v, _ in cases]), kind=kind)
    cols = ["offset", *(f.name for f in PAYLOAD_COLUMNS[kind].fields), "reason", "detail"]
    want = expected(spark, kind, [(i, *row) for i, (_, row) in enumerate(cases)])
    assert_df_equality(actual.select(*cols), want, ignore_row_order=True, ignore_nullable=True)


SV = "schema_violation"
MJ = "malformed_json"
BPM_OK = '{"device_id":1,"time":1700000000.123456,"heartrate":80}'

BPM_CASES: list[tuple[str | None, tuple[Any, ...]]] = [
    # Exact decimal epoch seconds: the microseconds survive.
    (BPM_OK, (1, utc(2023, 11, 14, 22, 13, 20, 123456), 80.0, None, None)),
    # The same message again (a duplicate): parsed the same; dedup is the table's business.
    (BPM_OK, (1, utc(2023, 11, 14, 22, 13, 20, 123456), 80.0, None, None)),
    # A 2023 instant a FLOAT would round to a 128-second step.
    (
        '{"device_id":2,"time":1690000037.25,"heartrate":72.5}',
        (2, utc(2023, 7, 22, 4, 27, 17, 250000), 72.5, None, None),
    ),
    ('{"device_id":2,"time":-1.5,"heartrate":null}', (2, utc(1969, 12, 31, 23, 59, 58, 500000), None, None, None)),
    ('{"device_id":3,"time":1.7e9}', (3, utc(2023, 11, 14, 22, 13, 20), None, None, None)),
    (
        '{"device_id":9223372036854775807,"time":0,"x":{"y":[1]}}',
        (9223372036854775807, utc(1970, 1, 1), None, None, None),
    ),
    (
        '{"device_id":4,"time":1,"heartrate":"80"}',
        (4, utc(1970, 1, 1, 0, 0, 1), None, SV, "heartrate: expected number or null, got string"),
    ),
    (
        '{"device_id":4,"time":1,"heartrate":1e400}',
        (4, utc(1970, 1, 1, 0, 0, 1), None, SV, "heartrate: number out of range"),
    ),
    (
        '{"device_id":"4","time":1}',
        (None, utc(1970, 1, 1, 0, 0, 1), None, SV, "device_id: expected integer, got string"),
    ),
    (
        '{"device_id":4.0,"time":1}',
        (None, utc(1970, 1, 1, 0, 0, 1), None, SV, "device_id: expected integer, got decimal"),
    ),
    (
        '{"device_id":4e0,"time":1}',
        (None, utc(1970, 1, 1, 0, 0, 1), None, SV, "device_id: expected integer, got float"),
    ),
    (
        '{"device_id":9223372036854775808,"time":1}',
        (None, utc(1970, 1, 1, 0, 0, 1), None, SV, "device_id: integer out of range for BIGINT"),
    ),
    ('{"device_id":null,"time":1}', (None, utc(1970, 1, 1, 0, 0, 1), None, SV, "device_id: null")),
    ('{"device_id":5}', (5, None, None, SV, "time: missing")),
    ('{"device_id":5,"time":"1700000000"}', (5, None, None, SV, "time: expected epoch seconds (a number), got string")),
    ('{"device_id":5,"time":1e12}', (5, None, None, SV, "time: epoch seconds out of range (years 1-9999)")),
    (
        '{"device_id":true,"time":[1]}',
        (
            None,
            None,
            None,
            SV,
            "device_id: expected integer, got boolean; time: expected epoch seconds (a number), got array",
        ),
    ),
    ("{}", (None, None, None, SV, "device_id: missing; time: missing")),
    (None, (None, None, None, MJ, "value: NULL")),
    ("not json", (None, None, None, MJ, "value: not valid JSON")),
    ('{"device_id":1,"device_id":2,"time":1}', (None, None, None, MJ, "value: not valid JSON")),
    ('{"device_id":1,"time":1} {', (None, None, None, MJ, "value: not valid JSON (text after the object)")),
    ("[]", (None, None, None, MJ, "value: expected a JSON object, got array")),
    ('"x"', (None, None, None, MJ, "value: expected a JSON object, got string")),
    ("1", (None, None, None, MJ, "value: expected a JSON object, got integer")),
    ("null", (None, None, None, MJ, "value: expected a JSON object, got null")),
]


def test_parse_bpm_cases(spark: SparkSession) -> None:
    check(spark, "bpm", BPM_CASES)


WORKOUT_CASES: list[tuple[str | None, tuple[Any, ...]]] = [
    (
        '{"user_id":1,"workout_id":2,"session_id":3,"timestamp":1700000000.5,"action":"start"}',
        (1, 2, 3, utc(2023, 11, 14, 22, 13, 20, 500000), "start", None, None),
    ),
    (
        '{"user_id":1,"workout_id":2147483647,"session_id":-2147483648,"timestamp":1700003600,"action":"stop"}',
        (1, 2147483647, -2147483648, utc(2023, 11, 14, 23, 13, 20), "stop", None, None),
    ),
    (
        '{"user_id":1,"workout_id":2147483648,"session_id":1.5,"timestamp":1,"action":"Start"}',
        (
            1,
            None,
            None,
            utc(1970, 1, 1, 0, 0, 1),
            None,
            SV,
            "workout_id: integer out of range for INT; session_id: expected integer, got decimal; "
            'action: expected one of start/stop, got "Start"',
        ),
    ),
    (
        '{"user_id":null,"workout_id":"2","session_id":3,"timestamp":1,"action":1}',
        (
            None,
            None,
            3,
            utc(1970, 1, 1, 0, 0, 1),
            None,
            SV,
            "user_id: null; workout_id: expected integer, got string; action: expected one of start/stop, got integer",
        ),
    ),
    (
        '{"user_id":1,"workout_id":2,"session_id":3,"timestamp":1}',
        (1, 2, 3, utc(1970, 1, 1, 0, 0, 1), None, SV, "action: missing"),
    ),
    (None, (None, None, None, None, None, MJ, "value: NULL")),
]


def test_parse_workout_cases(spark: SparkSession) -> None:
    check(spark, "workout", WORKOUT_CASES)


def _user(extra: str, update_type: str = "update") -> str:
    return '{"user_id":7,"update_type":"' + update_type + '","timestamp":1672531199.999999' + extra + "}"


T_USER = utc(2022, 12, 31, 23, 59, 59, 999999)
NO_PROFILE = (None,) * 9
FULL = (
    ',"dob":"02/29/2000","sex":"M","gender":"F","first_name":"Ann","last_name":"Lee",'
    '"address":{"street_address":"1 Main St","city":"Springfield","state":"IL","zip":123}'
)
PROFILE = (date(2000, 2, 29), "M", "F", "Ann", "Lee", "1 Main St", "Springfield", "IL", "00123")

USER_CASES: list[tuple[str | None, tuple[Any, ...]]] = [
    (_user(FULL, "new"), (7, "new", T_USER, *PROFILE, None, None)),
    (_user(FULL, "new"), (7, "new", T_USER, *PROFILE, None, None)),  # duplicate message
    (
        _user(',"address":{"zip":"01234","city":null}'),
        (7, "update", T_USER, None, None, None, None, None, None, None, None, "01234", None, None),
    ),
    (_user(""), (7, "update", T_USER, *NO_PROFILE, None, None)),
    (_user("", "delete"), (7, "delete", T_USER, *NO_PROFILE, None, None)),
    # A delete's profile fields are ignored, even broken ones.
    (_user(',"dob":"bad","sex":"x","address":"nowhere"', "delete"), (7, "delete", T_USER, *NO_PROFILE, None, None)),
    (
        _user("", "upsert"),
        (7, None, T_USER, *NO_PROFILE, SV, 'update_type: expected one of new/update/delete, got "upsert"'),
    ),
    (
        _user("", "u" * 60),
        (7, None, T_USER, *NO_PROFILE, SV, 'update_type: expected one of new/update/delete, got "' + "u" * 36 + "..."),
    ),
    ('{"user_id":7,"timestamp":1}', (7, None, utc(1970, 1, 1, 0, 0, 1), *NO_PROFILE, SV, "update_type: missing")),
    (
        _user(',"dob":"1990-01-02","sex":"m","gender":1'),
        (
            7,
            "update",
            T_USER,
            *NO_PROFILE,
            SV,
            'dob: expected a MM/dd/yyyy date, got "1990-01-02"; sex: expected one of M/F, got "m"; '
            "gender: expected one of M/F, got integer",
        ),
    ),
    (
        _user(',"dob":"02/30/2000"'),
        (7, "update", T_USER, *NO_PROFILE, SV, 'dob: expected a MM/dd/yyyy date, got "02/30/2000"'),
    ),
    (
        _user(',"dob":"1/2/2000"'),
        (7, "update", T_USER, *NO_PROFILE, SV, 'dob: expected a MM/dd/yyyy date, got "1/2/2000"'),
    ),
    (
        _user(',"dob":19900102'),
        (7, "update", T_USER, *NO_PROFILE, SV, "dob: expected a MM/dd/yyyy date string, got integer"),
    ),
    (
        _user(',"first_name":5,"address":"x"'),
        (
            7,
            "update",
            T_USER,
            *NO_PROFILE,
            SV,
            "first_name: expected string, got integer; address: expected object, got string",
        ),
    ),
    (
        _user(',"address":{"zip":"123456"}'),
        (7, "update", T_USER, *NO_PROFILE, SV, 'zip: expected 1-5 digits, got "123456"'),
    ),
    (
        _user(',"address":{"zip":"12a4"}'),
        (7, "update", T_USER, *NO_PROFILE, SV, 'zip: expected 1-5 digits, got "12a4"'),
    ),
    (
        _user(',"address":{"zip":123456}'),
        (7, "update", T_USER, *NO_PROFILE, SV, "zip: expected 1-5 digits, got 123456"),
    ),
    (_user(',"address":{"zip":-1}'), (7, "update", T_USER, *NO_PROFILE, SV, "zip: expected 1-5 digits, got -1")),
    (
        _user(',"address":{"zip":12.5}'),
        (7, "update", T_USER, *NO_PROFILE, SV, "zip: expected 1-5 digits (integer or string), got decimal"),
    ),
    (
        '{"user_id":"7","update_type":"new"}',
        (None, "new", None, *NO_PROFILE, SV, "user_id: expected integer, got string; timestamp: missing"),
    ),
    ("[1]", (None, None, None, *NO_PROFILE, MJ, "value: expected a JSON object, got array")),
    (None, (None, None, None, *NO_PROFILE, MJ, "value: NULL")),
]


def test_parse_user_info_cases(spark: SparkSession) -> None:
    check(spark, "user_info", USER_CASES)


def test_bronze_columns_are_kept_and_typed_columns_follow(spark: SparkSession) -> None:
    df = bronze(spark, "bpm", [BPM_OK, None])
    actual = parse_payload(df, kind="bpm")
    assert actual.schema.fieldNames() == [
        *KAFKA_MULTIPLEX_BZ.fieldNames(),
        "device_id",
        "event_time",
        "heartrate",
        "reason",
        "detail",
    ]
    assert_df_equality(actual.select(*KAFKA_MULTIPLEX_BZ.fieldNames()), df, ignore_row_order=True, ignore_nullable=True)
    for kind, schema in PAYLOAD_COLUMNS.items():
        typed = parse_payload(bronze(spark, kind, []), kind=kind).select(*schema.fieldNames())
        assert [(f.name, f.dataType) for f in typed.schema.fields] == [(f.name, f.dataType) for f in schema.fields]


def test_parse_is_one_pass_without_joins_or_udfs(spark: SparkSession, capsys: pytest.CaptureFixture[str]) -> None:
    parsed = parse_payload(bronze(spark, "user_info", [_user(FULL)]), kind="user_info")
    parsed.where(F.col("reason").isNull()).explain(mode="extended")
    plan = capsys.readouterr().out.split("== Physical Plan ==")[1]
    for operator in ("Join", "Exchange", "PythonUDF", "BatchEvalPython", "ArrowEvalPython"):
        assert operator not in plan
    assert plan.count("parseJson") == 1


def test_unknown_kind_is_refused(spark: SparkSession) -> None:
    with pytest.raises(InvalidConfigError, match="payload kind"):
        parse_payload(bronze(spark, "x", []), kind="gym")


def test_a_value_that_is_not_utf8_is_malformed_even_inside_a_json_string(spark: SparkSession) -> None:
    # Kafka hands bytes; bronze keeps them as a string without checking (CONTRACT §1.1: UTF-8 JSON).
    values = [
        b'{"device_id":7,"time":1,"n":"\xff\xfe"}',  # valid JSON syntax, invalid bytes inside a string
        b"\xc3\x28",  # not UTF-8, not JSON
        '{"device_id":7,"time":1,"n":"caf\u00e9"}'.encode(),  # valid UTF-8, kept
        b'{"device_id":7,"time":1,"n":"\xff\xfe"}',  # the same bad record twice
    ]
    base = bronze(spark, "bpm", ["x"] * len(values))
    raw = spark.createDataFrame([(i, v) for i, v in enumerate(values)], "offset long, raw binary")
    df = base.drop("value").join(raw, "offset").withColumn("value", F.col("raw").cast("string")).drop("raw")
    actual = parse_payload(df, kind="bpm").select("offset", "device_id", "reason", "detail")
    want = spark.createDataFrame(
        [
            (0, None, MJ, "value: not valid UTF-8"),
            (1, None, MJ, "value: not valid UTF-8"),
            (2, 7, None, None),
            (3, None, MJ, "value: not valid UTF-8"),
        ],
        "offset long, device_id long, reason string, detail string",
    )
    assert_df_equality(actual, want, ignore_row_order=True, ignore_nullable=True)
