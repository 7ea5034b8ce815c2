"""Tests of the LMAX-style ring buffer (``brokercore.runtime._ringbuffer``).

Threaded properties run real ``threading.Thread`` producers and consumers: every
published record is consumed exactly once and in order (one producer), each
producer's records in its own order (several), and every consumer sees the same full
stream (broadcast). A single-threaded model test checks the same against a plain
queue per consumer with many more examples. Then back-pressure, wake-ups, close(),
bad input and the counters.

No test asserts a wall time. Joins carry generous timeouts only as hang guards: a
thread still alive after one is a failure (the ring is closed first, so that no
thread is left waiting, let alone spinning).
"""

from __future__ import annotations

import sys
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from brokercore.runtime._ringbuffer import RingBuffer, WaitStrategy
from waiting import wait_until

REC = np.dtype([("producer", "<i8"), ("n", "<i8")])
HANG_GUARD = 30.0  # seconds; only a guard against a hang, never a measured time
NOT_YET = 0.1  # seconds a thread is given to (wrongly) return before we check it blocks

ALL_WAITS = list(WaitStrategy)
# Threads on a spinning strategy burn a core while waiting (this machine may have two):
# the threaded properties with several threads draw from the polite strategies, and
# BUSY_SPIN gets its own small tests.
POLITE_WAITS = [WaitStrategy.YIELD, WaitStrategy.BLOCKING]


def capped(n: int) -> settings:
    """At most n examples, fewer if the active profile asks for fewer (dev).

    Used on the threaded properties: each example starts and joins 2-7 threads that
    contend for the GIL and (on a 2-core machine) for the cores, a few ms each and
    far more when the machine is busy; 2,000 of each would take the file well past
    its ~60 s budget. The longer seeded stress run below and the single-threaded model
    test (the profile's full count) make up for the fewer examples.
    """
    return settings(max_examples=min(n, settings.default.max_examples))


def records(producer: int, start: int, count: int) -> np.ndarray:
    out = np.empty(count, dtype=REC)
    out["producer"] = producer
    out["n"] = np.arange(start, start + count)
    return out


class Worker(threading.Thread):
    """A daemon thread that keeps its function's result or exception; on an exception
    it closes ``ring`` (if given) so that the other threads stop waiting at once."""

    def __init__(self, fn, *args, ring: RingBuffer | None = None):
        super().__init__(daemon=True)
        self.fn, self.args, self.ring = fn, args, ring
        self.result = self.error = None
        self.started = threading.Event()
        self.finished = threading.Event()

    def run(self):
        self.started.set()
        try:
            self.result = self.fn(*self.args)
        except BaseException as error:  # noqa: BLE001 - handed to the test thread
            self.error = error
            if self.ring is not None:
                self.ring.close()
        finally:
            self.finished.set()


def join_all(ring: RingBuffer, workers, timeout: float = HANG_GUARD) -> None:
    """Join workers; on a hang, close the ring (which wakes every waiter), then fail."""
    for worker in workers:
        worker.join(timeout)
        if worker.is_alive():
            ring.close()
            for other in workers:
                other.join(HANG_GUARD)
            pytest.fail(f"a ring thread hung (cursor={ring.cursor}, fill={ring.fill})")
    errors = [worker.error for worker in workers if worker.error is not None]
    # A RuntimeError from publish() is only the echo of another thread's failure (it
    # closed the ring): raise the first other error if there is one.
    errors.sort(key=lambda error: isinstance(error, RuntimeError))
    if errors:
        raise errors[0]


def produce(ring: RingBuffer, producer: int, batches, use_try: bool, multi: bool):
    """Publish records (producer, 0..) in the given batch sizes; returns the last
    sequence publish() reported (single producer: checked against the count)."""
    n, last = 0, None
    for size in batches:
        batch = records(producer, n, size)
        if use_try and ring.try_publish(batch):
            last = None
        else:
            last = ring.publish(batch)
            if not multi and last != n + size - 1:
                raise AssertionError(f"publish returned {last}, expected {n + size - 1}")
        n += size
    return last


def consume(ring: RingBuffer, consumer: int, max_records: int) -> np.ndarray:
    """Poll until the ring is closed and drained; everything read, in order."""
    chunks = []
    while True:
        batch = ring.poll(consumer, max_records=max_records, timeout=None)
        if len(batch) == 0:
            if not ring.closed:
                raise AssertionError("poll(timeout=None) returned nothing on an open ring")
            break
        if len(batch) > max_records:
            raise AssertionError(f"poll returned {len(batch)} > max_records={max_records}")
        if batch.dtype != REC:
            raise AssertionError(f"poll returned dtype {batch.dtype}")
        chunks.append(batch)
    return np.concatenate(chunks) if chunks else np.empty(0, dtype=REC)


def run_stream(capacity, waits, producer_batches, max_records, multi, use_try):
    """Start one consumer per wait strategy and one producer per batch list; join the
    producers, close, join the consumers; returns (ring, streams, producer results)."""
    ring = RingBuffer(capacity, REC, consumers=waits, multi_producer=multi)
    consumers = [Worker(consume, ring, i, m, ring=ring) for i, m in enumerate(max_records)]
    producers = [
        Worker(produce, ring, p, batches, use_try, multi, ring=ring)
        for p, batches in enumerate(producer_batches)
    ]
    for worker in consumers + producers:
        worker.start()
    try:
        join_all(ring, producers)
    finally:
        ring.close()
        join_all(ring, consumers)
    return ring, [worker.result for worker in consumers], [w.result for w in producers]


def check_stream(stream: np.ndarray, producer_batches) -> None:
    """Every producer's records exactly once, each producer's in its own order."""
    assert len(stream) == sum(sum(batches) for batches in producer_batches)
    for producer, batches in enumerate(producer_batches):
        mine = stream["n"][stream["producer"] == producer]
        np.testing.assert_array_equal(mine, np.arange(sum(batches)))


def check_counters_after(ring: RingBuffer, total: int, n_consumers: int) -> None:
    assert ring.cursor == total - 1
    assert ring.fill == 0
    for consumer in range(n_consumers):
        assert ring.consumer_sequence(consumer) == total - 1


# --- strategies -------------------------------------------------------------------

capacities = st.integers(0, 10).map(lambda k: 1 << k)  # 1 .. 1024


def batch_lists(capacity: int, max_batches: int = 12):
    """Batch sizes from 1 to a little over twice the capacity: those larger than the
    capacity are split by publish() (and refused whole by try_publish())."""
    return st.lists(st.integers(1, 2 * capacity + 2), max_size=max_batches)


def poll_limits(capacity: int):
    return st.one_of(st.just(4096), st.integers(1, 2 * capacity + 1))


# --- threaded properties ----------------------------------------------------------


@capped(500)
@given(
    data=st.data(), capacity=capacities, wait=st.sampled_from(POLITE_WAITS), use_try=st.booleans()
)
def test_one_producer_one_consumer_exactly_once_in_order(data, capacity, wait, use_try):
    batches = data.draw(batch_lists(capacity), label="batches")
    limit = data.draw(poll_limits(capacity), label="max_records")
    ring, (stream,), _ = run_stream(capacity, [wait], [batches], [limit], False, use_try)
    np.testing.assert_array_equal(stream["n"], np.arange(sum(batches)))
    assert (stream["producer"] == 0).all()
    check_counters_after(ring, sum(batches), 1)


# BUSY_SPIN consumers burn a core until close(): a handful of small examples only.
@capped(30)
@given(data=st.data(), capacity=st.sampled_from([1, 4, 64]), multi=st.booleans())
def test_busy_spin_consumer_exactly_once_in_order(data, capacity, multi):
    n_producers = data.draw(st.integers(2, 3), label="producers") if multi else 1
    all_batches = [
        data.draw(batch_lists(capacity, 6), label=f"batches{p}") for p in range(n_producers)
    ]
    limit = data.draw(poll_limits(capacity), label="max_records")
    ring, (stream,), _ = run_stream(
        capacity, [WaitStrategy.BUSY_SPIN], all_batches, [limit], multi, False
    )
    check_stream(stream, all_batches)
    check_counters_after(ring, len(stream), 1)


@capped(400)
@given(
    data=st.data(),
    capacity=capacities,
    n_producers=st.integers(2, 4),
    wait=st.sampled_from(POLITE_WAITS),
    use_try=st.booleans(),
)
def test_several_producers_each_in_order_all_exactly_once(
    data, capacity, n_producers, wait, use_try
):
    all_batches = [
        data.draw(batch_lists(capacity, 8), label=f"batches{p}") for p in range(n_producers)
    ]
    limit = data.draw(poll_limits(capacity), label="max_records")
    ring, (stream,), results = run_stream(capacity, [wait], all_batches, [limit], True, use_try)
    check_stream(stream, all_batches)
    check_counters_after(ring, len(stream), 1)
    for result in results:  # a sequence publish() reported is a published one
        assert result is None or -1 <= result < len(stream)


@capped(300)
@given(
    data=st.data(),
    capacity=capacities,
    multi=st.booleans(),
    waits=st.lists(st.sampled_from(POLITE_WAITS), min_size=2, max_size=4),
)
def test_every_consumer_sees_the_whole_stream_in_the_same_order(data, capacity, multi, waits):
    n_producers = data.draw(st.integers(2, 3), label="producers") if multi else 1
    all_batches = [
        data.draw(batch_lists(capacity, 8), label=f"batches{p}") for p in range(n_producers)
    ]
    limits = [data.draw(poll_limits(capacity), label=f"max_records{c}") for c in range(len(waits))]
    ring, streams, _ = run_stream(capacity, waits, all_batches, limits, multi, False)
    for stream in streams:
        check_stream(stream, all_batches)
        np.testing.assert_array_equal(stream, streams[0])  # one order for everyone
    check_counters_after(ring, len(streams[0]), len(waits))


def test_busy_spin_consumers_broadcast_with_the_most_consumers():
    """Eight consumers (the limit), one of them spinning: all see the same stream."""
    waits = [WaitStrategy.BUSY_SPIN] + [WaitStrategy.BLOCKING] * 6 + [WaitStrategy.YIELD]
    batches = [[3, 17, 1, 40, 8] * 4]
    ring, streams, _ = run_stream(16, waits, batches, [5] * 8, False, False)
    for stream in streams:
        check_stream(stream, batches)
    check_counters_after(ring, len(streams[0]), 8)


@pytest.mark.parametrize(
    "waits, multi, capacity, per_producer",
    [
        ([WaitStrategy.BLOCKING, WaitStrategy.YIELD, WaitStrategy.BLOCKING], True, 64, 30_000),
        ([WaitStrategy.YIELD], False, 16, 60_000),
        ([WaitStrategy.BUSY_SPIN], True, 8, 10_000),  # small: it spins a core
    ],
)
def test_stress_many_records_through_a_small_ring(waits, multi, capacity, per_producer):
    """A seeded, longer run than the examples above: many wrap-arounds, ragged batches
    (some larger than the ring), small and large polls, so races get a chance."""
    rng = np.random.default_rng(capacity)
    n_producers = 3 if multi else 1
    all_batches = []
    for _ in range(n_producers):
        sizes = rng.integers(1, 2 * capacity + 2, size=per_producer)
        cut = np.searchsorted(np.cumsum(sizes), per_producer)
        all_batches.append(sizes[:cut].tolist())
    limits = [1 + 2 * c for c in range(len(waits))][:-1] + [4096]
    ring, streams, _ = run_stream(capacity, waits, all_batches, limits, multi, True)
    for stream in streams:
        check_stream(stream, all_batches)
        np.testing.assert_array_equal(stream, streams[0])
    check_counters_after(ring, len(streams[0]), len(waits))


# --- single-threaded model --------------------------------------------------------


@given(
    data=st.data(),
    capacity=st.integers(0, 6).map(lambda k: 1 << k),
    n_consumers=st.integers(1, 3),
    multi=st.booleans(),
)
def test_single_thread_matches_a_queue_per_consumer(data, capacity, n_consumers, multi):
    """Interleaved try_publish / publish (only when it cannot block) / poll(timeout=0)
    against a model: a list of records per consumer. Also checks the counters after
    every step. Cheap, so it runs the profile's full example count."""
    ring = RingBuffer(
        capacity, REC, consumers=[WaitStrategy.BUSY_SPIN] * n_consumers, multi_producer=multi
    )
    pending = [[] for _ in range(n_consumers)]  # per consumer: n's not yet read
    released = [-1] * n_consumers
    n = 0
    for _ in range(data.draw(st.integers(0, 30), label="steps")):
        fill = n - 1 - min(released)
        op = data.draw(st.sampled_from(["try", "publish", "poll"]), label="op")
        if op == "poll":
            consumer = data.draw(st.integers(0, n_consumers - 1), label="consumer")
            limit = data.draw(st.integers(1, capacity + 1), label="max_records")
            got = ring.poll(consumer, max_records=limit, timeout=0)
            expected = pending[consumer][:limit]
            del pending[consumer][:limit]
            released[consumer] += len(expected)
            assert got["n"].tolist() == expected
        else:
            size = data.draw(st.integers(1, 2 * capacity), label="size")
            batch = records(0, n, size)
            fits = size <= capacity - fill
            if op == "try":
                assert ring.try_publish(batch) == fits
            elif fits:  # publish into a ring without the room would wait forever here
                assert ring.publish(batch) == n + size - 1
            if fits:
                for queue in pending:
                    queue.extend(range(n, n + size))
                n += size
        assert ring.cursor == n - 1
        assert ring.fill == n - 1 - min(released)
        assert [ring.consumer_sequence(c) for c in range(n_consumers)] == released


# --- back-pressure ----------------------------------------------------------------


@pytest.mark.parametrize("multi", [False, True])
@pytest.mark.parametrize("capacity", [1, 8])
def test_try_publish_on_a_full_ring_publishes_nothing(capacity, multi):
    ring = RingBuffer(capacity, REC, multi_producer=multi)
    assert ring.try_publish(records(0, 0, capacity))
    assert not ring.try_publish(records(0, capacity, 1))
    assert ring.cursor == capacity - 1 and ring.fill == capacity
    got = ring.poll(timeout=0)
    np.testing.assert_array_equal(got["n"], np.arange(capacity))  # not overwritten
    assert len(ring.poll(timeout=0)) == 0  # and the refused record is not there either


@pytest.mark.parametrize("multi", [False, True])
def test_try_publish_is_all_or_nothing(multi):
    ring = RingBuffer(8, REC, multi_producer=multi)
    ring.publish(records(0, 0, 6))
    assert not ring.try_publish(records(0, 6, 3))  # room for 2 only: none published
    assert ring.cursor == 5 and ring.fill == 6
    assert not ring.try_publish(records(0, 6, 9))  # more than the capacity: never
    assert ring.try_publish(records(0, 6, 2))
    assert ring.fill == 8
    np.testing.assert_array_equal(ring.poll(timeout=0)["n"], np.arange(8))


def test_the_slowest_consumer_gates_the_producers():
    ring = RingBuffer(4, REC, consumers=[WaitStrategy.BLOCKING, WaitStrategy.YIELD])
    ring.publish(records(0, 0, 4))
    assert len(ring.poll(0, timeout=0)) == 4  # consumer 0 is done, consumer 1 is not
    assert ring.fill == 4
    assert not ring.try_publish(records(0, 4, 1))
    assert len(ring.poll(1, max_records=1, timeout=0)) == 1
    assert ring.fill == 3
    assert ring.try_publish(records(0, 4, 1))
    assert not ring.try_publish(records(0, 5, 1))
    np.testing.assert_array_equal(ring.poll(1, timeout=0)["n"], [1, 2, 3, 4])
    np.testing.assert_array_equal(ring.poll(0, timeout=0)["n"], [4])


@pytest.mark.parametrize("multi", [False, True])
@pytest.mark.parametrize("capacity", [1, 4])
def test_publish_into_a_full_ring_waits_for_a_poll(capacity, multi):
    ring = RingBuffer(capacity, REC, multi_producer=multi)
    ring.publish(records(0, 0, capacity))
    producer = Worker(ring.publish, records(0, capacity, 1))
    producer.start()
    try:
        assert producer.started.wait(HANG_GUARD)
        producer.join(NOT_YET)
        # It has not returned, and has not published (or overwritten) anything.
        assert producer.is_alive() and not producer.finished.is_set()
        assert ring.cursor == capacity - 1 and ring.fill == capacity
        np.testing.assert_array_equal(ring.poll(max_records=1, timeout=0)["n"], [0])
        join_all(ring, [producer])
    finally:
        ring.close()
        producer.join(HANG_GUARD)
    assert producer.result == capacity
    # The slow consumer still reads everything, in order.
    np.testing.assert_array_equal(ring.poll(timeout=0)["n"], np.arange(1, capacity + 1))


@pytest.mark.parametrize("wait", ALL_WAITS)
def test_a_slow_consumer_loses_nothing_to_a_large_publish(wait):
    """publish() of 25x the capacity in one call: split, gated by a consumer that reads
    three records at a time; fill never exceeds the capacity and nothing is dropped."""
    capacity, total = 8, 200
    ring = RingBuffer(capacity, REC, consumers=[wait])
    producer = Worker(ring.publish, records(0, 0, total))
    producer.start()
    chunks, fills = [], []
    try:
        while sum(map(len, chunks)) < total:
            fills.append(ring.fill)
            batch = ring.poll(max_records=3, timeout=HANG_GUARD)
            assert len(batch), "no record within the hang guard"
            chunks.append(batch)
        join_all(ring, [producer])
    finally:
        ring.close()
        producer.join(HANG_GUARD)
    assert producer.result == total - 1
    assert max(fills) <= capacity and max(map(len, chunks)) <= 3
    np.testing.assert_array_equal(np.concatenate(chunks)["n"], np.arange(total))


# --- wake-ups and close -----------------------------------------------------------


@pytest.mark.parametrize("multi", [False, True])
@pytest.mark.parametrize("wait", ALL_WAITS)
def test_a_waiting_consumer_wakes_up_on_publish(wait, multi):
    ring = RingBuffer(4, REC, consumers=[wait], multi_producer=multi)
    consumer = Worker(ring.poll, 0, 4096, None)
    consumer.start()
    try:
        assert consumer.started.wait(HANG_GUARD)
        consumer.join(NOT_YET)
        assert consumer.is_alive()  # nothing to read yet: still waiting
        ring.publish(records(7, 0, 1))
        join_all(ring, [consumer])
    finally:
        ring.close()
        consumer.join(HANG_GUARD)
    assert consumer.result.tolist() == [(7, 0)]


@pytest.mark.parametrize("wait", ALL_WAITS)
@pytest.mark.parametrize("timeout", [0, 0.05])
def test_poll_with_a_timeout_on_an_empty_ring_returns_nothing(wait, timeout):
    ring = RingBuffer(4, REC, consumers=[wait])
    got = ring.poll(timeout=timeout)
    assert len(got) == 0 and got.dtype == REC
    assert ring.consumer_sequence(0) == -1
    ring.publish(records(0, 0, 2))
    assert len(ring.poll(timeout=timeout)) == 2
    assert len(ring.poll(timeout=timeout)) == 0
    assert ring.consumer_sequence(0) == 1


@pytest.mark.parametrize("wait", ALL_WAITS)
def test_close_wakes_a_waiting_consumer_after_it_drains(wait):
    ring = RingBuffer(8, REC, consumers=[wait])
    ring.publish(records(0, 0, 3))
    assert len(ring.poll(max_records=1, timeout=0)) == 1
    consumer = Worker(consume, ring, 0, 1)
    consumer.start()
    try:
        assert consumer.started.wait(HANG_GUARD)
        wait_until(
            lambda: ring.consumer_sequence(0) == 2,
            "read of the rest by the consumer",
            HANG_GUARD,
            every=0.001,
        )
        consumer.join(NOT_YET)
        assert consumer.is_alive()  # read the other two, now waiting for more
        assert not ring.closed
        ring.close()
        assert ring.closed
        join_all(ring, [consumer])
    finally:
        ring.close()
        consumer.join(HANG_GUARD)
    assert consumer.result["n"].tolist() == [1, 2]
    assert len(ring.poll(timeout=None)) == 0  # closed and drained: returns at once


@pytest.mark.parametrize("multi", [False, True])
def test_close_wakes_a_producer_waiting_on_a_full_ring(multi):
    ring = RingBuffer(4, REC, multi_producer=multi)
    ring.publish(records(0, 0, 4))
    producer = Worker(ring.publish, records(0, 4, 1))
    producer.start()
    try:
        assert producer.started.wait(HANG_GUARD)
        producer.join(NOT_YET)
        assert producer.is_alive()
        ring.close()
        producer.join(HANG_GUARD)
        assert not producer.is_alive(), "close() did not wake the producer"
    finally:
        ring.close()
        producer.join(HANG_GUARD)
    assert isinstance(producer.error, RuntimeError)
    # What was published before close() is still drained, and nothing else.
    np.testing.assert_array_equal(ring.poll(timeout=None)["n"], np.arange(4))
    assert len(ring.poll(timeout=None)) == 0


def test_close_in_the_middle_of_a_split_publish():
    """A publish larger than the ring gets in what fits, then raises; what got in is
    still drained."""
    ring = RingBuffer(4, REC)
    producer = Worker(ring.publish, records(0, 0, 10))
    producer.start()
    try:
        assert producer.started.wait(HANG_GUARD)
        np.testing.assert_array_equal(ring.poll(max_records=2, timeout=HANG_GUARD)["n"], [0, 1])
        producer.join(NOT_YET)
        assert producer.is_alive()
        ring.close()
        producer.join(HANG_GUARD)
        assert not producer.is_alive(), "close() did not wake the producer"
    finally:
        ring.close()
        producer.join(HANG_GUARD)
    assert isinstance(producer.error, RuntimeError)
    rest = ring.poll(timeout=None)["n"]
    # Sequences 0..5 fit (two read, four in the ring); the chunk of 4 or the rest
    # may have been refused whole, so the ring holds a prefix of 2..5.
    assert rest.tolist() == list(range(2, 2 + len(rest))) and len(rest) <= 4
    assert len(ring.poll(timeout=None)) == 0


@pytest.mark.parametrize("multi", [False, True])
def test_a_closed_ring_refuses_publishing(multi):
    ring = RingBuffer(4, REC, multi_producer=multi)
    ring.publish(records(0, 0, 1))
    ring.close()
    ring.close()  # twice is fine
    with pytest.raises(RuntimeError):
        ring.publish(records(0, 1, 1))
    assert not ring.try_publish(records(0, 1, 1))
    assert ring.cursor == 0
    assert ring.poll(timeout=None)["n"].tolist() == [0]
    assert len(ring.poll(timeout=None)) == 0


# --- bad input --------------------------------------------------------------------


@pytest.mark.parametrize("capacity", [0, -1, -4, 3, 6, 1000, 2**31])
def test_capacity_must_be_a_power_of_two(capacity):
    with pytest.raises(ValueError, match="power of two"):
        RingBuffer(capacity, REC)


@pytest.mark.parametrize(
    "dtype", [object, np.dtype([("a", "<i8"), ("b", "O")]), np.dtype([]), np.dtype("V0")]
)
def test_dtype_must_be_plain_fixed_size_data(dtype):
    with pytest.raises(ValueError, match="plain fixed-size"):
        RingBuffer(4, dtype)


@pytest.mark.parametrize("consumers", [(), [WaitStrategy.BLOCKING] * 9])
def test_between_one_and_eight_consumers(consumers):
    with pytest.raises(ValueError, match="consumers"):
        RingBuffer(4, REC, consumers=consumers)


def test_unknown_wait_strategy():
    with pytest.raises(ValueError):
        RingBuffer(4, REC, consumers=[7])


@pytest.mark.parametrize("consumer", [-1, 2, 8])
def test_unknown_consumer_index(consumer):
    ring = RingBuffer(4, REC, consumers=[WaitStrategy.BLOCKING, WaitStrategy.YIELD])
    with pytest.raises(ValueError, match="no consumer"):
        ring.poll(consumer, timeout=0)
    with pytest.raises(ValueError, match="no consumer"):
        ring.consumer_sequence(consumer)


@pytest.mark.parametrize("method", ["publish", "try_publish"])
def test_records_must_be_one_dimensional(method):
    ring = RingBuffer(4, REC)
    with pytest.raises(ValueError, match="one-dimensional"):
        getattr(ring, method)(records(0, 0, 4).reshape(2, 2))
    assert ring.cursor == -1


@pytest.mark.parametrize("max_records", [0, -1])
def test_max_records_must_be_positive(max_records):
    ring = RingBuffer(4, REC)
    ring.publish(records(0, 0, 1))
    with pytest.raises(ValueError, match="max_records"):
        ring.poll(max_records=max_records, timeout=0)
    assert ring.consumer_sequence(0) == -1  # nothing was consumed


def test_poll_with_a_huge_max_records_reads_everything():
    ring = RingBuffer(8, REC)
    ring.publish(records(0, 0, 5))
    assert len(ring.poll(max_records=sys.maxsize, timeout=0)) == 5
    ring.publish(records(0, 5, 3))
    assert ring.poll(max_records=sys.maxsize, timeout=0)["n"].tolist() == [5, 6, 7]


# --- counters ---------------------------------------------------------------------


@pytest.mark.parametrize("multi", [False, True])
def test_cursor_fill_and_consumer_sequences(multi):
    ring = RingBuffer(
        8, REC, consumers=[WaitStrategy.BLOCKING, WaitStrategy.YIELD], multi_producer=multi
    )
    assert (ring.capacity, ring.closed, ring.cursor, ring.fill) == (8, False, -1, 0)
    assert ring.dtype == REC
    assert [ring.consumer_sequence(c) for c in (0, 1)] == [-1, -1]
    assert ring.publish(records(0, 0, 5)) == 4
    assert (ring.cursor, ring.fill) == (4, 5)
    assert len(ring.poll(0, max_records=3, timeout=0)) == 3
    assert [ring.consumer_sequence(c) for c in (0, 1)] == [2, -1]
    assert ring.fill == 5  # relative to the slowest consumer
    assert len(ring.poll(1, timeout=0)) == 5
    assert (ring.cursor, ring.fill) == (4, 2)
    assert ring.consumer_sequence() == 2  # consumer 0 by default
    # Sequences keep counting past the capacity (the slots wrap, the numbers do not).
    for start in range(5, 100, 5):
        assert ring.publish(records(0, start, 5)) == start + 4
        assert ring.poll(0, timeout=0)["n"][-1] == start + 4
        assert ring.poll(1, timeout=0)["n"][-1] == start + 4
    assert (ring.cursor, ring.fill) == (99, 0)
    assert [ring.consumer_sequence(c) for c in (0, 1)] == [99, 99]


def test_records_round_trip_bytes_exactly_across_the_wrap():
    """56-byte records straddling the end of the ring come back byte for byte."""
    from brokercore.engine.records import COMMAND_DTYPE

    rng = np.random.default_rng(1)
    ring = RingBuffer(8, COMMAND_DTYPE)
    sent = np.frombuffer(rng.bytes(COMMAND_DTYPE.itemsize * 20), dtype=COMMAND_DTYPE)
    got = []
    for lo, hi in [(0, 5), (5, 11), (11, 17), (17, 20)]:  # 5..10 and 11..16 wrap
        ring.publish(sent[lo:hi])
        got.append(ring.poll(timeout=0))
    # Joined as bytes: np.concatenate copies fields only, not the padding between them.
    assert b"".join(chunk.tobytes() for chunk in got) == sent.tobytes()


def test_records_of_another_type_are_refused_not_cast():
    ring = RingBuffer(4, np.int64)
    for bad in (np.array([1.7, 2.9]), np.zeros(2, REC)):
        with pytest.raises(TypeError):
            ring.publish(bad)
        with pytest.raises(TypeError):
            ring.try_publish(bad)
    assert ring.cursor == -1  # nothing was published


def test_a_closed_ring_refuses_even_an_empty_publish():
    ring = RingBuffer(4, np.int64)
    ring.close()
    assert ring.try_publish(np.zeros(0, np.int64)) is False
    with pytest.raises(RuntimeError, match="closed"):
        ring.publish(np.zeros(0, np.int64))


def test_a_negative_timeout_is_refused():
    with pytest.raises(ValueError, match="timeout"):
        RingBuffer(4, np.int64).poll(timeout=-1)
