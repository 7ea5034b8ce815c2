"""The OMS and one engine book in miniature, for the settlement and projector tests:
orders written the way the OMS writes them (holds from ``risk.check_order``), sent to a
real ``OrderBook``, and its events numbered and encoded exactly as the engine daemon
publishes them (``codec.EventEncoder``), ready to settle or project, or to publish in
transactions on the real Kafka."""

from __future__ import annotations

import uuid
from datetime import datetime
from datetime import time as clock
from decimal import Decimal
from zoneinfo import ZoneInfo

import msgspec
import numpy as np
from confluent_kafka import Producer

from brokercore.broker.funding import open_account
from brokercore.broker.market import MarketInstrument, Session
from brokercore.broker.risk import (
    AccountState,
    FeeSchedule,
    OrderRequest,
    OrderType,
    RiskRejection,
    check_order,
)
from brokercore.consumers.pg_consumer import Message
from brokercore.consumers.settlement import SettlementConsumer
from brokercore.engine.records import COMMAND_DTYPE, Side, Stp, Tif
from brokercore.kafka.codec import EventEncoder, SymbolTable
from brokercore.kafka.messages import CancelOrder, CloseSession, EventBatch, NewOrder

D = Decimal
NOW = datetime(2026, 3, 2, 10, 0, tzinfo=ZoneInfo("Asia/Kolkata"))  # a Monday, open
SESSION = Session("Asia/Kolkata", clock(9, 15), clock(15, 30))
# 0.05 rupee ticks = 5 paise; band 10,000.00 .. 20,000.00 = ticks 200,000 .. 400,000
INST = MarketInstrument("RELIANCE", 1, D("0.05"), 1, D("10000.00"), D("20000.00"), 1000, SESSION)
MARKET = {"RELIANCE": INST}
FEES = FeeSchedule(bps=D(3), fixed=2000)
MID = 300_000  # ticks: 15,000.00 rupees = 1,500,000 paise
CASH = 10**10  # paise each account starts with
SHARES = 100  # shares each account starts with


def rupees(ticks: int) -> Decimal:
    """A price of INST in rupees."""
    return INST.to_price(ticks)


class Venue:
    """The OMS and one engine book in miniature: orders rows and holds as
    ``OrderEntry.place`` writes them, commands to a real ``OrderBook``, and the events
    as the daemon publishes them (one ``EventBatch`` per command)."""

    def __init__(self, conn, fees: FeeSchedule = FEES):
        self.conn = conn
        self.fees = fees
        self.book = INST.engine_instrument().new_book()
        self.encoder = EventEncoder(SymbolTable({INST.symbol: INST.symbol_id}), shard=0)
        self.batches: list[EventBatch] = []
        self.ts = int(NOW.timestamp()) * 10**9
        self._decoder = msgspec.msgpack.Decoder(EventBatch)

    def account(self, user: str, cash: int = CASH, shares: int = SHARES) -> int:
        return open_account(
            self.conn,
            user,
            cash=cash,
            shares={INST.symbol: (shares, 1_400_000)} if shares else None,
        )

    def place(
        self,
        account_id: int,
        side: Side,
        qty: int,
        price_ticks: int | None = None,
        tif: Tif | None = None,
        stp: Stp = Stp.DEFAULT,
    ) -> int | None:
        """A new order as the OMS stores and sends it; None if its checks refuse it."""
        cash, blocked = self.conn.execute(
            "SELECT cash, blocked_cash FROM accounts WHERE account_id = %s", (account_id,)
        ).fetchone()
        row = self.conn.execute(
            "SELECT quantity - blocked_quantity FROM positions WHERE "
            "account_id = %s AND symbol = %s",
            (account_id, INST.symbol),
        ).fetchone()
        kind = OrderType.MARKET if price_ticks is None else OrderType.LIMIT
        hold = check_order(
            OrderRequest(
                INST.symbol,
                side,
                kind,
                qty,
                None if price_ticks is None else rupees(price_ticks),
                tif,
            ),
            INST,
            NOW,
            AccountState(cash - blocked, row[0] if row else 0),
            fees=self.fees,
        )
        if isinstance(hold, RiskRejection):
            return None
        order_id = self.conn.execute("SELECT nextval('order_id_seq')").fetchone()[0]
        if hold.cash:
            self.conn.execute(
                "UPDATE accounts SET blocked_cash = blocked_cash + %s WHERE account_id = %s",
                (hold.cash, account_id),
            )
        if hold.shares:
            self.conn.execute(
                "UPDATE positions SET blocked_quantity = blocked_quantity + %s "
                "WHERE account_id = %s AND symbol = %s",
                (hold.shares, account_id, INST.symbol),
            )
        self.conn.execute(
            "INSERT INTO orders (order_id, trade_date, account_id, symbol, side, type, "
            "time_in_force, price, quantity, status, hold_amount, hold_price_ticks, "
            "blocked_cash, blocked_shares) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, "
            "'PENDING', %s, %s, %s, %s)",
            (
                order_id,
                NOW.date(),
                account_id,
                INST.symbol,
                side.name,
                kind.value,
                hold.time_in_force.name,
                None if price_ticks is None else INST.ticks_to_paise(price_ticks),
                qty,
                hold.cash or hold.shares,
                hold.price_ticks or 0,
                hold.cash,
                hold.shares,
            ),
        )
        self.send(
            NewOrder(
                order_id,
                account_id,
                INST.symbol,
                side,
                qty,
                price=price_ticks if price_ticks is not None else hold.price_ticks or 0,
                market=price_ticks is None
                and not (side == Side.BUY and hold.price_ticks and hold.price_ticks < INST.high),
                tif=hold.time_in_force,
                stp=stp,
                ts=self.ts,
            )
        )
        return order_id

    def cancel(self, order_id: int, account_id: int) -> None:
        self.send(CancelOrder(order_id, account_id, INST.symbol, self.ts))

    def close(self) -> None:
        self.send(CloseSession(INST.symbol, self.ts))

    def send(self, command) -> None:
        self.ts += 1000
        events = self.book.process(np.array([command.record(INST.symbol_id)], dtype=COMMAND_DTYPE))
        self.batches += [self._decoder.decode(p) for p in self.encoder.encode(events)]

    def messages(self, start: int = 0) -> list[Message]:
        """The batches as messages of partition 0, with offset gaps as transactions
        leave them (each commit marker takes an offset)."""
        return [Message(0, 10 + 2 * i, b) for i, b in enumerate(self.batches)][start:]


def settle(conn, messages, fees: FeeSchedule = FEES):
    return SettlementConsumer(MARKET, fees).apply(conn, messages)


def busy_day(v: Venue) -> None:
    """Three accounts' day: rests, trades, a market buy, a cancel, then the close."""
    a, b, c = v.account("a"), v.account("b"), v.account("c", shares=0)
    v.place(a, Side.SELL, 10, MID, Tif.GTC)
    v.place(b, Side.SELL, 5, MID + 1)
    v.place(c, Side.BUY, 12, MID + 1)
    v.place(c, Side.BUY, 6, None)
    keep = v.place(b, Side.BUY, 4, MID - 5)
    v.place(a, Side.SELL, 8, MID - 5)
    v.cancel(keep, b)
    v.place(b, Side.BUY, 3, MID - 50)
    v.close()


# INST and SESSION as an instruments file, for the consumers run as services
INSTRUMENTS_TOML = """
[session]
timezone = "Asia/Kolkata"
open = "09:15"
close = "15:30"

[[instrument]]
symbol = "RELIANCE"
id = 1
low = 200_000
high = 400_000
tick_size = "0.05"
lot_size = 1
max_order_qty = 1000
"""


def produce_in_transactions(bootstrap: str, topic: str, payloads: list[bytes]) -> int:
    """Publish as the engine does (transactions, one partition), plus one aborted
    transaction that read_committed must hide; the offset after the last payload."""
    producer = Producer(
        {"bootstrap.servers": bootstrap, "transactional.id": f"test-{uuid.uuid4().hex}"}
    )
    producer.init_transactions(30)
    last = []

    def delivered(error, message):
        assert error is None, error
        last.append(message.offset())

    for chunk, commit in ((payloads[:3], True), (payloads[:2], False), (payloads[3:], True)):
        producer.begin_transaction()
        for payload in chunk:
            producer.produce(topic, payload, partition=0, on_delivery=delivered)
        producer.flush(30)
        (producer.commit_transaction if commit else producer.abort_transaction)(30)
    return max(last) + 1
