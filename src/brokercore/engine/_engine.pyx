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
    COMMAND_DTYPE, EVENT_DTYPE, LEVEL_DTYPE, MAX_BAND_LEVELS, ORDER_DTYPE, Op, RestingOrder,
    Side, Stp, Tif,
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
    #include <sys/mman.h>
    #define bc_ctz(x) __builtin_ctzll(x)
    #define bc_clz(x) __builtin_clzll(x)

    /* Ask for transparent huge pages on the 2 MiB-aligned interior of a large block:
       growing arrays (events, id map, pool) then take one page fault per 2 MiB
       instead of one per 4 KiB. Advice only; harmless where THP is off. */
    static void bc_advise_huge(void *p, size_t n) {
    #ifdef MADV_HUGEPAGE
        const uintptr_t huge = (uintptr_t)1 << 21;
        uintptr_t start = ((uintptr_t)p + huge - 1) & ~(huge - 1);
        uintptr_t end = ((uintptr_t)p + n) & ~(huge - 1);
        if (n >= 2 * huge && end > start)
            madvise((void *)start, end - start, MADV_HUGEPAGE);
    #endif
    }
    """
    int bc_ctz(uint64_t x) noexcept nogil
    int bc_clz(uint64_t x) noexcept nogil
    void bc_advise_huge(void* p, size_t n) noexcept nogil

cdef enum:
    MIN_POOL = 16
    MIN_IDS = 32
    MIN_EVENTS = 16
    KEEP_EVENTS = 65536                 # a batch's event buffer up to this size is reused
    TAKER_STOPPED = 1                   # match(): self-trade prevention ended the taker


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
    # Bids sit at or below the best bid, asks at or above the best ask (never crossed).
    if idx == lad.best_bid:
        lad.best_bid = level_at_or_below(lad, idx - 1)
    elif idx == lad.best_ask:
        lad.best_ask = level_at_or_above(lad, idx + 1)


cdef inline void link_tail(Ladder* lad, Order* pool, int32_t slot) noexcept nogil:
    """Append a pool slot to the FIFO of its price (its page must exist)."""
    cdef Order* o = &pool[slot]
    cdef int64_t idx = o.price - lad.low
    cdef Level* lvl = level_at(lad, idx)
    o.next = -1
    o.prev = lvl.tail
    if lvl.tail >= 0:
        pool[lvl.tail].next = slot
    else:
        lvl.head = slot
        mark_level_filled(lad, idx, o.side)
    lvl.tail = slot


cdef inline void unlink(Ladder* lad, Order* pool, int32_t slot) noexcept nogil:
    cdef Order* o = &pool[slot]
    cdef int64_t idx = o.price - lad.low
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
    cdef IdEntry* fresh = <IdEntry*>calloc(capacity, sizeof(IdEntry))
    if fresh == NULL:
        return -1
    bc_advise_huge(fresh, capacity * sizeof(IdEntry))
    m.entries = fresh
    m.capacity = capacity
    m.count = 0
    for i in range(old_capacity):
        if old[i].order_id != 0 and (keep_spent or old[i].slot >= 0):
            e = ids_probe(m, old[i].order_id)
            e[0] = old[i]
            m.count += 1
    free(old)
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
    bc_advise_huge(grown, capacity * sizeof(Order))
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
    if out.count + extra <= out.capacity:
        return 0
    while capacity < out.count + extra:
        capacity *= 2
    grown = <Event*>realloc(out.data, capacity * sizeof(Event))
    if grown == NULL:
        return -1
    bc_advise_huge(grown, capacity * sizeof(Event))
    out.data = grown
    out.capacity = capacity
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


cdef inline void emit_reject(Book* b, EventBuffer* out, const Command* c, uint8_t reason) noexcept nogil:
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
                   uint8_t default_stp, int64_t session_orders) noexcept nogil:
    """Set up an empty, open book; the caller has validated the arguments."""
    memset(b, 0, sizeof(Book))
    b.free_head = -1
    b.lot_size = lot_size
    b.max_qty = INT64_MAX // high
    b.symbol = symbol
    b.default_stp = default_stp
    b.is_open = True
    b.ids_floor = ids_capacity_for(session_orders)
    b.ids.entries = <IdEntry*>calloc(b.ids_floor, sizeof(IdEntry))
    b.ids.capacity = b.ids_floor
    bc_advise_huge(b.ids.entries, b.ids_floor * sizeof(IdEntry))
    if b.ids.entries == NULL or ladder_init(&b.ladder, low, high - low + 1) < 0:
        book_free(b)
        return -1
    return 0


cdef void book_free(Book* b) noexcept nogil:
    ladder_free(&b.ladder)
    free(b.pool)
    free(b.ids.entries)
    b.pool = NULL
    b.ids.entries = NULL


cdef inline int64_t band_high(Book* b) noexcept nogil:
    return b.ladder.low + b.ladder.nlevels - 1


cdef inline bint in_band(Book* b, int64_t price) noexcept nogil:
    return b.ladder.low <= price <= band_high(b)


cdef inline int64_t best_opposite(Book* b, uint8_t side) noexcept nogil:
    return b.ladder.best_ask if side == SIDE_BUY else b.ladder.best_bid


cdef inline bint crosses(Book* b, uint8_t side, int64_t price) noexcept nogil:
    """Would a limit order of this side and price meet the opposite side?"""
    cdef int64_t idx = best_opposite(b, side)
    if idx < 0:
        return False
    if side == SIDE_BUY:
        return b.ladder.low + idx <= price
    return b.ladder.low + idx >= price


cdef inline uint8_t quantity_reason(Book* b, int64_t qty) noexcept nogil:
    if qty <= 0 or qty % b.lot_size != 0:
        return R_INVALID_QUANTITY
    if qty > b.max_qty:
        return R_QUANTITY_TOO_LARGE
    return R_NONE


cdef inline void remove_order(Book* b, int32_t slot) noexcept nogil:
    """Take a resting order out of the book for good; its id stays spent."""
    unlink(&b.ladder, b.pool, slot)
    ids_mark_spent(&b.ids, b.pool[slot].order_id)
    pool_give_back(b, slot)
    b.live -= 1


# ---------------------------------------------------------------------------------
# Matching
# ---------------------------------------------------------------------------------

cdef bint fok_fillable(Book* b, const Order* t, bint market, uint8_t stp) noexcept nogil:
    """Can the taker fill completely right now? (docs/engine.md, FOK fillability)"""
    cdef Ladder* lad = &b.ladder
    cdef int64_t need = t.qty
    cdef int64_t idx = best_opposite(b, t.side)
    cdef int64_t price
    cdef int32_t slot
    cdef Order* m
    while idx >= 0:
        price = lad.low + idx
        if not market and (price > t.price if t.side == SIDE_BUY else price < t.price):
            return False
        slot = level_at(lad, idx).head
        while slot >= 0:
            m = &b.pool[slot]
            if m.account == t.account and stp != STP_NONE:
                if stp != STP_CANCEL_OLDEST:
                    return False
            else:
                need -= m.qty
                if need <= 0:
                    return True
            slot = m.next
        idx = next_level_in_book_order(lad, idx, SIDE_SELL if t.side == SIDE_BUY else SIDE_BUY)
    return False


cdef int match(Book* b, int32_t tslot, bint market, uint8_t stp, const Command* c,
               EventBuffer* out) noexcept nogil:
    """Trade the taker in pool slot tslot (not linked in the ladder) against the book.

    Returns TAKER_STOPPED when self-trade prevention cancelled the taker, else 0 with
    the taker's open quantity left in its slot.
    """
    cdef Ladder* lad = &b.ladder
    cdef Order* pool = b.pool
    cdef Order* t = &pool[tslot]
    cdef bint buy = t.side == SIDE_BUY
    cdef int64_t idx, price, q
    cdef int32_t mslot
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
                q = t.qty if t.qty < m.qty else m.qty
                if m.qty > q:
                    m.qty -= q
                    emit_order(b, out, c, EV_AMENDED, R_SELF_TRADE, m, m.qty, m.qty)
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
            return TAKER_STOPPED
        q = t.qty if t.qty < m.qty else m.qty
        t.qty -= q
        m.qty -= q
        emit_trade(b, out, c, t, m, q)
        if m.qty == 0:
            remove_order(b, mslot)
    return 0


cdef void finish_taker(Book* b, int32_t slot, IdEntry* entry, bint may_rest, int outcome,
                       const Command* c, EventBuffer* out) noexcept nogil:
    """After matching: rest the taker, cancel its remainder, or free its slot."""
    cdef Order* t = &b.pool[slot]
    if outcome != TAKER_STOPPED and t.qty > 0:
        if may_rest:
            link_tail(&b.ladder, b.pool, slot)
            entry.slot = slot
            return
        emit_order(b, out, c, EV_CANCELLED, R_IOC_REMAINDER, t, t.qty, 0)
    entry.slot = -1
    pool_give_back(b, slot)
    b.live -= 1


# ---------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------

cdef uint8_t new_order_reason(Book* b, const Command* c, bint market) noexcept nogil:
    """Validation of a new order after its id was spent, in the documented order."""
    cdef uint8_t reason
    if not b.is_open:
        return R_MARKET_CLOSED
    if c.side != SIDE_BUY and c.side != SIDE_SELL:
        return R_INVALID_SIDE
    if market:
        if c.tif != TIF_IOC and c.tif != TIF_FOK:
            return R_INVALID_TIF
    elif c.tif < TIF_GTC or c.tif > TIF_FOK:
        return R_INVALID_TIF
    if c.stp > STP_DECREMENT:
        return R_INVALID_STP
    if market:
        if c.flags != 0:
            return R_INVALID_FLAGS
    elif (c.flags & ~FLAG_POST_ONLY) or (c.flags and (c.tif == TIF_IOC or c.tif == TIF_FOK)):
        return R_INVALID_FLAGS
    reason = quantity_reason(b, c.qty)
    if reason:
        return reason
    if market:
        if best_opposite(b, c.side) < 0:
            return R_NO_LIQUIDITY
    elif not in_band(b, c.price):
        return R_PRICE_OUT_OF_BAND
    elif c.flags and crosses(b, c.side, c.price):
        return R_POST_ONLY_WOULD_TAKE
    return R_NONE


cdef void on_new_order(Book* b, const Command* c, EventBuffer* out) noexcept nogil:
    cdef bint market = c.op == OP_MARKET
    cdef IdEntry* entry
    cdef uint8_t reason, stp
    cdef int32_t slot
    cdef Order* t
    if c.order_id <= 0:
        emit_reject(b, out, c, R_INVALID_ORDER_ID)
        return
    entry = ids_probe(&b.ids, c.order_id)
    if entry.order_id == c.order_id:
        emit_reject(b, out, c, R_DUPLICATE_ORDER_ID)
        return
    entry.order_id = c.order_id          # the id is spent from here on
    entry.slot = -1
    b.ids.count += 1
    reason = new_order_reason(b, c, market)
    if reason:
        emit_reject(b, out, c, reason)
        return
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
    if c.tif == TIF_FOK and not fok_fillable(b, t, market, stp):
        pool_give_back(b, slot)
        b.live -= 1
        emit_reject(b, out, c, R_FOK_NOT_FILLABLE)
        return
    emit_order(b, out, c, EV_ACCEPTED, R_NONE, t, c.qty, c.qty)
    finish_taker(b, slot, entry, not market and (c.tif == TIF_GTC or c.tif == TIF_DAY),
                 match(b, slot, market, stp, c, out), c, out)


cdef inline int32_t live_slot(Book* b, int64_t order_id) noexcept nogil:
    cdef IdEntry* e = ids_find(&b.ids, order_id)
    return <int32_t>e.slot if e != NULL else -1


cdef void on_cancel(Book* b, const Command* c, EventBuffer* out) noexcept nogil:
    cdef int32_t slot = live_slot(b, c.order_id)
    if slot < 0:
        emit_reject(b, out, c, R_UNKNOWN_ORDER)
    elif b.pool[slot].account != c.account:
        emit_reject(b, out, c, R_NOT_OWNER)
    else:
        emit_order(b, out, c, EV_CANCELLED, R_USER_CANCEL, &b.pool[slot], b.pool[slot].qty, 0)
        remove_order(b, slot)


cdef void on_amend(Book* b, const Command* c, EventBuffer* out) noexcept nogil:
    cdef int32_t slot = live_slot(b, c.order_id)
    cdef Order* o
    cdef uint8_t reason
    if slot < 0:
        emit_reject(b, out, c, R_UNKNOWN_ORDER)
        return
    o = &b.pool[slot]
    if o.account != c.account:
        reason = R_NOT_OWNER
    elif not b.is_open:
        reason = R_MARKET_CLOSED
    else:
        reason = quantity_reason(b, c.qty)
    if not reason and not in_band(b, c.price):
        reason = R_PRICE_OUT_OF_BAND
    if (not reason and (o.flags & FLAG_POST_ONLY) and c.price != o.price
            and crosses(b, o.side, c.price)):
        reason = R_POST_ONLY_WOULD_TAKE
    if reason:
        emit_reject(b, out, c, reason)
        return
    if c.price == o.price and c.qty <= o.qty:
        o.qty = c.qty                   # in place: time priority kept
        emit_order(b, out, c, EV_AMENDED, R_NONE, o, o.qty, o.qty)
        return
    unlink(&b.ladder, b.pool, slot)
    o.price = c.price
    o.qty = c.qty
    emit_order(b, out, c, EV_AMENDED, R_NONE, o, o.qty, o.qty)
    finish_taker(b, slot, ids_find(&b.ids, c.order_id), True,
                 match(b, slot, False, o.stp if o.stp != STP_DEFAULT else b.default_stp, c, out),
                 c, out)


cdef void on_open(Book* b, const Command* c, EventBuffer* out) noexcept nogil:
    # The caller has already rebuilt the id map without the spent ids.
    b.is_open = True
    emit(b, out, c, EV_OPENED, R_NONE)


cdef void on_close(Book* b, const Command* c, EventBuffer* out) noexcept nogil:
    cdef Ladder* lad = &b.ladder
    cdef int64_t idx, after
    cdef int32_t slot, next_slot
    cdef uint8_t side
    for side in range(SIDE_BUY, SIDE_SELL + 1):
        idx = lad.best_bid if side == SIDE_BUY else lad.best_ask
        while idx >= 0:
            after = next_level_in_book_order(lad, idx, side)
            slot = level_at(lad, idx).head
            while slot >= 0:
                next_slot = b.pool[slot].next
                if b.pool[slot].tif == TIF_DAY:
                    emit_order(b, out, c, EV_EXPIRED, R_NONE, &b.pool[slot], b.pool[slot].qty, 0)
                    remove_order(b, slot)
                slot = next_slot
            idx = after
    b.is_open = False
    emit(b, out, c, EV_CLOSED, R_NONE)


cdef int64_t collect_book_order(Ladder* lad, Order* pool, int32_t* slots) noexcept nogil:
    """Write every live slot in book order (bids best first, then asks) to slots."""
    cdef int64_t n = 0, idx
    cdef int32_t slot
    cdef uint8_t side
    for side in range(SIDE_BUY, SIDE_SELL + 1):
        idx = lad.best_bid if side == SIDE_BUY else lad.best_ask
        while idx >= 0:
            slot = level_at(lad, idx).head
            while slot >= 0:
                slots[n] = slot
                n += 1
                slot = pool[slot].next
            idx = next_level_in_book_order(lad, idx, side)
    return n


cdef int on_reband(Book* b, const Command* c, EventBuffer* out) noexcept nogil:
    """Move the book onto a new band; -1 (nothing changed) if memory ran out."""
    cdef int64_t low = c.price, high = c.qty, max_qty, i, n
    cdef Ladder fresh
    cdef int32_t* slots
    cdef Order* o
    cdef Event* e
    if low < 1 or high < low or high - low + 1 > MAX_LEVELS:
        emit_reject(b, out, c, R_INVALID_BAND)
        return 0
    max_qty = INT64_MAX // high
    slots = <int32_t*>malloc((b.live + 1) * sizeof(int32_t))
    if slots == NULL or ladder_init(&fresh, low, high - low + 1) < 0:
        free(slots)
        return -1
    n = collect_book_order(&b.ladder, b.pool, slots)
    for i in range(n):                  # every page the survivors need, before any change
        o = &b.pool[slots[i]]
        if low <= o.price <= high and o.qty <= max_qty:
            if ladder_ensure_page(&fresh, o.price - low) < 0:
                ladder_free(&fresh)
                free(slots)
                return -1
    for i in range(n):
        o = &b.pool[slots[i]]
        if not (low <= o.price <= high):
            emit_order(b, out, c, EV_CANCELLED, R_PRICE_OUT_OF_BAND, o, o.qty, 0)
            remove_order(b, slots[i])
            slots[i] = -1
    for i in range(n):
        if slots[i] >= 0 and b.pool[slots[i]].qty > max_qty:
            o = &b.pool[slots[i]]
            emit_order(b, out, c, EV_CANCELLED, R_QUANTITY_TOO_LARGE, o, o.qty, 0)
            remove_order(b, slots[i])
            slots[i] = -1
    for i in range(n):
        if slots[i] >= 0:
            link_tail(&fresh, b.pool, slots[i])
    ladder_free(&b.ladder)
    b.ladder = fresh
    b.max_qty = max_qty
    free(slots)
    e = emit(b, out, c, EV_REBANDED, R_NONE)
    e.price = low
    e.qty = high
    return 0


cdef int reserve_for(Book* b, const Command* c, EventBuffer* out) noexcept nogil:
    """Allocate everything the command could need, so that it never fails half-way."""
    cdef int64_t worst_events = 1, capacity
    cdef bint may_trade
    if c.op == OP_LIMIT or c.op == OP_MARKET or c.op == OP_AMEND:
        # Accepted/amended, two per maker met, a final cancel; an order that cannot
        # cross meets no maker (an amend's side is not looked up: try both sides).
        if c.op == OP_AMEND:
            may_trade = crosses(b, SIDE_BUY, c.price) or crosses(b, SIDE_SELL, c.price)
        else:
            may_trade = c.op == OP_MARKET or crosses(b, c.side, c.price)
        if may_trade:
            worst_events = 3 + 2 * b.live
        else:
            worst_events = 2
        if c.op != OP_AMEND and (pool_reserve_one(b) < 0 or ids_reserve_one(&b.ids) < 0):
            return -1
        if c.op != OP_MARKET and in_band(b, c.price):
            if ladder_ensure_page(&b.ladder, c.price - b.ladder.low) < 0:
                return -1
    elif c.op == OP_CLOSE or c.op == OP_REBAND:
        worst_events = 1 + b.live
    elif c.op == OP_OPEN and not b.is_open:
        # Forget the spent ids now: a fresh table sized for the live orders.
        capacity = ids_capacity_for(2 * b.live)
        if ids_rebuild(&b.ids, capacity if capacity > b.ids_floor else b.ids_floor, False) < 0:
            return -1
    return events_reserve(out, worst_events)


cdef int book_apply(Book* b, const Command* c, EventBuffer* out) noexcept nogil:
    """Apply one command, appending its events to out; -1 (book unchanged) if out of memory."""
    if reserve_for(b, c, out) < 0:
        return -1
    if c.op == OP_LIMIT or c.op == OP_MARKET:
        on_new_order(b, c, out)
    elif c.op == OP_CANCEL:
        on_cancel(b, c, out)
    elif c.op == OP_AMEND:
        on_amend(b, c, out)
    elif c.op == OP_OPEN:
        if b.is_open:
            emit_reject(b, out, c, R_SESSION_STATE)
        else:
            on_open(b, c, out)
    elif c.op == OP_CLOSE:
        if not b.is_open:
            emit_reject(b, out, c, R_SESSION_STATE)
        else:
            on_close(b, c, out)
    elif c.op == OP_REBAND:
        return on_reband(b, c, out)
    else:
        emit_reject(b, out, c, R_UNKNOWN_OP)
    return 0


cdef int64_t book_apply_many(Book* b, const Command* cmds, int64_t n,
                             EventBuffer* out) noexcept nogil:
    """Apply n commands in order; returns how many were applied (< n only if out of memory)."""
    cdef int64_t i
    for i in range(n):
        if book_apply(b, &cmds[i], out) < 0:
            return i
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
    """Frees a malloc'ed block when the numpy array lent it is gone."""

    cdef void* data

    def __dealloc__(self):
        free(self.data)


# Enum members by value, for views (a tuple index is far cheaper than Enum(value)).
_SIDES = (None, Side.BUY, Side.SELL)
_TIFS = (None, *Tif)
_STPS = tuple(Stp)

_SNAPSHOT_MAGIC = b"BCOB"
_SNAPSHOT_VERSION = 1
_SNAPSHOT_HEADER = struct.Struct("<4sHHqqqIBB2xqqq")
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
    Per-order calls (``limit``, ``market``, ``cancel``, ``amend``, ``open``, ``close``,
    ``reband``) return the number of events, readable with ``last_events()``;
    ``process`` runs a whole array of commands without the GIL.
    A book is not thread-safe; a second thread touching it during ``process`` gets a
    RuntimeError. ``session_orders`` sizes the order-id map for that many orders per
    session up front: the map then never grows (a pause of milliseconds when it is
    large) in the middle of a session.
    """

    def __init__(self, int64_t low, int64_t high, int64_t lot_size=1, uint32_t symbol=0,
                 int stp=STP_CANCEL_NEWEST, int64_t session_orders=0):
        if self._state != UNINITIALISED:
            raise RuntimeError("OrderBook is already initialised")
        _validate_book_args(low, high, lot_size, stp)
        if not 0 <= session_orders <= (<int64_t>1 << 32):
            raise ValueError(f"session_orders must be in 0..2**32, got {session_orders}")
        if book_init(&self._book, low, high, lot_size, symbol, <uint8_t>stp,
                     session_orders) < 0:
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
              bint post_only=False, int64_t ts=0):
        """Place a limit order; returns the number of events (see last_events())."""
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
              int64_t ts=0):
        """Change price and/or open quantity; only a smaller qty at the same price keeps priority."""
        cdef Command c
        memset(&c, 0, sizeof(Command))
        c.op = OP_AMEND
        c.ts = ts
        c.order_id = order_id
        c.account = account
        c.price = price
        c.qty = qty
        return self._run(&c)

    def open(self, int64_t ts=0):
        """Start a trading session (forgets the ids of finished orders)."""
        return self._session_command(OP_OPEN, 0, 0, ts)

    def close(self, int64_t ts=0):
        """End the session: DAY orders expire, new orders are rejected until open()."""
        return self._session_command(OP_CLOSE, 0, 0, ts)

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
        anything is applied (see records.as_commands).
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
            applied = book_apply_many(&self._book, cmds, n, &self._events)
        self._state = READY
        if applied < n:
            raise MemoryError(f"out of memory at command {applied}: the commands before it "
                              f"were applied and their events are lost; the book is "
                              f"consistent")
        if self._events.count <= KEEP_EVENTS:
            events = _event_array(self._events.data, self._events.count, False)
        else:
            # A large buffer becomes the result (no copy) instead of being kept.
            shrunk = <Event*>realloc(self._events.data, self._events.count * sizeof(Event) + 1)
            events = _event_array(shrunk if shrunk != NULL else self._events.data,
                                  self._events.count, True)
            self._events.data = NULL
            self._events.capacity = 0
        self._events.count = 0          # last_events() is about per-order calls only
        return events

    # --- views ---------------------------------------------------------------------

    cdef object _level_total(self, int64_t idx):
        cdef int64_t total = 0
        cdef int64_t count = 0
        cdef int32_t slot = level_at(&self._book.ladder, idx).head
        while slot >= 0:
            if total > INT64_MAX - self._book.pool[slot].qty:
                raise OverflowError("level quantity exceeds int64")
            total += self._book.pool[slot].qty
            count += 1
            slot = self._book.pool[slot].next
        return total, count

    def best_bid(self):
        """(price, total quantity) of the best bid level, or None."""
        self._enter()
        cdef int64_t idx = self._book.ladder.best_bid
        return None if idx < 0 else (self._book.ladder.low + idx, self._level_total(idx)[0])

    def best_ask(self):
        """(price, total quantity) of the best ask level, or None."""
        self._enter()
        cdef int64_t idx = self._book.ladder.best_ask
        return None if idx < 0 else (self._book.ladder.low + idx, self._level_total(idx)[0])

    def depth(self, Py_ssize_t n=10):
        """L2 view: (bids, asks), LEVEL_DTYPE arrays of at most n levels, best first."""
        self._enter()
        if n < 0:
            raise ValueError("n must be >= 0")
        cdef Ladder* lad = &self._book.ladder
        sides = []
        cdef int64_t idx, count
        cdef uint8_t side
        for side in (SIDE_BUY, SIDE_SELL):
            levels = np.zeros(n, dtype=LEVEL_DTYPE)
            idx = lad.best_bid if side == SIDE_BUY else lad.best_ask
            count = 0
            while idx >= 0 and count < n:
                total, orders = self._level_total(idx)
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
            rec[i].op = OP_LIMIT
            rec[i].shown = o.qty
        return out

    def level(self, int64_t price):
        """L3 view of one price: its orders (ORDER_DTYPE) in FIFO order."""
        self._enter()
        cdef Ladder* lad = &self._book.ladder
        cdef int64_t idx = price - lad.low, n = 0
        cdef int32_t slot
        cdef int32_t* slots
        if not in_band(&self._book, price) or lad.pages[idx >> PAGE_SHIFT] == NULL:
            return np.zeros(0, dtype=ORDER_DTYPE)
        slots = <int32_t*>malloc((self._book.live + 1) * sizeof(int32_t))
        if slots == NULL:
            raise MemoryError()
        try:
            slot = level_at(lad, idx).head
            while slot >= 0:
                slots[n] = slot
                n += 1
                slot = self._book.pool[slot].next
            return self._records(slots, n)
        finally:
            free(slots)

    def orders(self):
        """L3 view of the whole book (ORDER_DTYPE): bids best first, then asks; FIFO per level."""
        self._enter()
        cdef int32_t* slots = <int32_t*>malloc((self._book.live + 1) * sizeof(int32_t))
        cdef int64_t n
        if slots == NULL:
            raise MemoryError()
        try:
            n = collect_book_order(&self._book.ladder, self._book.pool, slots)
            return self._records(slots, n)
        finally:
            free(slots)

    def order(self, int64_t order_id):
        """The live order with this id as a RestingOrder, or None."""
        self._enter()
        cdef int32_t slot = live_slot(&self._book, order_id)
        if slot < 0:
            return None
        cdef Order* o = &self._book.pool[slot]
        return RestingOrder(o.order_id, o.account, _SIDES[o.side], o.price, o.qty,
                            _TIFS[o.tif], _STPS[o.stp], bool(o.flags & FLAG_POST_ONLY),
                            o.qty, 0, Op.LIMIT, 0)

    @property
    def open_orders(self):
        """Number of resting orders."""
        return self._book.live

    @property
    def seq(self):
        """Sequence number of the last event (0 before the first)."""
        return self._book.seq

    @property
    def is_open(self):
        return bool(self._book.is_open)

    @property
    def low(self):
        return self._book.ladder.low

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
        """Bytes of C memory the book holds (pool, id map, ladder pages, event buffer)."""
        cdef Ladder* lad = &self._book.ladder
        return (sizeof(Book) + self._book.pool_capacity * sizeof(Order)
                + self._book.ids.capacity * sizeof(IdEntry)
                + lad.npages * sizeof(Page*) + lad.npages_used * sizeof(Page)
                + (lad.n_page_words + lad.n_word_words) * sizeof(uint64_t)
                + self._events.capacity * sizeof(Event))

    def __repr__(self):
        if self._state == UNINITIALISED:
            return "<OrderBook (not initialised)>"
        return (f"<OrderBook symbol={self.symbol} band=[{self.low}, {self.high}] "
                f"open_orders={self.open_orders} seq={self.seq}>")

    # --- snapshots -----------------------------------------------------------------

    def snapshot(self):
        """The whole book state as bytes (versioned, CRC-checked); see restore()."""
        self._enter()
        cdef IdMap* ids = &self._book.ids
        cdef int64_t i
        spent = np.fromiter(
            (ids.entries[i].order_id for i in range(ids.capacity)
             if ids.entries[i].order_id != 0 and ids.entries[i].slot < 0),
            dtype="<i8")
        spent.sort()
        live = self.orders()[list(_ORDER_V1_DTYPE.names)].astype(_ORDER_V1_DTYPE)
        body = _SNAPSHOT_HEADER.pack(
            _SNAPSHOT_MAGIC, _SNAPSHOT_VERSION, 0, self.low, self.high, self.lot_size,
            self.symbol, self._book.default_stp, self._book.is_open, self._book.seq,
            len(live), len(spent)) + live.tobytes() + spent.tobytes()
        return body + struct.pack("<I", zlib.crc32(body))

    @classmethod
    def restore(cls, data):
        """A book equal to the one snapshot() was taken of: it continues with the same events.

        Raises ValueError for bytes that are not a valid snapshot of this version.
        """
        data = bytes(data)
        if len(data) < _SNAPSHOT_HEADER.size + 4:
            raise ValueError("snapshot is truncated")
        end = len(data) - 4
        body, (crc,) = data[:end], struct.unpack("<I", data[end:])
        if zlib.crc32(body) != crc:
            raise ValueError("snapshot checksum mismatch")
        (magic, version, _flags, low, high, lot_size, symbol, stp, is_open, seq, n_orders,
         n_spent) = _SNAPSHOT_HEADER.unpack_from(body)
        if magic != _SNAPSHOT_MAGIC:
            raise ValueError("not an order book snapshot")
        if version != _SNAPSHOT_VERSION:
            raise ValueError(f"unsupported snapshot version {version}")
        if (n_orders < 0 or n_spent < 0 or len(body) != _SNAPSHOT_HEADER.size
                + n_orders * _ORDER_V1_DTYPE.itemsize + n_spent * 8):
            raise ValueError("snapshot length does not match its header")
        if seq < 0 or is_open > 1:
            raise ValueError("snapshot header is invalid")
        cdef OrderBook book = cls(low, high, lot_size, symbol, stp)
        v1 = np.frombuffer(body, dtype=_ORDER_V1_DTYPE, count=n_orders,
                           offset=_SNAPSHOT_HEADER.size)
        live = np.zeros(n_orders, dtype=ORDER_DTYPE)
        for name in _ORDER_V1_DTYPE.names:
            live[name] = v1[name]
        spent = np.frombuffer(body, dtype="<i8", count=n_spent,
                              offset=_SNAPSHOT_HEADER.size + n_orders * _ORDER_V1_DTYPE.itemsize)
        _validate_snapshot_orders(live, spent, book)
        book._load(live, spent)
        book._book.seq = seq
        book._book.is_open = is_open
        return book

    cdef _load(self, cnp.ndarray live, cnp.ndarray spent):
        cdef Book* b = &self._book
        cdef const OrderRecord* rec = <const OrderRecord*>cnp.PyArray_DATA(live)
        cdef const int64_t* ids = <const int64_t*>cnp.PyArray_DATA(spent)
        cdef int64_t i
        cdef int32_t slot
        cdef IdEntry* entry
        cdef Order* o
        for i in range(live.shape[0]):
            if (pool_reserve_one(b) < 0 or ids_reserve_one(&b.ids) < 0
                    or ladder_ensure_page(&b.ladder, rec[i].price - b.ladder.low) < 0):
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
            link_tail(&b.ladder, b.pool, slot)
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


def _validate_snapshot_orders(live, spent, OrderBook book):
    """Check a snapshot's orders and spent ids before any of them is loaded."""
    bids = live[live["side"] == SIDE_BUY]
    asks = live[live["side"] == SIDE_SELL]
    all_ids = np.concatenate([live["order_id"], spent])
    problems = [
        (len(bids) + len(asks) != len(live)
         or not np.all(live["side"][:len(bids)] == SIDE_BUY), "orders not in book order"),
        (np.any(np.diff(bids["price"]) > 0) or np.any(np.diff(asks["price"]) < 0),
         "orders not in book order"),
        (len(bids) and len(asks) and bids["price"].max() >= asks["price"].min(),
         "book is crossed"),
        (np.any(all_ids <= 0) or len(np.unique(all_ids)) != len(all_ids),
         "order ids not positive and unique"),
        (np.any((live["tif"] != TIF_GTC) & (live["tif"] != TIF_DAY)), "invalid time in force"),
        (np.any(live["stp"] > STP_DECREMENT), "invalid stp"),
        (np.any(live["flags"] > FLAG_POST_ONLY), "invalid flags"),
        (np.any((live["price"] < book.low) | (live["price"] > book.high)), "price out of band"),
        (np.any((live["qty"] <= 0) | (live["qty"] % book.lot_size != 0)
                | (live["qty"] > book.max_qty)), "invalid quantity"),
    ]
    for failed, message in problems:
        if failed:
            raise ValueError(f"invalid snapshot: {message}")
