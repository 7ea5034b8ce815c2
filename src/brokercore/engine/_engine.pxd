# The C layer of the order book: record structs, book state and the nogil entry points.
# docs/engine.md is the behaviour; records.py holds the numpy dtypes these structs mirror.

from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t, uint64_t

cimport numpy as cnp

cdef enum:
    OP_LIMIT = 1
    OP_MARKET = 2
    OP_CANCEL = 3
    OP_AMEND = 4
    OP_OPEN = 5
    OP_CLOSE = 6
    OP_REBAND = 7
    OP_STOP = 8
    OP_STOP_LIMIT = 9
    OP_PRE_OPEN = 10
    OP_UNCROSS = 11
    OP_HALT = 12

    PHASE_CLOSED = 0
    PHASE_OPEN = 1
    PHASE_PRE_OPEN = 2
    PHASE_HALTED = 3

    SIDE_BUY = 1
    SIDE_SELL = 2

    TIF_GTC = 1
    TIF_DAY = 2
    TIF_IOC = 3
    TIF_FOK = 4

    STP_DEFAULT = 0
    STP_NONE = 1
    STP_CANCEL_NEWEST = 2
    STP_CANCEL_OLDEST = 3
    STP_CANCEL_BOTH = 4
    STP_DECREMENT = 5

    FLAG_POST_ONLY = 1

    EV_ACCEPTED = 1
    EV_REJECTED = 2
    EV_TRADE = 3
    EV_CANCELLED = 4
    EV_EXPIRED = 5
    EV_AMENDED = 6
    EV_OPENED = 7
    EV_CLOSED = 8
    EV_REBANDED = 9
    EV_TRIGGERED = 10
    EV_PRE_OPENED = 11
    EV_UNCROSSED = 12
    EV_HALTED = 13

    R_NONE = 0
    R_UNKNOWN_OP = 1
    R_INVALID_ORDER_ID = 2
    R_DUPLICATE_ORDER_ID = 3
    R_UNKNOWN_ORDER = 4
    R_NOT_OWNER = 5
    R_INVALID_SIDE = 6
    R_INVALID_TIF = 7
    R_INVALID_STP = 8
    R_INVALID_FLAGS = 9
    R_INVALID_QUANTITY = 10
    R_QUANTITY_TOO_LARGE = 11
    R_PRICE_OUT_OF_BAND = 12
    R_MARKET_CLOSED = 13
    R_SESSION_STATE = 14
    R_INVALID_BAND = 15
    R_NO_LIQUIDITY = 16
    R_FOK_NOT_FILLABLE = 17
    R_POST_ONLY_WOULD_TAKE = 18
    R_USER_CANCEL = 19
    R_IOC_REMAINDER = 20
    R_SELF_TRADE = 21
    R_UNKNOWN_SYMBOL = 22               # used by a shard: no book for the command's symbol
    R_INVALID_TRIGGER = 23
    R_INVALID_DISCLOSED = 24
    R_HALTED = 25
    R_INVALID_PRICE = 26

    PAGE_SHIFT = 8                      # 256 price levels per ladder page
    PAGE_LEVELS = 256
    PAGE_WORDS = 4                      # bitmap words per page
    MAX_LEVELS = 67108864               # widest band, 2**26 ticks (records.MAX_BAND_LEVELS)


# --- records exchanged with Python (layouts checked against records.py at import) ---

ctypedef struct Command:
    uint32_t symbol
    uint8_t op
    uint8_t side
    uint8_t tif
    uint8_t stp
    uint8_t flags
    int64_t ts
    int64_t order_id
    int64_t account
    int64_t price
    int64_t qty
    int64_t trigger                     # a stop's trigger price, else 0
    int64_t disclosed                   # an iceberg's disclosed quantity, else 0

ctypedef struct Event:
    uint32_t symbol
    uint8_t type
    uint8_t reason
    uint8_t op
    uint8_t side
    int64_t seq
    int64_t ts
    int64_t order_id
    int64_t account
    int64_t price
    int64_t qty
    int64_t remaining
    int64_t other_id
    int64_t other_account
    int64_t other_remaining

ctypedef struct OrderRecord:
    int64_t order_id
    int64_t account
    int64_t price
    int64_t qty
    uint8_t side
    uint8_t tif
    uint8_t stp
    uint8_t flags
    uint8_t op                          # LIMIT, MARKET (waiting for an uncross), STOP, STOP_LIMIT
    int64_t shown                       # the part the market sees
    int64_t disclosed                   # an iceberg's peak, 0 = plain order
    int64_t trigger                     # a waiting stop's trigger, else 0
    int64_t stamp                       # a waiting stop's priority among stops, else 0


# --- book internals ---

cdef extern from *:
    """
    /* Sums of quantities that may pass int64 (the auction's, the waiting stops'). */
    typedef __int128 bc_wide;
    /* A pool slot; see Order below. A waiting stop is never an iceberg, so a stop's
       stamp and trigger share storage with an iceberg's disclosed and shown parts: a
       slot stays 64 bytes. */
    typedef struct {
        int64_t order_id, account, price, qty;
        int32_t prev, next;
        uint8_t side, tif, stp, flags, op;
        union { int64_t disclosed; int64_t stamp; };
        union { int64_t shown; int64_t trigger; };
    } bc_order;
    """
    ctypedef long long bc_wide          # 128-bit in C
    ctypedef struct Order "bc_order":   # a pool slot; prev/next link the FIFO of its level
        int64_t order_id                # (or of its trigger among the waiting stops, or of
        int64_t account                 # its side's queue of market orders waiting for an
        int64_t price                   # uncross; op says which)
        int64_t qty                     # whole open quantity
        int32_t prev
        int32_t next
        uint8_t side
        uint8_t tif
        uint8_t stp
        uint8_t flags
        uint8_t op                      # LIMIT (resting), MARKET (waiting), STOP, STOP_LIMIT
        int64_t disclosed               # an iceberg's peak, 0 = plain order (the hot-path test)
        int64_t shown                   # an iceberg's shown part (unused when disclosed is 0)
        int64_t stamp                   # a waiting stop's priority: the seq that placed it
        int64_t trigger                 # a waiting stop's trigger price

ctypedef struct Level:                  # FIFO of one price; -1 = none
    int32_t head
    int32_t tail

ctypedef struct Page:                   # allocated on first use of one of its levels
    uint64_t bits[PAGE_WORDS]           # bit set = level not empty
    Level levels[PAGE_LEVELS]

ctypedef struct Ladder:                 # levels indexed by price - low, one side per ladder
    int64_t low
    int64_t nlevels
    Page** pages
    int64_t npages
    int64_t npages_used
    uint64_t* page_bits                 # bit set = page has a non-empty level
    int64_t n_page_words
    uint64_t* word_bits                 # bit set = page_bits word not zero
    int64_t n_word_words
    int64_t best_bid                    # level index, -1 = no bids
    int64_t best_ask                    # level index, -1 = no asks

ctypedef struct IdEntry:                # order id -> pool slot; slot -1 = id spent
    int64_t order_id                    # 0 = empty entry
    int64_t slot

ctypedef struct IdMap:                  # open addressing, linear probing, load <= 1/2
    IdEntry* entries
    int64_t capacity                    # power of two
    int64_t count

ctypedef struct Book:
    Ladder bids                         # resting buys (best_bid used)
    Ladder asks                         # resting sells (best_ask used); apart, so that a
                                        # pre-open book may cross
    Order* pool
    int32_t pool_capacity
    int32_t free_head
    int64_t live
    IdMap ids
    int64_t ids_floor                   # the id map never shrinks below this capacity
    int64_t lot_size
    int64_t max_qty
    int64_t seq
    uint32_t symbol
    uint8_t default_stp
    uint8_t phase                       # PHASE_*
    int64_t last_price                  # price of the last trade, 0 before any
    int64_t min_disclosed_percent
    int64_t hidden_parts                # icebergs: refreshes still to come (event reserve)
    int32_t market_head[3]              # market orders waiting for an uncross, by side:
    int32_t market_tail[3]              # FIFOs through prev/next, -1 = none
    int64_t markets                     # how many wait
    Ladder stops[3]                     # waiting stops by trigger: [BUY] keeps best_ask (the
                                        # lowest trigger), [SELL] best_bid (the highest)
    bint stops_ready                    # stops[] allocated (on the first stop)
    int64_t nstops                      # waiting stops
    bc_wide stop_qty                    # their whole quantity (bounds what they may trade)
    int32_t* queue                      # the command's trigger queue (pool slots)
    int64_t queue_head
    int64_t queue_len
    int64_t queue_capacity
    int64_t quote[4]                    # an UNCROSS's opening (price, volume, imbalance,
                                        # surplus side), computed while reserving

ctypedef struct EventBuffer:            # growable array of events written by book_apply
    Event* data
    int64_t count
    int64_t capacity
    int64_t faulted                     # bytes at the start of data known to be faulted in
    void* prefault                      # a thread faulting data in (process()), or NULL


cdef int book_init(Book* book, int64_t low, int64_t high, int64_t lot_size,
                   uint32_t symbol, uint8_t default_stp, int64_t session_orders,
                   int64_t min_disclosed_percent) noexcept nogil
cdef void book_free(Book* book) noexcept nogil
cdef int events_reserve(EventBuffer* out, int64_t extra) noexcept nogil
cdef void write_reject(Event* e, const Command* c, uint32_t symbol, int64_t seq,
                       uint8_t reason) noexcept nogil
cdef int book_apply(Book* book, const Command* cmd, EventBuffer* out) noexcept nogil
cdef int64_t book_apply_many(Book* book, const Command* cmds, int64_t n,
                             EventBuffer* out) noexcept nogil


cdef enum BookState:
    UNINITIALISED = 0
    READY = 1
    BUSY = 2                            # a batch or a shard's matcher owns the book


cdef class OrderBook:
    cdef Book _book
    cdef EventBuffer _events            # events of the last per-order call
    cdef BookState _state
    cdef int _enter(self) except -1
    cdef Py_ssize_t _run(self, Command* c) except -1
    cdef Py_ssize_t _stop(self, uint8_t op, int64_t order_id, uint8_t side, int64_t price,
                          int64_t qty, int64_t trigger, int64_t account, uint8_t tif,
                          uint8_t stp, int64_t ts) except -1
    cdef Py_ssize_t _session_command(self, uint8_t op, int64_t price, int64_t qty,
                                     int64_t ts) except -1
    cdef object _level_total(self, Ladder* lad, int64_t idx)
    cdef object _records(self, int32_t* slots, int64_t n)
    cdef _load(self, cnp.ndarray live, cnp.ndarray spent)
