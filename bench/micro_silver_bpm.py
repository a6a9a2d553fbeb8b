"""Micro-profile of silver_bpm's steps, each timed alone (best of 3), on a real bronze table.

Usage: keep a bench run's tables (``fitbit-stream bench --phases drain --keep``), then

    .venv/bin/python bench/micro_silver_bpm.py data/bench/<run>/drain/lake/bronze/kafka_multiplex_bz

It works in its own scratch directory (/tmp/fitbit-bench-micro) and prints one line per step, with
the load average, next to the same steps written the notebook way. Not part of the test suite.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Callable
from datetime import datetime, timedelta

from delta.tables import DeltaTable
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import DoubleType, LongType, StructField, StructType

from fitbit_stream.config import load_config
from fitbit_stream.io.merge import _range_prune, insert_if_absent
from fitbit_stream.io.silver import QUARANTINE_KEY, LateState, TopicWriter, _stats
from fitbit_stream.io.tables import Tables
from fitbit_stream.session import get_spark
from fitbit_stream.transforms.bpm import HEART_RATE_KEY, to_heart_rate
from fitbit_stream.transforms.parse import parse_payload
from fitbit_stream.transforms.quality import (
    accepted,
    batch_max_event_time,
    rejected,
    to_quarantine,
    with_future_flag,
    with_late_flag,
)

os.environ["TZ"] = "UTC"
time.tzset()
SCRATCH = "/tmp/fitbit-bench-micro"
NOTEBOOK_SCHEMA = StructType(
    [
        StructField("device_id", LongType()),
        StructField("time", DoubleType()),
        StructField("heartrate", DoubleType()),
    ]
)


def best_of(label: str, step: Callable[[], object], reps: int = 3) -> None:
    times = []
    for _ in range(reps):
        started = time.monotonic()
        step()
        times.append(time.monotonic() - started)
    shown = [round(t, 2) for t in times]
    print(f"{label:<62} best {min(times):6.2f}s  all {shown}  load {os.getloadavg()[0]:.1f}", flush=True)


def main(bronze: str) -> None:
    shutil.rmtree(SCRATCH, ignore_errors=True)
    config = load_config(
        None,
        [
            f"storage.root={SCRATCH}/lake",
            f"storage.checkpoint_root={SCRATCH}/checkpoints",
            f"jars_dir={os.path.abspath('.cache/jars')}",
            "spark_conf={'spark.driver.memory': '2g'}",
        ],
    )
    spark = get_spark(config, master="local[2]")
    spark.conf.set("spark.databricks.delta.properties.defaults.enableChangeDataFeed", "true")
    tables = Tables(config)
    source = spark.read.format("delta").load(bronze).where("topic = 'bpm'").localCheckpoint(eager=True)
    print("rows", source.count(), flush=True)

    def noop(df: DataFrame) -> None:
        df.write.format("noop").mode("overwrite").save()

    def notebook_rows() -> DataFrame:
        return (
            source.select(F.from_json("value", NOTEBOOK_SCHEMA).alias("r"))
            .select("r.device_id", F.col("r.time").cast("timestamp").alias("time"), "r.heartrate")
            .dropDuplicates(["device_id", "time"])
            .withColumn("valid", F.coalesce(F.col("heartrate").between(25, 250), F.lit(False)))
        )

    def checked() -> DataFrame:
        return (
            parse_payload(source, kind="bpm")
            .transform(with_future_flag, skew=timedelta(minutes=10))
            .transform(with_late_flag, threshold=datetime(2020, 1, 1))
        )

    best_of("read only (noop)", lambda: noop(source))
    best_of("notebook parse: from_json + cast through double", lambda: noop(notebook_rows()))
    variant = source.select(F.try_parse_json("value").alias("v"))
    best_of(
        "try_parse_json + 3 try_variant_get (no checks)",
        lambda: noop(
            variant.select(
                F.try_variant_get("v", "$.device_id", "bigint"),
                F.try_variant_get("v", "$.time", "decimal(38,9)"),
                F.try_variant_get("v", "$.heartrate", "double"),
            )
        ),
    )
    best_of("library parse: parse_payload(bpm)", lambda: noop(parse_payload(source, kind="bpm")))
    best_of("library parse + future + late flags", lambda: noop(checked()))
    best_of(
        "library: + to_heart_rate (first-ingested window)",
        lambda: noop(to_heart_rate(accepted(checked()), low=25, high=250)),
    )
    best_of(
        "library: + dropDuplicates again (as insert_if_absent does)",
        lambda: noop(to_heart_rate(accepted(checked()), low=25, high=250).dropDuplicates(list(HEART_RATE_KEY))),
    )
    cached = checked().persist()
    cached.count()
    best_of(
        "_range_prune (min/max of time, window evaluated again)",
        lambda: _range_prune(to_heart_rate(accepted(cached), low=25, high=250), "time"),
    )
    best_of("_stats: counts, max and bounds in one pass (persisted batch)", lambda: _stats(cached))
    stats = _stats(cached)
    best_of(
        "_range_prune skipped: bounds from _stats, unique=True (plan only)",
        lambda: _range_prune(to_heart_rate(accepted(cached), low=25, high=250), "time", stats.bounds),
    )
    late = LateState(tables, spark)
    best_of("LateState.previous_max (ops table read)", lambda: LateState(tables, spark).previous_max(spark, "q", 10**9))
    best_of("LateState.previous_max (next batch, remembered)", lambda: late.previous_max(spark, "q", 0))
    batch_ids = iter(range(0, 10**6))
    maximum = iter(range(int(stats.max_micros or 0), 10**18))

    def record() -> None:
        late.FOLD_AFTER = 10**9
        late.record(spark, "q", next(batch_ids), next(maximum))

    best_of("LateState.record (blind append of one row)", record)

    def fold() -> None:
        late.FOLD_AFTER = 1
        late.record(spark, "q", next(batch_ids), next(maximum))

    best_of("LateState.record (fold: replaceWhere of the query's rows)", fold)
    best_of(
        "old LateState.record (one-row MERGE, insert_if_absent)",
        lambda: insert_if_absent(
            spark,
            tables,
            late.ref,
            batch_max_event_time(cached).select(
                F.lit("old").alias("query"), F.lit(next(batch_ids)).cast("long").alias("batch_id"), "max_event_time"
            ),
            keys=["query", "batch_id"],
        ),
    )
    quarantine = tables.ensure(spark, "quarantine")
    best_of(
        "quarantine insert_if_absent, the batch's rejected rows",
        lambda: insert_if_absent(
            spark,
            tables,
            quarantine,
            to_quarantine(rejected(cached), quarantined_at=F.current_timestamp()),
            keys=QUARANTINE_KEY,
        ),
    )
    best_of(
        "quarantine insert_if_absent, EMPTY source",
        lambda: insert_if_absent(
            spark,
            tables,
            quarantine,
            to_quarantine(rejected(cached).limit(0), quarantined_at=F.current_timestamp()),
            keys=QUARANTINE_KEY,
        ),
    )
    best_of("rejected(...).isEmpty() on the persisted batch", lambda: rejected(cached).isEmpty())

    def fresh_heart_rate() -> str:
        shutil.rmtree(f"{SCRATCH}/lake/silver/heart_rate", ignore_errors=True)
        return str(tables.ensure(spark, "heart_rate").path)

    def library_merge() -> None:
        fresh_heart_rate()
        rows = to_heart_rate(accepted(cached), low=25, high=250)
        insert_if_absent(spark, tables, tables.ref("heart_rate"), rows, keys=HEART_RATE_KEY, prune_on="time")

    def library_merge_now() -> None:
        fresh_heart_rate()
        rows = to_heart_rate(accepted(cached), low=25, high=250)
        insert_if_absent(
            spark,
            tables,
            tables.ref("heart_rate"),
            rows,
            keys=HEART_RATE_KEY,
            prune_on="time",
            prune_bounds=stats.bounds,
            unique=True,
        )

    def notebook_merge() -> None:
        path = fresh_heart_rate()
        (
            DeltaTable.forPath(spark, path)
            .alias("t")
            .merge(notebook_rows().alias("s"), "t.device_id = s.device_id AND t.time = s.time")
            .whenNotMatchedInsertAll()
            .execute()
        )

    best_of("library heart_rate insert (parsed batch cached), empty table, before", library_merge)
    best_of("library heart_rate insert, bounds known + unique (as TopicWriter now)", library_merge_now)

    def library_stage() -> None:
        """silver_bpm's whole batch as TopicWriter runs it now, on an empty heart_rate table."""
        fresh_heart_rate()
        writer = TopicWriter(spark, config, "bpm", f"micro_{time.monotonic_ns()}")
        writer(source, 0)

    best_of("library stage: TopicWriter(bpm) on the batch, empty table", library_stage)
    best_of("notebook parse + dedup + MERGE, empty table", notebook_merge)
    spark.stop()


if __name__ == "__main__":
    main(sys.argv[1])
