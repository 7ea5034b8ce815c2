# cython: language_level=3, wraparound=False, cdivision=True, embedsignature=True
# boundscheck and initializedcheck: off in Release, on in the debug build (CMakeLists.txt)
"""The array-backed order book: price-time priority matching in C, driven from Python.

Layout (see _engine.pxd): a ladder of price levels indexed by tick inside the band,
allocated in pages of 256 levels on first use; each level is a FIFO threaded through a
pool of order slots; an open-addressing map finds an order's slot by id; a three-level
bitmap (level bits per page, a bit per page, a bit per page word) finds the next
non-empty level without walking empty ones. Nothing here reads a clock or a random
source: the same commands give the same events, bit for bit. docs/engine.md is the
behaviour this code implements.
"""

from libc.stdint cimport INT64_MAX, int32_t, int64_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc, realloc
from libc.string cimport memcpy, memset

cimport numpy as cnp
from cpython.object cimport PyObject, PyTypeObject
from cpython.ref cimport Py_INCREF
import struct
import zlib

import numpy as np

from brokercore.engine import records
from brokercore.engine.records import (
    COMMAND_DTYPE, EVENT_DTYPE, LEVEL_DTYPE, MAX_BAND_LEVELS, ORDER_DTYPE, AuctionQuote, Op,
    Phase, RestingOrder, Side, Stp, Tif,
)

cnp.import_array()

cdef extern from "numpy/arrayobject.h":
    ctypedef struct PyArray_Descr
    PyTypeObject PyArray_Type
    object PyArray_NewFromDescr(PyTypeObject* subtype, PyArray_Descr* descr, int nd,
                                cnp.npy_intp* dims, cnp.npy_intp* strides, void* data,
                                int flags, PyObject* obj)

cdef extern from *:
    """
    #include <stdint.h>
    #include "_memory.h"
    #define bc_ctz(x) __builtin_ctzll(x)
    #define bc_clz(x) __builtin_clzll(x)
    """
    int bc_ctz(uint64_t x) noexcept nogil
    int bc_clz(uint64_t x) noexcept nogil
    void bc_prefault(void* p, size_t n) noexcept nogil
    void* bc_events_realloc(void* p, size_t used, size_t nbytes, size_t* faulted) noexcept nogil
    void* bc_prefault_start(void* base, size_t n) noexcept nogil
    void bc_prefault_progress(void* handle, size_t written) noexcept nogil
    void bc_prefault_stop(void* handle) noexcept nogil
    void bc_events_free(void* p) noexcept nogil
    void* bc_table_calloc(size_t count, size_t size) noexcept nogil
    void bc_table_free(void* p, size_t nbytes) noexcept nogil

cdef extern from *:
    """
    #define bc_prefetch(p) __builtin_prefetch(p)

    /* part * 100 >= whole * percent, without overflow (an iceberg's disclosed share). */
    static int bc_share_at_least(int64_t part, int64_t whole, int64_t percent) {
        return (__int128)part * 100 >= (__int128)whole * percent;
    }
    """
    bint bc_share_at_least(int64_t part, int64_t whole, int64_t percent) noexcept nogil
    void bc_prefetch(const void* p) noexcept nogil

cdef enum:
    MIN_POOL = 16
    MIN_IDS = 32
    MIN_EVENTS = 16
    KEEP_EVENTS = 65536                 # a batch's event buffer up to this size is reused
    PROGRESS_EVERY = 1024               # process(): commands between progress reports
    TAKER_STOPPED = 1                   # match(): self-trade prevention ended the taker
    WALKS = 16                          # level FIFOs walked at once by the auction's sums


# ---------------------------------------------------------------------------------
# Ladder: paged price levels and the bitmaps that find the best non-empty level
# ---------------------------------------------------------------------------------

cdef int ladder_init(Ladder* lad, int64_t low, int64_t nlevels) noexcept nogil:
    memset(lad, 0, sizeof(Ladder))
    lad.low = low
    lad.nlevels = nlevels
    lad.npages = (nlevels + PAGE_LEVELS - 1) >> PAGE_SHIFT
    lad.n_page_words = (lad.npages + 63) >> 6
    lad.n_word_words = (lad.n_page_words + 63) >> 6
    lad.best_bid = -1
    lad.best_ask = -1
    lad.pages = <Page**>calloc(lad.npages, sizeof(Page*))
    lad.page_bits = <uint64_t*>calloc(lad.n_page_words, sizeof(uint64_t))
    lad.word_bits = <uint64_t*>calloc(lad.n_word_words, sizeof(uint64_t))
    if lad.pages == NULL or lad.page_bits == NULL or lad.word_bits == NULL:
        ladder_free(lad)
        return -1
    return 0


cdef void ladder_free(Ladder* lad) noexcept nogil:
    cdef int64_t p
    if lad.pages != NULL:
        for p in range(lad.npages):
            free(lad.pages[p])
    free(lad.pages)
    free(lad.page_bits)
    free(lad.word_bits)
    lad.pages = NULL
    lad.page_bits = NULL
    lad.word_bits = NULL


cdef int ladder_ensure_page(Ladder* lad, int64_t idx) noexcept nogil:
    """Allocate the page holding level idx before anything is changed that needs it."""
    cdef int64_t p = idx >> PAGE_SHIFT
    cdef Page* page
    if lad.pages[p] != NULL:
        return 0
    page = <Page*>malloc(sizeof(Page))
    if page == NULL:
        return -1
    memset(page.bits, 0, sizeof(page.bits))
    memset(page.levels, 0xFF, sizeof(page.levels))      # head = tail = -1
    lad.pages[p] = page
    lad.npages_used += 1
    return 0


cdef inline Level* level_at(Ladder* lad, int64_t idx) noexcept nogil:
    return &lad.pages[idx >> PAGE_SHIFT].levels[idx & (PAGE_LEVELS - 1)]


cdef inline int64_t first_bit(uint64_t* page_words, int64_t p) noexcept nogil:
    cdef int w
    for w in range(PAGE_WORDS):
        if page_words[w]:
            return (p << PAGE_SHIFT) + (w << 6) + bc_ctz(page_words[w])
    return -1


cdef inline int64_t last_bit(uint64_t* page_words, int64_t p) noexcept nogil:
    cdef int w
    for w in range(PAGE_WORDS - 1, -1, -1):
        if page_words[w]:
            return (p << PAGE_SHIFT) + (w << 6) + 63 - bc_clz(page_words[w])
    return -1


cdef int64_t page_at_or_after(Ladder* lad, int64_t p) noexcept nogil:
    """Lowest non-empty page >= p, or -1."""
    cdef int64_t w, ww
    cdef uint64_t bits
    if p >= lad.npages:
        return -1
    w = p >> 6
    bits = lad.page_bits[w] & (~<uint64_t>0 << (p & 63))
    if bits:
        return (w << 6) + bc_ctz(bits)
    w += 1
    if w >= lad.n_page_words:
        return -1
    ww = w >> 6
    bits = lad.word_bits[ww] & (~<uint64_t>0 << (w & 63))
    while not bits:
        ww += 1
        if ww >= lad.n_word_words:
            return -1
        bits = lad.word_bits[ww]
    w = (ww << 6) + bc_ctz(bits)
    return (w << 6) + bc_ctz(lad.page_bits[w])


cdef int64_t page_at_or_before(Ladder* lad, int64_t p) noexcept nogil:
    """Highest non-empty page <= p, or -1."""
    cdef int64_t w, ww
    cdef uint64_t bits
    if p < 0:
        return -1
    w = p >> 6
    bits = lad.page_bits[w] & (~<uint64_t>0 >> (63 - (p & 63)))
    if bits:
        return (w << 6) + 63 - bc_clz(bits)
    w -= 1
    if w < 0:
        return -1
    ww = w >> 6
    bits = lad.word_bits[ww] & (~<uint64_t>0 >> (63 - (w & 63)))
    while not bits:
        ww -= 1
        if ww < 0:
            return -1
        bits = lad.word_bits[ww]
    w = (ww << 6) + 63 - bc_clz(bits)
    return (w << 6) + 63 - bc_clz(lad.page_bits[w])


cdef int64_t level_at_or_above(Ladder* lad, int64_t idx) noexcept nogil:
    """Lowest non-empty level index >= idx, or -1."""
    cdef int64_t p, w
    cdef uint64_t bits
    cdef Page* page
    if idx >= lad.nlevels:
        return -1
    p = idx >> PAGE_SHIFT
    page = lad.pages[p]
    if page != NULL:
        w = (idx >> 6) & (PAGE_WORDS - 1)
        bits = page.bits[w] & (~<uint64_t>0 << (idx & 63))
        while True:
            if bits:
                return (p << PAGE_SHIFT) + (w << 6) + bc_ctz(bits)
            w += 1
            if w == PAGE_WORDS:
                break
            bits = page.bits[w]
    p = page_at_or_after(lad, p + 1)
    if p < 0:
        return -1
    return first_bit(lad.pages[p].bits, p)


cdef int64_t level_at_or_below(Ladder* lad, int64_t idx) noexcept nogil:
    """Highest non-empty level index <= idx, or -1."""
    cdef int64_t p, w
    cdef uint64_t bits
    cdef Page* page
    if idx < 0:
        return -1
    p = idx >> PAGE_SHIFT
    page = lad.pages[p]
    if page != NULL:
        w = (idx >> 6) & (PAGE_WORDS - 1)
        bits = page.bits[w] & (~<uint64_t>0 >> (63 - (idx & 63)))
        while True:
            if bits:
                return (p << PAGE_SHIFT) + (w << 6) + 63 - bc_clz(bits)
            w -= 1
            if w < 0:
                break
            bits = page.bits[w]
    p = page_at_or_before(lad, p - 1)
    if p < 0:
        return -1
    return last_bit(lad.pages[p].bits, p)


cdef inline void mark_level_filled(Ladder* lad, int64_t idx, uint8_t side) noexcept nogil:
    cdef int64_t p = idx >> PAGE_SHIFT
    cdef Page* page = lad.pages[p]
    cdef int w
    cdef bint page_was_empty = True
    for w in range(PAGE_WORDS):
        if page.bits[w]:
            page_was_empty = False
    page.bits[(idx >> 6) & (PAGE_WORDS - 1)] |= <uint64_t>1 << (idx & 63)
    if page_was_empty:
        if lad.page_bits[p >> 6] == 0:
            lad.word_bits[p >> 12] |= <uint64_t>1 << ((p >> 6) & 63)
        lad.page_bits[p >> 6] |= <uint64_t>1 << (p & 63)
    if side == SIDE_BUY:
        if idx > lad.best_bid:
            lad.best_bid = idx
    elif lad.best_ask < 0 or idx < lad.best_ask:
        lad.best_ask = idx


cdef inline void mark_level_emptied(Ladder* lad, int64_t idx) noexcept nogil:
    cdef int64_t p = idx >> PAGE_SHIFT
    cdef Page* page = lad.pages[p]
    cdef int w
    page.bits[(idx >> 6) & (PAGE_WORDS - 1)] &= ~(<uint64_t>1 << (idx & 63))
    for w in range(PAGE_WORDS):
        if page.bits[w]:
            break
    else:
        lad.page_bits[p >> 6] &= ~(<uint64_t>1 << (p & 63))
        if lad.page_bits[p >> 6] == 0:
            lad.word_bits[p >> 12] &= ~(<uint64_t>1 << ((p >> 6) & 63))
    # A ladder holds one side: its levels sit at or below its best bid, or at or above
    # its best ask.
    if idx == lad.best_bid:
        lad.best_bid = level_at_or_below(lad, idx - 1)
    elif idx == lad.best_ask:
        lad.best_ask = level_at_or_above(lad, idx + 1)


cdef inline void link_at(Ladder* lad, Order* pool, int32_t slot, int64_t idx,
                         uint8_t mark) noexcept nogil:
    """Append a pool slot to the FIFO of level idx (its page must exist); mark says which
    end of the ladder the level counts for (SIDE_BUY: best_bid, SIDE_SELL: best_ask)."""
    cdef Order* o = &pool[slot]
    cdef Level* lvl = level_at(lad, idx)
    o.next = -1
    o.prev = lvl.tail
    if lvl.tail >= 0:
        pool[lvl.tail].next = slot
    else:
        lvl.head = slot
        mark_level_filled(lad, idx, mark)
    lvl.tail = slot


cdef inline void link_head_at(Ladder* lad, Order* pool, int32_t slot, int64_t idx,
                              uint8_t mark) noexcept nogil:
    """Put a pool slot at the front of the FIFO of level idx (its page must exist)."""
    cdef Order* o = &pool[slot]
    cdef Level* lvl = level_at(lad, idx)
    o.prev = -1
    o.next = lvl.head
    if lvl.head >= 0:
        pool[lvl.head].prev = slot
    else:
        lvl.tail = slot
        mark_level_filled(lad, idx, mark)
    lvl.head = slot


cdef inline void unlink_at(Ladder* lad, Order* pool, int32_t slot, int64_t idx) noexcept nogil:
    cdef Order* o = &pool[slot]
    cdef Level* lvl = level_at(lad, idx)
    if o.prev >= 0:
        pool[o.prev].next = o.next
    else:
        lvl.head = o.next
    if o.next >= 0:
        pool[o.next].prev = o.prev
    else:
        lvl.tail = o.prev
    if lvl.head < 0:
        mark_level_emptied(lad, idx)


cdef inline void move_to_tail(Ladder* lad, Order* pool, int32_t slot, int64_t idx) noexcept nogil:
    """Send an order to the back of its own level (an iceberg's refresh): no bitmap change."""
    cdef Order* o = &pool[slot]
    cdef Level* lvl = level_at(lad, idx)
    if o.next < 0:
        return
    if o.prev >= 0:
        pool[o.prev].next = o.next
    else:
        lvl.head = o.next
    pool[o.next].prev = o.prev
    o.prev = lvl.tail
    o.next = -1
    pool[lvl.tail].next = slot
    lvl.tail = slot


cdef inline int64_t next_level_in_book_order(Ladder* lad, int64_t idx, uint8_t side) noexcept nogil:
    """The level after idx on the same side, walking away from the touch."""
    if side == SIDE_BUY:
        return level_at_or_below(lad, idx - 1)
    return level_at_or_above(lad, idx + 1)


# ---------------------------------------------------------------------------------
# Order id map
# ---------------------------------------------------------------------------------

cdef inline uint64_t id_home(int64_t order_id, int64_t capacity) noexcept nogil:
    # Sequential ids land in neighbouring entries (cache friendly); the high bits are
    # folded in so ids that differ only above the mask do not pile onto one entry.
    cdef uint64_t k = <uint64_t>order_id
    return (k ^ (k >> 21) ^ (k >> 42)) & <uint64_t>(capacity - 1)


cdef inline IdEntry* ids_probe(IdMap* m, int64_t order_id) noexcept nogil:
    """The entry holding order_id, or the empty entry where it would go."""
    cdef uint64_t mask = <uint64_t>(m.capacity - 1)
    cdef uint64_t i = id_home(order_id, m.capacity)
    cdef IdEntry* e
    while True:
        e = &m.entries[i]
        if e.order_id == order_id or e.order_id == 0:
            return e
        i = (i + 1) & mask


cdef inline IdEntry* ids_find(IdMap* m, int64_t order_id) noexcept nogil:
    cdef IdEntry* e
    if order_id <= 0:
        return NULL
    e = ids_probe(m, order_id)
    return e if e.order_id == order_id else NULL


cdef int ids_rebuild(IdMap* m, int64_t capacity, bint keep_spent) noexcept nogil:
    """Move the entries into a fresh table of the given capacity (a power of two)."""
    cdef IdEntry* old = m.entries
    cdef int64_t old_capacity = m.capacity, i
    cdef IdEntry* e
    cdef IdEntry* fresh = <IdEntry*>bc_table_calloc(capacity, sizeof(IdEntry))
    if fresh == NULL:
        return -1
    if not keep_spent:      # OPEN's rebuild: fault the table in before orders arrive
        bc_prefault(fresh, capacity * sizeof(IdEntry))
    m.entries = fresh
    m.capacity = capacity
    m.count = 0
    for i in range(old_capacity):
        if old[i].order_id != 0 and (keep_spent or old[i].slot >= 0):
            e = ids_probe(m, old[i].order_id)
            e[0] = old[i]
            m.count += 1
    bc_table_free(old, old_capacity * sizeof(IdEntry))
    return 0


cdef inline int ids_reserve_one(IdMap* m) noexcept nogil:
    if (m.count + 1) * 2 > m.capacity:
        return ids_rebuild(m, m.capacity * 2, True)
    return 0


cdef inline void ids_mark_spent(IdMap* m, int64_t order_id) noexcept nogil:
    ids_probe(m, order_id).slot = -1


# ---------------------------------------------------------------------------------
# Order pool and event buffer
# ---------------------------------------------------------------------------------

cdef int pool_reserve_one(Book* b) noexcept nogil:
    cdef int32_t i, old = b.pool_capacity, capacity
    cdef Order* grown
    if b.free_head >= 0:
        return 0
    if old >= 0x40000000:
        return -1
    capacity = old * 2 if old else MIN_POOL
    grown = <Order*>realloc(b.pool, capacity * sizeof(Order))
    if grown == NULL:
        return -1
    b.pool = grown
    for i in range(old, capacity):
        grown[i].next = i + 1 if i + 1 < capacity else -1
    b.free_head = old
    b.pool_capacity = capacity
    return 0


cdef inline int32_t pool_take(Book* b) noexcept nogil:
    cdef int32_t slot = b.free_head
    b.free_head = b.pool[slot].next
    return slot


cdef inline void pool_give_back(Book* b, int32_t slot) noexcept nogil:
    b.pool[slot].next = b.free_head
    b.free_head = slot


cdef int events_reserve(EventBuffer* out, int64_t extra) noexcept nogil:
    cdef int64_t capacity = out.capacity if out.capacity else MIN_EVENTS
    cdef Event* grown
    cdef size_t faulted
    if out.count + extra <= out.capacity:
        return 0
    while capacity < out.count + extra:
        capacity *= 2
    bc_prefault_stop(out.prefault)      # the buffer may move
    out.prefault = NULL
    grown = <Event*>bc_events_realloc(out.data, out.count * sizeof(Event), capacity * sizeof(Event),
                                      &faulted)
    if grown == NULL:
        return -1
    out.data = grown
    out.capacity = capacity
    out.faulted = faulted
    return 0


cdef inline Event* emit(Book* b, EventBuffer* out, const Command* c, uint8_t etype,
                        uint8_t reason) noexcept nogil:
    """Append an event (room was reserved for the whole command) with its header set."""
    cdef Event* e = &out.data[out.count]
    out.count += 1
    b.seq += 1
    e.symbol = b.symbol
    e.type = etype
    e.reason = reason
    e.op = c.op
    e.side = 0
    e.seq = b.seq
    e.ts = c.ts
    e.order_id = 0
    e.account = 0
    e.price = 0
    e.qty = 0
    e.remaining = 0
    e.other_id = 0
    e.other_account = 0
    e.other_remaining = 0
    return e


cdef void write_reject(Event* e, const Command* c, uint32_t symbol, int64_t seq,
                       uint8_t reason) noexcept nogil:
    """A REJECTED event that echoes the command's raw fields."""
    e.symbol = symbol
    e.type = EV_REJECTED
    e.reason = reason
    e.op = c.op
    e.side = c.side
    e.seq = seq
    e.ts = c.ts
    e.order_id = c.order_id
    e.account = c.account
    e.price = c.price
    e.qty = c.qty
    e.remaining = 0
    e.other_id = 0
    e.other_account = 0
    e.other_remaining = 0


cdef void emit_reject(Book* b, EventBuffer* out, const Command* c, uint8_t reason) noexcept nogil:
    """A REJECTED event (rare: a call, not inlined into the hot handlers)."""
    b.seq += 1
    out.count += 1
    write_reject(&out.data[out.count - 1], c, b.symbol, b.seq, reason)


cdef inline void emit_order(Book* b, EventBuffer* out, const Command* c, uint8_t etype,
                            uint8_t reason, const Order* o, int64_t qty,
                            int64_t remaining) noexcept nogil:
    cdef Event* e = emit(b, out, c, etype, reason)
    e.side = o.side
    e.order_id = o.order_id
    e.account = o.account
    e.price = o.price
    e.qty = qty
    e.remaining = remaining


cdef inline void emit_trade(Book* b, EventBuffer* out, const Command* c, const Order* taker,
                            const Order* maker, int64_t qty) noexcept nogil:
    cdef Event* e = emit(b, out, c, EV_TRADE, R_NONE)
    e.side = taker.side
    e.order_id = taker.order_id
    e.account = taker.account
    e.price = maker.price
    e.qty = qty
    e.remaining = taker.qty
    e.other_id = maker.order_id
    e.other_account = maker.account
    e.other_remaining = maker.qty


# ---------------------------------------------------------------------------------
# Book life cycle
# ---------------------------------------------------------------------------------

cdef inline int64_t ids_capacity_for(int64_t ids) noexcept nogil:
    """The id map capacity that holds ids entries without growing (load <= 1/2)."""
    cdef int64_t capacity = MIN_IDS
    while capacity < 2 * ids + 2:
        capacity *= 2
    return capacity


cdef int book_init(Book* b, int64_t low, int64_t high, int64_t lot_size, uint32_t symbol,
                   uint8_t default_stp, int64_t session_orders,
                   int64_t min_disclosed_percent) noexcept nogil:
    """Set up an empty, open book; the caller has validated the arguments."""
    memset(b, 0, sizeof(Book))
    b.free_head = -1
    b.lot_size = lot_size
    b.max_qty = INT64_MAX // high
    b.symbol = symbol
    b.default_stp = default_stp
    b.phase = PHASE_OPEN
    b.min_disclosed_percent = min_disclosed_percent
    b.market_head[SIDE_BUY] = b.market_head[SIDE_SELL] = -1
    b.market_tail[SIDE_BUY] = b.market_tail[SIDE_SELL] = -1
    b.ids_floor = ids_capacity_for(session_orders)
    b.ids.entries = <IdEntry*>bc_table_calloc(b.ids_floor, sizeof(IdEntry))
    b.ids.capacity = b.ids_floor
    if b.ids.entries != NULL:
        bc_prefault(b.ids.entries, b.ids_floor * sizeof(IdEntry))
    if (b.ids.entries == NULL or ladder_init(&b.bids, low, high - low + 1) < 0
            or ladder_init(&b.asks, low, high - low + 1) < 0):
        book_free(b)
        return -1
    return 0


cdef void book_free(Book* b) noexcept nogil:
    ladder_free(&b.bids)
    ladder_free(&b.asks)
    ladder_free(&b.stops[SIDE_BUY])
    ladder_free(&b.stops[SIDE_SELL])
    b.stops_ready = False
    free(b.pool)
    bc_table_free(b.ids.entries, b.ids.capacity * sizeof(IdEntry))
    free(b.queue)
    b.pool = NULL
    b.ids.entries = NULL
    b.queue = NULL


cdef int stops_init(Book* b) noexcept nogil:
    """Allocate the waiting stops' ladders on the book's first stop."""
    cdef Ladder* lad = &b.bids
    if b.stops_ready:
        return 0
    if ladder_init(&b.stops[SIDE_BUY], lad.low, lad.nlevels) < 0:
        return -1
    if ladder_init(&b.stops[SIDE_SELL], lad.low, lad.nlevels) < 0:
        ladder_free(&b.stops[SIDE_BUY])
        return -1
    b.stops_ready = True
    return 0


cdef inline int64_t band_high(Book* b) noexcept nogil:
    return b.bids.low + b.bids.nlevels - 1


cdef inline bint in_band(Book* b, int64_t price) noexcept nogil:
    return b.bids.low <= price <= band_high(b)


cdef inline Ladder* side_ladder(Book* b, uint8_t side) noexcept nogil:
    return &b.bids if side == SIDE_BUY else &b.asks


cdef inline int64_t best_opposite(Book* b, uint8_t side) noexcept nogil:
    return b.asks.best_ask if side == SIDE_BUY else b.bids.best_bid


cdef inline bint crosses(Book* b, uint8_t side, int64_t price) noexcept nogil:
    """Would a limit order of this side and price meet the opposite side?"""
    cdef int64_t idx = best_opposite(b, side)
    if idx < 0:
        return False
    if side == SIDE_BUY:
        return b.asks.low + idx <= price
    return b.bids.low + idx >= price


cdef inline uint8_t quantity_reason(Book* b, int64_t qty) noexcept nogil:
    # (no division for the common lot of 1)
    if qty <= 0 or (b.lot_size != 1 and qty % b.lot_size != 0):
        return R_INVALID_QUANTITY
    if qty > b.max_qty:
        return R_QUANTITY_TOO_LARGE
    return R_NONE


cdef inline uint8_t disclosed_reason(Book* b, int64_t disclosed, int64_t qty) noexcept nogil:
    """An iceberg's disclosed quantity against its whole quantity (0: a plain order)."""
    if disclosed == 0:
        return R_NONE
    if (disclosed < 0 or disclosed % b.lot_size != 0 or disclosed > qty
            or not bc_share_at_least(disclosed, qty, b.min_disclosed_percent)):
        return R_INVALID_DISCLOSED
    return R_NONE


cdef inline bint reached(Book* b, uint8_t side, int64_t trigger) noexcept nogil:
    """Has the last trade reached this trigger? Nothing is reached before a trade."""
    if b.last_price <= 0:
        return False
    return trigger <= b.last_price if side == SIDE_BUY else trigger >= b.last_price


cdef uint8_t stop_price_reason(Book* b, uint8_t op, uint8_t side, int64_t price,
                               int64_t trigger) noexcept nogil:
    """A stop's limit and trigger, for new stops and amends of waiting ones."""
    if op == OP_STOP:
        if price != 0:
            return R_INVALID_PRICE
    elif not in_band(b, price):
        return R_PRICE_OUT_OF_BAND
    if not in_band(b, trigger) or reached(b, side, trigger):
        return R_INVALID_TRIGGER
    if op == OP_STOP_LIMIT and (price < trigger if side == SIDE_BUY else price > trigger):
        return R_INVALID_TRIGGER
    return R_NONE


cdef inline int64_t hidden_parts(const Order* o) noexcept nogil:
    """How many more parts a resting iceberg will show after the current one (0: plain)."""
    if o.disclosed == 0:
        return 0
    return (o.qty - o.shown + o.disclosed - 1) // o.disclosed


cdef inline int64_t shown_qty(const Order* o) noexcept nogil:
    """What the market sees of a resting order."""
    return o.shown if o.disclosed else o.qty


cdef inline void rest(Book* b, Ladder* lad, int32_t slot) noexcept nogil:
    """Put a limit order (op LIMIT) at the tail of its level in lad, its side's ladder;
    an iceberg shows its first part."""
    cdef Order* o = &b.pool[slot]
    if o.disclosed:
        o.shown = o.disclosed if o.disclosed < o.qty else o.qty
        b.hidden_parts += hidden_parts(o)
    link_at(lad, b.pool, slot, o.price - lad.low, o.side)


cdef inline void take_out(Book* b, Ladder* lad, int32_t slot) noexcept nogil:
    """Unlink a resting order from its level in lad, its side's ladder (it stays live:
    an amend moves it)."""
    cdef Order* o = &b.pool[slot]
    if o.disclosed:
        b.hidden_parts -= hidden_parts(o)
    unlink_at(lad, b.pool, slot, o.price - lad.low)


cdef inline void stop_link(Book* b, int32_t slot) noexcept nogil:
    """A waiting stop joins the tail of its trigger's level (buys: lowest trigger first)."""
    cdef Order* o = &b.pool[slot]
    cdef Ladder* lad = &b.stops[o.side]
    link_at(lad, b.pool, slot, o.trigger - lad.low, SIDE_SELL if o.side == SIDE_BUY else SIDE_BUY)
    b.nstops += 1
    b.stop_qty += o.qty


cdef inline void stop_unlink(Book* b, int32_t slot) noexcept nogil:
    cdef Order* o = &b.pool[slot]
    cdef Ladder* lad = &b.stops[o.side]
    unlink_at(lad, b.pool, slot, o.trigger - lad.low)
    b.nstops -= 1
    b.stop_qty -= o.qty


cdef inline void market_push(Book* b, int32_t slot) noexcept nogil:
    """A market order waits for the uncross at the tail of its side's queue."""
    cdef Order* o = &b.pool[slot]
    o.op = OP_MARKET
    o.next = -1
    o.prev = b.market_tail[o.side]
    if o.prev >= 0:
        b.pool[o.prev].next = slot
    else:
        b.market_head[o.side] = slot
    b.market_tail[o.side] = slot
    b.markets += 1


cdef inline void market_unlink(Book* b, int32_t slot) noexcept nogil:
    cdef Order* o = &b.pool[slot]
    if o.prev >= 0:
        b.pool[o.prev].next = o.next
    else:
        b.market_head[o.side] = o.next
    if o.next >= 0:
        b.pool[o.next].prev = o.prev
    else:
        b.market_tail[o.side] = o.prev
    b.markets -= 1


cdef inline void forget_slot(Book* b, int32_t slot) noexcept nogil:
    """The order is finished: its id stays spent, its slot is free."""
    ids_mark_spent(&b.ids, b.pool[slot].order_id)
    pool_give_back(b, slot)
    b.live -= 1


cdef inline void remove_order(Book* b, int32_t slot) noexcept nogil:
    """Take a resting order out of the book for good; its id stays spent."""
    take_out(b, side_ladder(b, b.pool[slot].side), slot)
    forget_slot(b, slot)


cdef void remove_any(Book* b, int32_t slot) noexcept nogil:
    """Take any live order (resting, waiting market order, waiting stop) out for good."""
    cdef uint8_t op = b.pool[slot].op
    if op == OP_LIMIT:
        take_out(b, side_ladder(b, b.pool[slot].side), slot)
    elif op == OP_MARKET:
        market_unlink(b, slot)
    else:
        stop_unlink(b, slot)
    forget_slot(b, slot)


# ---------------------------------------------------------------------------------
# Matching
# ---------------------------------------------------------------------------------

cdef bint fok_fillable(Book* b, const Order* t, bint market, uint8_t stp) noexcept nogil:
    """Can the taker fill completely right now? (docs/engine.md, FOK fillability) It walks
    a level as matching meets it: the FIFO's shown parts in turn (an own order there stops
    the walk unless it is skipped or traded with), then the icebergs' hidden parts, which
    their refreshes show at the tail once the FIFO was met."""
    cdef Ladder* lad = &b.asks if t.side == SIDE_BUY else &b.bids
    cdef int64_t need = t.qty
    cdef int64_t idx = best_opposite(b, t.side)
    cdef int64_t price
    cdef bc_wide hidden
    cdef int32_t slot
    cdef Order* m
    while idx >= 0:
        price = lad.low + idx
        if not market and (price > t.price if t.side == SIDE_BUY else price < t.price):
            return False
        hidden = 0
        slot = level_at(lad, idx).head
        while slot >= 0:
            m = &b.pool[slot]
            if m.account == t.account and stp != STP_NONE:
                if stp != STP_CANCEL_OLDEST:
                    return False
            else:
                need -= shown_qty(m)
                if need <= 0:
                    return True
                hidden += m.qty - shown_qty(m)
            slot = m.next
        if hidden >= need:
            return True
        need -= <int64_t>hidden
        idx = next_level_in_book_order(lad, idx, SIDE_SELL if t.side == SIDE_BUY else SIDE_BUY)
    return False


cdef void iceberg_part_taken(Book* b, Ladder* lad, int32_t slot, int64_t idx,
                             int64_t q) noexcept nogil:
    """q of a resting iceberg's shown part went (it has quantity left): when the shown
    part is used up the next one is shown at the tail of the level."""
    cdef Order* m = &b.pool[slot]
    m.shown -= q
    if m.shown == 0:
        m.shown = m.disclosed if m.disclosed < m.qty else m.qty
        b.hidden_parts -= 1
        move_to_tail(lad, b.pool, slot, idx)


cdef inline void sift_down(Order* pool, int32_t* a, int64_t root, int64_t n) noexcept nogil:
    cdef int64_t child
    cdef int32_t top = a[root]
    while True:
        child = 2 * root + 1
        if child >= n:
            break
        if child + 1 < n and pool[a[child + 1]].stamp > pool[a[child]].stamp:
            child += 1
        if pool[a[child]].stamp <= pool[top].stamp:
            break
        a[root] = a[child]
        root = child
    a[root] = top


cdef void sort_by_stamp(Order* pool, int32_t* a, int64_t n) noexcept nogil:
    """Heap sort of stop slots by stamp (stamps are unique): O(n log n), no memory."""
    cdef int64_t i
    cdef int32_t top
    if n < 2:
        return
    for i in range(n // 2 - 1, -1, -1):
        sift_down(pool, a, i, n)
    for i in range(n - 1, 0, -1):
        top = a[0]
        a[0] = a[i]
        a[i] = top
        sift_down(pool, a, 0, i)


cdef void collect_triggered(Book* b, int64_t low_price, int64_t high_price) noexcept nogil:
    """After a step that traded between low_price and high_price: move every waiting stop
    it reached to the trigger queue, by stamp (the queue has room for every stop)."""
    cdef int64_t start = b.queue_len, idx, i, j
    cdef int32_t slot, next_slot, key
    cdef Ladder* lad
    cdef Level* lvl
    cdef uint8_t side
    for side in range(SIDE_BUY, SIDE_SELL + 1):
        lad = &b.stops[side]
        while True:
            idx = lad.best_ask if side == SIDE_BUY else lad.best_bid
            if idx < 0 or (lad.low + idx > high_price if side == SIDE_BUY
                           else lad.low + idx < low_price):
                break
            lvl = level_at(lad, idx)
            slot = lvl.head
            while slot >= 0:
                next_slot = b.pool[slot].next
                b.queue[b.queue_len] = slot
                b.queue_len += 1
                b.nstops -= 1
                b.stop_qty -= b.pool[slot].qty
                slot = next_slot
            lvl.head = lvl.tail = -1
            mark_level_emptied(lad, idx)
    sort_by_stamp(b.pool, b.queue + start, b.queue_len - start)


cdef inline void after_step(Book* b, int64_t first) noexcept nogil:
    """A step traded from price first to the book's last price: the stops it reached."""
    cdef int64_t last = b.last_price
    if b.nstops:
        if first < last:
            collect_triggered(b, first, last)
        else:
            collect_triggered(b, last, first)


cdef int match(Book* b, int32_t tslot, bint market, uint8_t stp, const Command* c,
               EventBuffer* out) noexcept nogil:
    """Trade the taker in pool slot tslot (not linked in the ladder) against the book.

    Returns TAKER_STOPPED when self-trade prevention cancelled the taker, else 0 with
    the taker's open quantity left in its slot.
    """
    cdef Order* pool = b.pool
    cdef Order* t = &pool[tslot]
    cdef bint buy = t.side == SIDE_BUY
    cdef Ladder* lad = &b.asks if buy else &b.bids
    cdef int64_t idx, price, q, first = 0
    cdef int32_t mslot
    cdef int outcome = 0
    cdef Order* m
    while t.qty > 0:
        idx = lad.best_ask if buy else lad.best_bid
        if idx < 0:
            break
        price = lad.low + idx
        if not market and (price > t.price if buy else price < t.price):
            break
        mslot = level_at(lad, idx).head
        m = &pool[mslot]
        if m.account == t.account and stp != STP_NONE:
            if stp == STP_CANCEL_OLDEST:
                emit_order(b, out, c, EV_CANCELLED, R_SELF_TRADE, m, m.qty, 0)
                remove_order(b, mslot)
                continue
            if stp == STP_DECREMENT:
                q = t.qty if t.qty < shown_qty(m) else shown_qty(m)
                if m.qty > q:
                    m.qty -= q
                    emit_order(b, out, c, EV_AMENDED, R_SELF_TRADE, m, m.qty, m.qty)
                    if m.disclosed:
                        iceberg_part_taken(b, lad, mslot, idx, q)
                else:
                    emit_order(b, out, c, EV_CANCELLED, R_SELF_TRADE, m, m.qty, 0)
                    remove_order(b, mslot)
                if t.qty > q:
                    t.qty -= q
                    emit_order(b, out, c, EV_AMENDED, R_SELF_TRADE, t, t.qty, t.qty)
                    continue
            elif stp == STP_CANCEL_BOTH:
                emit_order(b, out, c, EV_CANCELLED, R_SELF_TRADE, m, m.qty, 0)
                remove_order(b, mslot)
            emit_order(b, out, c, EV_CANCELLED, R_SELF_TRADE, t, t.qty, 0)
            t.qty = 0
            outcome = TAKER_STOPPED
            break
        q = t.qty if t.qty < m.qty else m.qty
        if m.disclosed and q > m.shown:
            q = m.shown
        t.qty -= q
        m.qty -= q
        if first == 0:
            first = price
        b.last_price = price
        emit_trade(b, out, c, t, m, q)
        if m.qty == 0:                  # (an iceberg's last part: no hidden part left)
            unlink_at(lad, pool, mslot, idx)
            forget_slot(b, mslot)
        elif m.disclosed:
            iceberg_part_taken(b, lad, mslot, idx, q)
    if first:
        after_step(b, first)
    return outcome


cdef inline void finish_taker(Book* b, int32_t slot, IdEntry* entry, bint may_rest, int outcome,
                       const Command* c, EventBuffer* out) noexcept nogil:
    """After matching: rest the taker, cancel its remainder, or free its slot."""
    cdef Order* t = &b.pool[slot]
    if outcome != TAKER_STOPPED and t.qty > 0:
        if may_rest:
            rest(b, side_ladder(b, t.side), slot)
            entry.slot = slot
            return
        emit_order(b, out, c, EV_CANCELLED, R_IOC_REMAINDER, t, t.qty, 0)
    entry.slot = -1
    pool_give_back(b, slot)
    b.live -= 1


cdef void enter_stop(Book* b, int32_t slot, const Command* c, EventBuffer* out) noexcept nogil:
    """A triggered stop enters: TRIGGERED, then it matches as a market IOC order (STOP)
    or a limit order (STOP_LIMIT) of the same id; its trades may trigger more stops."""
    cdef Order* o = &b.pool[slot]
    cdef Event* e = emit(b, out, c, EV_TRIGGERED, R_NONE)
    cdef bint market = o.op == OP_STOP
    cdef IdEntry* entry = ids_find(&b.ids, o.order_id)
    cdef uint8_t stp = o.stp if o.stp != STP_DEFAULT else b.default_stp
    e.side = o.side
    e.order_id = o.order_id
    e.account = o.account
    e.price = o.price
    e.qty = o.qty
    e.remaining = o.qty
    e.other_remaining = b.last_price
    o.op = OP_LIMIT
    o.trigger = 0                       # not an iceberg: disclosed and shown are 0 too
    o.stamp = 0
    if market and best_opposite(b, o.side) < 0:
        emit_order(b, out, c, EV_CANCELLED, R_NO_LIQUIDITY, o, o.qty, 0)
        entry.slot = -1
        pool_give_back(b, slot)
        b.live -= 1
        return
    finish_taker(b, slot, entry, not market and o.tif != TIF_IOC,
                 match(b, slot, market, stp, c, out), c, out)


cdef void run_trigger_queue(Book* b, const Command* c, EventBuffer* out) noexcept nogil:
    """Enter the triggered stops one at a time, oldest stamp first; stops their trades
    reach join the back of the queue. Each stop enters once: no recursion."""
    while b.queue_head < b.queue_len:
        b.queue_head += 1
        enter_stop(b, b.queue[b.queue_head - 1], c, out)
    b.queue_head = 0
    b.queue_len = 0


# ---------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------

cdef inline uint8_t new_order_reason(Book* b, const Command* c) noexcept nogil:
    """Validation of a new order after its id was spent, in the documented order."""
    cdef uint8_t reason
    cdef uint8_t op = c.op
    cdef bint pre_open = b.phase == PHASE_PRE_OPEN
    if b.phase != PHASE_OPEN:
        if b.phase == PHASE_CLOSED:
            return R_MARKET_CLOSED
        if b.phase == PHASE_HALTED:
            return R_HALTED
    if c.side != SIDE_BUY and c.side != SIDE_SELL:
        return R_INVALID_SIDE
    if op == OP_LIMIT:
        if c.tif < TIF_GTC or c.tif > TIF_FOK:
            return R_INVALID_TIF
        if pre_open and c.tif > TIF_DAY:
            return R_SESSION_STATE
        if c.stp > STP_DECREMENT:
            return R_INVALID_STP
        if (c.flags & ~FLAG_POST_ONLY) or (c.flags and c.tif > TIF_DAY):
            return R_INVALID_FLAGS
        if pre_open and c.flags:
            return R_SESSION_STATE
        if c.trigger != 0:
            return R_INVALID_TRIGGER
        reason = quantity_reason(b, c.qty)
        if reason:
            return reason
        if c.disclosed != 0 and (c.tif > TIF_DAY or disclosed_reason(b, c.disclosed, c.qty)):
            return R_INVALID_DISCLOSED
        if not in_band(b, c.price):
            return R_PRICE_OUT_OF_BAND
        if c.flags and not pre_open and crosses(b, c.side, c.price):
            return R_POST_ONLY_WOULD_TAKE
        return R_NONE
    if op == OP_MARKET:
        if c.tif != TIF_IOC and c.tif != TIF_FOK:
            return R_INVALID_TIF
        if pre_open and c.tif == TIF_FOK:
            return R_SESSION_STATE
        if c.stp > STP_DECREMENT:
            return R_INVALID_STP
        if c.flags != 0:
            return R_INVALID_FLAGS
        if c.trigger != 0:
            return R_INVALID_TRIGGER
        if c.disclosed != 0:
            return R_INVALID_DISCLOSED
        reason = quantity_reason(b, c.qty)
        if reason or pre_open:
            return reason
        if best_opposite(b, c.side) < 0:
            return R_NO_LIQUIDITY
        return R_NONE
    return stop_order_reason(b, c)


cdef uint8_t stop_order_reason(Book* b, const Command* c) noexcept nogil:
    """new_order_reason's checks of a STOP or STOP_LIMIT after its side."""
    cdef uint8_t reason
    cdef uint8_t op = c.op
    if c.tif != TIF_GTC and c.tif != TIF_DAY and not (op == OP_STOP_LIMIT and c.tif == TIF_IOC):
        return R_INVALID_TIF
    if c.stp > STP_DECREMENT:
        return R_INVALID_STP
    if c.flags != 0:
        return R_INVALID_FLAGS
    if c.disclosed != 0:
        return R_INVALID_DISCLOSED
    reason = quantity_reason(b, c.qty)
    if reason:
        return reason
    return stop_price_reason(b, op, c.side, c.price, c.trigger)


cdef void place_waiting(Book* b, int32_t slot, IdEntry* entry, const Command* c,
                        EventBuffer* out) noexcept nogil:
    """An accepted order that does not match now: a stop waits outside the book; in
    PRE_OPEN a limit order rests and a market order waits for the uncross."""
    cdef Order* t = &b.pool[slot]
    emit_order(b, out, c, EV_ACCEPTED, R_NONE, t, c.qty, c.qty)
    if c.op > OP_MARKET:
        t.trigger = c.trigger
        t.stamp = b.seq
        stop_link(b, slot)
    elif c.op == OP_MARKET:
        market_push(b, slot)
    else:
        rest(b, side_ladder(b, c.side), slot)
    entry.slot = slot


cdef int on_new_order(Book* b, const Command* c, EventBuffer* out) noexcept nogil:
    """LIMIT, MARKET, STOP, STOP_LIMIT; -1 (book unchanged) if out of memory."""
    cdef uint8_t op = c.op
    cdef bint market = op == OP_MARKET
    cdef IdEntry* entry
    cdef uint8_t reason, stp
    cdef int32_t slot
    cdef Order* t
    if reserve_new_order(b, c, out) < 0:
        return -1
    if c.order_id <= 0:
        emit_reject(b, out, c, R_INVALID_ORDER_ID)
        return 0
    entry = ids_probe(&b.ids, c.order_id)
    if entry.order_id == c.order_id:
        emit_reject(b, out, c, R_DUPLICATE_ORDER_ID)
        return 0
    entry.order_id = c.order_id          # the id is spent from here on
    entry.slot = -1
    b.ids.count += 1
    reason = new_order_reason(b, c)
    if reason:
        emit_reject(b, out, c, reason)
        return 0
    stp = c.stp if c.stp != STP_DEFAULT else b.default_stp
    slot = pool_take(b)
    b.live += 1
    t = &b.pool[slot]
    t.order_id = c.order_id
    t.account = c.account
    t.price = 0 if market else c.price
    t.qty = c.qty
    t.side = c.side
    t.tif = c.tif
    t.stp = c.stp
    t.flags = c.flags
    t.op = op
    t.disclosed = c.disclosed           # 0 for a stop (validated): its stamp is set later
    t.shown = 0
    if op > OP_MARKET or b.phase == PHASE_PRE_OPEN:
        place_waiting(b, slot, entry, c, out)
        return 0
    if c.tif == TIF_FOK and not fok_fillable(b, t, market, stp):
        pool_give_back(b, slot)
        b.live -= 1
        emit_reject(b, out, c, R_FOK_NOT_FILLABLE)
        return 0
    emit_order(b, out, c, EV_ACCEPTED, R_NONE, t, c.qty, c.qty)
    finish_taker(b, slot, entry, not market and c.tif <= TIF_DAY,
                 match(b, slot, market, stp, c, out), c, out)
    if b.queue_len:
        run_trigger_queue(b, c, out)
    return 0


cdef inline int32_t live_slot(Book* b, int64_t order_id) noexcept nogil:
    cdef IdEntry* e = ids_find(&b.ids, order_id)
    return <int32_t>e.slot if e != NULL else -1


cdef int on_cancel(Book* b, const Command* c, EventBuffer* out) noexcept nogil:
    """CANCEL; -1 if out of memory."""
    cdef int32_t slot
    cdef Order* o
    if events_room(out, 1) < 0:
        return -1
    slot = live_slot(b, c.order_id)
    if slot < 0:
        emit_reject(b, out, c, R_UNKNOWN_ORDER)
        return 0
    o = &b.pool[slot]
    if o.account != c.account:
        emit_reject(b, out, c, R_NOT_OWNER)
        return 0
    emit_order(b, out, c, EV_CANCELLED, R_USER_CANCEL, o, o.qty, 0)
    if o.op == OP_LIMIT:
        remove_order(b, slot)
    else:
        remove_any(b, slot)
    return 0


cdef inline uint8_t amend_reason(Book* b, const Command* c, Order* o) noexcept nogil:
    """AMEND checks of a live order in the documented order; NONE if it goes ahead."""
    cdef uint8_t reason
    cdef int64_t disclosed
    if o.account != c.account:
        return R_NOT_OWNER
    if b.phase != PHASE_OPEN:
        if b.phase == PHASE_CLOSED:
            return R_MARKET_CLOSED
        if b.phase == PHASE_HALTED:
            return R_HALTED
    if o.op != OP_LIMIT:
        if o.op == OP_MARKET:
            return R_SESSION_STATE
        reason = quantity_reason(b, c.qty)
        if reason:
            return reason
        if c.disclosed != 0:
            return R_INVALID_DISCLOSED
        return stop_price_reason(b, o.op, o.side, c.price,
                                 c.trigger if c.trigger != 0 else o.trigger)
    reason = quantity_reason(b, c.qty)
    if reason:
        return reason
    if c.trigger | c.disclosed | o.disclosed:     # one test for the plain amend
        if c.trigger != 0:
            return R_INVALID_TRIGGER
        disclosed = c.disclosed if c.disclosed != 0 else o.disclosed
        if c.disclosed < 0 or disclosed_reason(b, disclosed, c.qty):
            return R_INVALID_DISCLOSED
    if not in_band(b, c.price):
        return R_PRICE_OUT_OF_BAND
    if ((o.flags & FLAG_POST_ONLY) and b.phase == PHASE_OPEN and c.price != o.price
            and crosses(b, o.side, c.price)):
        return R_POST_ONLY_WOULD_TAKE
    return R_NONE


cdef int amend_stop(Book* b, int32_t slot, const Command* c, EventBuffer* out) noexcept nogil:
    """A valid amend of a waiting stop: new limit, qty and trigger (0 keeps it); a new stamp
    unless it only shrank. Reserves first the pages of its trigger and of a stop-limit's
    limit (where it will rest once triggered); -1 (nothing changed) if out of memory."""
    cdef Order* o = &b.pool[slot]
    cdef int64_t trigger = c.trigger if c.trigger != 0 else o.trigger
    cdef Ladder* lad = side_ladder(b, o.side)
    if (ladder_ensure_page(&b.stops[o.side], trigger - lad.low) < 0
            or (o.op == OP_STOP_LIMIT and ladder_ensure_page(lad, c.price - lad.low) < 0)
            or events_room(out, 1) < 0):
        return -1
    if c.price == o.price and trigger == o.trigger and c.qty <= o.qty:
        b.stop_qty -= o.qty - c.qty
        o.qty = c.qty
        emit_order(b, out, c, EV_AMENDED, R_NONE, o, o.qty, o.qty)
        return 0
    stop_unlink(b, slot)
    o.price = c.price
    o.qty = c.qty
    o.trigger = trigger
    emit_order(b, out, c, EV_AMENDED, R_NONE, o, o.qty, o.qty)
    o.stamp = b.seq
    stop_link(b, slot)
    return 0


cdef int on_amend(Book* b, const Command* c, EventBuffer* out) noexcept nogil:
    """AMEND; -1 (book unchanged) if out of memory. The checks change nothing, so the
    reserve comes after them and knows the order's side."""
    cdef IdEntry* entry = ids_find(&b.ids, c.order_id)
    cdef int32_t slot = -1
    cdef Order* o = NULL
    cdef uint8_t reason = R_UNKNOWN_ORDER
    cdef int64_t disclosed
    cdef Ladder* lad
    if entry != NULL and entry.slot >= 0:
        slot = <int32_t>entry.slot
        o = &b.pool[slot]
        reason = amend_reason(b, c, o)
    if reason:
        if events_room(out, 1) < 0:
            return -1
        emit_reject(b, out, c, reason)
        return 0
    if o.op != OP_LIMIT:
        return amend_stop(b, slot, c, out)
    disclosed = c.disclosed if c.disclosed != 0 else o.disclosed
    lad = side_ladder(b, o.side)
    if reserve_amend(b, lad, o, c, disclosed, out) < 0:
        return -1
    if c.price == o.price and c.qty <= o.qty and disclosed == o.disclosed:
        if o.disclosed:                 # in place: time priority kept
            b.hidden_parts -= hidden_parts(o)
            o.qty = c.qty
            if o.shown > o.qty:
                o.shown = o.qty
            b.hidden_parts += hidden_parts(o)
        else:
            o.qty = c.qty
        emit_order(b, out, c, EV_AMENDED, R_NONE, o, o.qty, o.qty)
        return 0
    take_out(b, lad, slot)
    o.price = c.price
    o.qty = c.qty
    o.disclosed = disclosed
    emit_order(b, out, c, EV_AMENDED, R_NONE, o, o.qty, o.qty)
    if b.phase == PHASE_PRE_OPEN:
        rest(b, lad, slot)
        return 0
    finish_taker(b, slot, entry, True,
                 match(b, slot, False, o.stp if o.stp != STP_DEFAULT else b.default_stp, c, out),
                 c, out)
    if b.queue_len:
        run_trigger_queue(b, c, out)
    return 0


cdef int64_t collect_book_order(Book* b, int32_t* slots) noexcept nogil:
    """Write every resting slot in book order (bids best first, then asks) to slots."""
    cdef int64_t n = 0, idx
    cdef int32_t slot
    cdef uint8_t side
    cdef Ladder* lad
    for side in range(SIDE_BUY, SIDE_SELL + 1):
        lad = side_ladder(b, side)
        idx = lad.best_bid if side == SIDE_BUY else lad.best_ask
        while idx >= 0:
            slot = level_at(lad, idx).head
            while slot >= 0:
                slots[n] = slot
                n += 1
                slot = b.pool[slot].next
            idx = next_level_in_book_order(lad, idx, side)
    return n


cdef int64_t collect_live_order(Book* b, int32_t* slots) noexcept nogil:
    """Every live slot in the order of orders(): the book, the waiting market orders
    (buys, then sells, in arrival order), the waiting stops in stop order (buy stops by
    trigger ascending, then sell stops by trigger descending; by stamp within one)."""
    cdef int64_t n = collect_book_order(b, slots), idx
    cdef int32_t slot
    cdef uint8_t side
    cdef Ladder* lad
    for side in range(SIDE_BUY, SIDE_SELL + 1):
        slot = b.market_head[side]
        while slot >= 0:
            slots[n] = slot
            n += 1
            slot = b.pool[slot].next
    if not b.stops_ready:
        return n
    for side in range(SIDE_BUY, SIDE_SELL + 1):
        lad = &b.stops[side]
        idx = lad.best_ask if side == SIDE_BUY else lad.best_bid
        while idx >= 0:
            slot = level_at(lad, idx).head
            while slot >= 0:
                slots[n] = slot
                n += 1
                slot = b.pool[slot].next
            idx = (level_at_or_above(lad, idx + 1) if side == SIDE_BUY
                   else level_at_or_below(lad, idx - 1))
    return n


cdef void on_close(Book* b, const Command* c, EventBuffer* out) noexcept nogil:
    """Expire the waiting market orders, the DAY orders in book order and the stops that
    are not GTC in stop order; then CLOSED."""
    cdef Ladder* lad
    cdef int64_t idx, after
    cdef int32_t slot, next_slot
    cdef uint8_t side
    cdef Order* o
    for side in range(SIDE_BUY, SIDE_SELL + 1):
        while b.market_head[side] >= 0:
            slot = b.market_head[side]
            o = &b.pool[slot]
            emit_order(b, out, c, EV_EXPIRED, R_NONE, o, o.qty, 0)
            remove_any(b, slot)
    for side in range(SIDE_BUY, SIDE_SELL + 1):
        lad = side_ladder(b, side)
        idx = lad.best_bid if side == SIDE_BUY else lad.best_ask
        while idx >= 0:
            after = next_level_in_book_order(lad, idx, side)
            slot = level_at(lad, idx).head
            while slot >= 0:
                next_slot = b.pool[slot].next
                o = &b.pool[slot]
                if o.tif == TIF_DAY:
                    emit_order(b, out, c, EV_EXPIRED, R_NONE, o, o.qty, 0)
                    remove_order(b, slot)
                slot = next_slot
            idx = after
    if b.stops_ready:
        for side in range(SIDE_BUY, SIDE_SELL + 1):
            lad = &b.stops[side]
            idx = lad.best_ask if side == SIDE_BUY else lad.best_bid
            while idx >= 0:
                after = (level_at_or_above(lad, idx + 1) if side == SIDE_BUY
                         else level_at_or_below(lad, idx - 1))
                slot = level_at(lad, idx).head
                while slot >= 0:
                    next_slot = b.pool[slot].next
                    o = &b.pool[slot]
                    if o.tif != TIF_GTC:
                        emit_order(b, out, c, EV_EXPIRED, R_NONE, o, o.qty, 0)
                        remove_any(b, slot)
                    slot = next_slot
                idx = after
    b.phase = PHASE_CLOSED
    emit(b, out, c, EV_CLOSED, R_NONE)


cdef bint outside_band(const Order* o, int64_t low, int64_t high) noexcept nogil:
    """Does a re-band to [low, high] cancel this order for its price or trigger?"""
    if o.op == OP_MARKET:
        return False
    if o.op != OP_LIMIT and not (low <= o.trigger <= high):
        return True
    return o.op != OP_STOP and not (low <= o.price <= high)


cdef int on_reband(Book* b, const Command* c, EventBuffer* out) noexcept nogil:
    """Move the book onto a new band; -1 (nothing changed) if memory ran out."""
    cdef int64_t low = c.price, high = c.qty, max_qty, i, n, nlevels
    cdef Ladder fresh[4]                # bids, asks, buy stops, sell stops
    cdef int32_t* slots
    cdef Order* o
    cdef Event* e
    cdef int k, nladders = 4 if b.stops_ready else 2, failed = 0
    if low < 1 or high < low or high - low + 1 > MAX_LEVELS:
        emit_reject(b, out, c, R_INVALID_BAND)
        return 0
    max_qty = INT64_MAX // high
    nlevels = high - low + 1
    slots = <int32_t*>malloc((b.live + 1) * sizeof(int32_t))
    if slots == NULL:
        return -1
    for k in range(nladders):
        if ladder_init(&fresh[k], low, nlevels) < 0:
            failed = 1
            nladders = k
            break
    n = collect_live_order(b, slots)
    for i in range(n):                  # every page the survivors need, before any change
        o = &b.pool[slots[i]]
        if failed or outside_band(o, low, high) or o.qty > max_qty or o.op == OP_MARKET:
            continue
        if o.op != OP_STOP:             # a resting order, or a stop-limit's future level
            k = 0 if o.side == SIDE_BUY else 1
            failed = ladder_ensure_page(&fresh[k], o.price - low) < 0
        if o.op > OP_MARKET and not failed:
            k = 2 if o.side == SIDE_BUY else 3
            failed = ladder_ensure_page(&fresh[k], o.trigger - low) < 0
    if failed:
        for k in range(nladders):
            ladder_free(&fresh[k])
        free(slots)
        return -1
    for i in range(n):
        o = &b.pool[slots[i]]
        if outside_band(o, low, high):
            emit_order(b, out, c, EV_CANCELLED, R_PRICE_OUT_OF_BAND, o, o.qty, 0)
            remove_any(b, slots[i])
            slots[i] = -1
    for i in range(n):
        if slots[i] >= 0 and b.pool[slots[i]].qty > max_qty:
            o = &b.pool[slots[i]]
            emit_order(b, out, c, EV_CANCELLED, R_QUANTITY_TOO_LARGE, o, o.qty, 0)
            remove_any(b, slots[i])
            slots[i] = -1
    for i in range(n):                  # in orders() order: FIFOs and stamps keep their order
        if slots[i] < 0:
            continue
        o = &b.pool[slots[i]]
        if o.op == OP_LIMIT:
            link_at(&fresh[0 if o.side == SIDE_BUY else 1], b.pool, slots[i], o.price - low,
                    o.side)
        elif o.op != OP_MARKET:
            link_at(&fresh[2 if o.side == SIDE_BUY else 3], b.pool, slots[i], o.trigger - low,
                    SIDE_SELL if o.side == SIDE_BUY else SIDE_BUY)
    ladder_free(&b.bids)
    ladder_free(&b.asks)
    b.bids = fresh[0]
    b.asks = fresh[1]
    if b.stops_ready:
        ladder_free(&b.stops[SIDE_BUY])
        ladder_free(&b.stops[SIDE_SELL])
        b.stops[SIDE_BUY] = fresh[2]
        b.stops[SIDE_SELL] = fresh[3]
    b.max_qty = max_qty
    free(slots)
    e = emit(b, out, c, EV_REBANDED, R_NONE)
    e.price = low
    e.qty = high
    return 0


# ---------------------------------------------------------------------------------
# Call auction
# ---------------------------------------------------------------------------------

cdef void level_sums(Book* b, Ladder* lad, const int64_t* prices, bc_wide* sums,
                     int64_t n) noexcept nogil:
    """The whole open quantity of n levels (an iceberg's hidden part counts). The FIFOs
    are walked WALKS at a time, one order of each in turn, with the next order fetched
    ahead: their cache misses overlap instead of queueing one behind the other."""
    cdef int32_t slot[WALKS]
    cdef int64_t owner[WALKS]
    cdef int64_t started = 0, busy = 0, k
    cdef Order* o
    for k in range(WALKS):
        slot[k] = -1
    while True:
        for k in range(WALKS):
            if slot[k] < 0:
                if started == n:
                    continue
                owner[k] = started
                sums[started] = 0
                slot[k] = level_at(lad, prices[started] - lad.low).head
                started += 1
                busy += 1
            o = &b.pool[slot[k]]
            sums[owner[k]] += o.qty
            slot[k] = o.next
            if o.next >= 0:
                bc_prefetch(&b.pool[o.next])
            else:
                busy -= 1
        if busy == 0 and started == n:
            return


cdef inline int64_t clamp64(bc_wide x) noexcept nogil:
    return INT64_MAX if x > INT64_MAX else <int64_t>x


cdef int auction_quote(Book* b, int64_t reference, int64_t* quote) noexcept nogil:
    """The opening price an uncross would find (docs/engine.md, Call auction): quote =
    (price, volume, imbalance, surplus side), price 0 when no candidate has volume.
    One walk over the levels' orders, then one ascending sweep over the candidate prices.
    -1 if memory ran out."""
    cdef int64_t nb = 0, na = 0, ib, ia, idx, price, best_distance = 0, distance
    cdef int64_t* bp
    cdef int64_t* ap
    cdef bc_wide* bq
    cdef bc_wide* aq
    cdef bc_wide demand = 0, supply = 0, volume, imbalance, best_volume = 0, best_imbalance = 0
    cdef int32_t slot
    cdef bint pending = reference > 0
    cdef uint8_t side
    quote[0] = quote[1] = quote[2] = quote[3] = 0
    bp = <int64_t*>malloc((b.live + 1) * sizeof(int64_t))
    ap = <int64_t*>malloc((b.live + 1) * sizeof(int64_t))
    bq = <bc_wide*>malloc((b.live + 1) * sizeof(bc_wide))
    aq = <bc_wide*>malloc((b.live + 1) * sizeof(bc_wide))
    if bp == NULL or ap == NULL or bq == NULL or aq == NULL:
        free(bp)
        free(ap)
        free(bq)
        free(aq)
        return -1
    idx = b.bids.best_bid               # bids from the highest price down
    while idx >= 0:
        bp[nb] = b.bids.low + idx
        nb += 1
        idx = level_at_or_below(&b.bids, idx - 1)
    idx = b.asks.best_ask               # asks from the lowest price up
    while idx >= 0:
        ap[na] = b.asks.low + idx
        na += 1
        idx = level_at_or_above(&b.asks, idx + 1)
    level_sums(b, &b.bids, bp, bq, nb)
    level_sums(b, &b.asks, ap, aq, na)
    for ib in range(nb):
        demand += bq[ib]
    for side in range(SIDE_BUY, SIDE_SELL + 1):
        slot = b.market_head[side]
        while slot >= 0:
            if side == SIDE_BUY:
                demand += b.pool[slot].qty
            else:
                supply += b.pool[slot].qty
            slot = b.pool[slot].next
    ib = nb - 1
    ia = 0
    while True:                         # candidates in ascending order
        price = INT64_MAX
        if ib >= 0:
            price = bp[ib]
        if ia < na and ap[ia] < price:
            price = ap[ia]
        if pending and reference < price:
            price = reference
        if price == INT64_MAX:
            break
        if ia < na and ap[ia] == price:
            supply += aq[ia]            # sells with limit <= price
            ia += 1
        volume = demand if demand < supply else supply
        if volume > 0:
            imbalance = demand - supply if demand > supply else supply - demand
            distance = 0
            if reference > 0:
                distance = price - reference if price > reference else reference - price
            if (volume > best_volume or (volume == best_volume and (
                    imbalance < best_imbalance or (imbalance == best_imbalance
                                                   and distance < best_distance)))):
                best_volume = volume
                best_imbalance = imbalance
                best_distance = distance
                quote[0] = price
                quote[3] = SIDE_BUY if demand > supply else (SIDE_SELL if supply > demand else 0)
        if ib >= 0 and bp[ib] == price:
            demand -= bq[ib]            # buys with limit >= the next candidate
            ib -= 1
        if pending and reference == price:
            pending = False
    quote[1] = clamp64(best_volume)
    quote[2] = clamp64(best_imbalance)
    free(bp)
    free(ap)
    free(bq)
    free(aq)
    return 0


cdef inline int64_t own_reference(Book* b) noexcept nogil:
    """The book's reference price: its last trade price when in the band, else none."""
    return b.last_price if in_band(b, b.last_price) else 0


cdef inline int32_t auction_head(Book* b, uint8_t side, int64_t price) noexcept nogil:
    """The next order of a side in auction priority that crosses price, or -1: the
    waiting market orders first, then the best level while it crosses."""
    cdef int64_t idx
    cdef Ladder* lad
    if b.market_head[side] >= 0:
        return b.market_head[side]
    lad = side_ladder(b, side)
    idx = lad.best_bid if side == SIDE_BUY else lad.best_ask
    if idx < 0 or (lad.low + idx < price if side == SIDE_BUY else lad.low + idx > price):
        return -1
    return level_at(lad, idx).head


cdef inline void auction_fill(Book* b, int32_t slot, int64_t q) noexcept nogil:
    """q of an order goes in the auction; a partly filled iceberg keeps its place and
    shows min(disclosed, open)."""
    cdef Order* o = &b.pool[slot]
    if o.disclosed and o.op == OP_LIMIT:
        b.hidden_parts -= hidden_parts(o)
        o.qty -= q
        o.shown = o.disclosed if o.disclosed < o.qty else o.qty
        b.hidden_parts += hidden_parts(o)
    else:
        o.qty -= q


cdef void on_uncross(Book* b, const Command* c, EventBuffer* out) noexcept nogil:
    """Trade everything that crosses at the opening price reserve_session computed (b.quote),
    turn the market orders left into limits at that price (or cancel them without
    one), open the book; the stops it reached enter after OPENED."""
    cdef int64_t price = b.quote[0], q
    cdef int32_t bslot, sslot, slot, prev_slot
    cdef Order* buy
    cdef Order* sell
    cdef Order* o
    cdef Event* e
    cdef Ladder* lad
    cdef uint8_t side
    if price:
        while True:
            bslot = auction_head(b, SIDE_BUY, price)
            sslot = auction_head(b, SIDE_SELL, price)
            if bslot < 0 or sslot < 0:
                break
            buy = &b.pool[bslot]
            sell = &b.pool[sslot]
            if buy.next >= 0:           # both FIFOs are walked at once: fetch the next ones
                bc_prefetch(&b.pool[buy.next])
            if sell.next >= 0:
                bc_prefetch(&b.pool[sell.next])
            q = buy.qty if buy.qty < sell.qty else sell.qty
            auction_fill(b, bslot, q)
            auction_fill(b, sslot, q)
            e = emit(b, out, c, EV_TRADE, R_NONE)
            e.side = SIDE_BUY
            e.order_id = buy.order_id
            e.account = buy.account
            e.price = price
            e.qty = q
            e.remaining = buy.qty
            e.other_id = sell.order_id
            e.other_account = sell.account
            e.other_remaining = sell.qty
            if buy.qty == 0:
                remove_any(b, bslot)
            if sell.qty == 0:
                remove_any(b, sslot)
    for side in range(SIDE_BUY, SIDE_SELL + 1):
        slot = b.market_head[side]
        while slot >= 0:
            o = &b.pool[slot]
            if price:
                o.price = price
                o.tif = TIF_DAY
                emit_order(b, out, c, EV_AMENDED, R_NONE, o, o.qty, o.qty)
            else:
                emit_order(b, out, c, EV_CANCELLED, R_NO_LIQUIDITY, o, o.qty, 0)
            slot = o.next
        slot = b.market_tail[side]      # to the front of the opening price's level, in
        lad = side_ladder(b, side)      # arrival order (ahead of its limit orders)
        while slot >= 0:
            prev_slot = b.pool[slot].prev
            b.markets -= 1
            if price:
                b.pool[slot].op = OP_LIMIT
                link_head_at(lad, b.pool, slot, price - lad.low, side)
            else:
                forget_slot(b, slot)
            slot = prev_slot
        b.market_head[side] = -1
        b.market_tail[side] = -1
    e = emit(b, out, c, EV_UNCROSSED, R_NONE)
    if price:
        e.side = <uint8_t>b.quote[3]
        e.price = price
        e.qty = b.quote[1]
        e.remaining = b.quote[2]
    b.phase = PHASE_OPEN
    emit(b, out, c, EV_OPENED, R_NONE)
    if price and b.quote[1] > 0:
        b.last_price = price
        if b.nstops:
            collect_triggered(b, price, price)


# ---------------------------------------------------------------------------------
# Applying commands
# ---------------------------------------------------------------------------------

cdef int queue_reserve(Book* b) noexcept nogil:
    """Room in the trigger queue for every waiting stop."""
    cdef int64_t capacity = b.queue_capacity if b.queue_capacity else MIN_POOL
    cdef int32_t* grown
    if b.nstops <= b.queue_capacity:
        return 0
    while capacity < b.nstops:
        capacity *= 2
    grown = <int32_t*>realloc(b.queue, capacity * sizeof(int32_t))
    if grown == NULL:
        return -1
    b.queue = grown
    b.queue_capacity = capacity
    return 0


cdef inline int ensure_pages(Book* b, Ladder* first, Ladder* second, int64_t price) noexcept nogil:
    """The pages of price in two ladders (a price that may be used on either side)."""
    if not in_band(b, price):
        return 0
    if ladder_ensure_page(first, price - first.low) < 0:
        return -1
    return ladder_ensure_page(second, price - second.low)


cdef inline int64_t refresh_bound(Book* b, int64_t qty, int64_t disclosed) noexcept nogil:
    """How many iceberg refreshes a command may meet: no more than the resting icebergs
    hold, plus, when the taker is a valid iceberg showing disclosed at a time (an invalid
    one trades nothing), the parts of it that the stops it triggers can take; nor than the
    lots it and the waiting stops can trade."""
    cdef bc_wide lots, parts = b.hidden_parts
    if qty < 0 or qty > b.max_qty:
        qty = 0
    if 0 < disclosed < qty and disclosed_reason(b, disclosed, qty) == R_NONE:
        parts += (qty if qty < b.stop_qty else b.stop_qty) // disclosed + 1
    lots = (<bc_wide>qty + b.stop_qty) // b.lot_size
    if lots < parts:
        parts = lots
    # Past 2**40 events no buffer can be had: events_reserve fails (a clean MemoryError,
    # nothing changed) instead of the sum overflowing.
    return clamp64(parts) if parts < (<bc_wide>1 << 40) else (<int64_t>1 << 40)


cdef inline int events_room(EventBuffer* out, int64_t extra) noexcept nogil:
    """events_reserve with its common case (room already there) inline."""
    if out.count + extra <= out.capacity:
        return 0
    return events_reserve(out, extra)


cdef int64_t taker_events_waiting(Book* b, int64_t qty, int64_t disclosed) noexcept nogil:
    """taker_events when icebergs rest or stops wait (refreshes and triggered stops add
    events); -1 if the trigger queue could not grow."""
    if b.nstops and queue_reserve(b) < 0:
        return -1
    return 3 + 2 * (b.live + refresh_bound(b, qty, disclosed)) + 6 * b.nstops


cdef inline int64_t taker_events(Book* b, uint8_t side, int64_t price, bint market, int64_t qty,
                                 int64_t disclosed) noexcept nogil:
    """The most events a new or amended order can emit: accepted/amended, two per maker
    part met, a final cancel, then the stops its trades may trigger; an order that cannot
    cross meets no maker. -1 if out of memory."""
    if b.phase != PHASE_OPEN or not (market or crosses(b, side, price)):
        return 2
    if b.hidden_parts or b.nstops:
        return taker_events_waiting(b, qty, disclosed)
    return 3 + 2 * b.live


cdef int reserve_stop(Book* b, const Command* c, EventBuffer* out) noexcept nogil:
    """Allocate what a new STOP or STOP_LIMIT could need."""
    if pool_reserve_one(b) < 0 or ids_reserve_one(&b.ids) < 0 or stops_init(b) < 0:
        return -1
    if c.side == SIDE_BUY or c.side == SIDE_SELL:
        if in_band(b, c.trigger) and ladder_ensure_page(&b.stops[c.side],
                                                        c.trigger - b.bids.low) < 0:
            return -1
        if in_band(b, c.price) and ladder_ensure_page(side_ladder(b, c.side),
                                                      c.price - b.bids.low) < 0:
            return -1
    return events_room(out, 2)


cdef int reserve_new_order(Book* b, const Command* c, EventBuffer* out) noexcept nogil:
    """Allocate everything a new order could need, so that it never fails half-way."""
    cdef int64_t worst_events
    if c.op > OP_MARKET:
        return reserve_stop(b, c, out)
    worst_events = taker_events(b, c.side, c.price, c.op == OP_MARKET, c.qty, c.disclosed)
    if worst_events < 0 or pool_reserve_one(b) < 0 or ids_reserve_one(&b.ids) < 0:
        return -1
    if c.op == OP_LIMIT and in_band(b, c.price):
        if ladder_ensure_page(side_ladder(b, c.side), c.price - b.bids.low) < 0:
            return -1
    return events_room(out, worst_events)


cdef inline int reserve_amend(Book* b, Ladder* lad, const Order* o, const Command* c,
                              int64_t disclosed, EventBuffer* out) noexcept nogil:
    """Allocate everything a valid amend of a resting order (in lad, its side's ladder)
    could need: the page of its new price (in the band), the events of its matching."""
    cdef int64_t worst_events = taker_events(b, o.side, c.price, False, c.qty, disclosed)
    if worst_events < 0 or ladder_ensure_page(lad, c.price - lad.low) < 0:
        return -1
    return events_room(out, worst_events)


cdef int reserve_session(Book* b, const Command* c, EventBuffer* out) noexcept nogil:
    """Allocate everything a session, band or auction command could need."""
    cdef int64_t worst_events = 1, capacity, triggered
    cdef uint8_t op = c.op
    if op == OP_CLOSE or op == OP_REBAND:
        worst_events = 1 + b.live
    elif op == OP_UNCROSS and b.phase == PHASE_PRE_OPEN and (c.price == 0 or in_band(b, c.price)):
        if auction_quote(b, c.price if c.price else own_reference(b), b.quote) < 0:
            return -1
        if b.quote[0] and ensure_pages(b, &b.bids, &b.asks, b.quote[0]) < 0:
            return -1
        # trades (each ends an order), the market orders' AMENDED or CANCELLED,
        # UNCROSSED, OPENED, then what the stops it triggers may cause
        worst_events = 3 + b.live + b.markets
        if b.nstops:
            triggered = taker_events_waiting(b, 0, 0)
            if triggered < 0:
                return -1
            worst_events += triggered
    elif (op == OP_OPEN or op == OP_PRE_OPEN) and b.phase == PHASE_CLOSED:
        # A new session forgets the spent ids now: a fresh table sized for the live orders.
        capacity = ids_capacity_for(2 * b.live)
        if ids_rebuild(&b.ids, capacity if capacity > b.ids_floor else b.ids_floor, False) < 0:
            return -1
    return events_room(out, worst_events)


cdef inline void phase_change(Book* b, const Command* c, EventBuffer* out, bint allowed,
                              uint8_t phase, uint8_t etype) noexcept nogil:
    if not allowed:
        emit_reject(b, out, c, R_SESSION_STATE)
        return
    b.phase = phase
    emit(b, out, c, etype, R_NONE)


cdef int apply_session(Book* b, const Command* c, EventBuffer* out) noexcept nogil:
    """The rare commands (phases, band, auction, unknown ops), out of book_apply's
    inlined body; -1 (book unchanged) if out of memory."""
    cdef uint8_t op = c.op
    if reserve_session(b, c, out) < 0:
        return -1
    if op == OP_OPEN:
        phase_change(b, c, out, b.phase == PHASE_CLOSED, PHASE_OPEN, EV_OPENED)
    elif op == OP_CLOSE:
        if b.phase == PHASE_CLOSED:
            emit_reject(b, out, c, R_SESSION_STATE)
        else:
            on_close(b, c, out)
    elif op == OP_REBAND:
        return on_reband(b, c, out)
    elif op == OP_PRE_OPEN:
        phase_change(b, c, out, b.phase == PHASE_CLOSED or b.phase == PHASE_HALTED,
                     PHASE_PRE_OPEN, EV_PRE_OPENED)
    elif op == OP_HALT:
        phase_change(b, c, out, b.phase == PHASE_OPEN or b.phase == PHASE_PRE_OPEN,
                     PHASE_HALTED, EV_HALTED)
    elif op == OP_UNCROSS:
        if b.phase != PHASE_PRE_OPEN:
            emit_reject(b, out, c, R_SESSION_STATE)
        elif c.price != 0 and not in_band(b, c.price):
            emit_reject(b, out, c, R_PRICE_OUT_OF_BAND)
        else:
            on_uncross(b, c, out)
    else:
        emit_reject(b, out, c, R_UNKNOWN_OP)
    if b.queue_len:
        run_trigger_queue(b, c, out)
    return 0


cdef int book_apply(Book* b, const Command* c, EventBuffer* out) noexcept nogil:
    """Apply one command, appending its events to out; -1 (book unchanged) if out of memory.
    A dispatch: each kind of command has one body of its own (its reserve, its checks, its
    matching inlined), the rare ones together in apply_session."""
    cdef uint8_t op = c.op
    if <uint8_t>(op - OP_LIMIT) <= OP_MARKET - OP_LIMIT:     # LIMIT or MARKET
        return on_new_order(b, c, out)
    if op == OP_CANCEL:
        return on_cancel(b, c, out)
    if op == OP_AMEND:
        return on_amend(b, c, out)
    if op == OP_STOP or op == OP_STOP_LIMIT:
        return on_new_order(b, c, out)
    return apply_session(b, c, out)


cdef int64_t book_apply_many(Book* b, const Command* cmds, int64_t n,
                             EventBuffer* out) noexcept nogil:
    """Apply n commands in order; returns how many were applied (< n only if out of memory).
    The thread faulting out's pages in, if any, hears how far the events have come every
    PROGRESS_EVERY commands."""
    cdef int64_t i = 0, j
    while i < n:
        bc_prefault_progress(out.prefault, out.count * sizeof(Event))
        for j in range(i, min(n, i + PROGRESS_EVERY)):
            if book_apply(b, &cmds[j], out) < 0:
                return j
        i += PROGRESS_EVERY
    return n


# ---------------------------------------------------------------------------------
# Python layer: layout checks, the event block, OrderBook
# ---------------------------------------------------------------------------------

cdef dict _offsets_command():
    cdef Command r
    cdef char* o = <char*>&r
    return {"symbol": <char*>&r.symbol - o, "op": <char*>&r.op - o, "side": <char*>&r.side - o,
            "tif": <char*>&r.tif - o, "stp": <char*>&r.stp - o, "flags": <char*>&r.flags - o,
            "ts": <char*>&r.ts - o, "order_id": <char*>&r.order_id - o,
            "account": <char*>&r.account - o, "price": <char*>&r.price - o,
            "qty": <char*>&r.qty - o, "trigger": <char*>&r.trigger - o,
            "disclosed": <char*>&r.disclosed - o}


cdef dict _offsets_event():
    cdef Event r
    cdef char* o = <char*>&r
    return {"symbol": <char*>&r.symbol - o, "type": <char*>&r.type - o,
            "reason": <char*>&r.reason - o, "op": <char*>&r.op - o, "side": <char*>&r.side - o,
            "seq": <char*>&r.seq - o, "ts": <char*>&r.ts - o, "order_id": <char*>&r.order_id - o,
            "account": <char*>&r.account - o, "price": <char*>&r.price - o,
            "qty": <char*>&r.qty - o, "remaining": <char*>&r.remaining - o,
            "other_id": <char*>&r.other_id - o, "other_account": <char*>&r.other_account - o,
            "other_remaining": <char*>&r.other_remaining - o}


cdef dict _offsets_order():
    cdef OrderRecord r
    cdef char* o = <char*>&r
    return {"order_id": <char*>&r.order_id - o, "account": <char*>&r.account - o,
            "price": <char*>&r.price - o, "qty": <char*>&r.qty - o, "side": <char*>&r.side - o,
            "tif": <char*>&r.tif - o, "stp": <char*>&r.stp - o, "flags": <char*>&r.flags - o,
            "op": <char*>&r.op - o, "shown": <char*>&r.shown - o,
            "disclosed": <char*>&r.disclosed - o, "trigger": <char*>&r.trigger - o,
            "stamp": <char*>&r.stamp - o}


def _check_layouts():
    """Refuse to load if a C struct or C constant drifted from records.py."""
    for dtype, offsets, size in ((COMMAND_DTYPE, _offsets_command(), sizeof(Command)),
                                 (EVENT_DTYPE, _offsets_event(), sizeof(Event)),
                                 (ORDER_DTYPE, _offsets_order(), sizeof(OrderRecord))):
        numpy_offsets = {name: dtype.fields[name][1] for name in dtype.names}
        if numpy_offsets != offsets or dtype.itemsize != size:
            raise ImportError(f"C struct layout {offsets} ({size} bytes) does not match "
                              f"{dtype} ({dtype.itemsize} bytes)")
    c_values = {
        records.Op: (OP_LIMIT, OP_MARKET, OP_CANCEL, OP_AMEND, OP_OPEN, OP_CLOSE, OP_REBAND,
                     OP_STOP, OP_STOP_LIMIT, OP_PRE_OPEN, OP_UNCROSS, OP_HALT),
        records.Phase: (PHASE_CLOSED, PHASE_OPEN, PHASE_PRE_OPEN, PHASE_HALTED),
        records.Side: (SIDE_BUY, SIDE_SELL),
        records.Tif: (TIF_GTC, TIF_DAY, TIF_IOC, TIF_FOK),
        records.Stp: (STP_DEFAULT, STP_NONE, STP_CANCEL_NEWEST, STP_CANCEL_OLDEST,
                      STP_CANCEL_BOTH, STP_DECREMENT),
        records.Flags: (FLAG_POST_ONLY,),
        records.EventType: (EV_ACCEPTED, EV_REJECTED, EV_TRADE, EV_CANCELLED, EV_EXPIRED,
                            EV_AMENDED, EV_OPENED, EV_CLOSED, EV_REBANDED, EV_TRIGGERED,
                            EV_PRE_OPENED, EV_UNCROSSED, EV_HALTED),
        records.Reason: tuple(range(R_NONE, R_INVALID_PRICE + 1)),
    }
    for enum, values in c_values.items():
        if tuple(int(member) for member in enum) != values:
            raise ImportError(f"C constants {values} do not match {enum.__name__}")
    if MAX_BAND_LEVELS != MAX_LEVELS:
        raise ImportError("MAX_BAND_LEVELS does not match the C constant MAX_LEVELS")


_check_layouts()


cdef object _event_array(Event* data, int64_t count, bint adopt):
    """A new EVENT_DTYPE array of count events: a copy of data, or data itself when
    adopt is set (the array then owns and frees it)."""
    cdef cnp.npy_intp dims[1]
    cdef cnp.ndarray out
    cdef _Allocation owner
    dims[0] = count
    Py_INCREF(EVENT_DTYPE)                          # NewFromDescr steals a reference
    if not adopt:
        out = PyArray_NewFromDescr(&PyArray_Type, <PyArray_Descr*><PyObject*>EVENT_DTYPE, 1, dims, NULL,
                                   NULL, cnp.NPY_ARRAY_CARRAY, NULL)
        if count:
            memcpy(cnp.PyArray_DATA(out), data, count * sizeof(Event))
        return out
    owner = _Allocation.__new__(_Allocation)
    owner.data = data
    out = PyArray_NewFromDescr(&PyArray_Type, <PyArray_Descr*><PyObject*>EVENT_DTYPE, 1, dims, NULL, data,
                               cnp.NPY_ARRAY_CARRAY, NULL)
    cnp.set_array_base(out, owner)
    return out


cdef class _Allocation:
    """Gives back the event buffer lent to a numpy array when the array is gone (a large
    one is kept for the next large batch: _memory.h)."""

    cdef void* data

    def __dealloc__(self):
        bc_events_free(self.data)


# Enum members by value, for views (a tuple index is far cheaper than Enum(value)).
_SIDES = (None, Side.BUY, Side.SELL)
_TIFS = (None, *Tif)
_STPS = tuple(Stp)

_OPS = (None, *Op)
_PHASES = tuple(Phase)

_SNAPSHOT_MAGIC = b"BCOB"
_SNAPSHOT_VERSION = 2
_SNAPSHOT_HEADER = struct.Struct("<4sHHqqqIBB2xqqqqq")
"""magic, version, flags, low, high, lot_size, symbol, stp, phase, seq, orders, spent
ids, last_price, min_disclosed_percent; then the orders (ORDER_DTYPE, in orders()
order) and the spent ids (int64, ascending)."""
_SNAPSHOT_HEADER_V1 = struct.Struct("<4sHHqqqIBB2xqqq")
"""Version 1: the same up to the spent ids, is_open in the phase's place."""
_ORDER_V1_DTYPE = np.dtype({"names": list(ORDER_DTYPE.names[:8]),
                            "formats": [ORDER_DTYPE.fields[n][0] for n in ORDER_DTYPE.names[:8]],
                            "offsets": [ORDER_DTYPE.fields[n][1] for n in ORDER_DTYPE.names[:8]],
                            "itemsize": 40})
"""A resting order in a version 1 snapshot (the 40-byte ORDER_DTYPE of wave 1)."""


def _validate_book_args(low, high, lot_size, stp):
    if not (1 <= low <= high):
        raise ValueError(f"band must satisfy 1 <= low <= high, got [{low}, {high}]")
    if high - low + 1 > MAX_BAND_LEVELS:
        raise ValueError(f"band [{low}, {high}] is wider than {MAX_BAND_LEVELS} ticks")
    if lot_size < 1:
        raise ValueError(f"lot_size must be >= 1, got {lot_size}")
    if not (STP_NONE <= stp <= STP_DECREMENT):
        raise ValueError(f"default stp must be one of NONE..DECREMENT, got {stp}")


cdef class OrderBook:
    """The order book of one symbol: price-time priority matching inside a price band.

    Prices are int64 ticks inside ``[low, high]``; quantities int64 multiples of
    ``lot_size``. Every command yields events (see ``EVENT_DTYPE`` and docs/engine.md);
    bad input yields a REJECTED event and changes nothing, never an exception.
    Per-order calls (``limit``, ``market``, ``stop``, ``stop_limit``, ``cancel``,
    ``amend``, ``open``, ``close``, ``pre_open``, ``uncross``, ``halt``, ``reband``)
    return the number of events, readable with ``last_events()``;
    ``process`` runs a whole array of commands without the GIL.
    A book is not thread-safe; a second thread touching it during ``process`` gets a
    RuntimeError. ``session_orders`` sizes the order-id map for that many orders per
    session up front: the map then never grows (a pause of milliseconds when it is
    large) in the middle of a session. ``min_disclosed_percent`` is the smallest share
    of an iceberg's quantity its disclosed part may be (NSE: 10).
    """

    def __init__(self, int64_t low, int64_t high, int64_t lot_size=1, uint32_t symbol=0,
                 int stp=STP_CANCEL_NEWEST, int64_t session_orders=0,
                 int64_t min_disclosed_percent=10):
        if self._state != UNINITIALISED:
            raise RuntimeError("OrderBook is already initialised")
        _validate_book_args(low, high, lot_size, stp)
        if not 0 <= session_orders <= (<int64_t>1 << 32):
            raise ValueError(f"session_orders must be in 0..2**32, got {session_orders}")
        if not 0 <= min_disclosed_percent <= 100:
            raise ValueError(f"min_disclosed_percent must be 0..100, got {min_disclosed_percent}")
        if book_init(&self._book, low, high, lot_size, symbol, <uint8_t>stp,
                     session_orders, min_disclosed_percent) < 0:
            raise MemoryError("cannot allocate the order book")
        self._state = READY

    def __dealloc__(self):
        if self._state != UNINITIALISED:
            book_free(&self._book)
        free(self._events.data)

    cdef int _enter(self) except -1:
        if self._state == READY:
            return 0
        if self._state == BUSY:
            raise RuntimeError("OrderBook is in use by another thread")
        raise RuntimeError("OrderBook is not initialised")

    cdef Py_ssize_t _run(self, Command* c) except -1:
        self._enter()
        c.symbol = self._book.symbol
        self._events.count = 0
        if book_apply(&self._book, c, &self._events) < 0:
            raise MemoryError("out of memory; the book is unchanged")
        return self._events.count

    # --- per-order API -------------------------------------------------------------

    def limit(self, int64_t order_id, uint8_t side, int64_t price, int64_t qty,
              int64_t account=0, uint8_t tif=TIF_GTC, uint8_t stp=STP_DEFAULT,
              bint post_only=False, int64_t ts=0, int64_t disclosed=0):
        """Place a limit order (an iceberg when disclosed > 0); returns the number of
        events (see last_events())."""
        cdef Command c
        memset(&c, 0, sizeof(Command))
        c.op = OP_LIMIT
        c.side = side
        c.tif = tif
        c.stp = stp
        c.flags = FLAG_POST_ONLY if post_only else 0
        c.ts = ts
        c.order_id = order_id
        c.account = account
        c.price = price
        c.qty = qty
        c.disclosed = disclosed
        return self._run(&c)

    def market(self, int64_t order_id, uint8_t side, int64_t qty, int64_t account=0,
               uint8_t tif=TIF_IOC, uint8_t stp=STP_DEFAULT, int64_t ts=0):
        """Place a market order (IOC or FOK; it never rests); returns the number of events."""
        cdef Command c
        memset(&c, 0, sizeof(Command))
        c.op = OP_MARKET
        c.side = side
        c.tif = tif
        c.stp = stp
        c.flags = 0
        c.ts = ts
        c.order_id = order_id
        c.account = account
        c.price = 0
        c.qty = qty
        return self._run(&c)

    def cancel(self, int64_t order_id, int64_t account=0, int64_t ts=0):
        """Cancel a resting order of this account; returns the number of events."""
        cdef Command c
        memset(&c, 0, sizeof(Command))
        c.op = OP_CANCEL
        c.ts = ts
        c.order_id = order_id
        c.account = account
        return self._run(&c)

    def amend(self, int64_t order_id, int64_t price, int64_t qty, int64_t account=0,
              int64_t ts=0, int64_t trigger=0, int64_t disclosed=0):
        """Change price and/or open quantity (and a waiting stop's trigger, an iceberg's
        disclosed quantity; 0 keeps them); only a smaller qty at the same price keeps
        priority."""
        cdef Command c
        memset(&c, 0, sizeof(Command))
        c.op = OP_AMEND
        c.ts = ts
        c.order_id = order_id
        c.account = account
        c.price = price
        c.qty = qty
        c.trigger = trigger
        c.disclosed = disclosed
        return self._run(&c)

    def stop(self, int64_t order_id, uint8_t side, int64_t qty, int64_t trigger,
             int64_t account=0, uint8_t tif=TIF_DAY, uint8_t stp=STP_DEFAULT, int64_t ts=0):
        """Place a stop-market order: it waits until a trade reaches trigger, then
        enters as a market order; returns the number of events."""
        return self._stop(OP_STOP, order_id, side, 0, qty, trigger, account, tif, stp, ts)

    def stop_limit(self, int64_t order_id, uint8_t side, int64_t price, int64_t qty,
                   int64_t trigger, int64_t account=0, uint8_t tif=TIF_DAY,
                   uint8_t stp=STP_DEFAULT, int64_t ts=0):
        """Place a stop-limit order: it waits until a trade reaches trigger, then
        enters as a limit order at price; returns the number of events."""
        return self._stop(OP_STOP_LIMIT, order_id, side, price, qty, trigger, account, tif,
                          stp, ts)

    cdef Py_ssize_t _stop(self, uint8_t op, int64_t order_id, uint8_t side, int64_t price,
                          int64_t qty, int64_t trigger, int64_t account, uint8_t tif,
                          uint8_t stp, int64_t ts) except -1:
        cdef Command c
        memset(&c, 0, sizeof(Command))
        c.op = op
        c.side = side
        c.tif = tif
        c.stp = stp
        c.ts = ts
        c.order_id = order_id
        c.account = account
        c.price = price
        c.qty = qty
        c.trigger = trigger
        return self._run(&c)

    def open(self, int64_t ts=0):
        """Start a trading session (forgets the ids of finished orders)."""
        return self._session_command(OP_OPEN, 0, 0, ts)

    def close(self, int64_t ts=0):
        """End the session: DAY orders expire, new orders are rejected until open()."""
        return self._session_command(OP_CLOSE, 0, 0, ts)

    def pre_open(self, int64_t ts=0):
        """Start the call phase: orders rest without matching until uncross()."""
        return self._session_command(OP_PRE_OPEN, 0, 0, ts)

    def uncross(self, int64_t reference=0, int64_t ts=0):
        """End the call phase at one opening price (reference 0: the last trade price),
        then trade continuously."""
        return self._session_command(OP_UNCROSS, reference, 0, ts)

    def halt(self, int64_t ts=0):
        """Stop matching; new orders are refused until pre_open() and uncross()."""
        return self._session_command(OP_HALT, 0, 0, ts)

    def reband(self, int64_t low, int64_t high, int64_t ts=0):
        """Move the price band; resting orders outside it are cancelled."""
        return self._session_command(OP_REBAND, low, high, ts)

    cdef Py_ssize_t _session_command(self, uint8_t op, int64_t price, int64_t qty,
                                     int64_t ts) except -1:
        cdef Command c
        memset(&c, 0, sizeof(Command))
        c.op = op
        c.ts = ts
        c.price = price
        c.qty = qty
        return self._run(&c)

    def last_events(self):
        """The events of the last per-order call, as a new EVENT_DTYPE array (empty
        after process(), which returns its events itself)."""
        return _event_array(self._events.data, self._events.count, False)

    # --- batch API -----------------------------------------------------------------

    def process(self, commands):
        """Apply an array of COMMAND_DTYPE records in order, without the GIL.

        Returns the events as an EVENT_DTYPE array. Field values are never trusted:
        each bad command becomes a REJECTED event. Raises TypeError/ValueError only
        for an array without COMMAND_DTYPE's fields or not one-dimensional, before
        anything is applied (see records.as_commands). A large batch with no event
        buffer to reuse has a short-lived thread fault the new buffer in ahead of it.
        """
        cdef int64_t n, applied
        cdef const Command* cmds
        cdef Event* shrunk
        cdef cnp.ndarray array = commands if isinstance(commands, cnp.ndarray) else None
        if (array is None or array.dtype is not COMMAND_DTYPE or array.ndim != 1
                or not cnp.PyArray_IS_C_CONTIGUOUS(array)):
            array = records.as_commands(commands)
        self._enter()
        n = array.shape[0]
        cmds = <const Command*>cnp.PyArray_DATA(array)
        self._events.count = 0
        if events_reserve(&self._events, 2 * n + MIN_EVENTS) < 0:
            raise MemoryError("cannot allocate the event buffer")
        self._state = BUSY
        with nogil:
            # A large buffer with no page in yet (not the spare: _memory.h) is faulted
            # in on another thread while the commands run: the first batch of a process.
            if self._events.faulted == 0:
                self._events.prefault = bc_prefault_start(self._events.data,
                                                          self._events.capacity * sizeof(Event))
            applied = book_apply_many(&self._book, cmds, n, &self._events)
            bc_prefault_stop(self._events.prefault)
            self._events.prefault = NULL
        self._state = READY
        if applied < n:
            raise MemoryError(f"out of memory at command {applied}: the commands before it "
                              f"were applied and their events are lost; the book is "
                              f"consistent")
        if self._events.count <= KEEP_EVENTS:
            events = _event_array(self._events.data, self._events.count, False)
            if self._events.faulted < self._events.count * <int64_t>sizeof(Event):
                self._events.faulted = self._events.count * sizeof(Event)
        else:
            # A large buffer becomes the result (no copy) instead of being kept.
            shrunk = <Event*>realloc(self._events.data, self._events.count * sizeof(Event) + 1)
            events = _event_array(shrunk if shrunk != NULL else self._events.data,
                                  self._events.count, True)
            self._events.data = NULL
            self._events.capacity = 0
            self._events.faulted = 0
        self._events.count = 0          # last_events() is about per-order calls only
        return events

    # --- views ---------------------------------------------------------------------

    cdef object _level_total(self, Ladder* lad, int64_t idx):
        """(shown quantity, orders) of one level."""
        cdef int64_t total = 0
        cdef int64_t count = 0
        cdef int32_t slot = level_at(lad, idx).head
        cdef int64_t shown
        while slot >= 0:
            shown = shown_qty(&self._book.pool[slot])
            if total > INT64_MAX - shown:
                raise OverflowError("level quantity exceeds int64")
            total += shown
            count += 1
            slot = self._book.pool[slot].next
        return total, count

    def best_bid(self):
        """(price, shown quantity) of the best bid level, or None."""
        self._enter()
        cdef int64_t idx = self._book.bids.best_bid
        if idx < 0:
            return None
        return self._book.bids.low + idx, self._level_total(&self._book.bids, idx)[0]

    def best_ask(self):
        """(price, shown quantity) of the best ask level, or None."""
        self._enter()
        cdef int64_t idx = self._book.asks.best_ask
        if idx < 0:
            return None
        return self._book.asks.low + idx, self._level_total(&self._book.asks, idx)[0]

    def depth(self, Py_ssize_t n=10):
        """L2 view: (bids, asks), LEVEL_DTYPE arrays of at most n levels, best first
        (shown quantities)."""
        self._enter()
        if n < 0:
            raise ValueError("n must be >= 0")
        sides = []
        cdef int64_t idx, count
        cdef uint8_t side
        cdef Ladder* lad
        for side in (SIDE_BUY, SIDE_SELL):
            lad = side_ladder(&self._book, side)
            levels = np.zeros(n, dtype=LEVEL_DTYPE)
            idx = lad.best_bid if side == SIDE_BUY else lad.best_ask
            count = 0
            while idx >= 0 and count < n:
                total, orders = self._level_total(lad, idx)
                levels[count] = (lad.low + idx, total, orders)
                count += 1
                idx = next_level_in_book_order(lad, idx, side)
            sides.append(levels[:count])
        return sides[0], sides[1]

    cdef object _records(self, int32_t* slots, int64_t n):
        cdef cnp.ndarray out = np.zeros(n, dtype=ORDER_DTYPE)
        cdef OrderRecord* rec = <OrderRecord*>cnp.PyArray_DATA(out)
        cdef Order* o
        cdef int64_t i
        for i in range(n):
            o = &self._book.pool[slots[i]]
            rec[i].order_id = o.order_id
            rec[i].account = o.account
            rec[i].price = o.price
            rec[i].qty = o.qty
            rec[i].side = o.side
            rec[i].tif = o.tif
            rec[i].stp = o.stp
            rec[i].flags = o.flags
            rec[i].op = o.op
            rec[i].shown = shown_qty(o) if o.op == OP_LIMIT else o.qty
            rec[i].disclosed = o.disclosed if o.op <= OP_MARKET else 0
            rec[i].trigger = o.trigger if o.op > OP_MARKET else 0
            rec[i].stamp = o.stamp if o.op > OP_MARKET else 0
        return out

    def level(self, int64_t price):
        """L3 view of one price: its orders (ORDER_DTYPE) in FIFO order, buys then sells
        (a pre-open book may hold both at one price)."""
        self._enter()
        cdef int64_t idx = price - self._book.bids.low, n = 0
        cdef int32_t slot
        cdef int32_t* slots
        cdef Ladder* lad
        cdef uint8_t side
        if not in_band(&self._book, price):
            return np.zeros(0, dtype=ORDER_DTYPE)
        slots = <int32_t*>malloc((self._book.live + 1) * sizeof(int32_t))
        if slots == NULL:
            raise MemoryError()
        try:
            for side in range(SIDE_BUY, SIDE_SELL + 1):
                lad = side_ladder(&self._book, side)
                if lad.pages[idx >> PAGE_SHIFT] == NULL:
                    continue
                slot = level_at(lad, idx).head
                while slot >= 0:
                    slots[n] = slot
                    n += 1
                    slot = self._book.pool[slot].next
            return self._records(slots, n)
        finally:
            free(slots)

    def orders(self):
        """Every live order (ORDER_DTYPE): the book (bids best first, then asks; FIFO per
        level), then the market orders waiting for an uncross (buys, then sells, in
        arrival order), then the waiting stops in stop order."""
        self._enter()
        cdef int32_t* slots = <int32_t*>malloc((self._book.live + 1) * sizeof(int32_t))
        cdef int64_t n
        if slots == NULL:
            raise MemoryError()
        try:
            n = collect_live_order(&self._book, slots)
            return self._records(slots, n)
        finally:
            free(slots)

    def order(self, int64_t order_id):
        """The live order (resting, waiting market order or waiting stop) with this id as
        a RestingOrder, or None."""
        self._enter()
        cdef int32_t slot = live_slot(&self._book, order_id)
        if slot < 0:
            return None
        cdef Order* o = &self._book.pool[slot]
        cdef bint stop = o.op > OP_MARKET
        return RestingOrder(o.order_id, o.account, _SIDES[o.side], o.price, o.qty,
                            _TIFS[o.tif], _STPS[o.stp], bool(o.flags & FLAG_POST_ONLY),
                            shown_qty(o) if o.op == OP_LIMIT else o.qty,
                            o.disclosed if not stop else 0,
                            _OPS[o.op], o.trigger if stop else 0)

    def auction(self):
        """What uncross() with the book's own reference price would do now, as an
        AuctionQuote, or None when there is no opening price."""
        self._enter()
        cdef int64_t quote[4]
        if auction_quote(&self._book, own_reference(&self._book), quote) < 0:
            raise MemoryError()
        if quote[0] == 0:
            return None
        return AuctionQuote(quote[0], quote[1], quote[2], quote[3])

    @property
    def open_orders(self):
        """Number of live orders: resting, waiting market orders and waiting stops."""
        return self._book.live

    @property
    def seq(self):
        """Sequence number of the last event (0 before the first)."""
        return self._book.seq

    @property
    def phase(self):
        return _PHASES[self._book.phase]

    @property
    def is_open(self):
        return self._book.phase == PHASE_OPEN

    @property
    def last_price(self):
        """Price of the book's last trade, 0 before any."""
        return self._book.last_price

    @property
    def min_disclosed_percent(self):
        return self._book.min_disclosed_percent

    @property
    def low(self):
        return self._book.bids.low

    @property
    def high(self):
        return band_high(&self._book)

    @property
    def lot_size(self):
        return self._book.lot_size

    @property
    def max_qty(self):
        """Largest order quantity: price * qty of any order fits in int64."""
        return self._book.max_qty

    @property
    def symbol(self):
        return self._book.symbol

    @property
    def stp(self):
        """The default self-trade prevention mode of the book."""
        return Stp(self._book.default_stp)

    @property
    def nbytes(self):
        """Bytes of C memory the book holds (pool, id map, ladder pages, stop ladders,
        trigger queue, event buffer)."""
        cdef Book* b = &self._book
        cdef int64_t total = (sizeof(Book) + b.pool_capacity * sizeof(Order)
                              + b.ids.capacity * sizeof(IdEntry)
                              + b.queue_capacity * sizeof(int32_t)
                              + self._events.capacity * sizeof(Event))
        cdef Ladder* ladders[4]
        cdef Ladder* lad
        cdef int k
        ladders[0], ladders[1] = &b.bids, &b.asks
        ladders[2], ladders[3] = &b.stops[SIDE_BUY], &b.stops[SIDE_SELL]
        for k in range(4):
            lad = ladders[k]
            if lad.pages != NULL:
                total += (lad.npages * sizeof(Page*) + lad.npages_used * sizeof(Page)
                          + (lad.n_page_words + lad.n_word_words) * sizeof(uint64_t))
        return total

    def __repr__(self):
        if self._state == UNINITIALISED:
            return "<OrderBook (not initialised)>"
        return (f"<OrderBook symbol={self.symbol} band=[{self.low}, {self.high}] "
                f"phase={self.phase.name} open_orders={self.open_orders} seq={self.seq}>")

    # --- snapshots -----------------------------------------------------------------

    def snapshot(self):
        """The whole book state as bytes (version 2, CRC-checked); see restore()."""
        self._enter()
        cdef IdMap* ids = &self._book.ids
        cdef int64_t i
        spent = np.fromiter(
            (ids.entries[i].order_id for i in range(ids.capacity)
             if ids.entries[i].order_id != 0 and ids.entries[i].slot < 0),
            dtype="<i8")
        spent.sort()
        live = self.orders()
        body = _SNAPSHOT_HEADER.pack(
            _SNAPSHOT_MAGIC, _SNAPSHOT_VERSION, 0, self.low, self.high, self.lot_size,
            self.symbol, self._book.default_stp, self._book.phase, self._book.seq,
            len(live), len(spent), self._book.last_price,
            self._book.min_disclosed_percent) + live.tobytes() + spent.tobytes()
        return body + struct.pack("<I", zlib.crc32(body))

    @classmethod
    def restore(cls, data):
        """A book equal to the one snapshot() was taken of: it continues with the same
        events. Version 1 snapshots (wave 1: no phases, stops or icebergs) restore too.

        Raises ValueError for bytes that are not a valid snapshot.
        """
        data = bytes(data)
        if len(data) < _SNAPSHOT_HEADER_V1.size + 4:
            raise ValueError("snapshot is truncated")
        end = len(data) - 4
        body, (crc,) = data[:end], struct.unpack("<I", data[end:])
        if zlib.crc32(body) != crc:
            raise ValueError("snapshot checksum mismatch")
        magic, version = struct.unpack_from("<4sH", body)
        if magic != _SNAPSHOT_MAGIC:
            raise ValueError("not an order book snapshot")
        if version == 1:
            header, record = _SNAPSHOT_HEADER_V1, _ORDER_V1_DTYPE
        elif version == _SNAPSHOT_VERSION:
            header, record = _SNAPSHOT_HEADER, ORDER_DTYPE
        else:
            raise ValueError(f"unsupported snapshot version {version}")
        if len(body) < header.size:
            raise ValueError("snapshot is truncated")
        fields = header.unpack_from(body)
        (_magic, _version, _flags, low, high, lot_size, symbol, stp, phase, seq, n_orders,
         n_spent) = fields[:12]
        last_price, percent = fields[12:] if version > 1 else (0, 10)
        if (n_orders < 0 or n_spent < 0 or len(body) != header.size
                + n_orders * record.itemsize + n_spent * 8):
            raise ValueError("snapshot length does not match its header")
        if (seq < 0 or phase > (1 if version == 1 else PHASE_HALTED) or last_price < 0
                or not 0 <= percent <= 100):
            raise ValueError("snapshot header is invalid")
        cdef OrderBook book = cls(low, high, lot_size, symbol, stp, 0, percent)
        stored = np.frombuffer(body, dtype=record, count=n_orders, offset=header.size)
        spent = np.frombuffer(body, dtype="<i8", count=n_spent,
                              offset=header.size + n_orders * record.itemsize)
        if version == 1:
            live = np.zeros(n_orders, dtype=ORDER_DTYPE)
            for name in record.names:
                live[name] = stored[name]
            live["op"] = OP_LIMIT
            live["shown"] = live["qty"]
        else:
            live = stored
        _validate_snapshot_orders(live, spent, book, phase, seq, version == 1)
        book._load(live, spent)
        book._book.seq = seq
        book._book.phase = phase
        book._book.last_price = last_price
        return book

    cdef _load(self, cnp.ndarray live, cnp.ndarray spent):
        cdef Book* b = &self._book
        cdef const OrderRecord* rec = <const OrderRecord*>cnp.PyArray_DATA(live)
        cdef const int64_t* ids = <const int64_t*>cnp.PyArray_DATA(spent)
        cdef int64_t i
        cdef int32_t slot
        cdef IdEntry* entry
        cdef Order* o
        cdef Ladder* lad
        for i in range(live.shape[0]):
            if pool_reserve_one(b) < 0 or ids_reserve_one(&b.ids) < 0:
                raise MemoryError("cannot allocate the restored book")
            if (rec[i].op == OP_LIMIT or rec[i].op == OP_STOP_LIMIT) and ladder_ensure_page(
                    side_ladder(b, rec[i].side), rec[i].price - b.bids.low) < 0:
                raise MemoryError("cannot allocate the restored book")
            if rec[i].op > OP_MARKET and (stops_init(b) < 0 or ladder_ensure_page(
                    &b.stops[rec[i].side], rec[i].trigger - b.bids.low) < 0):
                raise MemoryError("cannot allocate the restored book")
            slot = pool_take(b)
            o = &b.pool[slot]
            o.order_id = rec[i].order_id
            o.account = rec[i].account
            o.price = rec[i].price
            o.qty = rec[i].qty
            o.side = rec[i].side
            o.tif = rec[i].tif
            o.stp = rec[i].stp
            o.flags = rec[i].flags
            o.op = rec[i].op
            if o.op > OP_MARKET:
                o.stamp = rec[i].stamp
                o.trigger = rec[i].trigger
            else:
                o.disclosed = rec[i].disclosed
                o.shown = rec[i].shown if rec[i].disclosed else 0
            if o.op == OP_LIMIT:        # as it was: an iceberg keeps its shown part
                lad = side_ladder(b, o.side)
                link_at(lad, b.pool, slot, o.price - lad.low, o.side)
                b.hidden_parts += hidden_parts(o)
            elif o.op == OP_MARKET:
                market_push(b, slot)
            else:
                stop_link(b, slot)
            b.live += 1
            entry = ids_probe(&b.ids, o.order_id)
            entry.order_id = o.order_id
            entry.slot = slot
            b.ids.count += 1
        for i in range(spent.shape[0]):
            if ids_reserve_one(&b.ids) < 0:
                raise MemoryError("cannot allocate the restored book")
            entry = ids_probe(&b.ids, ids[i])
            entry.order_id = ids[i]
            entry.slot = -1
            b.ids.count += 1


def _in_order(keys):
    """Are the rows in order of keys (a tuple of arrays, compared lexicographically)?"""
    order = np.lexsort(tuple(reversed(keys)))
    return bool(np.all(order == np.arange(len(order))))


def _validate_snapshot_orders(live, spent, OrderBook book, phase, seq, bint version_1):
    """Check a snapshot's orders and spent ids before any of them is loaded."""
    ops = live["op"]
    kind = np.select([ops == OP_LIMIT, ops == OP_MARKET,
                      (ops == OP_STOP) | (ops == OP_STOP_LIMIT)], [0, 1, 2], 3)
    resting, markets, stops = live[kind == 0], live[kind == 1], live[kind == 2]
    bids = resting[resting["side"] == SIDE_BUY]
    asks = resting[resting["side"] == SIDE_SELL]
    side_rank = np.where(live["side"] == SIDE_BUY, 0, 1)
    all_ids = np.concatenate([live["order_id"], spent])
    disclosed = resting["disclosed"]
    icebergs = disclosed != 0
    shown = resting["shown"][icebergs]
    problems = [
        (np.any(kind == 3) or np.any(np.diff(kind) < 0), "orders not in snapshot order"),
        (np.any(live["side"] < SIDE_BUY) or np.any(live["side"] > SIDE_SELL), "invalid side"),
        (np.any(np.diff(side_rank[kind == 0]) < 0) or np.any(np.diff(side_rank[kind == 1]) < 0)
         or np.any(np.diff(side_rank[kind == 2]) < 0), "orders not in book order"),
        (np.any(np.diff(bids["price"]) > 0) or np.any(np.diff(asks["price"]) < 0),
         "orders not in book order"),
        (version_1 and len(bids) and len(asks) and bids["price"].max() >= asks["price"].min(),
         "book is crossed"),
        (np.any(all_ids <= 0) or len(np.unique(all_ids)) != len(all_ids),
         "order ids not positive and unique"),
        (np.any((resting["tif"] != TIF_GTC) & (resting["tif"] != TIF_DAY)),
         "invalid time in force"),
        (np.any(live["stp"] > STP_DECREMENT), "invalid stp"),
        (np.any(resting["flags"] > FLAG_POST_ONLY) or np.any(markets["flags"] != 0)
         or np.any(stops["flags"] != 0), "invalid flags"),
        (np.any((resting["price"] < book.low) | (resting["price"] > book.high)),
         "price out of band"),
        (np.any((live["qty"] <= 0) | (live["qty"] % book.lot_size != 0)
                | (live["qty"] > book.max_qty)), "invalid quantity"),
        (np.any(icebergs & ((disclosed < 0) | (disclosed % book.lot_size != 0)))
         or np.any(live["disclosed"][kind != 0] != 0), "invalid disclosed quantity"),
        (np.any((shown <= 0) | (shown > np.minimum(disclosed[icebergs], resting["qty"][icebergs]))
                | (shown % book.lot_size != 0))
         or np.any(live["shown"][(kind != 0) | (live["disclosed"] == 0)]
                   != live["qty"][(kind != 0) | (live["disclosed"] == 0)]),
         "invalid shown quantity"),
        (len(markets) and (phase not in (PHASE_PRE_OPEN, PHASE_HALTED)
                           or np.any(markets["tif"] != TIF_IOC)
                           or np.any(markets["price"] != 0)), "invalid waiting market order"),
        (not _stops_valid(stops, book, seq), "invalid waiting stop"),
        (np.any(live["trigger"][kind != 2] != 0) or np.any(live["stamp"][kind != 2] != 0),
         "trigger or stamp on an order that is not a stop"),
    ]
    for failed, message in problems:
        if failed:
            raise ValueError(f"invalid snapshot: {message}")


def _stops_valid(stops, OrderBook book, seq):
    """Waiting stops: valid fields, in stop order, with unique stamps up to seq."""
    if not len(stops):
        return True
    op, tif = stops["op"], stops["tif"]
    buy = stops["side"] == SIDE_BUY
    ordered = (_in_order((stops["trigger"][buy], stops["stamp"][buy]))
               and _in_order((-stops["trigger"][~buy], stops["stamp"][~buy])))
    limit = op == OP_STOP_LIMIT
    wrong_side = np.where(buy, stops["price"] < stops["trigger"],
                          stops["price"] > stops["trigger"])
    return bool(
        ordered
        and not np.any((stops["trigger"] < book.low) | (stops["trigger"] > book.high))
        and not np.any(~limit & (stops["price"] != 0))
        and not np.any(limit & ((stops["price"] < book.low) | (stops["price"] > book.high)
                                | wrong_side))
        and not np.any((tif != TIF_GTC) & (tif != TIF_DAY) & ~(limit & (tif == TIF_IOC)))
        and not np.any((stops["stamp"] <= 0) | (stops["stamp"] > seq))
        and len(np.unique(stops["stamp"])) == len(stops))
