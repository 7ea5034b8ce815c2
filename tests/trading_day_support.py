"""The venue of ``venue_support`` with the trading day's orders and session commands:
stops, stop-limits and icebergs written as the OMS stores them (type, trigger_price,
disclosed_qty of 0008) and sent to the real ``OrderBook``, and PRE_OPEN, UNCROSS, HALT,
OPEN and CLOSE, for the read-model tests. No holds are taken: the projector does not
read them (settlement's tests hold as the OMS does)."""

from __future__ import annotations

from brokercore.engine.records import Side, Stp, Tif
from brokercore.kafka.messages import Halt, NewOrder, OpenSession, PreOpen, Uncross
from brokercore.read.candles import DEPTH_LEVELS
from venue_support import INST, NOW, Venue


class TradingVenue(Venue):
    """``Venue`` plus orders of every type and the session commands."""

    def order(
        self,
        account_id: int,
        side: Side,
        qty: int,
        price_ticks: int | None = None,
        *,
        trigger: int = 0,
        disclosed: int = 0,
        tif: Tif = Tif.DAY,
        stp: Stp = Stp.DEFAULT,
    ) -> int:
        """A new order: a market order without a price, a stop with a trigger (a
        stop-limit when it has a price too), an iceberg with ``disclosed``."""
        kind = ("STOP" if price_ticks is None else "STOP_LIMIT") if trigger else None
        kind = kind or ("MARKET" if price_ticks is None else "LIMIT")
        order_id = self.conn.execute("SELECT nextval('order_id_seq')").fetchone()[0]
        self.conn.execute(
            "INSERT INTO orders (order_id, trade_date, account_id, symbol, side, type, "
            "time_in_force, price, quantity, trigger_price, disclosed_qty, status) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, 'PENDING')",
            (
                order_id,
                NOW.date(),
                account_id,
                INST.symbol,
                side.name,
                kind,
                tif.name,
                None if price_ticks is None else INST.ticks_to_paise(price_ticks),
                qty,
                INST.ticks_to_paise(trigger) if trigger else None,
                disclosed,
            ),
        )
        self.send(
            NewOrder(
                order_id,
                account_id,
                INST.symbol,
                side,
                qty,
                price=price_ticks or 0,
                market=price_ticks is None,
                tif=tif,
                stp=stp,
                ts=self.ts,
                stop=bool(trigger),
                trigger=trigger,
                disclosed=disclosed,
            )
        )
        return order_id

    def pre_open(self) -> None:
        self.send(PreOpen(INST.symbol, self.ts))

    def uncross(self, reference: int = 0) -> None:
        self.send(Uncross(INST.symbol, reference, self.ts))

    def halt(self) -> None:
        self.send(Halt(INST.symbol, self.ts))

    def open(self) -> None:
        self.send(OpenSession(INST.symbol, self.ts))

    def depth(self) -> list[tuple[str, int, int]]:
        """The engine book's own depth (shown quantities), as DEPTH_SQL's rows."""
        bids, asks = self.book.depth(DEPTH_LEVELS)
        return [
            (side, INST.ticks_to_paise(int(level["price"])), int(level["qty"]))
            for side, levels in (("BUY", bids), ("SELL", asks))
            for level in levels
        ]
