"""Bracket orders (docs/brackets.md) through the OMS's HTTP API on the real Postgres and
Kafka: bad input and the API; with the engine daemon, settlement and the trigger service
(a subprocess, as tests/integration/test_gtt.py runs it): an entry filled and its target
filled (the stop-loss never placed); an entry partly filled (a leg for that part), then
its stop-loss met (the target cancelled, the stop-loss sells the whole position); an
entry cancelled (its leg cancelled, the bracket CANCELLED); the target filling and the
stop-loss met in one batch (no stop-loss order: nothing oversold); a kill -9 of the
trigger service while it places legs (each leg once)."""

from __future__ import annotations

import time
import uuid

from test_gtt import trade, triggers

from oms_support import Api, auth, run
from platform_support import platform

ALICES_SHARES = (
    "SELECT coalesce(sum(quantity), 0) FROM positions JOIN accounts USING (account_id) "
    "WHERE user_id = 'alice'"
)


def bracket(**more):
    return {
        "symbol": "RELIANCE",
        "side": "BUY",
        "quantity": 10,
        "price": "15000.00",
        "target": "15100.00",
        "stopLoss": "14900.00",
        "idempotencyKey": uuid.uuid4().hex,
    } | more


async def create(api: Api, body, user="alice"):
    return await api.client.post("/api/v1/brackets", json=body, headers=auth(user))


BAD = [
    ({"symbol": "RELIANCE"}, 422, "INVALID_REQUEST"),
    (bracket(target="14950.00"), 422, "BRACKET_INVALID_PRICES"),  # target below the price
    (bracket(side="SELL"), 422, "BRACKET_INVALID_PRICES"),  # a sell's target is below
    (bracket(stopLimit="14950.00"), 422, "BRACKET_INVALID_PRICES"),  # above the stop-loss
    (bracket(target="15100.01"), 422, "TICK_SIZE"),
    (bracket(stopLoss="sNaN"), 422, "INVALID_PRICE"),
    (bracket(price="0"), 422, "INVALID_PRICE"),
    (bracket(symbol="NOPE"), 422, "UNKNOWN_SYMBOL"),
    (bracket(quantity=0), 422, "INVALID_REQUEST"),
]


def test_bracket_api_bad_input_retry_and_exit(database):
    async def scenario():
        async with Api(database, rate_limit_burst=10_000) as api:
            a: dict = {"bad": [await create(api, body) for body, _, _ in BAD]}
            a["nobody"] = await create(api, bracket(), user="nobody")
            body = bracket(stopLimit="14890.00")
            a["made"] = await create(api, body)
            a["again"] = await create(api, body)
            a["reused"] = await create(api, body | {"target": "15200.00"})
            path = f"/api/v1/brackets/{a['made'].json()['bracketId']}"
            a["others"] = [
                await api.client.get(path, headers=auth("bob")),
                await api.client.delete(path, headers=auth("bob")),
                await api.client.get("/api/v1/brackets/x1", headers=auth("alice")),
            ]
            a["exit"] = await api.client.delete(path, headers=auth("alice"))
            a["exit_again"] = await api.client.delete(path, headers=auth("alice"))
            return api, a

    api, a = run(scenario)
    assert [(r.status_code, r.json()["error"]["code"]) for r in a["bad"]] == [
        (status, code) for _, status, code in BAD
    ]
    assert (a["nobody"].status_code, a["nobody"].json()["error"]["code"]) == (403, "NO_ACCOUNT")
    made = a["made"].json()
    assert a["made"].status_code == 201
    assert {k: made[k] for k in ("price", "target", "stopLoss", "stopLimit", "status")} == {
        "price": "15000.00",
        "target": "15100.00",
        "stopLoss": "14900.00",
        "stopLimit": "14890.00",
        "status": "ACTIVE",
    }
    assert made["targets"] == []
    assert (a["again"].status_code, a["again"].json()) == (201, made), "a retry: the same"
    assert a["reused"].json()["error"]["code"] == "IDEMPOTENCY_KEY_REUSED"
    assert [(r.status_code, r.json()["error"]["code"]) for r in a["others"]] == [
        (404, "BRACKET_NOT_FOUND"),
        (404, "BRACKET_NOT_FOUND"),
        (404, "BRACKET_NOT_FOUND"),
    ]
    assert (a["exit"].status_code, a["exit"].json()["status"]) == (200, "EXITING")
    assert a["exit_again"].status_code == 409
    assert a["exit_again"].json()["error"]["code"] == "BRACKET_NOT_ACTIVE"
    assert api.rows("SELECT count(*) FROM brackets") == [(1,)], "nothing stored for a refusal"
    assert api.rows("SELECT side, quantity, price, status FROM orders") == [
        ("BUY", 10, 15000 * 100, "PENDING")
    ], "one entry order, its hold taken"


# --- with the engine, settlement and the trigger service ------------------------------


def state(api: Api, bracket_id: int):
    """(status, [(target quantity, its order's status, filled)], stop quantity, stop's
    order status and filled)."""
    [(status, stop_quantity, stop_status, stop_filled)] = api.rows(
        "SELECT b.status, b.stop_quantity, o.status, o.filled_quantity FROM brackets b "
        "LEFT JOIN orders o ON o.order_id = b.stop_order_id WHERE b.bracket_id = %s",
        bracket_id,
    )
    legs = api.rows(
        "SELECT t.quantity, o.status, o.filled_quantity FROM bracket_targets t "
        "LEFT JOIN orders o USING (order_id) WHERE t.bracket_id = %s ORDER BY t.seq",
        bracket_id,
    )
    return status, legs, stop_quantity, stop_status, stop_filled


def wait_state(api: Api, bracket_id: int, expected, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while (now := state(api, bracket_id)) != expected:
        assert time.monotonic() < deadline, f"{now} is not {expected}"
        time.sleep(0.1)


def test_target_fills_stop_loss_cancels_the_target_entry_cancel_ends_it(database, tmp_path):
    with platform(database, tmp_path, rate_limit_burst=10_000) as api:
        service = triggers(api, tmp_path / "triggers.log")
        try:

            async def made(**body) -> int:
                async with api:
                    answer = await create(api, bracket(**body))
                    assert answer.status_code == 201, answer.text
                    return answer.json()["bracketId"]

            async def steps(*orders) -> None:
                async with api:
                    for user, body in orders:
                        answer = await api.place(user=user, **body)
                        assert answer.status_code == 202, answer.text

            # the entry fills, its target fills: DONE, the stop-loss never placed
            one = run(made)
            run(lambda: steps(("bob", {"side": "SELL", "timeInForce": "IOC"})))
            wait_state(api, one, ("ACTIVE", [(10, "OPEN", 0)], None, None, None))
            run(lambda: steps(("carol", {"price": "15100.00", "timeInForce": "IOC"})))
            wait_state(api, one, ("DONE", [(10, "FILLED", 10)], None, None, None))

            # the entry fills 4: a leg of 4; a sell of 7 fills the 6 left and trades at
            # the stop-loss: the target is cancelled, the stop-loss sells all 10
            two = run(lambda: made(target="15200.00", stopLoss="14800.00"))
            run(lambda: steps(("bob", {"side": "SELL", "quantity": 4, "timeInForce": "IOC"})))
            wait_state(api, two, ("ACTIVE", [(4, "OPEN", 0)], None, None, None))
            run(
                lambda: steps(
                    ("carol", {"price": "14700.00", "timeInForce": "GTC"}),  # the stop's buyer
                    ("carol", {"quantity": 1, "price": "14800.00", "timeInForce": "GTC"}),
                    ("bob", {"side": "SELL", "quantity": 7, "price": "14800.00"}),
                )
            )
            wait_state(api, two, ("STOPPED", [(4, "CANCELLED", 0)], 10, "FILLED", 10))
            assert api.rows(ALICES_SHARES) == [(0,)]

            # the entry fills 3, the user cancels it: its leg is cancelled, 3 shares kept
            three = run(lambda: made(target="15300.00", stopLoss="14500.00"))
            run(lambda: steps(("bob", {"side": "SELL", "quantity": 3, "timeInForce": "IOC"})))
            wait_state(api, three, ("ACTIVE", [(3, "OPEN", 0)], None, None, None))

            async def cancel_entry():
                async with api:
                    [(entry,)] = api.rows(
                        "SELECT entry_order_id FROM brackets WHERE bracket_id = %s", three
                    )
                    assert (await api.cancel(entry)).status_code == 202

            run(cancel_entry)
            wait_state(api, three, ("CANCELLED", [(3, "CANCELLED", 0)], None, None, None))
            assert api.rows(ALICES_SHARES) == [(3,)]
        finally:
            service.close()
        assert api.rows("SELECT sum(blocked_cash) FROM accounts WHERE user_id = 'alice'") == [(0,)]
        assert api.rows(
            "SELECT blocked_quantity FROM positions JOIN accounts USING (account_id) "
            "WHERE user_id = 'alice'"
        ) == [(0,)]


def test_both_legs_in_one_batch_and_kill_9_places_each_leg_once(database, tmp_path):
    brackets = 30
    with platform(database, tmp_path, rate_limit_burst=10_000) as api:
        service = triggers(api, tmp_path / "triggers.log")
        try:

            async def arm():
                async with api:
                    pair = await create(api, bracket(quantity=2))
                    await trade(api, "15000.00", 2)
                    return pair.json()["bracketId"]

            pair = run(arm)
            wait_state(api, pair, ("ACTIVE", [(2, "OPEN", 0)], None, None, None))
            service.close()

            # with the service stopped: a trade at the stop-loss, then the target fills;
            # and 30 brackets' entries fill: the service reads it all at its start
            async def trades():
                async with api:
                    await trade(api, "14900.00")
                    await api.place(user="carol", quantity=2, price="15100.00", timeInForce="IOC")
                    many = [await create(api, bracket(quantity=1)) for _ in range(brackets)]
                    assert {m.status_code for m in many} == {201}
                    await api.place(user="bob", side="SELL", quantity=brackets, timeInForce="IOC")
                    return [m.json()["bracketId"] for m in many]

            many = run(trades)
            api.wait_rows(
                "SELECT count(*) FROM orders WHERE side = 'BUY' AND status = 'FILLED' "
                "AND quantity = 1 AND price = 1500000",
                [(brackets,)],
            )
            service = triggers(api, tmp_path / "triggers-2.log")
            deadline = time.monotonic() + 60
            while not api.rows(
                "SELECT count(*) FROM bracket_targets WHERE order_id IS NOT NULL "
                "AND bracket_id <> %s",
                pair,
            )[0][0]:
                assert time.monotonic() < deadline, service.text()[-3000:]
                time.sleep(0.005)
            service.kill()  # in the middle of placing the legs (or just after)
            service.close()
            service = triggers(api, tmp_path / "triggers-3.log")
            for one in many:
                wait_state(api, one, ("ACTIVE", [(1, "OPEN", 0)], None, None, None))
            wait_state(api, pair, ("DONE", [(2, "FILLED", 2)], None, None, None))
        finally:
            service.close()
        sells = api.rows(
            "SELECT count(*), sum(quantity) FROM orders o JOIN accounts a USING (account_id) "
            "WHERE a.user_id = 'alice' AND o.side = 'SELL'"
        )
        assert sells == [(brackets + 1, brackets + 2)], "one leg each, none doubled"
        assert api.rows(ALICES_SHARES) == [(brackets,)], "the pair's 2 sold once"
