"""Kafka's murmur2 key hash, so landing files get the partition a Kafka producer would pick.

This is ``org.apache.kafka.common.utils.Utils.murmur2`` (the Java client's default partitioner),
which librdkafka's ``murmur2_random`` partitioner reproduces: the partition of a keyed record is
``toPositive(murmur2(key)) % partitions``.
"""

from __future__ import annotations

__all__ = ["murmur2", "partition_for_key"]

_MASK = 0xFFFFFFFF
_SEED = 0x9747B28C
_M = 0x5BD1E995
_R = 24


def murmur2(data: bytes) -> int:
    """The 32-bit murmur2 hash of ``data`` as Java's signed int."""
    length = len(data)
    h = (_SEED ^ length) & _MASK
    tail = length & ~3
    for i in range(0, tail, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * _M) & _MASK
        k ^= k >> _R
        k = (k * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    rest = length - tail
    # Java's switch falls through: 3 -> 2 -> 1.
    if rest == 3:
        h ^= data[tail + 2] << 16
    if rest >= 2:
        h ^= data[tail + 1] << 8
    if rest >= 1:
        h ^= data[tail]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def partition_for_key(key: bytes | str, partitions: int) -> int:
    """The partition Kafka's default (murmur2) partitioner assigns to a non-null key."""
    if partitions < 1:
        raise ValueError(f"partitions must be >= 1, got {partitions}")
    data = key.encode("utf-8") if isinstance(key, str) else key
    return (murmur2(data) & 0x7FFFFFFF) % partitions
