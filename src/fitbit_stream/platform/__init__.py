"""The local platform: a single-node Kafka broker (KRaft) and a PostgreSQL server for e2e tests."""

from __future__ import annotations

from fitbit_stream.processes import pid_alive

__all__ = ["pid_alive"]
