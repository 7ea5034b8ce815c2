# The matcher: the nogil loop that moves commands from an input ring through the order
# books of a shard and publishes their events to an output ring.

from libc.stdint cimport int32_t, int64_t

from brokercore.engine._engine cimport Book, EventBuffer
from brokercore.runtime._ringbuffer cimport Ring, Sequence

ctypedef struct Mark:
    int64_t kind                        # MARK_BATCH or MARK_SNAPSHOT
    int64_t commands                    # commands applied by this matcher so far
    int64_t events                      # events published by this matcher so far

ctypedef struct MatcherState:
    Ring* commands                      # input ring of Command records, consumer 0
    Ring* events                        # output ring of Event records
    Ring* marks                         # optional ring of Mark records, one per batch
    Book** books                        # by book index
    int32_t* book_of_symbol             # symbol id -> book index, -1 = no such book
    int64_t symbol_slots                # length of book_of_symbol
    EventBuffer scratch                 # events of the batch being applied
    int64_t max_batch
    int64_t idle_wait_ns                # how long an idle wait lasts before re-checking
    Sequence next_seq                   # next input sequence to apply
    Sequence commands_applied
    Sequence events_published
    Sequence batches
    Sequence pause_requested
    int64_t error

cdef class Matcher:
    cdef MatcherState state
    cdef readonly object command_ring
    cdef readonly object event_ring
    cdef readonly object mark_ring
    cdef readonly dict books
