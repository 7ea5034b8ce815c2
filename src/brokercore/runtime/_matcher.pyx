# cython: language_level=3, wraparound=False, cdivision=True
# boundscheck and initializedcheck: off in Release, on in the debug build (CMakeLists.txt)
"""The matcher loop of a shard: input ring -> order books -> output ring, without the GIL.

One thread runs ``Matcher.run()``; it takes every available command up to a batch
limit, applies each to the book of its symbol (an unknown symbol yields a REJECTED
UNKNOWN_SYMBOL event), publishes the batch's events to the output ring, and only then
releases the commands. It returns when the input ring is closed and drained, or when a
pause is requested (so that the books can be snapshotted between batches).

With a mark ring, every batch also publishes a Mark after its events: the counts of
commands applied and events published so far. A reader of the events can then tell
exactly which commands they cover, which is what committing input offsets together
with output events needs.
"""

from libc.stdint cimport int32_t, int64_t
from libc.stdlib cimport free, malloc

from brokercore.engine._engine cimport (
    BUSY, Book, Command, Event, OrderBook, R_UNKNOWN_SYMBOL, READY, book_apply, events_reserve,
    write_reject,
)
from brokercore.runtime._ringbuffer cimport (
    RingBuffer, ring_claim, ring_highest_available, ring_publish, ring_release, ring_slot, ring_wait_for, ring_wake,
    ring_write,
    seq_get, seq_set,
)

from brokercore.engine.records import COMMAND_DTYPE, EVENT_DTYPE, MARK_DTYPE, MarkKind

cdef enum:
    MARK_BATCH = 1
    MARK_SNAPSHOT = 2
    RUN_DRAINED = 0                     # input closed and every command applied
    RUN_PAUSED = 1                      # a pause was requested
    ERR_NONE = 0
    ERR_NO_MEMORY = 1
    ERR_OUTPUT_CLOSED = 2
    MAX_SYMBOL_ID = 1 << 24

assert sizeof(Mark) == MARK_DTYPE.itemsize
assert MARK_BATCH == MarkKind.BATCH and MARK_SNAPSHOT == MarkKind.SNAPSHOT
DRAINED = RUN_DRAINED
PAUSED = RUN_PAUSED


cdef int apply_command(MatcherState* m, const Command* c) noexcept nogil:
    cdef int32_t index = m.book_of_symbol[c.symbol] if c.symbol < m.symbol_slots else -1
    if index >= 0:
        return book_apply(m.books[index], c, &m.scratch)
    if events_reserve(&m.scratch, 1) < 0:
        return -1
    m.scratch.count += 1                # a shard-level event: no book, so no seq
    write_reject(&m.scratch.data[m.scratch.count - 1], c, c.symbol, 0, R_UNKNOWN_SYMBOL)
    return 0


cdef int publish_events(Ring* ring, const Event* events, int64_t n) noexcept nogil:
    """Publish n events, in chunks the ring can hold; -1 if the ring was closed."""
    cdef int64_t done = 0, chunk, first
    while done < n:
        chunk = n - done if n - done < ring.capacity else ring.capacity
        first = ring_claim(ring, chunk)
        if first < 0:
            return -1
        ring_write(ring, first, <const char*>(events + done), chunk)
        ring_publish(ring, first, first + chunk - 1)
        done += chunk
    return 0


cdef int publish_mark(MatcherState* m) noexcept nogil:
    cdef Mark mark
    cdef int64_t s = ring_claim(m.marks, 1)
    if s < 0:
        return -1
    mark.kind = MARK_BATCH
    mark.commands = seq_get(&m.commands_applied)
    mark.events = seq_get(&m.events_published)
    ring_write(m.marks, s, <const char*>&mark, 1)
    ring_publish(m.marks, s, s)
    return 0


cdef int matcher_loop(MatcherState* m) noexcept nogil:
    cdef int64_t next_seq = seq_get(&m.next_seq), last, s
    while True:
        if seq_get(&m.pause_requested):
            return RUN_PAUSED
        last = ring_wait_for(m.commands, 0, next_seq, m.max_batch, m.idle_wait_ns)
        if last < next_seq:
            # Closed, and nothing published before the close is left (re-checked after
            # seeing the flag: a publish may have landed after the wait gave up).
            if (seq_get(&m.commands.closed)
                    and ring_highest_available(m.commands, next_seq) < next_seq):
                return RUN_DRAINED
            continue
        m.scratch.count = 0
        for s in range(next_seq, last + 1):
            if apply_command(m, <const Command*>ring_slot(m.commands, s)) < 0:
                m.error = ERR_NO_MEMORY
                return RUN_DRAINED
            seq_set(&m.next_seq, s + 1)  # applied: a pause or an error never repeats it
        if publish_events(m.events, m.scratch.data, m.scratch.count) < 0:
            m.error = ERR_OUTPUT_CLOSED
            return RUN_DRAINED
        seq_set(&m.commands_applied, seq_get(&m.commands_applied) + last - next_seq + 1)
        seq_set(&m.events_published, seq_get(&m.events_published) + m.scratch.count)
        if m.marks != NULL and publish_mark(m) < 0:
            m.error = ERR_OUTPUT_CLOSED
            return RUN_DRAINED
        ring_release(m.commands, 0, last)
        seq_set(&m.batches, seq_get(&m.batches) + 1)
        next_seq = last + 1


cdef class Matcher:
    """Owns the C state of a shard's matching loop over ``books`` (symbol id -> OrderBook).

    ``run()`` is called by the shard's matcher thread; the books are marked busy while it
    runs, so a stray per-order call from another thread gets a RuntimeError instead of
    racing the matcher.
    """

    def __init__(self, RingBuffer command_ring not None, RingBuffer event_ring not None,
                 dict books not None, int64_t max_batch=1024, double idle_wait=0.05,
                 RingBuffer mark_ring=None):
        cdef int64_t i
        cdef OrderBook book
        if command_ring.dtype != COMMAND_DTYPE or event_ring.dtype != EVENT_DTYPE:
            raise TypeError("the rings must carry COMMAND_DTYPE and EVENT_DTYPE records")
        if mark_ring is not None and mark_ring.dtype != MARK_DTYPE:
            raise TypeError("the mark ring must carry MARK_DTYPE records")
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        for symbol, book in books.items():
            if not 0 <= symbol < MAX_SYMBOL_ID or book.symbol != symbol:
                raise ValueError(f"book {book!r} registered under symbol id {symbol}")
        self.command_ring = command_ring
        self.event_ring = event_ring
        self.books = dict(books)
        self.state.commands = command_ring.ring
        self.state.events = event_ring.ring
        self.mark_ring = mark_ring
        self.state.marks = (<RingBuffer>mark_ring).ring if mark_ring is not None else NULL
        self.state.max_batch = max_batch
        self.state.idle_wait_ns = <int64_t>(idle_wait * 1e9)
        self.state.symbol_slots = max(books, default=-1) + 1
        self.state.books = <Book**>malloc((len(books) + 1) * sizeof(Book*))
        self.state.book_of_symbol = <int32_t*>malloc((self.state.symbol_slots + 1) * sizeof(int32_t))
        if self.state.books == NULL or self.state.book_of_symbol == NULL:
            raise MemoryError()
        for i in range(self.state.symbol_slots):
            self.state.book_of_symbol[i] = -1
        for i, (symbol, book) in enumerate(sorted(books.items())):
            self.state.books[i] = &book._book
            self.state.book_of_symbol[symbol] = i

    def __dealloc__(self):
        free(self.state.books)
        free(self.state.book_of_symbol)
        free(self.state.scratch.data)

    def run(self):
        """Apply commands until the input ring is closed and drained (returns DRAINED)
        or a pause is requested (returns PAUSED; call run() again to go on)."""
        cdef OrderBook book
        cdef int outcome
        claimed = []
        try:
            for book in self.books.values():
                book._enter()
                book._state = BUSY
                claimed.append(book)
            with nogil:
                outcome = matcher_loop(&self.state)
        finally:
            for book in claimed:
                book._state = READY
        if self.state.error == ERR_NO_MEMORY:
            raise MemoryError("out of memory while applying a command")
        if self.state.error == ERR_OUTPUT_CLOSED:
            raise RuntimeError("the event ring was closed while the matcher was publishing")
        return outcome

    def request_pause(self, bint pause=True):
        """Ask a running matcher to return from run() after its current batch."""
        seq_set(&self.state.pause_requested, pause)
        if pause:
            ring_wake(self.state.commands)  # an idle matcher sees it now, not after idle_wait

    @property
    def next_sequence(self):
        """The input sequence the matcher applies next (all before it are applied)."""
        return seq_get(&self.state.next_seq)

    @property
    def commands_applied(self):
        return seq_get(&self.state.commands_applied)

    @property
    def events_published(self):
        return seq_get(&self.state.events_published)

    @property
    def batches(self):
        return seq_get(&self.state.batches)
