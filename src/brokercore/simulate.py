"""`brokercore simulate`: a market of N traders trading through the platform's API (the
edge), to watch the broker at work (`make demo`) or to load it.

Setup, the way `make up` makes its demo users (brokercore.demo): each trader signs up,
the demo operator verifies their KYC, they deposit cash through the funds service, and
their shares arrive as a depository transfer-in (SHARES_IN, written to the database:
a customer never brings shares through the broker's API). Every step is idempotent, so
a second run reuses the same traders.

Trading: requests leave on a schedule (``--rate`` a second, plus ``--open-burst`` at
once at the start, as at a market's open), each for one trader picked at random, who
acts by role:

- market makers quote limit orders a few ticks around a drifting mid price, and modify
  or cancel their oldest quote once they have several;
- takers send market orders and marketable IOC limits, either side;
- stop-loss users place stops below (sells) or above (buys) the mid, and cancel old ones.

Each trader follows its own orders over the WebSocket (brokercore.client's resuming
iterator), which is how fills are counted. At most ``--concurrency`` requests are in
flight: when the platform falls behind, requests leave late, which the latency (from
the SCHEDULED send time) and ``behind`` show; nothing queues without bound.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Literal, TypeVar

import httpx
import psycopg

from brokercore.broker.funding import FundingKind, fund
from brokercore.client import ApiError, Client, new_key
from brokercore.config import ServiceSettings
from brokercore.demo import OPERATOR, login_of
from brokercore.entry.requests import ModifyOrderRequest, PlaceOrderRequest
from brokercore.realtime.channels import OrderUpdate
from brokercore.simulate_stats import Tally

__all__ = ["Market", "Trader", "main", "simulate"]

T = TypeVar("T")
Role = Literal["maker", "taker", "stop"]
ROLES: tuple[Role, ...] = ("maker", "maker", "taker", "taker", "stop")  # trader i: i % 5
OPEN = {"OPEN", "PARTIALLY_FILLED", "TRIGGER_PENDING"}  # what a trader may change
DONE = {"FILLED", "CANCELLED", "REJECTED", "EXPIRED"}  # no update follows one of these
CASH = Decimal("20000000.00")  # rupees each trader deposits
SHARES = 20_000  # of each symbol, transferred in
QUOTES = 6  # open orders a maker or stop user keeps before changing old ones
DRIFT = 0.0005  # the mid's standard deviation a second, relative


@dataclass
class Market:
    """One symbol: its tick (rupees), band (in ticks, kept inside) and drifting mid."""

    symbol: str
    tick: Decimal
    low: int
    high: int
    mid: int

    def price(self, ticks_away: int) -> Decimal:
        return self.tick * min(max(self.mid + ticks_away, self.low), self.high)

    def drift(self, rng: random.Random) -> None:
        step = round(rng.gauss(0, self.mid * DRIFT))
        margin = (self.high - self.low) // 10
        self.mid = min(max(self.mid + step, self.low + margin), self.high - margin)


@dataclass
class Trader:
    client: Client
    role: Role
    user_id: str
    since: int  # the last ORDER_UPDATE seq before this run
    open: dict[int, OrderUpdate] = field(default_factory=dict)  # oldest first
    filled: dict[int, int] = field(default_factory=dict)  # unfinished order -> filled qty
    orders_seen: int = 0  # orders whose first update came (so memory stays bounded)


async def patiently(call: Callable[[], Awaitable[T]]) -> T:
    """``call``, again after a 429's or 503's Retry-After (the setup's logins share an
    address's budget, a service may be starting)."""
    for _ in range(60):
        try:
            return await call()
        except ApiError as e:
            if e.status not in (429, 503):
                raise
            await asyncio.sleep(e.retry_after or 1.0)
    return await call()


def trader_login(index: int) -> dict[str, str]:
    return {"email": f"trader-{index}@sim.example.com", "password": f"trader-{index}-sim-password"}


async def enrol(
    api: str, database_url: str, count: int, symbols: list[str], ops: Client
) -> list[Trader]:
    """``count`` traders signed up, verified, funded and logged in (idempotent)."""
    limit = asyncio.Semaphore(8)

    async def one(index: int, conn: psycopg.Connection) -> Trader:
        async with limit:
            client = Client(api, max_connections=4)
            login = trader_login(index)
            await patiently(lambda: client.signup(**login))
            await patiently(lambda: client.login(**login))
            me = await patiently(client.me)
            if me.kyc_status == "PENDING":
                await patiently(lambda: ops.decide_kyc(me.user_id, "VERIFIED", "simulated trader"))
            await patiently(lambda: client.deposit(CASH, "sim-opening-deposit"))
            account, since = _account(conn, me.user_id)
            for symbol in symbols:
                fund(
                    conn,
                    account,
                    FundingKind.SHARES_IN,
                    symbol=symbol,
                    quantity=SHARES,
                    reference=f"sim transfer-in: {me.user_id} {symbol}",
                )
            return Trader(client, ROLES[index % len(ROLES)], me.user_id, since)

    with psycopg.connect(database_url) as conn:  # commits the transfers at the end
        return list(await asyncio.gather(*(one(i, conn) for i in range(count))))


def _account(conn: psycopg.Connection, user_id: str) -> tuple[int, int]:
    """The user's account, and the seq of their last ORDER_UPDATE (0: none yet)."""
    row = conn.execute(
        "SELECT a.account_id, (SELECT coalesce(max(update_id), 0)"
        " FROM read_model.order_updates u WHERE u.user_id = a.user_id)"
        " FROM accounts a WHERE a.user_id = %s",
        (user_id,),
    ).fetchone()
    assert row is not None, f"no account for {user_id}"
    return int(row[0]), int(row[1])


async def markets(client: Client, symbols: list[str]) -> dict[str, Market]:
    """Each symbol's terms, its mid starting at the last trade (the band's middle before
    any)."""
    found = {}
    for symbol in symbols:
        terms = await client.instrument(symbol)
        book = await client.market_data(symbol)
        tick = Decimal(terms.tick_size)
        low, high = int(Decimal(terms.band.low) / tick), int(Decimal(terms.band.high) / tick)
        mid = int(Decimal(book.last_price) / tick) if book.last_price else (low + high) // 2
        found[symbol] = Market(symbol, tick, low, high, mid)
    return found


def _order(market: Market, **terms: object) -> PlaceOrderRequest:
    return PlaceOrderRequest(symbol=market.symbol, idempotency_key=new_key(), **terms)  # type: ignore[arg-type]


def action(
    trader: Trader, market: Market, rng: random.Random
) -> tuple[str, Callable[[], Awaitable[object]]]:
    """What ``trader`` does next in ``market``: (place|modify|cancel, the request)."""
    client, mine = trader.client, [u for u in trader.open.values() if u.symbol == market.symbol]
    side = rng.choice(("BUY", "SELL"))
    if trader.role == "maker":
        if mine and rng.random() < 0.25:  # requote: the oldest quote to a price near the mid
            oldest = mine[0]
            away = rng.randint(1, 8) * (1 if oldest.side == "SELL" else -1)
            change = ModifyOrderRequest(new_key(), price=market.price(away))
            return "modify", lambda: client.modify(oldest.order_id, change)
        if len(mine) >= QUOTES:
            return "cancel", lambda: client.cancel(mine[0].order_id)
        away = rng.randint(1, 8) * (1 if side == "SELL" else -1)
        order = _order(
            market, side=side, type="LIMIT", quantity=rng.randint(1, 20), price=market.price(away)
        )
    elif trader.role == "taker":
        quantity = rng.randint(1, 10)
        if rng.random() < 0.6:
            order = _order(market, side=side, type="MARKET", quantity=quantity)
        else:
            away = rng.randint(0, 3) * (1 if side == "BUY" else -1)
            order = _order(
                market,
                side=side,
                type="LIMIT",
                quantity=quantity,
                price=market.price(away),
                time_in_force="IOC",
            )
    else:
        if len(mine) >= QUOTES:
            oldest = mine[0]
            return "cancel", lambda: client.cancel(oldest.order_id)
        away = max(1, market.mid // 400) * (1 if side == "BUY" else -1)  # 0.25% away
        order = _order(
            market,
            side=side,
            type="STOP",
            quantity=rng.randint(1, 5),
            trigger_price=market.price(away),
        )
    return "place", lambda: client.place(order)


async def follow(trader: Trader, tally: Tally) -> None:
    """The trader's ORDER_UPDATEs: its open orders, and the fills counted."""
    async for update in trader.client.updates(since=trader.since):
        if not isinstance(update, OrderUpdate):
            continue
        before = trader.filled.pop(update.order_id, None)
        if before is None:
            trader.orders_seen += 1
        if update.status not in DONE:
            trader.filled[update.order_id] = max(before or 0, update.filled_qty)
        tally.update_seen(update.filled_qty - (before or 0), update.event_time_ms)
        if update.status in OPEN:
            trader.open[update.order_id] = update
        else:
            trader.open.pop(update.order_id, None)


async def send(
    kind: str, request: Callable[[], Awaitable[object]], scheduled: float, tally: Tally
) -> None:
    """One request, its outcome tallied."""
    try:
        await request()
    except ApiError as e:
        tally.answered(kind, scheduled, (e.status, e.code))
    except httpx.HTTPError as e:  # transport failures count as errors, the run goes on
        tally.answered(kind, scheduled, (0, type(e).__name__))
    else:
        tally.answered(kind, scheduled, None)


async def trade(
    traders: list[Trader],
    books: dict[str, Market],
    tally: Tally,
    *,
    rate: float,
    duration: float | None,
    burst: int,
    concurrency: int,
    stop: asyncio.Event,
    seed: int,
) -> None:
    """Send requests on schedule until ``duration`` or ``stop``."""
    rng, slots = random.Random(seed), asyncio.Semaphore(concurrency)
    running: set[asyncio.Task[None]] = set()
    start = time.monotonic()
    last_drift = start

    async def one(kind: str, request: Callable[[], Awaitable[object]], at: float) -> None:
        try:
            await send(kind, request, at, tally)
        finally:
            slots.release()

    n = 0
    while not stop.is_set():
        scheduled = start + (0.0 if n < burst else (n - burst + 1) / rate)
        if duration is not None and scheduled - start >= duration:
            break
        if (delay := scheduled - time.monotonic()) > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            continue
        await slots.acquire()
        now = time.monotonic()
        tally.behind = now - scheduled
        if now - last_drift >= 1.0:
            for market in books.values():
                market.drift(rng)
            last_drift = now
        trader = rng.choice(traders)
        kind, request = action(trader, books[rng.choice(list(books))], rng)
        task = asyncio.create_task(one(kind, request, scheduled))
        running.add(task)
        task.add_done_callback(running.discard)
        n += 1
    if running:
        await asyncio.wait(running)
    tally.trading_done()


async def settle_streams(traders: list[Trader], tally: Tally, timeout: float) -> None:
    """Wait until the streams have shown every order placed and gone quiet for 1 s."""
    deadline = time.monotonic() + timeout
    quiet_since, updates = time.monotonic(), -1
    while time.monotonic() < deadline:
        if tally.updates != updates:
            quiet_since, updates = time.monotonic(), tally.updates
        seen = sum(t.orders_seen for t in traders)
        if seen >= tally.accepted["place"] and time.monotonic() - quiet_since >= 1.0:
            return
        await asyncio.sleep(0.1)


async def simulate(args: argparse.Namespace) -> dict[str, object]:
    """The whole run; the summary (also printed, and written to ``--json``)."""
    symbols = [s.strip().upper() for s in args.symbols.split(",") if s.strip()]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with Client(args.api) as ops:
        await patiently(lambda: ops.login(**login_of(OPERATOR)))
        traders = await enrol(args.api, args.url, args.traders, symbols, ops)
        books = await markets(ops, symbols)
    print(
        f"simulate: {len(traders)} traders on {', '.join(symbols)} at {args.rate:g} requests/s"
        + (f" after a burst of {args.open_burst}" if args.open_burst else "")
        + (f" for {args.duration:g} s" if args.duration else " until Ctrl-C"),
        file=sys.stderr,
    )
    tally = Tally()
    streams = [asyncio.create_task(follow(t, tally)) for t in traders]

    async def report() -> None:
        end = "\r" if sys.stderr.isatty() else "\n"
        while True:
            await asyncio.sleep(1.0)
            print(tally.progress(), end=end, file=sys.stderr, flush=True)

    reporter = asyncio.create_task(report())
    try:
        await trade(
            traders,
            books,
            tally,
            rate=args.rate,
            duration=args.duration,
            burst=args.open_burst,
            concurrency=args.concurrency,
            stop=stop,
            seed=args.seed,
        )
        await settle_streams(traders, tally, 5.0 if stop.is_set() else 15.0)
    finally:
        for task in (reporter, *streams):
            task.cancel()
        await asyncio.gather(reporter, *streams, return_exceptions=True)
        for trader in traders:
            await trader.client.aclose()
    summary = tally.summary() | {"traders": len(traders), "symbols": symbols}
    print(file=sys.stderr)
    print(_summary_text(summary))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _summary_text(s: dict[str, object]) -> str:
    latency = s["latencyMs"]
    assert isinstance(latency, dict)
    return (
        f"simulate: {s['seconds']} s, {s['traders']} traders\n"
        f"  orders   {s['orders']} accepted ({s['ordersPerSecond']} orders/s), "
        f"{s['modifies']} modifies, {s['cancels']} cancels\n"
        f"  fills    {s['fills']} ({s['fillsPerSecond']} fills/s), {s['filledShares']} shares, "
        f"{s['updates']} order updates over the WebSocket\n"
        f"  latency  from the scheduled send: p50 {latency['p50']} ms, p99 {latency['p99']} ms,"
        f" max {latency['max']} ms; WebSocket lag p99 {s['wsLagMsP99']} ms\n"
        f"  refused  {s['refused'] or 'none'}\n"
        f"  errors   {s['errors'] or 'none'}"
    )


def main(args: argparse.Namespace) -> int:
    """Run it; exit 1 if any request failed with a 5xx or in transport."""
    if args.url is None:
        args.url = ServiceSettings.from_env().database_url
    summary = asyncio.run(simulate(args))
    return 1 if summary["errors"] else 0
