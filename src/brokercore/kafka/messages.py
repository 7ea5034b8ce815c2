"""Wire formats on Kafka: msgspec Structs, encoded as msgpack. One definition per message.

- ``orders``: one ``Command`` per message (a tagged union: new order, cancel, amend,
  the session commands open, close, pre-open, uncross and halt, re-band). Prices are
  in ticks and quantities in lots, as in the engine; the symbol travels by name. One
  command per message keeps every input offset between two whole commands, which is
  what exactly-once commits rely on.
- ``events``: one ``EventBatch`` per message: consecutive events of one shard, each
  numbered by ``shard_seq`` (1, 2, 3, ... per shard, no gap, across restarts).
- ``snapshots``: ``ShardSnapshot`` (compacted by shard key).
- dead letters: ``DeadLetter``, the undecodable message with where it came from and why.

Integers are bounded to int64 by the schema, so an out-of-range value is a decode error
(dead-lettered), never an overflow later on.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from brokercore.engine.records import EventType, Flags, Op, Reason, Side, Stp, Tif

__all__ = [
    "NEW_ORDER_OPS",
    "STOP_OPS",
    "NewOrder",
    "CancelOrder",
    "AmendOrder",
    "OpenSession",
    "CloseSession",
    "PreOpen",
    "Uncross",
    "Halt",
    "Reband",
    "Command",
    "CommandRecord",
    "Event",
    "EventBatch",
    "ShardSnapshot",
    "DeadLetter",
    "command_decoder",
    "encode",
]

Int64 = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]
"""Every integer on the wire fits the engine's int64 fields."""
CommandRecord = tuple[int, ...]
"""One command's COMMAND_DTYPE fields, in order."""


STOP_OPS = frozenset((Op.STOP, Op.STOP_LIMIT))
"""The ops of a stop: it waits outside the book until its trigger is reached."""
NEW_ORDER_OPS = frozenset((Op.LIMIT, Op.MARKET, *STOP_OPS))
"""The ops a ``NewOrder`` becomes; an event with one of them is about a new order."""


class NewOrder(msgspec.Struct, tag="new", frozen=True, forbid_unknown_fields=True):
    """A limit order, a market order (``market``: price ignored), or a stop
    (``stop``: waits for ``trigger``, then enters as a market order when ``market``,
    else as a limit order at ``price``). ``disclosed`` > 0 makes a limit an iceberg."""

    order_id: Int64
    account: Int64
    symbol: str
    side: Side
    qty: Int64
    price: Int64 = 0
    market: bool = False
    tif: Tif = Tif.GTC
    stp: Stp = Stp.DEFAULT
    post_only: bool = False
    ts: Int64 = 0
    stop: bool = False
    trigger: Int64 = 0
    disclosed: Int64 = 0

    @property
    def op(self) -> Op:
        if self.stop:
            return Op.STOP if self.market else Op.STOP_LIMIT
        return Op.MARKET if self.market else Op.LIMIT

    def record(self, symbol_id: int) -> CommandRecord:
        return (
            symbol_id,
            self.op,
            self.side,
            self.tif,
            self.stp,
            Flags.POST_ONLY if self.post_only else 0,
            self.ts,
            self.order_id,
            self.account,
            self.price,
            self.qty,
            self.trigger,
            self.disclosed,
        )


class CancelOrder(msgspec.Struct, tag="cancel", frozen=True, forbid_unknown_fields=True):
    order_id: Int64
    account: Int64
    symbol: str
    ts: Int64 = 0

    def record(self, symbol_id: int) -> CommandRecord:
        return (symbol_id, Op.CANCEL, 0, 0, 0, 0, self.ts, self.order_id, self.account, 0, 0, 0, 0)


class AmendOrder(msgspec.Struct, tag="amend", frozen=True, forbid_unknown_fields=True):
    """New price and quantity of a live order (see docs/engine.md for priority);
    ``trigger`` (a waiting stop's) and ``disclosed`` (an iceberg's): 0 keeps them."""

    order_id: Int64
    account: Int64
    symbol: str
    price: Int64
    qty: Int64
    ts: Int64 = 0
    trigger: Int64 = 0
    disclosed: Int64 = 0

    def record(self, symbol_id: int) -> CommandRecord:
        return (
            symbol_id,
            Op.AMEND,
            0,
            0,
            0,
            0,
            self.ts,
            self.order_id,
            self.account,
            self.price,
            self.qty,
            self.trigger,
            self.disclosed,
        )


def _session(symbol_id: int, op: Op, ts: int, price: int = 0, qty: int = 0) -> CommandRecord:
    """The record of a book-level command (no order): only price and qty may be used."""
    return (symbol_id, op, 0, 0, 0, 0, ts, 0, 0, price, qty, 0, 0)


class OpenSession(msgspec.Struct, tag="open", frozen=True, forbid_unknown_fields=True):
    symbol: str
    ts: Int64 = 0

    def record(self, symbol_id: int) -> CommandRecord:
        return _session(symbol_id, Op.OPEN, self.ts)


class CloseSession(msgspec.Struct, tag="close", frozen=True, forbid_unknown_fields=True):
    """Ends the session: DAY orders expire."""

    symbol: str
    ts: Int64 = 0

    def record(self, symbol_id: int) -> CommandRecord:
        return _session(symbol_id, Op.CLOSE, self.ts)


class PreOpen(msgspec.Struct, tag="pre_open", frozen=True, forbid_unknown_fields=True):
    """Starts the call phase: orders rest without matching until ``Uncross``."""

    symbol: str
    ts: Int64 = 0

    def record(self, symbol_id: int) -> CommandRecord:
        return _session(symbol_id, Op.PRE_OPEN, self.ts)


class Uncross(msgspec.Struct, tag="uncross", frozen=True, forbid_unknown_fields=True):
    """Ends the call phase at one opening price; ``reference`` breaks ties (0: the
    book's last trade price)."""

    symbol: str
    reference: Int64 = 0
    ts: Int64 = 0

    def record(self, symbol_id: int) -> CommandRecord:
        return _session(symbol_id, Op.UNCROSS, self.ts, self.reference)


class Halt(msgspec.Struct, tag="halt", frozen=True, forbid_unknown_fields=True):
    """Stops matching; the book re-opens through ``PreOpen`` and ``Uncross``."""

    symbol: str
    ts: Int64 = 0

    def record(self, symbol_id: int) -> CommandRecord:
        return _session(symbol_id, Op.HALT, self.ts)


class Reband(msgspec.Struct, tag="reband", frozen=True, forbid_unknown_fields=True):
    symbol: str
    low: Int64
    high: Int64
    ts: Int64 = 0

    def record(self, symbol_id: int) -> CommandRecord:
        return _session(symbol_id, Op.REBAND, self.ts, self.low, self.high)


Command = (
    NewOrder
    | CancelOrder
    | AmendOrder
    | OpenSession
    | CloseSession
    | PreOpen
    | Uncross
    | Halt
    | Reband
)


class Event(msgspec.Struct, array_like=True, frozen=True):
    """One engine event (docs/engine.md) as published: the fields of EVENT_DTYPE with the
    symbol by name, preceded by the event's position in its shard's stream."""

    shard_seq: int
    symbol: str
    type: EventType
    reason: Reason
    op: int
    side: int
    seq: int  # the book's own sequence (0 for shard-level rejects)
    ts: int
    order_id: int
    account: int
    price: int
    qty: int
    remaining: int
    other_id: int
    other_account: int
    other_remaining: int


class EventBatch(msgspec.Struct, array_like=True, frozen=True):
    shard: int
    events: list[Event]


class ShardSnapshot(msgspec.Struct, frozen=True):
    """A shard's books as of a point of its input: replaying ``orders`` from
    ``next_offset`` continues it; ``events`` is the shard_seq of its last event."""

    shard: int
    next_offset: int
    events: int
    books: bytes  # brokercore.runtime.shard.Shard.snapshot()


class DeadLetter(msgspec.Struct, frozen=True):
    topic: str
    partition: int
    offset: int
    reason: str
    payload: bytes


_encoder = msgspec.msgpack.Encoder()
encode = _encoder.encode
"""msgpack bytes of a Struct (or of the plain tuples an array_like Struct decodes from)."""


def command_decoder() -> msgspec.msgpack.Decoder[Command]:
    """A decoder for one message of ``orders``."""
    return msgspec.msgpack.Decoder(Command)
