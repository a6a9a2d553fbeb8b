"""fitbit_stream: wearable-fitness analytics with Spark Structured Streaming and Delta Lake."""

from __future__ import annotations

__version__ = "0.1.0"
