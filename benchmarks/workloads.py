"""Deterministic benchmark workloads for brokercore order books.

A workload is a COMMAND_DTYPE array built up front (so generating it is never timed),
plus a short *prefill* that puts a standing book in place before the timed part.

Cancels and amends must name orders that are live when they arrive, so the generator
runs what it generates through a scratch book, chunk by chunk, and follows every
order's open quantity from the events that come back (``BookMirror``); the next chunk
picks its cancel/amend targets among the orders live at that point. An order that
dies inside the chunk that targets it (a fill, another cancel) makes the odd target
stale; the benchmark prints the measured share of cancels and amends that hit.

Two profiles share that machinery and differ only in how a chunk is composed:

* ``mixed``: ~60% limit (GTC, some IOC), 10% market, 30% cancel of live orders;
  prices around a random-walk mid inside a 2,000-tick band, quantities 1..1000,
  8 accounts, self-trade prevention off (book stp NONE); the book held near 5,000
  resting orders (the limit/cancel split is nudged per chunk, by a point or so).
* ``exchange-core``: shaped like exchange-core's published benchmark: 82% amends that
  move the price of a resting order, 9% new GTC limits, 6% cancels, 3% IOC; 1,000
  accounts; the book held near 1,000 resting orders (the GTC/cancel split is nudged
  per chunk to hold it there).

The workload only depends on the book contract (docs/engine.md), so it is the same
whichever implementation (engine or reference model) served as the scratch book.

``per_order_calls`` turns commands into the book's per-order calls (``limit``, ``market``,
``cancel``, ``amend``), which ``run_calls`` dispatches: the per-order benchmarks' loop
(bench_engine.py and tests/benchmarks).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from brokercore.engine.records import COMMAND_DTYPE, EVENT_DTYPE, EventType, Op, Side, Stp, Tif

__all__ = [
    "Workload",
    "Profile",
    "MixedProfile",
    "ExchangeCoreProfile",
    "PROFILES",
    "generate",
    "memory_book_commands",
    "bound_methods",
    "per_order_calls",
    "run_calls",
    "per_order_events",
]

_NEW_ORDER_OPS = (Op.LIMIT, Op.MARKET)


@dataclass
class Workload:
    """Everything a benchmark run needs: the book's parameters and the commands."""

    name: str
    description: str
    low: int
    high: int
    book_stp: int
    prefill: np.ndarray  # COMMAND_DTYPE, applied before timing starts
    commands: np.ndarray  # COMMAND_DTYPE, the timed part
    stats: dict = field(default_factory=dict)  # generation-time book statistics

    def new_book(self, book_class, **options):
        """A fresh, empty book of the right shape (prefill not applied); ``options`` go
        to the constructor as they are (e.g. the engine's ``session_orders``)."""
        return book_class(self.low, self.high, lot_size=1, symbol=1, stp=self.book_stp, **options)

    def prefilled_book(self, book_class, **options):
        """A fresh book with the prefill applied (the prefill's events are dropped)."""
        book = self.new_book(book_class, **options)
        if len(self.prefill):
            book.process(self.prefill)
        return book

    def session_orders(self, commands: np.ndarray | None = None) -> int:
        """New orders (limits and markets) in the prefill and ``commands`` (default: all
        the timed commands): what a book sized for the run expects (``session_orders``)."""
        timed = self.commands if commands is None else commands
        return sum(int(np.isin(c["op"], _NEW_ORDER_OPS).sum()) for c in (self.prefill, timed))


# ----------------------------------------------------------------- book mirror


def _assign_last(target: np.ndarray, ids: np.ndarray, values: np.ndarray) -> None:
    """target[ids] = values where a repeated id takes its last value (numpy's fancy
    assignment does not promise which duplicate wins)."""
    if len(ids) == 0:
        return
    reversed_ids = ids[::-1]
    unique_ids, first_in_reversed = np.unique(reversed_ids, return_index=True)
    target[unique_ids] = values[::-1][first_in_reversed]


class BookMirror:
    """What the generator knows about its scratch book, rebuilt from events alone:
    per order id its open quantity (0 = not live), price, side and account."""

    _ALIVE_AFTER = (EventType.ACCEPTED, EventType.TRADE, EventType.AMENDED)
    _DEAD_AFTER = (EventType.CANCELLED, EventType.EXPIRED)

    def __init__(self, capacity: int):
        self.open_qty = np.zeros(capacity + 1, dtype=np.int64)
        self.price = np.zeros(capacity + 1, dtype=np.int64)
        self.side = np.zeros(capacity + 1, dtype=np.uint8)
        self.account = np.zeros(capacity + 1, dtype=np.int64)
        self.max_id = 0

    def record_new_orders(self, commands: np.ndarray) -> None:
        """Side and account of the new orders a chunk is about to place."""
        new = commands[np.isin(commands["op"], _NEW_ORDER_OPS)]
        ids = new["order_id"]
        self.side[ids] = new["side"]
        self.account[ids] = new["account"]
        if len(ids):
            self.max_id = max(self.max_id, int(ids.max()))

    def apply_events(self, events: np.ndarray) -> None:
        """Follow open quantities (taker and maker sides of trades) and prices."""
        types = events["type"]
        touches = np.isin(types, self._ALIVE_AFTER + self._DEAD_AFTER)
        trades = types == EventType.TRADE
        positions = np.concatenate([np.flatnonzero(touches), np.flatnonzero(trades)])
        ids = np.concatenate([events["order_id"][touches], events["other_id"][trades]])
        after = np.concatenate(
            [
                np.where(
                    np.isin(types[touches], self._ALIVE_AFTER), events["remaining"][touches], 0
                ),
                events["other_remaining"][trades],
            ]
        )
        chronological = np.argsort(positions, kind="stable")
        _assign_last(self.open_qty, ids[chronological], after[chronological])
        priced = np.isin(types, (EventType.ACCEPTED, EventType.AMENDED))
        _assign_last(self.price, events["order_id"][priced], events["price"][priced])

    def live_ids(self) -> np.ndarray:
        """Ids of the orders resting now, ascending."""
        return np.flatnonzero(self.open_qty[: self.max_id + 1] > 0)

    def level_count(self, live: np.ndarray) -> int:
        """Distinct (side, price) levels the given live orders occupy."""
        keys = self.price[live] * 4 + self.side[live]
        return int(np.unique(keys).size)


# ------------------------------------------------------------ generator state


@dataclass
class GeneratorState:
    """Mutable state a profile reads and updates while composing chunks."""

    rng: np.random.Generator
    mirror: BookMirror
    mid: int
    next_id: int = 1
    live: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def take_ids(self, count: int) -> np.ndarray:
        ids = np.arange(self.next_id, self.next_id + count, dtype=np.int64)
        self.next_id += count
        return ids

    def pick_targets(self, count: int) -> np.ndarray:
        """Distinct live orders (repeats only if fewer are live than asked for)."""
        if count == 0 or len(self.live) == 0:
            return np.zeros(count, dtype=np.int64)  # id 0: never live, REJECTED
        replace = count > len(self.live)
        return self.rng.choice(self.live, size=count, replace=replace)


def _empty_commands(count: int) -> np.ndarray:
    return np.zeros(count, dtype=COMMAND_DTYPE)


def _concatenate(chunks: list[np.ndarray]) -> np.ndarray:
    """Join COMMAND_DTYPE arrays (np.concatenate would drop the struct padding)."""
    out = _empty_commands(sum(len(c) for c in chunks))
    start = 0
    for chunk in chunks:
        out[start : start + len(chunk)] = chunk
        start += len(chunk)
    return out


def _random_sides(rng: np.random.Generator, count: int) -> np.ndarray:
    return rng.integers(Side.BUY, Side.SELL + 1, size=count).astype(np.uint8)


def _signed_by_side(sides: np.ndarray, distance: np.ndarray) -> np.ndarray:
    """Below the mid for bids, above it for asks."""
    return np.where(sides == Side.BUY, -distance, distance)


# ------------------------------------------------------------------ profiles


class Profile:
    """How one workload's chunks are composed; the driver (``generate``) is shared.
    Subclasses set the attributes below and implement ``gtc_orders`` and ``chunk``."""

    name: str
    description: str
    mid: int  # starting mid price, ticks
    low: int  # the book's price band, ticks
    high: int
    book_stp: Stp = Stp.NONE
    prefill_orders: int  # resting orders the untimed prefill aims for
    target_orders: int  # resting orders the book is held near
    op_mix: dict[str, float]  # kind -> share of the timed commands, in kind-index order
    grow_kind: str  # the two kinds traded off to hold the book size
    shrink_kind: str
    max_rebalance = 0.03  # at most this share of the mix moves between them

    def mix(self, live_orders: int) -> np.ndarray:
        """The op mix for the next chunk: ``op_mix`` with up to ``max_rebalance`` moved
        between the grow and shrink kinds, toward ``target_orders`` resting orders
        (without it the book drifts to empty or grows without bound)."""
        shortfall = (self.target_orders - live_orders) / self.target_orders
        shift = float(np.clip(shortfall * 0.1, -self.max_rebalance, self.max_rebalance))
        mix = dict(self.op_mix)
        mix[self.grow_kind] += shift
        mix[self.shrink_kind] -= shift
        return np.array(list(mix.values()))

    def draw_kinds(self, state: GeneratorState, size: int) -> dict[str, np.ndarray]:
        """A random kind per command, drawn from ``mix``; one boolean mask per kind."""
        drawn = state.rng.choice(len(self.op_mix), size=size, p=self.mix(len(state.live)))
        return {kind: drawn == index for index, kind in enumerate(self.op_mix)}

    def gtc_orders(self, state: GeneratorState, count: int) -> np.ndarray:
        """New resting limit orders around the mid (prefill and new-order rows)."""
        raise NotImplementedError

    def chunk(self, state: GeneratorState, size: int) -> np.ndarray:
        """The next ``size`` timed commands."""
        raise NotImplementedError

    def observe(self, state: GeneratorState, events: np.ndarray) -> None:
        """Update profile state (e.g. the mid) from a chunk's events."""

    def clip_price(self, prices: np.ndarray) -> np.ndarray:
        return np.clip(prices, self.low, self.high)


class MixedProfile(Profile):
    name = "mixed"
    description = (
        "60% limit (85% GTC, 15% IOC), 10% market IOC, 30% cancel of live "
        "orders; random-walk mid in a 2,000-tick band; qty 1..1000; 8 accounts; "
        "~5,000 resting orders"
    )
    mid = 100_000
    low = 99_000
    high = 100_999
    prefill_orders = 5_000
    target_orders = 5_000
    op_mix = {"limit": 0.60, "market": 0.10, "cancel": 0.30}
    grow_kind, shrink_kind = "limit", "cancel"
    max_rebalance = 0.05
    ioc_share_of_limits = 0.15
    accounts = 8
    mid_step_probability = 0.1  # per command, a +-1 tick step of the mid
    mid_margin = 100  # the mid stays this far inside the band
    offset_scale = 30.0  # mean distance (ticks) of a limit price behind the mid
    offset_cross = 1  # limit prices reach up to this far through the mid

    def _mid_path(self, state: GeneratorState, size: int) -> np.ndarray:
        """The mid at every command of the chunk: a clipped random walk."""
        steps = state.rng.choice(
            (-1, 0, 1),
            size=size,
            p=(
                self.mid_step_probability / 2,
                1 - self.mid_step_probability,
                self.mid_step_probability / 2,
            ),
        )
        path = np.clip(
            state.mid + np.cumsum(steps), self.low + self.mid_margin, self.high - self.mid_margin
        )
        state.mid = int(path[-1])
        return path

    def _limit_prices(self, state, sides, mids) -> np.ndarray:
        """Mostly behind the mid, a few ticks through it now and then (those trade)."""
        distance = np.rint(state.rng.exponential(self.offset_scale, size=len(sides)))
        distance = distance.astype(np.int64) - self.offset_cross
        return self.clip_price(mids + _signed_by_side(sides, distance))

    def _fill_new_orders(self, state, commands, rows, mids, op, tif) -> None:
        """Fill in the given new-order rows (all but the id)."""
        count = len(rows)
        sides = _random_sides(state.rng, count)
        commands["op"][rows] = op
        commands["tif"][rows] = tif
        commands["side"][rows] = sides
        commands["qty"][rows] = state.rng.integers(1, 1001, size=count)
        commands["account"][rows] = state.rng.integers(1, self.accounts + 1, size=count)
        if op == Op.LIMIT:
            commands["price"][rows] = self._limit_prices(state, sides, mids)

    def gtc_orders(self, state, count):
        commands = _empty_commands(count)
        self._fill_new_orders(
            state, commands, np.arange(count), np.full(count, state.mid), Op.LIMIT, Tif.GTC
        )
        commands["order_id"] = state.take_ids(count)
        return commands

    def chunk(self, state, size):
        mids = self._mid_path(state, size)
        kind = self.draw_kinds(state, size)
        commands = _empty_commands(size)
        limit_rows = np.flatnonzero(kind["limit"])
        ioc = state.rng.random(len(limit_rows)) < self.ioc_share_of_limits
        for rows, op, tif in (
            (limit_rows[~ioc], Op.LIMIT, Tif.GTC),
            (limit_rows[ioc], Op.LIMIT, Tif.IOC),
            (np.flatnonzero(kind["market"]), Op.MARKET, Tif.IOC),
        ):
            self._fill_new_orders(state, commands, rows, mids[rows], op, tif)
        new_rows = np.flatnonzero(kind["limit"] | kind["market"])
        commands["order_id"][new_rows] = state.take_ids(len(new_rows))
        cancel_rows = np.flatnonzero(kind["cancel"])
        targets = state.pick_targets(len(cancel_rows))
        commands["op"][cancel_rows] = Op.CANCEL
        commands["order_id"][cancel_rows] = targets
        commands["account"][cancel_rows] = state.mirror.account[targets]
        return commands


class ExchangeCoreProfile(Profile):
    name = "exchange-core"
    description = (
        "82% amend (price move of a resting order), 9% GTC limit, 6% cancel, "
        "3% IOC; ~1,000 resting orders; 1,000 accounts"
    )
    mid = 100_000
    low = 80_000  # +-20% band, like the memory test's books
    high = 120_000
    prefill_orders = 1_000
    target_orders = 1_000
    op_mix = {"amend": 0.82, "gtc": 0.09, "cancel": 0.06, "ioc": 0.03}
    grow_kind, shrink_kind = "gtc", "cancel"
    accounts = 1_000
    price_deviation = 4_000  # widest spread (ticks) of new GTC prices around the mid
    move_alpha = 0.01  # an amend moves its order this share of the way to the mid

    def _sizes(self, state, count) -> np.ndarray:
        """1 + a*b*c with a, b, c uniform in 0..5: mostly small, up to 126."""
        return 1 + np.prod(state.rng.integers(0, 6, size=(3, count)), axis=0)

    def _gtc_prices(self, state, sides) -> np.ndarray:
        """Around the mid, bids below and asks above, at a random per-order spread."""
        rng = state.rng
        count = len(sides)
        spread = 1 + (rng.random(count) ** 2 * self.price_deviation).astype(np.int64)
        distance = np.abs(rng.integers(0, spread, size=(4, count)).sum(axis=0) // 4 * 2 - spread)
        return self.clip_price(state.mid + _signed_by_side(sides, distance))

    def _fill_new_orders(self, state, commands, rows, tif) -> None:
        count = len(rows)
        sides = _random_sides(state.rng, count)
        commands["op"][rows] = Op.LIMIT
        commands["tif"][rows] = tif
        commands["side"][rows] = sides
        commands["qty"][rows] = self._sizes(state, count)
        commands["account"][rows] = state.rng.integers(1, self.accounts + 1, size=count)
        if tif == Tif.GTC:
            commands["price"][rows] = self._gtc_prices(state, sides)
        else:  # IOC at the far edge of the band: takes whatever is there
            commands["price"][rows] = np.where(sides == Side.BUY, self.high, self.low)

    def gtc_orders(self, state, count):
        commands = _empty_commands(count)
        self._fill_new_orders(state, commands, np.arange(count), Tif.GTC)
        commands["order_id"] = state.take_ids(count)
        return commands

    def _moved_prices(self, state, targets) -> np.ndarray:
        """Each target's price moved toward the mid (at least one tick)."""
        prices = state.mirror.price[targets]
        pull = (state.mid - prices) * self.move_alpha
        step = np.where(prices > state.mid, np.floor(pull), np.ceil(pull)).astype(np.int64)
        at_mid = step == 0
        step[at_mid] = state.rng.choice((-1, 1), size=int(at_mid.sum()))
        return self.clip_price(prices + step)

    def chunk(self, state, size):
        kind = self.draw_kinds(state, size)
        commands = _empty_commands(size)
        self._fill_new_orders(state, commands, np.flatnonzero(kind["gtc"]), Tif.GTC)
        self._fill_new_orders(state, commands, np.flatnonzero(kind["ioc"]), Tif.IOC)
        new_rows = np.flatnonzero(kind["gtc"] | kind["ioc"])
        commands["order_id"][new_rows] = state.take_ids(len(new_rows))
        targeted_rows = np.flatnonzero(kind["amend"] | kind["cancel"])
        targets = state.pick_targets(len(targeted_rows))
        commands["order_id"][targeted_rows] = targets
        commands["account"][targeted_rows] = state.mirror.account[targets]
        amends = kind["amend"][targeted_rows]
        amend_rows, amend_targets = targeted_rows[amends], targets[amends]
        commands["op"][amend_rows] = Op.AMEND
        commands["price"][amend_rows] = self._moved_prices(state, amend_targets)
        commands["qty"][amend_rows] = np.maximum(state.mirror.open_qty[amend_targets], 1)
        commands["op"][targeted_rows[~amends]] = Op.CANCEL
        return commands

    def observe(self, state, events):
        """The mid follows the last trade price, as in exchange-core's generator."""
        trades = events["price"][events["type"] == EventType.TRADE]
        if len(trades):
            state.mid = int(trades[-1])


PROFILES = {p.name: p for p in (MixedProfile(), ExchangeCoreProfile())}


# ---------------------------------------------------------------------- driver


def _chunk_size(live_orders: int) -> int:
    """Small enough that few targets die inside their chunk, big enough to be cheap."""
    return int(np.clip(live_orders // 8, 64, 4096))


class _ChunkRunner:
    """Feeds chunks to the scratch book and keeps the mirror and statistics current."""

    def __init__(self, profile: Profile, state: GeneratorState, book):
        self.profile, self.state, self.book = profile, state, book
        self.live_samples: list[int] = []
        self.level_samples: list[int] = []

    def run(self, commands: np.ndarray, sample: bool) -> np.ndarray:
        self.state.mirror.record_new_orders(commands)
        events = self.book.process(commands)
        self.state.mirror.apply_events(events)
        self.profile.observe(self.state, events)
        self.state.live = self.state.mirror.live_ids()
        if sample:
            self.live_samples.append(len(self.state.live))
            self.level_samples.append(self.state.mirror.level_count(self.state.live))
        return commands


def _prefill(profile: Profile, runner: _ChunkRunner) -> np.ndarray:
    """GTC orders until about ``profile.prefill_orders`` rest (a few may trade)."""
    chunks = []
    for _ in range(10):
        missing = profile.prefill_orders - len(runner.state.live)
        if missing <= profile.prefill_orders // 50:
            break
        chunks.append(runner.run(profile.gtc_orders(runner.state, missing), sample=False))
    return _concatenate(chunks)


def generate(profile: Profile, n_ops: int, seed: int, book_class, progress=None) -> Workload:
    """Build a workload of ``n_ops`` timed commands, deterministic in ``seed``.

    ``book_class`` is the scratch book (engine or reference model; same result).
    ``progress(done, total)`` is called now and then if given.
    """
    capacity = n_ops + 20 * profile.prefill_orders
    state = GeneratorState(np.random.default_rng(seed), BookMirror(capacity), profile.mid)
    book = book_class(profile.low, profile.high, lot_size=1, symbol=1, stp=profile.book_stp)
    runner = _ChunkRunner(profile, state, book)
    prefill = _prefill(profile, runner)
    chunks, done, reported = [], 0, 0
    while done < n_ops:
        size = min(_chunk_size(len(state.live)), n_ops - done)
        chunks.append(runner.run(profile.chunk(state, size), sample=True))
        done += size
        if progress is not None and done - reported >= n_ops // 10:
            progress(done, n_ops)
            reported = done
    commands = _concatenate(chunks)
    stats = {
        "mean_resting_orders": float(np.mean(runner.live_samples or [0])),
        "mean_levels": float(np.mean(runner.level_samples or [0])),
    }
    return Workload(
        profile.name,
        profile.description,
        profile.low,
        profile.high,
        int(profile.book_stp),
        prefill,
        commands,
        stats,
    )


# ------------------------------------------------------------ per-order calls


# Index = Op value; a call is (op, positional args) and is dispatched as
# methods[op](*args) with methods = (None, book.limit, book.market, book.cancel, book.amend).
_METHOD_NAMES = ("limit", "market", "cancel", "amend")


def bound_methods(book) -> tuple:
    return (None,) + tuple(getattr(book, name) for name in _METHOD_NAMES)


def per_order_calls(commands: np.ndarray) -> list[tuple[int, tuple]]:
    """Positional arguments for each command, in order. The generators leave ts, stp
    and flags at 0 (the defaults), so those arguments are not passed."""
    for name in ("ts", "stp", "flags"):
        if commands[name].any():
            raise ValueError(f"per-order conversion expects {name} == 0 in every command")
    ops = commands["op"]
    columns = {
        name: commands[name].tolist()
        for name in ("order_id", "side", "price", "qty", "account", "tif")
    }
    oid, side, price, qty, account, tif = (
        columns[n] for n in ("order_id", "side", "price", "qty", "account", "tif")
    )
    arguments = {
        Op.LIMIT: lambda i: (oid[i], side[i], price[i], qty[i], account[i], tif[i]),
        Op.MARKET: lambda i: (oid[i], side[i], qty[i], account[i], tif[i]),
        Op.CANCEL: lambda i: (oid[i], account[i]),
        Op.AMEND: lambda i: (oid[i], price[i], qty[i], account[i]),
    }
    unsupported = set(np.unique(ops).tolist()) - {int(op) for op in arguments}
    if unsupported:
        raise ValueError(f"per-order conversion does not handle ops {sorted(unsupported)}")
    return [(op, arguments[op](i)) for i, op in enumerate(ops.tolist())]


def run_calls(methods: tuple, calls: list) -> None:
    for op, args in calls:
        methods[op](*args)


def per_order_events(workload: Workload, book_class, calls: list, expected_count: int):
    """Run the calls once more collecting ``last_events()`` after each; returns the
    events (None if more were produced than expected) and the per-call event counts."""
    book = workload.prefilled_book(book_class)
    methods = bound_methods(book)
    events = np.zeros(expected_count, dtype=EVENT_DTYPE)
    counts, position = [0] * len(calls), 0
    for i, (op, args) in enumerate(calls):
        count = methods[op](*args)
        if position + count > expected_count:
            return None, counts
        events[position : position + count] = book.last_events()
        counts[i] = count
        position += count
    return (events if position == expected_count else None), counts


# ------------------------------------------------------------------ memory test


def memory_book_commands(mid: int, orders_per_side: int, gap: int, rng) -> np.ndarray:
    """Resting orders for one memory-test book: bids below the mid and asks above it,
    ``gap`` ticks apart, none crossing; qty 1..1000, 10 accounts."""
    commands = _empty_commands(2 * orders_per_side)
    steps = np.arange(1, orders_per_side + 1, dtype=np.int64) * gap
    commands["op"] = Op.LIMIT
    commands["tif"] = Tif.GTC
    commands["order_id"] = np.arange(1, len(commands) + 1)
    commands["side"][:orders_per_side] = Side.BUY
    commands["side"][orders_per_side:] = Side.SELL
    commands["price"] = np.concatenate([mid - steps, mid + steps])
    commands["qty"] = rng.integers(1, 1001, size=len(commands))
    commands["account"] = np.arange(len(commands)) % 10 + 1
    return commands
