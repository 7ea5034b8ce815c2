"""GTT triggers (docs/gtt.md) through the OMS's HTTP API on the real Postgres and Kafka:
CRUD and bad input, an idempotency key under concurrent retries; with the engine daemon,
settlement and the trigger service (`brokercore service triggers`, a subprocess): a
single GTT fires on a trade and its order fills, an OCO fires one leg, both OCO legs met
in one batch fire one, a delete racing the firing ends one way or the other, and a
kill -9 of the trigger service while it places orders leaves every GTT with exactly one
order and one notification (an expiry, a firing and a refused order are told)."""

from __future__ import annotations

import asyncio
import os
import time
from datetime import UTC, datetime, timedelta

import msgspec

from brokercore.client import ApiError
from brokercore.entry.gtt_orders import expire_gtts
from brokercore.entry.requests import GttChange, NewGtt
from brokercore.realtime.channels import Notification
from oms_support import Api, auth, order, refusal, run
from platform_support import INSTRUMENTS, platform
from processes import LoggedProcess

LIMIT_BUY = {"side": "BUY", "type": "LIMIT", "quantity": 10, "price": "15000.00"}


def single(condition=">=", trigger="15000.00", order=LIMIT_BUY, **more):
    return {
        "symbol": "RELIANCE",
        "kind": "SINGLE",
        "legs": [{"condition": condition, "triggerPrice": trigger, "order": order}],
    } | more


def oco(low="14900.00", high="15100.00", quantity=10):
    def sell(price):
        return {"side": "SELL", "type": "LIMIT", "quantity": quantity, "price": price}

    return {
        "symbol": "RELIANCE",
        "kind": "OCO",
        "legs": [
            {"condition": "<=", "triggerPrice": low, "order": sell(low)},
            {"condition": ">=", "triggerPrice": high, "order": sell(high)},
        ],
    }


def new(body: dict) -> NewGtt:
    """The well-formed ``body`` as the client sends it."""
    return msgspec.convert(body, NewGtt)


async def create(api: Api, body, user="alice"):
    """POST ``body`` as it is, well-formed or not."""
    return await api.client.post("/api/v1/gtt", json=body, headers=auth(user))


def code_of(answer) -> tuple[int, str]:
    return answer.status_code, answer.json()["error"]["code"]


def far(days: float) -> str:
    return (datetime.now(UTC) + timedelta(days=days)).isoformat()


BAD = [
    ({"symbol": "RELIANCE"}, 422, "INVALID_REQUEST"),
    (single(condition="=="), 422, "INVALID_REQUEST"),
    (single() | {"kind": "OCO"}, 422, "GTT_INVALID_LEGS"),
    (oco(low="15200.00"), 422, "GTT_INVALID_LEGS"),  # the '<=' leg above the '>=' leg
    (single(trigger="0"), 422, "INVALID_TRIGGER"),
    (single(trigger="100.001"), 422, "INVALID_TRIGGER"),
    (single(trigger="sNaN"), 422, "INVALID_TRIGGER"),
    (single(trigger="1e999999999"), 422, "INVALID_TRIGGER"),
    (single(trigger="1E-999999999"), 422, "INVALID_TRIGGER"),
    (single(order=LIMIT_BUY | {"price": "15000.01"}), 422, "TICK_SIZE"),
    (single(order=LIMIT_BUY | {"price": None}), 422, "PRICE_REQUIRED"),
    (single(order=LIMIT_BUY | {"type": "STOP"}), 422, "INVALID_REQUEST"),
    (single() | {"symbol": "NOPE"}, 422, "UNKNOWN_SYMBOL"),
    (single(expiresAt=far(-1)), 422, "GTT_INVALID_EXPIRY"),
    (single(expiresAt=far(400)), 422, "GTT_INVALID_EXPIRY"),
    (single(expiresAt="2027-01-01T00:00:00"), 422, "INVALID_REQUEST"),  # no time zone
]


def test_gtt_crud_bad_input_expiry_and_another_users_gtt(database):
    async def scenario():
        async with Api(database, rate_limit_burst=10_000) as api:
            alice, bob = api.trader("alice"), api.trader("bob")
            a: dict = {"bad": [code_of(await create(api, body)) for body, _, _ in BAD]}
            a["nobody"] = await refusal(api.trader("nobody").create_gtt(new(single())))
            made = a["made"] = await alice.create_gtt(new(single(expiresAt=far(30))))
            soon_ends = time.time() + 1.0
            soon = await alice.create_gtt(new(single(expiresAt=far(1.0 / 86400))))
            await bob.create_gtt(new(oco()))
            a["read"] = await alice.gtt(made.gtt_id)
            path = f"/api/v1/gtt/{made.gtt_id}"
            a["others"] = [
                await refusal(bob.gtt(made.gtt_id)),
                await refusal(bob.cancel_gtt(made.gtt_id)),
                code_of(await api.client.patch(path, json={"legs": []}, headers=auth("bob"))),
                code_of(await api.client.get("/api/v1/gtt/x1", headers=auth("alice"))),
            ]
            new_legs = GttChange(new(single(trigger="14000.00")).legs)
            a["changed"] = await alice.change_gtt(made.gtt_id, new_legs)
            two_legs = GttChange(new(oco()).legs)
            a["wrong"] = await refusal(alice.change_gtt(made.gtt_id, two_legs))
            a["deleted"] = await alice.cancel_gtt(made.gtt_id)
            a["finished"] = [
                await refusal(alice.cancel_gtt(made.gtt_id)),
                await refusal(alice.change_gtt(made.gtt_id, new_legs)),
            ]
            a["listed"] = await alice.gtts()
            a["active"] = await bob.gtts("ACTIVE")
            a["bad_query"] = await api.client.get("/api/v1/gtt?status=DONE", headers=auth("bob"))
            await asyncio.sleep(max(0.0, soon_ends - time.time()))
            a["expired"] = await expire_gtts(api.app.state.oms.entry)
            a["ended"] = [
                await alice.gtt(soon.gtt_id),
                await refusal(alice.cancel_gtt(soon.gtt_id)),
            ]
            a["statuses"] = alice.statuses, bob.statuses
            return api, a

    api, a = run(scenario)
    assert a["bad"] == [(status, code) for _, status, code in BAD]
    assert a["nobody"] == (403, "NO_ACCOUNT")
    assert a["statuses"] == (
        [201, 201, 200, 200, 422, 200, 409, 409, 200, 200, 409],
        [201, 404, 404, 200],
    )
    made = a["made"]
    assert made.status == "ACTIVE" and made.kind == "SINGLE"
    assert msgspec.to_builtins(made.legs) == [
        {"condition": ">=", "triggerPrice": "15000.00", "order": LIMIT_BUY, "status": "ACTIVE"}
    ]
    assert a["read"] == made
    assert a["others"] == [
        (404, "GTT_NOT_FOUND"),
        (404, "GTT_NOT_FOUND"),
        (422, "INVALID_REQUEST"),  # the body is checked first: an empty list of legs
        (404, "GTT_NOT_FOUND"),
    ]
    assert a["changed"].legs[0].trigger_price == "14000.00"
    assert a["wrong"][1] == "GTT_INVALID_LEGS"
    assert a["deleted"].status == "CANCELLED"
    assert a["finished"] == [(409, "GTT_NOT_ACTIVE"), (409, "GTT_NOT_ACTIVE")]
    assert [g.gtt_id for g in a["listed"].gtts][1:] == [made.gtt_id]
    assert [g.kind for g in a["active"].gtts] == ["OCO"]
    assert a["bad_query"].json()["error"]["code"] == "INVALID_REQUEST"
    assert a["expired"] == 1
    assert a["ended"][0].status == "EXPIRED"
    assert a["ended"][0].legs[0].status == "EXPIRED"
    assert a["ended"][1][1] == "GTT_NOT_ACTIVE"
    assert notices(api) == {a["ended"][0].gtt_id: ("alice", "GTT_EXPIRED", None)}, (
        "the expiry told, the user's own cancel not"
    )
    assert api.rows("SELECT count(*) FROM gtts") == [(3,)], "nothing stored for a refusal"
    assert api.rows("SELECT count(*) FROM orders") == [(0,)], "no order, no hold while waiting"
    assert api.rows("SELECT sum(blocked_cash), sum(blocked_quantity) FROM accounts, positions") == [
        (0, 0)
    ]


def notices(api: Api) -> dict[int, tuple[str, str, int | None]]:
    """The GTT notifications in the inbox: gtt id -> (user, kind, order id)."""
    told = {}
    for gtt, user, text in api.rows(
        "SELECT substr(notification_id, 5)::bigint, user_id, notification::text "
        "FROM notification_inbox WHERE starts_with(notification_id, 'gtt:')"
    ):
        notification = msgspec.json.decode(text, type=Notification)  # as the inbox reads it
        assert notification.id == f"gtt:{gtt}" and notification.symbol == "RELIANCE"
        told[gtt] = (user, notification.kind, notification.order_id)
    return told


def test_an_idempotency_key_makes_one_gtt_under_concurrent_retries(database):
    keyed = new(single(idempotencyKey="gtt-1"))

    async def scenario():
        async with Api(database, rate_limit_burst=10_000) as api:
            alice, bob = api.trader("alice"), api.trader("bob")
            a: dict = {"first": await alice.create_gtt(keyed)}
            a["again"] = await alice.create_gtt(keyed)
            other = new(single(trigger="15100.00", idempotencyKey="gtt-1"))
            a["other"] = await refusal(alice.create_gtt(other))
            a["bobs"] = await bob.create_gtt(keyed)  # a key is the user's own
            ten = new(oco() | {"idempotencyKey": "gtt-2"})
            a["ten"] = await asyncio.gather(*(alice.create_gtt(ten) for _ in range(10)))
            return api, a, alice.statuses, bob.statuses

    api, a, alices, bobs = run(scenario)
    assert alices == [201, 201, 422] + [201] * 10 and bobs == [201]
    assert a["again"] == a["first"], "a retry gets the GTT the key made"
    assert a["other"] == (422, "IDEMPOTENCY_KEY_REUSED")
    assert a["bobs"].gtt_id != a["first"].gtt_id
    assert len({g.gtt_id for g in a["ten"]}) == 1, "ten retries at once, one GTT"
    assert api.rows("SELECT count(*) FROM gtts") == [(3,)]


# --- firing, with the engine, settlement and the trigger service ---------------------


def triggers(api: Api, log) -> LoggedProcess:
    """`brokercore service triggers` on the API's database and topics, placer passes
    every 0.2 s, on the always-open calendar (the API's clock is a fixed open moment)."""
    env = dict(
        os.environ,
        BROKERCORE_DATABASE_URL=api.database,
        BROKERCORE_KAFKA_BOOTSTRAP=api.kafka.bootstrap,
        BROKERCORE_TOPIC_PREFIX=api.kafka.topic_prefix,
        BROKERCORE_SHARDS=str(api.kafka.shards),
        BROKERCORE_INSTRUMENTS=INSTRUMENTS,
        BROKERCORE_CALENDAR="always-open",
    )
    process = LoggedProcess(["service", "triggers", "--every", "0.2"], log, env)
    process.wait_for("from offsets")
    return process


async def trade(api: Api, price: str, quantity: int = 1) -> None:
    """One trade at ``price``: bob sells to carol (bob's sell rests first)."""
    bob, carol = api.trader("bob"), api.trader("carol")
    await bob.place(order(side="SELL", quantity=quantity, price=price))
    await carol.place(order(quantity=quantity, price=price, time_in_force="IOC"))
    assert bob.statuses[-1] == carol.statuses[-1] == 202


def outcome(api: Api):
    """Each GTT: (status, fired leg, how many orders its key placed, its order's id)."""
    return api.rows(
        "SELECT g.status, g.fired_leg, count(k.order_id), g.order_id FROM gtts g "
        "JOIN accounts a USING (account_id) LEFT JOIN idempotency_keys k "
        "ON k.user_id = a.user_id AND k.key = g.fire_key GROUP BY g.gtt_id ORDER BY g.gtt_id"
    )


def test_single_fires_and_fills_an_oco_fires_one_leg_a_delete_races_the_firing(database, tmp_path):
    with platform(database, tmp_path, rate_limit_burst=10_000) as api:
        service = triggers(api, tmp_path / "triggers.log")
        try:

            async def arm():
                async with api:
                    bob = api.trader("bob")
                    # alice buys 10 at 15000 when >= 15000
                    one = await api.trader("alice").create_gtt(new(single()))
                    pair = await bob.create_gtt(new(oco()))
                    broke = await bob.create_gtt(new(single()))  # bob has no cash
                    await bob.place(order(side="SELL", quantity=15, time_in_force="GTC"))
                    await api.trader("carol").place(order(quantity=5, time_in_force="IOC"))
                    return [g.gtt_id for g in (one, pair, broke)]

            one, pair, broke = run(arm)
            api.wait_rows(
                "SELECT status, failure_code, order_id FROM gtts WHERE gtt_id = %s",
                [("FAILED", "INSUFFICIENT_FUNDS", None)],
                broke,
            )
            api.wait_rows("SELECT status FROM gtts WHERE gtt_id = %s", [("TRIGGERED",)], one)
            api.wait_rows(
                "SELECT o.status, o.filled_quantity FROM gtts g JOIN orders o USING (order_id) "
                "WHERE g.gtt_id = %s",
                [("FILLED", 10)],
                one,
            )
            assert api.rows("SELECT status FROM gtts WHERE gtt_id = %s", pair) == [("ACTIVE",)]
            placed = api.rows("SELECT order_id FROM gtts WHERE gtt_id = %s", one)[0][0]
            assert notices(api) == {
                one: ("alice", "GTT_TRIGGERED", placed),
                broke: ("bob", "GTT_FAILED", None),
            }

            async def target():
                async with api:
                    await trade(api, "15100.00")

            run(target)
            api.wait_rows(
                "SELECT status, fired_leg, order_id IS NOT NULL FROM gtts WHERE gtt_id = %s",
                [("TRIGGERED", 2, True)],
                pair,
            )

            async def view():
                async with api:
                    return await api.trader("bob").gtt(pair)

            fired = run(view)
            assert [leg.status for leg in fired.legs] == ["CANCELLED", "TRIGGERED"]
            assert fired.triggered_price == "15100.00"
            api.wait_rows(
                "SELECT side, price, quantity, status FROM orders WHERE order_id = %s",
                [("SELL", 15100 * 100, 10, "OPEN")],
                fired.order_id,
            )

            # the race: alice deletes 20 GTTs, one every 25 ms, while a trade fires them
            async def race():
                async with api:
                    alice = api.trader("alice")
                    buy_one = new(single(trigger="14950.00", order=LIMIT_BUY | {"quantity": 1}))
                    ids = [(await alice.create_gtt(buy_one)).gtt_id for _ in range(20)]

                    async def delete(n: int, gtt: int) -> int:
                        """The DELETE's status: 200, or 409 once the GTT fired."""
                        await asyncio.sleep(n * 0.025)
                        try:
                            await alice.cancel_gtt(gtt)
                        except ApiError as refused:
                            assert refused.code == "GTT_NOT_ACTIVE", refused
                            return refused.status
                        return 200

                    deletes = asyncio.gather(*(delete(n, i) for n, i in enumerate(ids)))
                    await trade(api, "14950.00")
                    return ids, await deletes

            ids, ends = run(race)
            api.wait_rows(
                "SELECT count(*) FROM gtts WHERE gtt_id = ANY(%s) AND status = 'ACTIVE' "
                "OR status = 'TRIGGERED' AND order_id IS NULL",
                [(0,)],
                ids,
            )
            ends = dict(zip(ids, ends, strict=True))
            rows = api.rows(
                "SELECT g.gtt_id, g.status, count(k.order_id) FROM gtts g LEFT JOIN "
                "idempotency_keys k ON k.user_id = 'alice' AND k.key = g.fire_key "
                "WHERE g.gtt_id = ANY(%s) GROUP BY g.gtt_id",
                ids,
            )
            told = notices(api)
            for gtt, status, orders in rows:
                assert (status, orders, ends[gtt]) in {("CANCELLED", 0, 200), ("TRIGGERED", 1, 409)}
                assert (gtt in told) == (status == "TRIGGERED"), "a fired GTT told, a deleted not"
        finally:
            service.close()
        assert outcome(api)[:2] == [
            ("TRIGGERED", 1, 1, api.rows("SELECT order_id FROM gtts WHERE gtt_id = %s", one)[0][0]),
            ("TRIGGERED", 2, 1, fired.order_id),
        ]


ALICES_ORDERS = (
    "SELECT count(*) FROM orders o JOIN accounts a USING (account_id) WHERE a.user_id = 'alice'"
)


def test_both_oco_legs_met_in_one_batch_fire_one_and_kill_9_places_each_order_once(
    database, tmp_path
):
    gtts = 60
    with platform(database, tmp_path, rate_limit_burst=10_000) as api:

        async def arm():
            async with api:
                pair = await api.trader("bob").create_gtt(new(oco(quantity=1)))
                buy_one = new(single(order=LIMIT_BUY | {"quantity": 1}))
                alice = api.trader("alice")
                for _ in range(gtts):
                    await alice.create_gtt(buy_one)
                assert alice.statuses == [201] * gtts
                await trade(api, "14900.00")  # meets the OCO's '<=' leg ...
                await trade(api, "15100.00")  # ... then its '>=' one, and the 60
                return pair.gtt_id

        pair = run(arm)
        # the trades wait in Kafka: the trigger service reads them together when it starts
        service = triggers(api, tmp_path / "triggers.log")
        try:
            deadline = time.monotonic() + 60
            while not api.rows(ALICES_ORDERS)[0][0]:
                assert time.monotonic() < deadline, service.text()[-3000:]
                time.sleep(0.005)
            service.kill()  # in the middle of placing the orders (or just after)
            service.close()
            service = triggers(api, tmp_path / "triggers-2.log")
            api.wait_rows(
                "SELECT count(*) FROM gtts WHERE status <> 'TRIGGERED' OR order_id IS NULL",
                [(0,)],
            )
        finally:
            service.close()
        assert api.rows(
            "SELECT status, fired_leg, fired_price FROM gtts WHERE gtt_id = %s", pair
        ) == [("TRIGGERED", 1, 14900 * 100)], "the leg met first fires, the other never"
        ends = outcome(api)
        assert len(ends) == gtts + 1
        assert {(status, orders) for status, _, orders, _ in ends} == {("TRIGGERED", 1)}
        alices = api.rows(
            "SELECT o.order_id FROM orders o JOIN accounts a USING (account_id) "
            "WHERE a.user_id = 'alice' ORDER BY 1"
        )
        assert [o for (o,) in alices] == sorted(o for *_, o in ends[1:]), "no order doubled"
        placed = api.rows(
            "SELECT g.gtt_id, a.user_id, g.order_id FROM gtts g JOIN accounts a USING (account_id)"
        )
        assert notices(api) == {g: (user, "GTT_TRIGGERED", o) for g, user, o in placed}, (
            "each GTT told once, with its order, across the kill -9"
        )
