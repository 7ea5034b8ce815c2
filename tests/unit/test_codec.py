"""Wire formats, the command/event codec and the input journal, without Kafka."""

from __future__ import annotations

import msgspec
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from brokercore import OrderBook
from brokercore.engine.records import COMMAND_DTYPE, EventType, Op, Reason, Side, Stp, Tif
from brokercore.kafka.codec import (
    UNKNOWN_SYMBOL_BASE,
    CommandDecoder,
    EventEncoder,
    SymbolTable,
    commands_from_records,
)
from brokercore.kafka.journal import InputJournal
from brokercore.kafka.messages import (
    AmendOrder,
    CancelOrder,
    CloseSession,
    DeadLetter,
    EventBatch,
    Halt,
    NewOrder,
    OpenSession,
    PreOpen,
    Reband,
    Uncross,
    command_decoder,
    encode,
)
from brokercore.kafka.topics import partition_of
from brokercore.runtime.loadgen import order_flow


def decoder(**ids):
    return CommandDecoder(SymbolTable(ids or {"AAA": 1}), "orders", 0)


def test_every_command_decodes_to_the_record_the_engine_takes():
    commands = [
        NewOrder(
            1,
            10,
            "AAA",
            Side.BUY,
            5,
            price=100,
            tif=Tif.IOC,
            stp=Stp.CANCEL_BOTH,
            post_only=True,
            ts=7,
        ),
        NewOrder(2, 10, "AAA", Side.SELL, 3, market=True, tif=Tif.FOK, ts=8),
        CancelOrder(1, 10, "AAA", ts=9),
        AmendOrder(2, 10, "AAA", price=101, qty=2, ts=10),
        OpenSession("AAA", ts=11),
        CloseSession("AAA", ts=12),
        Reband("AAA", 50, 150, ts=13),
        NewOrder(3, 10, "AAA", Side.BUY, 4, market=True, tif=Tif.DAY, ts=14, stop=True, trigger=99),
        NewOrder(4, 10, "AAA", Side.SELL, 4, price=90, ts=15, stop=True, trigger=95),
        NewOrder(5, 10, "AAA", Side.SELL, 40, price=120, tif=Tif.DAY, ts=16, disclosed=8),
        AmendOrder(4, 10, "AAA", price=91, qty=4, ts=17, trigger=96),
        AmendOrder(5, 10, "AAA", price=120, qty=40, ts=18, disclosed=12),
        PreOpen("AAA", ts=19),
        Uncross("AAA", 100, ts=20),
        Halt("AAA", ts=21),
    ]
    records, offsets, dead = decoder().decode([(n, encode(c)) for n, c in enumerate(commands)])
    assert dead == [] and offsets.tolist() == list(range(len(commands)))
    assert records.dtype == COMMAND_DTYPE
    assert records.tolist() == [
        (1, Op.LIMIT, Side.BUY, Tif.IOC, Stp.CANCEL_BOTH, 1, 7, 1, 10, 100, 5, 0, 0),
        (1, Op.MARKET, Side.SELL, Tif.FOK, 0, 0, 8, 2, 10, 0, 3, 0, 0),
        (1, Op.CANCEL, 0, 0, 0, 0, 9, 1, 10, 0, 0, 0, 0),
        (1, Op.AMEND, 0, 0, 0, 0, 10, 2, 10, 101, 2, 0, 0),
        (1, Op.OPEN, 0, 0, 0, 0, 11, 0, 0, 0, 0, 0, 0),
        (1, Op.CLOSE, 0, 0, 0, 0, 12, 0, 0, 0, 0, 0, 0),
        (1, Op.REBAND, 0, 0, 0, 0, 13, 0, 0, 50, 150, 0, 0),
        (1, Op.STOP, Side.BUY, Tif.DAY, 0, 0, 14, 3, 10, 0, 4, 99, 0),
        (1, Op.STOP_LIMIT, Side.SELL, Tif.GTC, 0, 0, 15, 4, 10, 90, 4, 95, 0),
        (1, Op.LIMIT, Side.SELL, Tif.DAY, 0, 0, 16, 5, 10, 120, 40, 0, 8),
        (1, Op.AMEND, 0, 0, 0, 0, 17, 4, 10, 91, 4, 96, 0),
        (1, Op.AMEND, 0, 0, 0, 0, 18, 5, 10, 120, 40, 0, 12),
        (1, Op.PRE_OPEN, 0, 0, 0, 0, 19, 0, 0, 0, 0, 0, 0),
        (1, Op.UNCROSS, 0, 0, 0, 0, 20, 0, 0, 100, 0, 0, 0),
        (1, Op.HALT, 0, 0, 0, 0, 21, 0, 0, 0, 0, 0, 0),
    ]
    assert commands_from_records(records, {1: "AAA"}) == commands


def test_orders_published_before_the_new_fields_decode_as_before():
    """A payload without stop/trigger/disclosed (an older producer's) is the same order."""
    old = {"type": "new", "order_id": 1, "account": 2, "symbol": "AAA", "side": 1, "qty": 5}
    decode = command_decoder().decode
    limit = decode(encode({**old, "price": 100}))
    market = decode(encode({**old, "market": True, "tif": Tif.IOC}))
    assert limit == NewOrder(1, 2, "AAA", Side.BUY, 5, price=100)
    assert market == NewOrder(1, 2, "AAA", Side.BUY, 5, market=True, tif=Tif.IOC)
    assert (limit.op, market.op) == (Op.LIMIT, Op.MARKET)
    assert decode(encode({"type": "uncross", "symbol": "AAA"})) == Uncross("AAA", 0)


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\xc1",
        b"garbage",
        encode([1, 2, 3]),
        encode({"type": "new"}),
        encode({"type": "nope", "symbol": "AAA"}),
        encode({"type": "new", "order_id": 1, "account": 1, "symbol": "AAA", "side": 3, "qty": 1}),
        encode({"type": "cancel", "order_id": 2**63, "account": 1, "symbol": "AAA"}),
        encode({"type": "cancel", "order_id": 1, "account": 1, "symbol": "AAA", "extra": 1}),
        encode({"type": "cancel", "order_id": "1", "account": 1, "symbol": "AAA"}),
        encode(
            {
                "type": "batch",
                "commands": [{"type": "cancel", "order_id": 1, "account": 1, "symbol": "AAA"}],
            }
        ),
    ],
)
def test_what_does_not_decode_becomes_a_dead_letter_with_a_reason(payload):
    good = encode(CancelOrder(5, 1, "AAA"))
    records, offsets, dead = decoder().decode([(0, good), (1, payload), (2, good)])
    assert offsets.tolist() == [0, 2] and len(records) == 2
    assert dead == [DeadLetter("orders", 0, 1, dead[0].reason, payload)]
    assert dead[0].reason


def test_unknown_symbols_get_stable_ids_no_book_can_have():
    table = SymbolTable({"AAA": 1})
    a, b = table.id_of("ZZZ"), table.id_of("YYY")
    assert a >= UNKNOWN_SYMBOL_BASE and b == a + 1 and table.id_of("ZZZ") == a
    assert table.names[a] == "ZZZ" and table.id_of("AAA") == 1


def test_events_are_numbered_per_shard_and_duplicate_rejections_dropped():
    book = OrderBook(1, 1000, symbol=1)
    table = SymbolTable({"AAA": 1})
    records, _, _ = CommandDecoder(table, "orders", 0).decode(
        [
            (0, encode(NewOrder(1, 1, "AAA", Side.SELL, 5, price=10))),
            (1, encode(NewOrder(1, 1, "AAA", Side.SELL, 5, price=10))),  # published twice
            (2, encode(NewOrder(2, 2, "AAA", Side.BUY, 2, price=10))),
        ]
    )
    events = book.process(records)
    assert Reason.DUPLICATE_ORDER_ID in events["reason"].tolist()
    encoder = EventEncoder(table, shard=3, shard_seq=100, max_batch=2)
    payloads = encoder.encode(events)
    batches = [msgspec.msgpack.decode(p, type=EventBatch) for p in payloads]
    published = [e for b in batches for e in b.events]
    assert [len(b.events) for b in batches] == [2, 1] and {b.shard for b in batches} == {3}
    assert [(e.shard_seq, e.symbol, e.type, e.order_id) for e in published] == [
        (101, "AAA", EventType.ACCEPTED, 1),
        (102, "AAA", EventType.ACCEPTED, 2),
        (103, "AAA", EventType.TRADE, 2),
    ]
    assert encoder.shard_seq == 103
    assert EventEncoder(table, 3).count(events) == 3


def test_partition_of_a_symbol_is_stable():
    assert partition_of("RELIANCE", 4) == partition_of("RELIANCE", 4) == 0
    assert [partition_of(s, 4) for s in ("TCS", "HDFCBANK", "ITC")] == [2, 1, 3]


def test_a_loadgen_flow_round_trips_through_the_wire():
    records = np.concatenate(list(order_flow([1, 2], 2000, seed=4)))
    wire = commands_from_records(records, {1: "AAA", 2: "BBB"})
    decoded, _, dead = decoder(AAA=1, BBB=2).decode((n, encode(c)) for n, c in enumerate(wire))
    assert not dead and decoded.tolist() == records.tolist()


# --- journal -------------------------------------------------------------------------------


def letter(offset):
    return DeadLetter("orders", 0, offset, "bad", b"x")


def test_journal_commits_whole_messages_and_hands_out_dead_letters_once():
    journal = InputJournal(first_command=10)
    # offsets: 5 cmd, 6 dead, 7 cmd, 8 cmd ; then 9 dead, 10 dead (a chunk of no command)
    assert journal.append([5, 7, 8], end_offset=9, dead=[letter(6)]) == 10
    assert journal.append([], end_offset=11, dead=[letter(9), letter(10)]) == 13
    assert journal.advance(10) == (5, [])
    assert journal.advance(11) == (7, [letter(6)])
    assert journal.advance(11) == (7, [])
    assert journal.advance(13) == (11, [letter(9), letter(10)])
    assert journal.advance(13) == (None, [])


@given(st.lists(st.lists(st.booleans(), max_size=6), max_size=8), st.data())
def test_journal_offsets_never_pass_an_unfinished_command(chunks, data):
    """Whatever the chunking: advance(g) returns the offset of command g (or the end),
    and every dead letter before it exactly once."""
    journal, offset, kinds = InputJournal(), 0, []
    for chunk in chunks:  # True = a command, False = a dead letter
        offsets = [offset + i for i, is_command in enumerate(chunk) if is_command]
        dead = [letter(offset + i) for i, is_command in enumerate(chunk) if not is_command]
        journal.append(offsets, offset + len(chunk), dead)
        kinds += chunk
        offset += len(chunk)
    command_offsets = [i for i, is_command in enumerate(kinds) if is_command]
    handed_out, done = [], 0
    for g in sorted(data.draw(st.lists(st.integers(0, len(command_offsets)), max_size=5))) + [
        len(command_offsets)
    ]:
        at, dead = journal.advance(g)
        handed_out += [d.offset for d in dead]
        if at is not None:
            assert at >= done
            done = at
        expected = command_offsets[g] if g < len(command_offsets) else len(kinds)
        assert done == (expected if kinds else 0)
        assert all(o < done for o in handed_out)
    assert handed_out == [i for i, is_command in enumerate(kinds) if not is_command]
