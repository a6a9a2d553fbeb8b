"""The local platform: a single-node Kafka broker (KRaft), a PostgreSQL server for e2e tests and a
Spark standalone cluster."""

from __future__ import annotations

import socket

from fitbit_stream.processes import pid_alive

__all__ = ["pid_alive", "port_open"]


def port_open(host: str, port: int) -> bool:
    """Whether something accepts connections on ``host:port`` (half a second to answer)."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False
