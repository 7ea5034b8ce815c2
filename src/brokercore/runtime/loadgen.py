"""A deterministic order flow for driving shards: the built-in load source of the CLI.

Chunk k of a flow depends only on (seed, k), so any chunk can be rebuilt alone. About
45% of the commands are limit orders (GTC, a tenth IOC) priced around a fixed mid,
10% market orders and 45% cancels: each limit order is cancelled by its owner a random
1..2,000 commands after it was placed (if it still rests by then; otherwise the
cancel is rejected, as at a real venue), so the books stay near a steady size.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from brokercore.engine.records import COMMAND_DTYPE, Op, Side, Tif

__all__ = ["MID", "HALF_BAND", "order_flow"]

MID = 10_000
"""Mid price in ticks of every generated symbol."""
HALF_BAND = 5_000
"""Generated prices stay well inside [MID - HALF_BAND, MID + HALF_BAND]."""

_ACCOUNTS = 1_000
_MAX_CANCEL_LAG = 2_000
_LIMIT_SHARE, _MARKET_SHARE = 0.45, 0.10


def order_flow(
    symbols: Sequence[int], total: int, seed: int = 1, chunk: int = 65_536
) -> Iterator[np.ndarray]:
    """Yield COMMAND_DTYPE chunks (at most ``chunk`` commands each) adding up to total;
    order ids are 1, 2, 3 ... over the whole flow."""
    next_id = 1
    for k, start in enumerate(range(0, total, chunk)):
        commands = _chunk(
            np.asarray(symbols, dtype=np.uint32),
            min(chunk, total - start),
            next_id,
            np.random.default_rng([seed, k]),
        )
        next_id += len(commands)
        yield commands


def _op_sequence(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Ops in time order, and for each cancel the position of the limit it cancels."""
    n_limits = int(n * _LIMIT_SHARE)
    placed = rng.random(n_limits) * n
    cancelled = placed + rng.integers(1, _MAX_CANCEL_LAG + 1, n_limits)
    in_chunk = cancelled < n
    n_cancels = int(in_chunk.sum())
    n_markets = n - n_limits - n_cancels
    times = np.concatenate([placed, cancelled[in_chunk], rng.random(n_markets) * n])
    ops = np.concatenate(
        [np.full(n_limits, Op.LIMIT), np.full(n_cancels, Op.CANCEL), np.full(n_markets, Op.MARKET)]
    ).astype(np.uint8)
    order = np.argsort(times, kind="stable")
    position = np.empty(len(order), np.int64)
    position[order] = np.arange(len(order))
    # The k-th cancel (in construction order) belongs to the k-th limit kept in_chunk.
    limit_of_cancel = position[:n_limits][in_chunk]
    cancel_at = position[n_limits : n_limits + n_cancels]
    target = np.empty(len(order), np.int64)
    target[cancel_at] = limit_of_cancel
    return ops[order], target


def _chunk(symbols: np.ndarray, n: int, first_id: int, rng: np.random.Generator) -> np.ndarray:
    ops, target = _op_sequence(n, rng)
    c = np.zeros(len(ops), dtype=COMMAND_DTYPE)
    side = rng.choice(np.array([Side.BUY, Side.SELL], dtype=np.uint8), size=len(c))
    c["op"] = ops
    c["side"] = side
    c["symbol"] = rng.choice(symbols, size=len(c))
    c["order_id"] = np.arange(first_id, first_id + len(c))
    c["account"] = rng.integers(1, _ACCOUNTS + 1, size=len(c))
    c["qty"] = rng.integers(1, 101, size=len(c))
    # Limits rest up to 50 ticks from the mid; a fifth of them cross it by a few ticks.
    away = rng.integers(1, 51, size=len(c))
    away[rng.random(len(c)) < 0.2] *= -1
    c["price"] = np.where(side == Side.BUY, MID - np.maximum(away, -5), MID + np.maximum(away, -5))
    c["tif"] = np.where(
        ops == Op.MARKET, Tif.IOC, np.where(rng.random(len(c)) < 0.1, Tif.IOC, Tif.GTC)
    )
    cancels = np.flatnonzero(ops == Op.CANCEL)
    for field in ("order_id", "symbol", "account"):
        c[field][cancels] = c[field][target[cancels]]
    for field in ("side", "price", "qty", "tif"):
        c[field][cancels] = 0
    return c
