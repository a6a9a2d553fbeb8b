"""Independent writes of one micro-batch, side by side.

Each Delta commit costs a fixed few hundred milliseconds of driver work (planning, the log write,
listing) whatever its size, while the executors wait; writes to different tables do not depend on
each other, so a batch's latency is its slowest write, not their sum. The jobs of each thread stay
in the calling query's scheduler pool (a thread-local property that ``inheritable_thread_target``
carries over).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

from pyspark import inheritable_thread_target
from pyspark.sql import SparkSession

__all__ = ["run_side_by_side"]


def run_side_by_side(
    spark: SparkSession,
    steps: Sequence[Callable[[], None]],
    *,
    when_done: Mapping[int, Callable[[BaseException | None], None]] | None = None,
) -> None:
    """Run ``steps`` concurrently (one alone runs inline); the first failure is raised once all
    have ended, so no write is left running behind the error.

    ``when_done[i]`` is called with step ``i``'s failure (None: it returned) as soon as it ends,
    however it ends, including a failure of the thread's set-up before the step itself ran.
    """
    callbacks = when_done or {}
    if len(steps) <= 1:
        for index, step in enumerate(steps):
            try:
                step()
            except BaseException as exc:
                if index in callbacks:
                    callbacks[index](exc)
                raise
            if index in callbacks:
                callbacks[index](None)
        return
    with ThreadPoolExecutor(len(steps)) as pool:
        futures = [pool.submit(inheritable_thread_target(spark)(step)) for step in steps]
        for index, callback in callbacks.items():
            futures[index].add_done_callback(functools.partial(_report, callback))
        errors = [f.exception() for f in futures]
    for error in errors:
        if error is not None:
            raise error


def _report(callback: Callable[[BaseException | None], None], future: Future[None]) -> None:
    callback(future.exception())
