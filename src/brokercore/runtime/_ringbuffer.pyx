# cython: language_level=3, wraparound=False, cdivision=True
# boundscheck and initializedcheck: off in Release, on in the debug build (CMakeLists.txt)
"""An LMAX Disruptor-style ring buffer between threads, usable without the GIL.

Producers claim a run of sequences, write records into their slots and publish; each
consumer waits until a sequence is available, reads everything available up to a
limit in one step (batching) and releases it. A producer never overwrites a slot that
the slowest consumer has not released: a full ring makes it wait (or, with
try-claim, says so). Sequences are int64 and never wrap in practice (2**63 records).

Ordering: the cursor and per-slot publication marks are stored with release and
loaded with acquire, so a consumer that sees a sequence also sees its record; the
sleep/wake handshake of the blocking strategy uses sequentially consistent fences so
no wake-up is lost.
"""

from libc.stdint cimport INT64_MAX, int32_t, int64_t, uint8_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memset

cimport numpy as cnp
import enum

import numpy as np

cnp.import_array()

cdef extern from *:
    """
    #include <errno.h>
    #include <pthread.h>
    #include <sched.h>
    #include <stdatomic.h>
    #include <stdint.h>
    #include <time.h>

    static inline int64_t rb_load_acquire(int64_t *p) {
        return atomic_load_explicit((_Atomic int64_t *)p, memory_order_acquire);
    }
    static inline void rb_store_release(int64_t *p, int64_t v) {
        atomic_store_explicit((_Atomic int64_t *)p, v, memory_order_release);
    }
    static inline int rb_cas(int64_t *p, int64_t expected, int64_t desired) {
        return atomic_compare_exchange_weak_explicit(
            (_Atomic int64_t *)p, &expected, desired,
            memory_order_acq_rel, memory_order_relaxed);
    }
    static inline int64_t rb_add(int64_t *p, int64_t v) {
        return atomic_fetch_add_explicit((_Atomic int64_t *)p, v, memory_order_seq_cst);
    }
    static inline int32_t rb_load_round(int32_t *p) {
        return atomic_load_explicit((_Atomic int32_t *)p, memory_order_acquire);
    }
    static inline void rb_store_round(int32_t *p, int32_t v) {
        atomic_store_explicit((_Atomic int32_t *)p, v, memory_order_release);
    }
    static inline void rb_fence(void) { atomic_thread_fence(memory_order_seq_cst); }
    static inline void rb_pause(void) {
    #if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
    #elif defined(__aarch64__)
        __asm__ __volatile__("yield");
    #endif
    }
    static inline int64_t rb_now_ns(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
    }
    /* Wait on cond until woken, until deadline_ns (CLOCK_MONOTONIC; < 0: none) or for
       at most RB_MAX_NAP_NS: a bounded nap, so a waiter re-checks its condition even if
       a wake-up were ever missed, yet an idle waiter wakes only ~20 times a second (a
       1 ms nap cost an idle engine daemon ~3 % of a core per waiting thread). */
    #define RB_MAX_NAP_NS 50000000
    static inline void rb_nap(pthread_cond_t *cond, pthread_mutex_t *lock,
                              int64_t deadline_ns) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        int64_t until = (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec + RB_MAX_NAP_NS;
        if (deadline_ns >= 0 && deadline_ns < until) until = deadline_ns;
        ts.tv_sec = until / 1000000000;
        ts.tv_nsec = until % 1000000000;
        pthread_cond_timedwait(cond, lock, &ts);
    }
    static inline int rb_init_sync(pthread_mutex_t *lock, pthread_cond_t *a,
                                   pthread_cond_t *b) {
        pthread_condattr_t attr;
        if (pthread_condattr_init(&attr)) return -1;
        pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
        int rc = pthread_mutex_init(lock, NULL) || pthread_cond_init(a, &attr)
                 || pthread_cond_init(b, &attr);
        pthread_condattr_destroy(&attr);
        return rc ? -1 : 0;
    }
    static inline void rb_destroy_sync(pthread_mutex_t *lock, pthread_cond_t *a,
                                       pthread_cond_t *b) {
        pthread_cond_destroy(a);
        pthread_cond_destroy(b);
        pthread_mutex_destroy(lock);
    }
    """
    int64_t rb_load_acquire(int64_t* p) noexcept nogil
    void rb_store_release(int64_t* p, int64_t v) noexcept nogil
    bint rb_cas(int64_t* p, int64_t expected, int64_t desired) noexcept nogil
    int64_t rb_add(int64_t* p, int64_t v) noexcept nogil
    int32_t rb_load_round(int32_t* p) noexcept nogil
    void rb_store_round(int32_t* p, int32_t v) noexcept nogil
    void rb_fence() noexcept nogil
    void rb_pause() noexcept nogil
    int64_t rb_now_ns() noexcept nogil
    void rb_nap(pthread_cond_t* cond, pthread_mutex_t* lock, int64_t deadline_ns) noexcept nogil
    int rb_init_sync(pthread_mutex_t* lock, pthread_cond_t* a, pthread_cond_t* b) noexcept nogil
    void rb_destroy_sync(pthread_mutex_t* lock, pthread_cond_t* a, pthread_cond_t* b) noexcept nogil
    int pthread_mutex_lock(pthread_mutex_t* lock) noexcept nogil
    int pthread_mutex_unlock(pthread_mutex_t* lock) noexcept nogil
    int pthread_cond_broadcast(pthread_cond_t* cond) noexcept nogil
    int sched_yield() noexcept nogil
    int posix_memalign(void** out, size_t alignment, size_t size) noexcept nogil

cdef enum:
    SPINS_BEFORE_BACKING_OFF = 200


class WaitStrategy(enum.IntEnum):
    """How a consumer waits for records (and a producer for room)."""

    BUSY_SPIN = WAIT_BUSY_SPIN
    YIELD = WAIT_YIELD
    BLOCKING = WAIT_BLOCKING


# ---------------------------------------------------------------------------------
# C API
# ---------------------------------------------------------------------------------

cdef Ring* ring_new(int64_t capacity, int64_t record_size, bint multi_producer,
                    int n_consumers) noexcept nogil:
    """A ring of capacity (a power of two) records; NULL if out of memory."""
    cdef Ring* ring = NULL
    cdef int i
    if posix_memalign(<void**>&ring, CACHE_LINE, sizeof(Ring)) != 0:
        return NULL
    memset(ring, 0, sizeof(Ring))
    ring.capacity = capacity
    ring.mask = capacity - 1
    ring.record_size = record_size
    while (<int64_t>1 << ring.shift) < capacity:
        ring.shift += 1
    ring.n_consumers = n_consumers
    ring.multi_producer = multi_producer
    ring.cursor.value = -1
    ring.gating_cache.value = -1
    ring.sp_claimed.value = -1
    for i in range(n_consumers):
        ring.consumers[i].value = -1
        ring.waits[i] = WAIT_BLOCKING
    ring.records = <char*>malloc(capacity * record_size)
    if multi_producer:
        ring.published_round = <int32_t*>malloc(capacity * sizeof(int32_t))
    if (ring.records == NULL or (multi_producer and ring.published_round == NULL)
            or rb_init_sync(&ring.lock, &ring.data_ready, &ring.space_ready) < 0):
        free(ring.records)
        free(ring.published_round)
        free(ring)
        return NULL
    if multi_producer:
        memset(ring.published_round, 0xFF, capacity * sizeof(int32_t))   # round -1
    return ring


cdef void ring_free(Ring* ring) noexcept nogil:
    rb_destroy_sync(&ring.lock, &ring.data_ready, &ring.space_ready)
    free(ring.records)
    free(ring.published_round)
    free(ring)


cdef int64_t ring_min_consumer(Ring* ring) noexcept nogil:
    cdef int64_t low = rb_load_acquire(&ring.consumers[0].value), seq
    cdef int i
    for i in range(1, ring.n_consumers):
        seq = rb_load_acquire(&ring.consumers[i].value)
        if seq < low:
            low = seq
    return low


cdef inline void wake(Ring* ring, int64_t* waiters, pthread_cond_t* cond) noexcept nogil:
    rb_fence()                          # pairs with the fence in sleep_until()
    if rb_load_acquire(waiters) > 0:
        pthread_mutex_lock(&ring.lock)
        pthread_cond_broadcast(cond)
        pthread_mutex_unlock(&ring.lock)


cdef inline bint has_room(Ring* ring, int64_t wrap_point) noexcept nogil:
    """Is the slot of every sequence up to wrap_point + capacity released?"""
    cdef int64_t low
    if wrap_point <= rb_load_acquire(&ring.gating_cache.value):
        return True
    low = ring_min_consumer(ring)
    rb_store_release(&ring.gating_cache.value, low)
    return wrap_point <= low


cdef void wait_for_room(Ring* ring, int64_t wrap_point) noexcept nogil:
    """Back-pressure: a producer waits until the slowest consumer frees the slots."""
    cdef int spins = 0
    while not has_room(ring, wrap_point) and not rb_load_acquire(&ring.closed.value):
        if spins < SPINS_BEFORE_BACKING_OFF:
            spins += 1
            rb_pause()
            continue
        pthread_mutex_lock(&ring.lock)
        rb_add(&ring.space_waiters.value, 1)
        rb_fence()
        if not has_room(ring, wrap_point) and not rb_load_acquire(&ring.closed.value):
            rb_nap(&ring.space_ready, &ring.lock, -1)
        rb_add(&ring.space_waiters.value, -1)
        pthread_mutex_unlock(&ring.lock)


cdef int64_t claim(Ring* ring, int64_t n, bint wait) noexcept nogil:
    cdef int64_t current, after
    if n < 1 or n > ring.capacity:
        return -1
    while True:
        if rb_load_acquire(&ring.closed.value):
            return -1
        current = rb_load_acquire(&ring.sp_claimed.value if not ring.multi_producer
                                  else &ring.cursor.value)
        after = current + n
        if not has_room(ring, after - ring.capacity):
            if not wait:
                return -1
            wait_for_room(ring, after - ring.capacity)
            continue
        if not ring.multi_producer:
            rb_store_release(&ring.sp_claimed.value, after)
            return current + 1
        if rb_cas(&ring.cursor.value, current, after):
            return current + 1


cdef int64_t ring_claim(Ring* ring, int64_t n) noexcept nogil:
    """Claim n sequences, waiting for room; the first of them, or -1 once closed."""
    return claim(ring, n, True)


cdef int64_t ring_try_claim(Ring* ring, int64_t n) noexcept nogil:
    """Claim n sequences if there is room now; the first of them, or -1."""
    return claim(ring, n, False)


cdef void ring_publish(Ring* ring, int64_t lo, int64_t hi) noexcept nogil:
    """Make the claimed sequences lo..hi (their records written) visible to consumers."""
    cdef int64_t seq
    if ring.multi_producer:
        for seq in range(lo, hi + 1):
            rb_store_round(&ring.published_round[seq & ring.mask], <int32_t>(seq >> ring.shift))
    else:
        rb_store_release(&ring.cursor.value, hi)
    wake(ring, &ring.data_waiters.value, &ring.data_ready)


cdef int64_t seq_get(Sequence* seq) noexcept nogil:
    """Read a sequence or counter written by another thread (acquire)."""
    return rb_load_acquire(&seq.value)


cdef void seq_set(Sequence* seq, int64_t value) noexcept nogil:
    """Write a sequence or counter read by other threads (release)."""
    rb_store_release(&seq.value, value)


cdef int64_t ring_highest_available(Ring* ring, int64_t seq) noexcept nogil:
    return highest_available(ring, seq)


cdef inline int64_t highest_available(Ring* ring, int64_t seq,
                                      int64_t limit=INT64_MAX) noexcept nogil:
    """The highest sequence, at most limit, such that seq..it are all published
    (seq - 1 if none)."""
    cdef int64_t hi = rb_load_acquire(&ring.cursor.value)
    if hi > limit:
        hi = limit
    if not ring.multi_producer or hi < seq:
        return hi
    while seq <= hi:
        if rb_load_round(&ring.published_round[seq & ring.mask]) != <int32_t>(seq >> ring.shift):
            return seq - 1
        seq += 1
    return hi


cdef int64_t ring_wait_for(Ring* ring, int consumer, int64_t seq, int64_t max_n,
                           int64_t timeout_ns) noexcept nogil:
    """Wait until seq is available to the consumer; returns the highest available
    sequence (>= seq, < seq + max_n), or less than seq on timeout (timeout_ns < 0: none)
    or once the ring is closed and drained."""
    cdef int64_t limit = seq + max_n - 1
    cdef int64_t available = highest_available(ring, seq, limit)
    cdef int64_t deadline = rb_now_ns() + timeout_ns if timeout_ns >= 0 else -1
    cdef int spins = 0
    cdef WaitKind kind = ring.waits[consumer]
    while available < seq:
        if rb_load_acquire(&ring.closed.value):
            return highest_available(ring, seq, limit)
        if deadline >= 0 and rb_now_ns() >= deadline:
            return available
        if kind == WAIT_BUSY_SPIN or spins < SPINS_BEFORE_BACKING_OFF:
            spins += 1
            rb_pause()
        elif kind == WAIT_YIELD:
            sched_yield()
        else:
            pthread_mutex_lock(&ring.lock)
            rb_add(&ring.data_waiters.value, 1)
            rb_fence()                  # pairs with the fence in wake()
            if (highest_available(ring, seq, seq) < seq
                    and not rb_load_acquire(&ring.closed.value)):
                rb_nap(&ring.data_ready, &ring.lock, deadline)
            rb_add(&ring.data_waiters.value, -1)
            pthread_mutex_unlock(&ring.lock)
        available = highest_available(ring, seq, limit)
    return available


cdef void ring_release(Ring* ring, int consumer, int64_t seq) noexcept nogil:
    """The consumer is done with every sequence up to seq: producers may reuse them."""
    rb_store_release(&ring.consumers[consumer].value, seq)
    wake(ring, &ring.space_waiters.value, &ring.space_ready)


cdef void ring_wake(Ring* ring) noexcept nogil:
    """Wake the consumers napping in a wait, to re-check a condition of their own (a
    pause request); one checking between its condition and its nap sleeps on until
    its wait's timeout, so keep that short enough for the condition."""
    pthread_mutex_lock(&ring.lock)
    pthread_cond_broadcast(&ring.data_ready)
    pthread_mutex_unlock(&ring.lock)


cdef void ring_close(Ring* ring) noexcept nogil:
    """No more claims; waiting consumers return what is left, waiting producers give up."""
    rb_store_release(&ring.closed.value, 1)
    pthread_mutex_lock(&ring.lock)
    pthread_cond_broadcast(&ring.data_ready)
    pthread_cond_broadcast(&ring.space_ready)
    pthread_mutex_unlock(&ring.lock)


cdef void ring_write(Ring* ring, int64_t seq, const char* src, int64_t n) noexcept nogil:
    """Copy n records into the slots of seq.. (claimed), wrapping at the end."""
    cdef int64_t start = seq & ring.mask
    cdef int64_t first = n if start + n <= ring.capacity else ring.capacity - start
    memcpy(ring.records + start * ring.record_size, src, first * ring.record_size)
    if first < n:
        memcpy(ring.records, src + first * ring.record_size, (n - first) * ring.record_size)


cdef void ring_read(Ring* ring, int64_t seq, char* dst, int64_t n) noexcept nogil:
    """Copy n records out of the slots of seq.. (available), wrapping at the end."""
    cdef int64_t start = seq & ring.mask
    cdef int64_t first = n if start + n <= ring.capacity else ring.capacity - start
    memcpy(dst, ring.records + start * ring.record_size, first * ring.record_size)
    if first < n:
        memcpy(dst + first * ring.record_size, ring.records, (n - first) * ring.record_size)


# ---------------------------------------------------------------------------------
# Python API
# ---------------------------------------------------------------------------------

cdef cnp.ndarray _as_records(records, dtype):
    """A one-dimensional contiguous array of the ring's records, or a TypeError: values
    of another type are never cast silently (a float into an int64 ring, say)."""
    array = records if isinstance(records, np.ndarray) else np.asarray(records)
    if array.size == 0:
        return np.empty(0, dtype=dtype)
    same_fields = (dtype.names is not None and array.dtype.names == dtype.names and all(
        array.dtype.fields[name][0] == dtype.fields[name][0] for name in dtype.names))
    if array.dtype != dtype and not same_fields:
        raise TypeError(f"records must be of the ring's dtype {dtype}, not {array.dtype}")
    if array.ndim != 1:
        raise ValueError("records must be one-dimensional")
    return np.ascontiguousarray(array, dtype=dtype)


cdef class RingBuffer:
    """A ring of ``capacity`` numpy records of ``dtype`` between threads.

    ``consumers`` gives one wait strategy per consumer; every consumer sees every
    record (each keeps its own sequence) and producers wait for the slowest.
    ``multi_producer`` makes claims safe from several producer threads at once.
    All waiting happens without the GIL. Each consumer is read by one thread at a
    time; with ``multi_producer=False`` only one thread may publish.
    """

    def __cinit__(self, int64_t capacity, dtype, consumers=(WaitStrategy.BLOCKING,),
                  bint multi_producer=False):
        cdef int i
        self.dtype = np.dtype(dtype)
        if capacity < 1 or capacity & (capacity - 1) or capacity > (<int64_t>1 << 30):
            raise ValueError(f"capacity must be a power of two up to 2**30, got {capacity}")
        if self.dtype.itemsize == 0 or self.dtype.hasobject:
            raise ValueError("records must be plain fixed-size data")
        waits = [WaitStrategy(w) for w in consumers]
        if not 1 <= len(waits) <= MAX_CONSUMERS:
            raise ValueError(f"between 1 and {MAX_CONSUMERS} consumers, got {len(waits)}")
        self.ring = ring_new(capacity, self.dtype.itemsize, multi_producer, len(waits))
        if self.ring == NULL:
            raise MemoryError("cannot allocate the ring")
        for i in range(len(waits)):
            self.ring.waits[i] = <WaitKind><int>waits[i]

    def __dealloc__(self):
        if self.ring != NULL:
            ring_free(self.ring)

    def publish(self, records):
        """Publish records in order, waiting for room as needed; returns the last sequence.

        Raises RuntimeError if the ring is closed before all of them are published.
        """
        cdef cnp.ndarray array = _as_records(records, self.dtype)
        cdef const char* src = <const char*>cnp.PyArray_DATA(array)
        cdef int64_t n = array.shape[0], done = 0, chunk = 0, first = -1
        if self.closed:
            raise RuntimeError("ring closed")
        while done < n:
            chunk = min(n - done, self.ring.capacity)
            first = ring_try_claim(self.ring, chunk)     # room now: keep the GIL
            if first < 0:
                with nogil:                             # wait for room without it
                    first = ring_claim(self.ring, chunk)
            if first < 0:
                raise RuntimeError(f"ring closed after {done} of {n} records were published")
            ring_write(self.ring, first, src + done * self.ring.record_size, chunk)
            ring_publish(self.ring, first, first + chunk - 1)
            done += chunk
        return first + chunk - 1 if n else self.cursor

    def try_publish(self, records):
        """Publish all records at once if there is room now; returns False (nothing
        published) if the ring is too full or closed."""
        cdef cnp.ndarray array = _as_records(records, self.dtype)
        cdef int64_t n = array.shape[0], first
        if self.closed:
            return False
        if n == 0:
            return True
        if n > self.ring.capacity:
            return False
        first = ring_try_claim(self.ring, n)
        if first < 0:
            return False
        ring_write(self.ring, first, <const char*>cnp.PyArray_DATA(array), n)
        ring_publish(self.ring, first, first + n - 1)
        return True

    def poll(self, int consumer=0, int64_t max_records=4096, timeout=None):
        """Everything available to the consumer, up to max_records, as a new array.

        Waits (with the consumer's strategy) until at least one record is available,
        for at most ``timeout`` seconds (None or inf: no limit). Returns an empty array
        on timeout, or when the ring is closed and the consumer has read everything
        (close a ring only once its producers are done, or a record claimed before the
        close may come after a consumer took the empty poll as the end).
        """
        cdef int64_t first, available, n, timeout_ns = -1
        cdef cnp.ndarray out
        if not 0 <= consumer < self.ring.n_consumers:
            raise ValueError(f"no consumer {consumer}")
        if max_records < 1:
            raise ValueError("max_records must be >= 1")
        if timeout is not None and timeout != float("inf"):
            if timeout < 0:
                raise ValueError("timeout must be >= 0 or None")
            timeout_ns = int(timeout * 1e9)
        max_records = min(max_records, self.ring.capacity)
        first = self.ring.consumers[consumer].value + 1
        available = highest_available(self.ring, first, first + max_records - 1)
        if available < first:                           # wait without the GIL
            with nogil:
                available = ring_wait_for(self.ring, consumer, first, max_records, timeout_ns)
        n = available - first + 1
        if n <= 0:
            return np.empty(0, dtype=self.dtype)
        out = np.empty(n, dtype=self.dtype)
        ring_read(self.ring, first, <char*>cnp.PyArray_DATA(out), n)
        ring_release(self.ring, consumer, first + n - 1)
        return out

    def close(self):
        """Refuse further claims and wake every waiter (consumers still drain the rest)."""
        ring_close(self.ring)

    @property
    def capacity(self):
        return self.ring.capacity

    @property
    def closed(self):
        return bool(rb_load_acquire(&self.ring.closed.value))

    @property
    def cursor(self):
        """The highest sequence up to which everything is published (-1 before the first)."""
        return highest_available(self.ring, ring_min_consumer(self.ring) + 1)

    def consumer_sequence(self, int consumer=0):
        """The last sequence this consumer released (-1 before the first)."""
        if not 0 <= consumer < self.ring.n_consumers:
            raise ValueError(f"no consumer {consumer}")
        return rb_load_acquire(&self.ring.consumers[consumer].value)

    @property
    def claimed(self):
        """The highest sequence claimed by a producer (published or about to be)."""
        return rb_load_acquire(&self.ring.sp_claimed.value if not self.ring.multi_producer
                               else &self.ring.cursor.value)

    @property
    def fill(self):
        """Records claimed by producers and not yet released by the slowest consumer."""
        return self.claimed - ring_min_consumer(self.ring)
