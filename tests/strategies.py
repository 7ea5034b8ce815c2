"""Hypothesis strategies for raw commands, shared by the fuzz and snapshot tests.

A command is a dict of COMMAND_DTYPE field values (``support.commands`` packs them).
Each command starts *plausible* (in band, whole lots, valid enums) and then has up to
three fields replaced by *arbitrary* values (int64 extremes, negatives, unknown enum
values), so a random batch both builds a real book and hits every validation path.
"""

from __future__ import annotations

from hypothesis import strategies as st

from brokercore.engine.records import INT64_MAX, Op, Side, Stp, Tif

INT64_MIN = -(2**63)
INT64_EDGES = [INT64_MIN, INT64_MIN + 1, -1, 0, 1, 2, INT64_MAX - 1, INT64_MAX]
BOOK_STPS = [s for s in Stp if s != Stp.DEFAULT]

any_int64 = st.one_of(st.sampled_from(INT64_EDGES), st.integers(INT64_MIN, INT64_MAX))
any_u8 = st.integers(0, 255)


ARBITRARY = {
    "op": any_u8,
    "side": any_u8,
    "tif": any_u8,
    "stp": any_u8,
    "flags": any_u8,
    "ts": any_int64,
    "order_id": any_int64,
    "account": any_int64,
    "price": any_int64,
    "qty": any_int64,
}
PLAUSIBLE_OPS = (
    [Op.LIMIT] * 6 + [Op.MARKET, Op.CANCEL, Op.AMEND] * 2 + [Op.OPEN, Op.CLOSE, Op.REBAND]
)
DAY_OPS = [Op.STOP, Op.STOP_LIMIT] * 2 + [Op.PRE_OPEN, Op.UNCROSS, Op.UNCROSS, Op.HALT]
"""The trading day's ops (``day=True``): stops, and the phases' commands."""
DAY_ARBITRARY = {"trigger": any_int64, "disclosed": any_int64}


@st.composite
def book_params(draw) -> dict:
    """Constructor arguments: a small band, sometimes one near the top of int64."""
    width = draw(st.integers(1, 60))
    near_int64_max = draw(st.booleans()) and draw(st.booleans())  # about one book in four
    low = draw(st.integers(2**62, INT64_MAX - width) if near_int64_max else st.integers(1, 1000))
    lot_size = draw(st.sampled_from([1, 1, 3, 100, 2**40]))
    return dict(
        low=low,
        high=low + width - 1,
        lot_size=lot_size,
        symbol=draw(st.integers(0, 2**32 - 1)),
        stp=draw(st.sampled_from(BOOK_STPS)),
    )


def quantities(params: dict):
    """Mostly a few whole lots; now and then the largest valid quantity or one more."""
    lot, max_qty = params["lot_size"], INT64_MAX // params["high"]
    max_lots = max_qty // lot  # 0 when even one lot is too large
    lots = st.integers(1, max(1, min(20, max_lots))).map(lambda k: k * lot)
    edges = st.sampled_from([max_qty - max_qty % lot, min(max_qty + 1, INT64_MAX)])
    return st.tuples(st.booleans(), st.booleans(), lots, edges).map(
        lambda t: t[3] if t[0] and t[1] else t[2]
    )  # an edge about one time in four


def in_band_prices(params: dict, margin=2):
    low, high = params["low"], params["high"]
    return st.integers(max(low - margin, INT64_MIN), min(high + margin, INT64_MAX))


@st.composite
def command(draw, params: dict, day: bool = False):
    """One raw command for a book built with ``params``: plausible fields, a few arbitrary.
    With ``day`` also stops, pre-open, uncross and halt, triggers and icebergs."""
    arbitrary = {**ARBITRARY, **DAY_ARBITRARY} if day else ARBITRARY
    fields = draw(
        st.fixed_dictionaries(
            {
                "symbol": st.integers(0, 2**32 - 1),
                "op": st.sampled_from(PLAUSIBLE_OPS + (DAY_OPS if day else [])),
                "side": st.sampled_from(list(Side)),
                "tif": st.sampled_from(list(Tif)),
                "stp": st.sampled_from(list(Stp)),
                "flags": st.sampled_from([0, 0, 1]),
                "ts": st.integers(0, 10**6),
                "order_id": st.integers(-1, 15),
                "account": st.integers(0, 3),
                "price": in_band_prices(params),
                "qty": quantities(params),
            }
        )
    )
    if fields["op"] == Op.MARKET:
        fields["tif"] = draw(st.sampled_from([Tif.IOC, Tif.FOK]))
    if fields["op"] == Op.MARKET or fields["tif"] in (Tif.IOC, Tif.FOK):
        fields["flags"] = 0
    if day:
        fields.update(draw(day_fields(params, fields)))
    if draw(st.booleans()) and draw(st.booleans()):  # about one command in four
        for name in draw(st.sets(st.sampled_from(sorted(arbitrary)), min_size=1, max_size=3)):
            fields[name] = draw(arbitrary[name], label=name)
    return fields


@st.composite
def day_fields(draw, params: dict, fields: dict) -> dict:
    """Plausible trading-day fields: a stop's trigger and limit on the right side of it
    (mostly), an amend's new trigger, a limit's or an amend's disclosed quantity."""
    op, side, price = fields["op"], fields["side"], fields["price"]
    out: dict = {"trigger": 0, "disclosed": 0}
    if op in (Op.STOP, Op.STOP_LIMIT, Op.AMEND) and draw(st.booleans()):
        out["trigger"] = draw(in_band_prices(params))
    if op == Op.STOP:
        out["price"] = 0
        out["tif"] = draw(st.sampled_from([Tif.GTC, Tif.DAY]))
    if op == Op.STOP_LIMIT:
        out["tif"] = draw(st.sampled_from([Tif.GTC, Tif.DAY, Tif.IOC]))
        through = draw(st.integers(-1, 2)) * (1 if side == Side.BUY else -1)  # -1: wrong side
        out["trigger"] = min(max(price - through, INT64_MIN), INT64_MAX)
    if op in (Op.STOP, Op.STOP_LIMIT):
        out["flags"] = 0
    if op in (Op.LIMIT, Op.AMEND) and draw(st.booleans()):
        lot = params["lot_size"]
        out["disclosed"] = draw(st.sampled_from([lot, 2 * lot, fields["qty"], -lot]))
    return out


@st.composite
def resting_orders(draw, params: dict, max_size=12):
    """Plausible GTC/DAY limit orders with ids 1, 2, 3...: a book to start from."""
    rows = draw(
        st.lists(
            st.fixed_dictionaries(
                {
                    "op": st.just(Op.LIMIT),
                    "side": st.sampled_from(list(Side)),
                    "tif": st.sampled_from([Tif.GTC, Tif.DAY]),
                    "stp": st.sampled_from(list(Stp)),
                    "flags": st.sampled_from([0, 0, 1]),
                    "account": st.integers(1, 3),
                    "price": in_band_prices(params, margin=0),
                    "qty": quantities(params),
                }
            ),
            max_size=max_size,
        )
    )
    return [dict(row, order_id=i) for i, row in enumerate(rows, start=1)]


@st.composite
def scenario(draw, max_commands=30, day=False):
    """Book parameters and raw commands for that book: a few resting orders, then fuzz
    (with ``day``, the trading day's commands and fields too, and in about half the
    cases the resting orders are placed in a pre-open, where they may cross)."""
    params = draw(book_params())
    pre_open = day and draw(st.booleans())
    session = [{"op": Op.CLOSE}, {"op": Op.PRE_OPEN}] if pre_open else []
    return params, session + draw(resting_orders(params)) + draw(
        st.lists(command(params, day), max_size=max_commands)
    )
