"""The GTT watcher: the engine's trades against the ACTIVE GTTs (the trigger service's
first step, docs/gtt.md).

A Postgres-offset consumer of ``events`` (brokercore.consumers.pg_consumer): in one
transaction per batch it locks the ACTIVE GTTs of the traded symbols that the batch's
prices may meet, marks TRIGGERED those a trade met, and stores the offsets, so a batch
fires its GTTs entirely or not at all and a replayed batch fires nothing again. The
orders are placed afterwards (brokercore.entry.gtt_orders); ``woke`` tells that step.
In the same transaction, the ACTIVE brackets whose stop-loss a trade meets become
STOPPING (docs/brackets.md): their legs are the placer's (brokercore.entry.bracket_legs).

Rules: a trade counts for a GTT when the engine published it (Kafka's timestamp) after
the GTT was stored or last changed; a symbol's trades are taken in their order (one
symbol is one partition), and a GTT fires on the first that meets one of its legs, so an
OCO whose two legs are met in one batch fires the leg met first (its legs are one below
the other, so no single price meets both), the other cancelled with it. The row lock
orders a firing against the user's cancel or change of the GTT: one wins.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields

import psycopg

from brokercore.broker.market import MarketInstrument
from brokercore.consumers.pg_consumer import Message, claim_offsets, store_offsets
from brokercore.engine.records import EventType

__all__ = ["GttWatcher", "WatchStats"]

# The ACTIVE GTTs of the batch's symbols that one of its prices may meet (each symbol's
# lowest and highest), found by index ranges of their legs (gtts_leg_1_idx, _2_idx: the
# cost grows with the GTTs met, not with those waiting), locked in id order; when each
# was stored or changed (ms).
_CANDIDATES = """
WITH v (symbol, low, high) AS (SELECT * FROM unnest(%s::text[], %s::bigint[], %s::bigint[]))
SELECT g.gtt_id, g.symbol, g.condition_1, g.trigger_1, g.condition_2, g.trigger_2,
       (extract(epoch FROM g.updated_at) * 1000)::bigint
  FROM gtts g
 WHERE g.gtt_id = ANY(ARRAY(
         SELECT m.gtt_id FROM v CROSS JOIN LATERAL (
           SELECT gtt_id FROM gtts WHERE status = 'ACTIVE' AND symbol = v.symbol
              AND condition_1 = '>=' AND trigger_1 <= v.high
           UNION ALL SELECT gtt_id FROM gtts WHERE status = 'ACTIVE' AND symbol = v.symbol
              AND condition_1 = '<=' AND trigger_1 >= v.low
           UNION ALL SELECT gtt_id FROM gtts WHERE status = 'ACTIVE' AND kind = 'OCO'
              AND symbol = v.symbol AND condition_2 = '>=' AND trigger_2 <= v.high
           UNION ALL SELECT gtt_id FROM gtts WHERE status = 'ACTIVE' AND kind = 'OCO'
              AND symbol = v.symbol AND condition_2 = '<=' AND trigger_2 >= v.low) m))
   AND g.status = 'ACTIVE' AND g.expires_at > now()
 ORDER BY g.gtt_id FOR UPDATE OF g"""

# The armed ACTIVE brackets of the batch's symbols whose stop-loss one of its prices may
# meet (a buy's at or below, a sell's at or above), found by index ranges
# (brackets_stop_idx: the cost grows with the brackets met, not with those waiting),
# locked in id order; when each was armed (ms).
_STOPS = """
WITH v (symbol, low, high) AS (SELECT * FROM unnest(%s::text[], %s::bigint[], %s::bigint[]))
SELECT b.bracket_id, b.symbol, b.side, b.stop, (extract(epoch FROM b.armed_at) * 1000)::bigint
  FROM brackets b
 WHERE b.bracket_id = ANY(ARRAY(
         SELECT m.bracket_id FROM v CROSS JOIN LATERAL (
           SELECT bracket_id FROM brackets WHERE status = 'ACTIVE' AND armed_at IS NOT NULL
              AND symbol = v.symbol AND side = 'BUY' AND stop >= v.low
           UNION ALL SELECT bracket_id FROM brackets WHERE status = 'ACTIVE'
              AND armed_at IS NOT NULL AND symbol = v.symbol AND side = 'SELL'
              AND stop <= v.high) m))
   AND b.status = 'ACTIVE'
 ORDER BY b.bracket_id FOR UPDATE OF b"""

_STOP = """
UPDATE brackets b SET status = 'STOPPING', stop_price = v.price, stopped_at = now(),
                      updated_at = now()
  FROM unnest(%s::bigint[], %s::bigint[]) AS v (bracket_id, price)
 WHERE b.bracket_id = v.bracket_id"""

_FIRE = """
UPDATE gtts g SET status = 'TRIGGERED', fired_leg = v.leg, fired_price = v.price,
                  triggered_at = now(), updated_at = now()
  FROM unnest(%s::bigint[], %s::smallint[], %s::bigint[]) AS v (gtt_id, leg, price)
 WHERE g.gtt_id = v.gtt_id"""

Trades = dict[str, list[tuple[int, int]]]
"""symbol -> its trades of a batch in their order: (Kafka timestamp ms, price paise)."""


@dataclass
class WatchStats:
    """What batches did (counts add up with ``+``)."""

    messages: int = 0
    events: int = 0
    trades: int = 0
    fired: int = 0

    def __add__(self, other: WatchStats) -> WatchStats:
        return WatchStats(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))


class GttWatcher:
    """The pg_consumer ``Applier`` of the trigger service."""

    consumer = "triggers"

    def __init__(
        self,
        topic: str,
        market: Mapping[str, MarketInstrument],
        woke: Callable[[], None] = lambda: None,
    ):
        self.topic = topic
        self.market = market
        self.woke = woke

    def new_stats(self) -> WatchStats:
        return WatchStats()

    def apply(self, conn: psycopg.Connection, messages: Sequence[Message]) -> WatchStats:
        """Fire what the batch's trades meet and store the offsets, in one transaction."""
        with conn.transaction():
            fresh, offsets = claim_offsets(conn, self.consumer, self.topic, messages)
            trades = self._trades(fresh)
            fired = _fire(conn, trades) + _stop(conn, trades) if trades else 0
            store_offsets(conn, self.consumer, self.topic, offsets)
        return WatchStats(
            len(fresh),
            sum(len(m.batch.events) for m in fresh),
            sum(map(len, trades.values())),
            fired,
        )

    def committed(self, stats: WatchStats) -> None:
        if stats.fired:
            self.woke()

    def describe(self, stats: WatchStats) -> str:
        return f"{stats.trades} trades, {stats.fired} GTTs fired or brackets stopped"

    def _trades(self, messages: Sequence[Message]) -> Trades:
        trades: Trades = {}
        for message in messages:
            for e in message.batch.events:
                instrument = self.market.get(e.symbol)
                if e.type == EventType.TRADE and instrument is not None:
                    price = instrument.ticks_to_paise(e.price)
                    trades.setdefault(e.symbol, []).append((message.timestamp_ms, price))
        return trades


def _fire(conn: psycopg.Connection, trades: Trades) -> int:
    """Mark TRIGGERED the GTTs the trades meet; how many."""
    fired: list[tuple[int, int, int]] = []
    for gtt_id, symbol, c1, t1, c2, t2, since in conn.execute(
        _CANDIDATES, _ranges(trades)
    ).fetchall():
        legs = [(1, c1, t1)] + ([(2, c2, t2)] if c2 is not None else [])
        hit = _first_hit(trades[symbol], since, legs)
        if hit is not None:
            fired.append((gtt_id, *hit))
    if fired:
        conn.execute(_FIRE, tuple(map(list, zip(*fired, strict=True))))
    return len(fired)


def _stop(conn: psycopg.Connection, trades: Trades) -> int:
    """Mark STOPPING the brackets whose stop-loss the trades meet; how many."""
    stopped: list[tuple[int, int]] = []
    for bracket_id, symbol, side, stop, since in conn.execute(_STOPS, _ranges(trades)).fetchall():
        hit = _first_hit(trades[symbol], since, [(1, "<=" if side == "BUY" else ">=", stop)])
        if hit is not None:
            stopped.append((bracket_id, hit[1]))
    if stopped:
        conn.execute(_STOP, tuple(map(list, zip(*stopped, strict=True))))
    return len(stopped)


def _ranges(trades: Trades) -> tuple[list[str], list[int], list[int]]:
    """The batch's symbols, each one's lowest and highest trade price."""
    symbols = sorted(trades)
    lows = [min(p for _, p in trades[s]) for s in symbols]
    highs = [max(p for _, p in trades[s]) for s in symbols]
    return symbols, lows, highs


def _first_hit(
    trades: Sequence[tuple[int, int]], since: int, legs: Sequence[tuple[int, str, int]]
) -> tuple[int, int] | None:
    """(leg, price) of the first trade at or after ``since`` that meets a leg."""
    for at, price in trades:
        if at < since:
            continue
        for leg, condition, trigger in legs:
            if price >= trigger if condition == ">=" else price <= trigger:
                return leg, price
    return None
