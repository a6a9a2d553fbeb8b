"""Independent writes of one micro-batch, side by side.

Each Delta commit costs a fixed few hundred milliseconds of driver work (planning, the log write,
listing) whatever its size, while the executors wait; writes to different tables do not depend on
each other, so a batch's latency is its slowest write, not their sum. The jobs of each thread stay
in the calling query's scheduler pool (a thread-local property that ``inheritable_thread_target``
carries over).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from pyspark import inheritable_thread_target
from pyspark.sql import SparkSession

__all__ = ["run_side_by_side"]


def run_side_by_side(spark: SparkSession, steps: Sequence[Callable[[], None]]) -> None:
    """Run ``steps`` concurrently (one alone runs inline); the first failure is raised once all
    have ended, so no write is left running behind the error."""
    if len(steps) <= 1:
        for step in steps:
            step()
        return
    with ThreadPoolExecutor(len(steps)) as pool:
        futures = [pool.submit(inheritable_thread_target(spark)(step)) for step in steps]
        errors = [f.exception() for f in futures]
    for error in errors:
        if error is not None:
            raise error
