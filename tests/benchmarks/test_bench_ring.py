"""The ring buffer's hot path as a pytest-benchmark test: ``publish`` of a batch of
commands and the ``poll`` that takes it back out (brokercore.runtime._ringbuffer).

One thread does both, so the number is the two calls' own cost (claim, copy in,
publish, copy out, release) per batch, free of thread hand-offs and of the scheduler;
benchmarks/bench_ring.py measures two threads. The records are a seeded slice of
brokercore.runtime.loadgen's order flow, as the shards carry them. In the ordinary test
run (``--benchmark-disable``) each body runs once and only the check counts.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from brokercore.engine.records import COMMAND_DTYPE
from brokercore.runtime._ringbuffer import RingBuffer
from brokercore.runtime.loadgen import order_flow

HAND_OVERS = 1024  # publish/poll pairs per round
CAPACITY = 1 << 16  # the shard's default ring size


def hand_over(ring: RingBuffer, batches: list[np.ndarray]) -> list[np.ndarray]:
    """Publish each batch and poll it straight back."""
    return [(ring.publish(batch), ring.poll())[1] for batch in batches]


@pytest.mark.parametrize("batch", [1, 16, 256])
def test_publish_poll(benchmark: Any, batch: int) -> None:
    """Every record comes back once, in order, whatever the batch size."""
    total = HAND_OVERS * batch
    (records,) = order_flow([1, 2, 3, 4], total, chunk=total)
    batches = [records[start : start + batch] for start in range(0, total, batch)]
    ring = RingBuffer(CAPACITY, COMMAND_DTYPE)
    received = benchmark(hand_over, ring, batches)
    assert [len(piece) for piece in received] == [batch] * HAND_OVERS
    assert np.array_equal(np.concatenate(received), records)
