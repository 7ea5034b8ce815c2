"""Group commit: the new orders that arrive together are decided and written in one
Postgres transaction (``OrderEntry.place_batch``), not one each.

Per order, a transaction costs three round trips, a commit (a WAL flush) and the
statements' fixed costs; at the open those, not the checks, bound an API process. Here
one loop takes everything queued (up to ``cap``) while the previous batch's transaction
runs, so batches grow with the load by themselves, and a lone order goes at once (no
timer, and by ``OrderEntry.place``, whose statements cost less for one order). Batches
run one after another, so a user's orders are decided in the order they arrived, in a
batch or across batches.

Each order stays all-or-nothing: a refused order is simply not written. If the batch's
transaction fails for a reason of its own (a constraint the database refuses for one
order, say), nothing of it was stored and its orders are placed again one at a time
(``OrderEntry.place``), so one order's failure is that order's alone. If Postgres is
away, every order of the batch fails with the error the single path would give (the
services answer 503).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import NamedTuple

from brokercore.entry.order_entry import OrderEntry, OrderReceipt, OrderRefused
from brokercore.entry.requests import PlaceOrderRequest
from brokercore.faults.backoff import transient

__all__ = ["GroupCommit"]

log = logging.getLogger("brokercore.group_commit")


class _Waiting(NamedTuple):
    user_id: str
    request: PlaceOrderRequest
    answer: asyncio.Future[OrderReceipt]


class GroupCommit:
    """``place`` as ``OrderEntry.place`` does, the orders of concurrent callers in
    shared transactions. ``batches`` and ``orders`` count what it committed or tried."""

    def __init__(self, entry: OrderEntry, *, cap: int = 512):
        self.entry = entry
        self.cap = cap
        self.batches = 0
        self.orders = 0
        self._queue: list[_Waiting] = []
        self._loop: asyncio.Task[None] | None = None

    async def place(self, user_id: str, request: PlaceOrderRequest) -> OrderReceipt:
        answer: asyncio.Future[OrderReceipt] = asyncio.get_running_loop().create_future()
        self._queue.append(_Waiting(user_id, request, answer))
        if self._loop is None or self._loop.done():
            self._loop = asyncio.create_task(self._run())
        return await answer

    async def _run(self) -> None:
        """Batches until the queue is empty; whatever arrives meanwhile waits for the
        next one."""
        while self._queue:
            batch, self._queue = self._queue[: self.cap], self._queue[self.cap :]
            self.batches += 1
            self.orders += len(batch)
            try:
                await self._place(batch)
            except asyncio.CancelledError:  # shutdown: nobody is left waiting
                for waiting in [*batch, *self._queue]:
                    waiting.answer.cancel()
                raise
            except Exception as e:  # a bug: its orders fail (500), the next batch goes on
                log.exception("a batch of %d orders failed", len(batch))
                for waiting in batch:
                    _settle(waiting.answer, e)

    async def _place(self, batch: Sequence[_Waiting]) -> None:
        if len(batch) == 1:  # the single path: the batch's statements cost more for one
            await _alone(self.entry, batch[0])
            return
        try:
            answers = await self.entry.place_batch([(w.user_id, w.request) for w in batch])
        except Exception as e:  # noqa: BLE001 - handed to the callers below
            if transient(e):
                for waiting in batch:
                    _settle(waiting.answer, e)
                return
            log.warning(
                "a batch of %d orders failed (%s: %s); placing them one by one",
                len(batch),
                type(e).__name__,
                str(e).strip().replace("\n", " "),
            )
            for waiting in batch:
                await _alone(self.entry, waiting)
            return
        for waiting, answer in zip(batch, answers, strict=True):
            _settle(waiting.answer, answer)


async def _alone(entry: OrderEntry, waiting: _Waiting) -> None:
    """One order in a transaction of its own (``OrderEntry.place``)."""
    try:
        _settle(waiting.answer, await entry.place(waiting.user_id, waiting.request))
    except Exception as e:  # noqa: BLE001 - handed to its caller
        _settle(waiting.answer, e)


def _settle(
    future: asyncio.Future[OrderReceipt], answer: OrderReceipt | OrderRefused | BaseException
) -> None:
    """The waiting caller's answer: a receipt, or the exception it gets raised (a caller
    gone, its future cancelled, gets nothing)."""
    if future.done():
        return
    if isinstance(answer, BaseException):
        future.set_exception(answer)
    else:
        future.set_result(answer)
