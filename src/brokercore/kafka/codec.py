"""Between Kafka payloads and engine records, for one shard; no Kafka client in here.

``CommandDecoder`` turns messages of ``orders`` into COMMAND_DTYPE records (symbol names
to ids) plus dead letters for what does not decode. ``EventEncoder`` turns the shard's
EVENT_DTYPE records into ``EventBatch`` payloads, numbering them by shard_seq and
dropping the rejection of a duplicate order id: an order published twice (a retry, a
re-publish by the reconciler) yields one set of events, the first one's.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import msgspec
import numpy as np

from brokercore.engine.records import COMMAND_DTYPE, EventType, Flags, Op, Reason, Side, Stp, Tif
from brokercore.kafka.messages import (
    NEW_ORDER_OPS,
    STOP_OPS,
    AmendOrder,
    CancelOrder,
    CloseSession,
    Command,
    DeadLetter,
    Halt,
    NewOrder,
    OpenSession,
    PreOpen,
    Reband,
    Uncross,
    command_decoder,
    encode,
)

__all__ = [
    "CommandDecoder",
    "EventEncoder",
    "SymbolTable",
    "UNKNOWN_SYMBOL_BASE",
    "commands_from_records",
]

UNKNOWN_SYMBOL_BASE = 1 << 24
"""Symbol ids from here on stand for names this shard has no book for; the shard
rejects them with UNKNOWN_SYMBOL (no book can have such an id)."""
_MAX_UNKNOWN_NAMES = 1 << 16
_UNKNOWN_OVERFLOW = "?"


class SymbolTable:
    """Symbol name <-> id of one shard: its instruments' ids, and stable stand-in ids
    for names it does not know (so that their rejections name the symbol they had)."""

    def __init__(self, ids: Mapping[str, int]):
        self.ids = dict(ids)
        self.names = {i: name for name, i in self.ids.items()}
        self._next_unknown = UNKNOWN_SYMBOL_BASE

    def id_of(self, name: str) -> int:
        found = self.ids.get(name)
        if found is not None:
            return found
        if self._next_unknown - UNKNOWN_SYMBOL_BASE >= _MAX_UNKNOWN_NAMES:
            name = _UNKNOWN_OVERFLOW
            if name in self.ids:
                return self.ids[name]
        self.ids[name] = self._next_unknown
        self.names[self._next_unknown] = name
        self._next_unknown += 1
        return self.ids[name]


class CommandDecoder:
    """Messages of one partition of ``orders`` -> command records and dead letters."""

    def __init__(self, symbols: SymbolTable, topic: str, partition: int):
        self.symbols = symbols
        self.topic = topic
        self.partition = partition
        self._decode = command_decoder().decode

    def decode(
        self, payloads: Iterable[tuple[int, bytes | None]]
    ) -> tuple[np.ndarray, np.ndarray, list[DeadLetter]]:
        """(offset, payload) pairs -> command records, the offset of each record's
        message, and the dead letters (in offset order)."""
        rows, offsets, dead = [], [], []
        id_of = self.symbols.id_of
        for offset, payload in payloads:
            try:
                message = self._decode(payload if payload is not None else b"")
            except msgspec.DecodeError as e:  # ValidationError is a DecodeError
                dead.append(DeadLetter(self.topic, self.partition, offset, str(e), payload or b""))
                continue
            rows.append(message.record(id_of(message.symbol)))
            offsets.append(offset)
        return (np.array(rows, dtype=COMMAND_DTYPE), np.array(offsets, dtype=np.int64), dead)


class EventEncoder:
    """Event records of one shard -> EventBatch payloads, numbered by shard_seq."""

    def __init__(self, symbols: SymbolTable, shard: int, shard_seq: int = 0, max_batch: int = 8192):
        self.symbols = symbols
        self.shard = shard
        self.shard_seq = shard_seq  # of the last event numbered
        self.max_batch = max_batch  # events per message (keeps messages < 1 MB)

    @staticmethod
    def _published(events: np.ndarray) -> np.ndarray:
        duplicate = (events["type"] == EventType.REJECTED) & (
            events["reason"] == Reason.DUPLICATE_ORDER_ID
        )
        return events[~duplicate] if duplicate.any() else events

    def count(self, events: np.ndarray) -> int:
        """Number events without encoding them (a silent replay); returns how many."""
        n = len(self._published(events))
        self.shard_seq += n
        return n

    def encode(self, events: np.ndarray) -> list[bytes]:
        """The payloads of the events that are published, in order."""
        rows = self._published(events).tolist()
        names = self.symbols.names
        first = self.shard_seq + 1
        numbered = [(first + i, names[r[0]], *r[1:]) for i, r in enumerate(rows)]
        self.shard_seq += len(numbered)
        return [
            encode((self.shard, numbered[i : i + self.max_batch]))
            for i in range(0, len(numbered), self.max_batch)
        ]


def commands_from_records(records: np.ndarray, names: Mapping[int, str]) -> list[Command]:
    """The wire commands of COMMAND_DTYPE records (symbol ids named by ``names``): how a
    numpy order flow (brokercore.runtime.loadgen) is fed to Kafka."""
    commands: list[Command] = []
    for r in records.tolist():
        symbol, op, side, tif, stp, flags, ts, order_id, account, price, qty, trigger, disclosed = r
        name = names[symbol]
        if op in NEW_ORDER_OPS:
            commands.append(
                NewOrder(
                    order_id,
                    account,
                    name,
                    Side(side),
                    qty,
                    price,
                    op in (Op.MARKET, Op.STOP),
                    Tif(tif),
                    Stp(stp),
                    bool(flags & Flags.POST_ONLY),
                    ts,
                    op in STOP_OPS,
                    trigger,
                    disclosed,
                )
            )
        elif op == Op.CANCEL:
            commands.append(CancelOrder(order_id, account, name, ts))
        elif op == Op.AMEND:
            commands.append(AmendOrder(order_id, account, name, price, qty, ts, trigger, disclosed))
        elif op == Op.OPEN:
            commands.append(OpenSession(name, ts))
        elif op == Op.CLOSE:
            commands.append(CloseSession(name, ts))
        elif op == Op.PRE_OPEN:
            commands.append(PreOpen(name, ts))
        elif op == Op.UNCROSS:
            commands.append(Uncross(name, price, ts))
        elif op == Op.HALT:
            commands.append(Halt(name, ts))
        elif op == Op.REBAND:
            commands.append(Reband(name, price, qty, ts))
        else:
            raise ValueError(f"op {op} has no wire command")
    return commands
