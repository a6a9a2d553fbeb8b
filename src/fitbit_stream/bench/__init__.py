"""Benchmarks of the pipeline against raw Kafka copies and a hand-written notebook stage.

``fitbit-stream bench`` (``make bench``) runs :func:`run_bench`; ``bench/README.md`` describes what
is measured and how. :mod:`fitbit_stream.bench.report` is the pure part (figures, ratios, report);
the other modules drive Kafka, Spark and the pipeline.
"""

from __future__ import annotations

__all__ = ["BenchOptions", "run_bench"]

from fitbit_stream.bench.runner import BenchOptions, run_bench
