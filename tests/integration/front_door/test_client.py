"""brokercore.client against a private stack (`make up`'s, through its edge): every call
answers its typed body, refusals arrive as ApiError with the platform's code, and the
WebSocket iterator outlives killed and restarted gateways without losing or repeating
an order update."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Awaitable, Callable
from decimal import Decimal

import psycopg
import pyotp
import pytest

from brokercore.client import ApiError, Client, SecondFactorRequired, new_key
from brokercore.demo import OPERATOR, login_of
from brokercore.entry.requests import (
    GttLeg,
    GttOrder,
    ModifyOrderRequest,
    NewBracket,
    NewGtt,
    PlaceOrderRequest,
)
from brokercore.realtime.channels import OrderUpdate
from stack_support import PrivateStack

pytestmark = pytest.mark.integration

DONE = {"FILLED", "CANCELLED", "REJECTED", "EXPIRED"}


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 180))


async def logged_in(stack: PrivateStack, name: str) -> Client:
    client = Client(stack.edge)
    await client.login(**login_of(name))
    return client


def limit(side: str, price: str, quantity: int = 5, **more: object) -> PlaceOrderRequest:
    return PlaceOrderRequest(
        symbol="RELIANCE",
        side=side,  # type: ignore[arg-type]
        type="LIMIT",
        quantity=quantity,
        price=Decimal(price),
        idempotency_key=new_key(),
        **more,  # type: ignore[arg-type]
    )


async def until(what: str, check: Callable[[], Awaitable[bool]], timeout: float = 60) -> None:
    """Polls ``check`` until it holds (the read side follows the engine asynchronously)."""
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"no {what} within {timeout} s"
        await asyncio.sleep(0.1)


def test_a_new_customer_signs_up_is_verified_funds_and_logs_in_with_a_second_factor(stack_up):
    async def scenario() -> None:
        email, password = f"client-{new_key()[:8]}@example.com", "client-test-password"
        async with Client(stack_up.edge) as user, await logged_in(stack_up, OPERATOR) as ops:
            await user.signup(email, password)
            await user.login(email, password)
            me = await user.me()
            assert (me.email, me.kyc_status, me.totp_enrolled) == (email, "PENDING", False)
            with pytest.raises(ApiError) as refused:
                await user.place(limit("BUY", "15000.00"))
            assert (refused.value.status, refused.value.code) == (403, "ACCOUNT_NOT_VERIFIED")

            await ops.decide_kyc(me.user_id, "VERIFIED", "client test")
            deposit = await user.deposit("250000.00", new_key())
            assert (deposit.amount, deposit.status) == ("250000.00", "COMPLETED")
            assert (await user.funds()).cash == "250000.00"
            accepted = await user.place(limit("BUY", "10000.00", 1))
            assert accepted.status == "PENDING"

            secret = (await user.enrol_totp()).secret
            codes = (await user.confirm_totp(pyotp.TOTP(secret).now())).recovery_codes
            with pytest.raises(SecondFactorRequired) as second:
                await user.login(email, password)
            await user.login_totp(second.value.challenge, codes[0])  # the TOTP code is spent
            await user.login(email, password, code=codes[1])
            assert (await user.me()).totp_enrolled
            spent = user.refresh_token
            await user.refresh()
            assert user.refresh_token != spent
            with pytest.raises(ApiError) as wrong:
                await user.login(email, "not-the-password")
            assert (wrong.value.status, wrong.value.code) == (401, "INVALID_CREDENTIALS")
            # nothing left resting for the modules after this one (they share the stack)
            assert (await user.cancel(accepted.order_id)).status == "CANCEL_REQUESTED"

    run(scenario)


def test_orders_are_placed_modified_filled_cancelled_and_read_back(stack_up):
    async def scenario() -> None:
        async with (
            await logged_in(stack_up, "alice") as alice,
            await logged_in(stack_up, "bob") as bob,
        ):
            preview = await alice.margin([limit("BUY", "15000.00", 10)])
            assert preview.orders[0].accepted and preview.total.cash == "150000.00"

            buy = await alice.place(limit("BUY", "14990.00", 10, time_in_force="DAY"))

            async def status_is(client: Client, order_id: int, status: str) -> bool:
                return (await client.order(order_id)).status == status

            await until("OPEN buy", lambda: status_is(alice, buy.order_id, "OPEN"))
            changed = await alice.modify(
                buy.order_id, ModifyOrderRequest(new_key(), price=Decimal("15000.00"))
            )
            assert changed.status == "MODIFY_REQUESTED"
            await until(
                "modified price",
                lambda: _price_is(alice, buy.order_id, "15000.00"),
            )
            await bob.place(limit("SELL", "15000.00", 10))
            await until("FILLED buy", lambda: status_is(alice, buy.order_id, "FILLED"))

            filled = await alice.order(buy.order_id)
            assert sum(f.quantity for f in filled.fills) == 10
            assert buy.order_id in [o.order_id for o in (await alice.orders()).orders]
            listed = await alice.orders(status=["FILLED"], symbol="RELIANCE", page_size=200)
            assert all(o.status == "FILLED" for o in listed.orders)
            assert any(p.symbol == "RELIANCE" for p in (await alice.portfolio()).positions)
            statement = await alice.statement()
            assert any(row.type == "BUY" for row in statement.rows)

            with pytest.raises(ApiError) as not_open:
                await alice.cancel(buy.order_id)
            assert (not_open.value.status, not_open.value.code) == (409, "ORDER_NOT_OPEN")
            with pytest.raises(ApiError) as unknown:
                await alice.cancel(999_999_999)
            assert (unknown.value.status, unknown.value.code) == (404, "ORDER_NOT_FOUND")
            with pytest.raises(ApiError) as tick:
                await alice.place(limit("BUY", "15000.03"))
            assert (tick.value.status, tick.value.code) == (422, "TICK_SIZE")

            resting = await alice.place(limit("BUY", "10000.00", 1))
            await until("OPEN order", lambda: status_is(alice, resting.order_id, "OPEN"))
            assert (await alice.cancel(resting.order_id)).status == "CANCEL_REQUESTED"
            await until("cancel", lambda: status_is(alice, resting.order_id, "CANCELLED"))
            another = await alice.place(limit("BUY", "10000.00", 1))
            await until("OPEN order", lambda: status_is(alice, another.order_id, "OPEN"))
            many = await alice.cancel_all("RELIANCE")
            assert [o.order_id for o in many.orders] == [another.order_id]

    run(scenario)


async def _price_is(client: Client, order_id: int, price: str) -> bool:
    return (await client.order(order_id)).price == price


def test_gtts_and_brackets_are_made_read_and_ended(stack_up):
    async def scenario() -> None:
        async with await logged_in(stack_up, "alice") as alice:
            leg = GttLeg("<=", Decimal("10500.00"), GttOrder("BUY", "LIMIT", 1, Decimal("10500")))
            gtt = await alice.create_gtt(NewGtt("RELIANCE", "SINGLE", [leg]))
            assert gtt.status == "ACTIVE"
            assert gtt.gtt_id in [g.gtt_id for g in (await alice.gtts()).gtts]
            assert (await alice.cancel_gtt(gtt.gtt_id)).status == "CANCELLED"
            with pytest.raises(ApiError) as invalid:
                await alice.create_gtt(NewGtt("NOSUCH", "SINGLE", [leg]))
            assert (invalid.value.status, invalid.value.code) == (422, "UNKNOWN_SYMBOL")

            made = await alice.create_bracket(
                NewBracket(
                    "RELIANCE",
                    "BUY",
                    1,
                    Decimal("10100.00"),
                    Decimal("10200.00"),
                    Decimal("10000.00"),
                    new_key(),
                )
            )
            assert (await alice.bracket(made.bracket_id)).entry_order_id == made.entry_order_id
            newest = await alice.brackets(status="ACTIVE", limit=1)
            assert [b.bracket_id for b in newest.brackets] == [made.bracket_id]
            await until(
                "an OPEN entry",
                lambda: _status_in(alice, made.entry_order_id, {"OPEN"}),
            )
            assert (await alice.exit_bracket(made.bracket_id)).status in {"EXITING", "EXITED"}
            with pytest.raises(ApiError) as gone:
                await alice.bracket(999_999_999)
            assert (gone.value.status, gone.value.code) == (404, "BRACKET_NOT_FOUND")

    run(scenario)


async def _status_in(client: Client, order_id: int, statuses: set[str]) -> bool:
    return (await client.order(order_id)).status in statuses


def test_the_update_stream_resumes_across_killed_and_restarted_gateways(stack_up):
    """IOC orders that never trade each end CANCELLED at once; between batches of them
    the gateways are restarted (supervisorctl) and then killed with SIGKILL, so that
    updates happen while the stream is away. The stream yields exactly the user's
    update rows after its start, in order, none missing, none twice."""
    user_id = stack_up.user_id("alice")

    def stored_since(first: int) -> list[int]:
        with psycopg.connect(stack_up.database_url) as conn:
            rows = conn.execute(
                "SELECT update_id FROM read_model.order_updates"
                " WHERE user_id = %s AND update_id > %s ORDER BY update_id",
                (user_id, first),
            ).fetchall()
        return [row[0] for row in rows]

    async def scenario() -> None:
        start = max(stored_since(0), default=0)
        seen: list[OrderUpdate] = []
        async with await logged_in(stack_up, "alice") as alice:

            async def collect() -> None:
                async for update in alice.updates(since=start):
                    if isinstance(update, OrderUpdate):
                        seen.append(update)

            reader = asyncio.create_task(collect())
            placed: list[int] = []

            async def batch() -> None:
                for _ in range(4):
                    order = limit("BUY", "10000.00", 1, time_in_force="IOC")
                    placed.append((await alice.place(order)).order_id)

            async def all_done() -> bool:
                done = {u.order_id for u in seen if u.status in DONE}
                return done >= set(placed)

            await batch()
            await until("the first batch's updates", all_done)
            restarted = stack_up.ctl("restart", "ws-0", "ws-1")
            assert restarted.returncode == 0, restarted.stdout
            await batch()
            for name in ("ws-0", "ws-1"):
                os.kill(stack_up.pid(name), signal.SIGKILL)
            await batch()
            await until("every order's last update over the stream", all_done)

            async def as_stored() -> bool:
                return [u.seq for u in seen] == stored_since(start)

            await until("the stream's updates to be the stored ones", as_stored, timeout=10)
            reader.cancel()
        assert len(seen) >= len(placed) and len({u.seq for u in seen}) == len(seen)

    run(scenario)
