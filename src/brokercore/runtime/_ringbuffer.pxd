# The C layer of the LMAX-style ring buffer: a preallocated power-of-two ring of
# fixed-size records, one or several producers, one or several consumers, each
# sequence on its own cache line. The matcher uses these functions without the GIL.

from libc.stdint cimport int32_t, int64_t

cdef extern from "<pthread.h>" nogil:
    ctypedef struct pthread_mutex_t:
        pass
    ctypedef struct pthread_cond_t:
        pass

cdef enum:
    CACHE_LINE = 64
    MAX_CONSUMERS = 8

cdef enum WaitKind:
    WAIT_BUSY_SPIN = 0                  # spin on the cursor: lowest latency, burns a core
    WAIT_YIELD = 1                      # spin a little, then sched_yield()
    WAIT_BLOCKING = 2                   # spin a little, then sleep on a condition variable

ctypedef struct Sequence:               # one sequence per cache line (no false sharing)
    int64_t value
    char _pad[CACHE_LINE - 8]

ctypedef struct Ring:
    Sequence cursor                     # single producer: last published; multi: last claimed
    Sequence gating_cache               # producers' last seen minimum of the consumers
    Sequence consumers[MAX_CONSUMERS]   # last sequence each consumer is done with
    Sequence data_waiters               # consumers asleep on data_ready
    Sequence space_waiters              # producers asleep on space_ready
    Sequence closed                     # 1 after close(): waiters return, claims fail
    Sequence sp_claimed                 # single producer only: last claimed (producer-private)
    char* records
    int32_t* published_round            # multi producer: round last published in each slot
    int64_t capacity                    # power of two
    int64_t mask
    int64_t record_size
    int shift                           # log2(capacity)
    int n_consumers
    bint multi_producer
    WaitKind waits[MAX_CONSUMERS]
    pthread_mutex_t lock
    pthread_cond_t data_ready
    pthread_cond_t space_ready


cdef Ring* ring_new(int64_t capacity, int64_t record_size, bint multi_producer,
                    int n_consumers) noexcept nogil
cdef void ring_free(Ring* ring) noexcept nogil
cdef int64_t ring_claim(Ring* ring, int64_t n) noexcept nogil
cdef int64_t ring_try_claim(Ring* ring, int64_t n) noexcept nogil
cdef void ring_publish(Ring* ring, int64_t lo, int64_t hi) noexcept nogil
cdef int64_t ring_wait_for(Ring* ring, int consumer, int64_t seq, int64_t max_n,
                           int64_t timeout_ns) noexcept nogil
cdef void ring_release(Ring* ring, int consumer, int64_t seq) noexcept nogil
cdef void ring_wake(Ring* ring) noexcept nogil
cdef void ring_close(Ring* ring) noexcept nogil
cdef void ring_write(Ring* ring, int64_t seq, const char* src, int64_t n) noexcept nogil
cdef void ring_read(Ring* ring, int64_t seq, char* dst, int64_t n) noexcept nogil
cdef int64_t ring_min_consumer(Ring* ring) noexcept nogil
cdef int64_t ring_highest_available(Ring* ring, int64_t seq) noexcept nogil
cdef int64_t seq_get(Sequence* seq) noexcept nogil
cdef void seq_set(Sequence* seq, int64_t value) noexcept nogil


cdef class RingBuffer:
    cdef Ring* ring
    cdef readonly object dtype


cdef inline char* ring_slot(Ring* ring, int64_t seq) noexcept nogil:
    """The record of a claimed or available sequence, in place."""
    return ring.records + (seq & ring.mask) * ring.record_size
