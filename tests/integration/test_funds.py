"""Money in and out (services/funds, brokercore.broker.withdrawals) on the real Postgres
and Redis: the funds service as a process, a real local HTTP server as the payment
provider (tests/payment_provider.py), the OMS in this process for the race with orders.

One funds process and one database serve the whole module (each test has accounts of
its own), so a test costs requests, not a start-up."""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import msgspec
import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from brokercore.broker import withdrawals
from brokercore.broker.answers import DepositBody, FundsBody, WithdrawalBody
from brokercore.broker.funding import open_account
from brokercore.broker.money import rupees
from brokercore.client import ApiError
from brokercore.consumers.reconcile import check_invariants
from brokercore.db.migrations import apply_migrations, drop_database
from brokercore.edge.auth import mint_token
from brokercore.entry.requests import OrderAccepted
from http_support import assert_error
from oms_support import JWT, OPEN_MARKET, Api, Trader, order, outcome, refusal
from payment_provider import PaymentProvider
from processes import LoggedProcess
from waiting import wait_until

SECRET = "webhook-secret-of-the-tests"
RUPEES = 100  # paise: the database's unit (the API's is a rupee string, ``rupees``)


class FundsService(LoggedProcess):
    """`brokercore service funds` on a free port, paying out through ``provider``."""

    def __init__(self, database: str, provider: PaymentProvider, log, prefix: str):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        env = os.environ | {
            "BROKERCORE_DATABASE_URL": database,
            "BROKERCORE_DEV_MODE": "1",
            "BROKERCORE_REDIS_PREFIX": prefix,
            "BROKERCORE_RATE_LIMIT_BURST": "200",
            "BROKERCORE_PAYMENT_PROVIDER_URL": provider.url,
            "BROKERCORE_PAYMENT_WEBHOOK_SECRET": SECRET,
            "BROKERCORE_PAYOUT_RETRY_BASE": "0.2",
            "BROKERCORE_PAYOUT_RETRY_CAP": "0.4",
        }
        args = ["service", "funds", "--port", str(self.port), "--log-level", "info"]
        super().__init__(args, log, env)
        self.url = f"http://127.0.0.1:{self.port}"
        self.wait_for("Uvicorn running on")


class Env:
    """The module's database, provider and funds service, and what a test asks of them."""

    def __init__(self, database: str, provider: PaymentProvider, service: FundsService):
        self.database, self.provider, self.service = database, provider, service

    def account(self, cash: int = 0, **options) -> str:
        """A new user with an account of ``cash`` paise; its user id."""
        user = f"u{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.database, autocommit=True) as conn:
            open_account(conn, user, cash=cash, **options)
        return user

    def rows(self, query: str, *args) -> list[tuple]:
        with psycopg.connect(self.database) as conn:
            return conn.execute(query, args).fetchall()

    def money(self, user: str) -> tuple[int, int]:
        """The account's (cash, blocked cash)."""
        [row] = self.rows("SELECT cash, blocked_cash FROM accounts WHERE user_id = %s", user)
        return row

    def status(self, withdrawal_id: int) -> str:
        [(status,)] = self.rows(
            "SELECT status FROM withdrawals WHERE withdrawal_id = %s", withdrawal_id
        )
        return status

    def wait_status(self, withdrawal_id: int, status: str) -> None:
        wait_until(lambda: self.status(withdrawal_id) == status, f"withdrawal {status}")

    def findings(self, *users: str) -> list[str]:
        """What the reconciler's invariant checks find on these users' accounts."""
        with psycopg.connect(self.database, autocommit=True) as conn:
            accounts = {
                a
                for (a,) in conn.execute(
                    "SELECT account_id FROM accounts WHERE user_id = ANY(%s)", (list(users),)
                )
            }
            found = check_invariants(conn, {}, OPEN_MARKET)
        return [str(f) for f in found if f.account_id in accounts]

    def client(self) -> httpx.Client:
        """A raw HTTP client of the service, for what brokercore.client does not send."""
        return httpx.Client(base_url=self.service.url, timeout=30)

    def act(self, user: str, call, *roles: str):
        """What ``call(trader)`` gives, ``trader`` a brokercore.client of the service
        logged in as ``user`` with ``roles``."""

        async def main():
            async with Trader(user, base_url=self.service.url, roles=roles) as trader:
                return await call(trader)

        return asyncio.run(main())

    def funds(self, user: str) -> FundsBody:
        return self.act(user, lambda trader: trader.funds())

    def withdrawals(self, user: str) -> list[WithdrawalBody]:
        return self.act(user, lambda trader: trader.withdrawals()).withdrawals


def auth(user: str, *roles: str, key: str | None = None) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {mint_token(user, JWT, roles=roles)}"}
    return headers | ({"Idempotency-Key": key} if key is not None else {})


@pytest.fixture(scope="module")
def env(postgres: str, tmp_path_factory) -> Iterator[Env]:
    name = f"test_{uuid.uuid4().hex}"
    with psycopg.connect(postgres, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    database = make_conninfo(postgres, dbname=name)
    provider = PaymentProvider(SECRET)
    service = None
    try:
        apply_migrations(database)
        log = tmp_path_factory.mktemp("funds") / "funds.log"
        service = FundsService(database, provider, log, f"t{uuid.uuid4().hex[:12]}:")
        provider.webhook_url = f"{service.url}/api/v1/funds/webhooks/payments"
        yield Env(database, provider, service)
    finally:
        if service is not None:
            service.terminate()
            service.close()
        provider.close()
        drop_database(postgres, name)


@pytest.fixture
def provider(env: Env) -> Iterator[PaymentProvider]:
    """The provider, paying and signing right unless the test says otherwise."""
    env.provider.mode, env.provider.secret = "pay", SECRET
    yield env.provider
    env.provider.mode, env.provider.secret = "pay", SECRET


# --- deposits ---------------------------------------------------------------------------


def test_a_deposit_with_one_key_is_credited_once_even_when_ten_race(env):
    user = env.account()

    async def race(trader):
        answers = await asyncio.gather(
            *(trader.deposit("5000.00", "salary-2026-12") for _ in range(10))
        )
        reused = await refusal(trader.deposit("0.01", "salary-2026-12"))
        return answers, trader.statuses, reused

    answers, statuses, reused = env.act(user, race)
    assert statuses == [201] * 10 + [422]
    assert len(set(answers)) == 1, "every repeat gets the first answer"
    assert answers[0].amount == "5000.00" and answers[0].status == "COMPLETED"
    assert reused == (422, "IDEMPOTENCY_KEY_REUSED")
    assert env.money(user) == (5_000 * RUPEES, 0)
    assert env.rows(
        "SELECT count(*), sum(amount) FROM funding f JOIN accounts a USING (account_id) "
        "WHERE a.user_id = %s AND kind = 'DEPOSIT'",
        user,
    ) == [(1, 5_000 * RUPEES)]
    with env.client() as client:  # raw: the amount as it is sent, and no key at all
        same = client.post(
            "/api/v1/funds/deposits",
            json={"amount": "5000"},
            headers=auth(user, key="salary-2026-12"),
        )
        assert same.status_code == 201, "the same amount"
        assert msgspec.json.decode(same.content, type=DepositBody) == answers[0]
        assert_error(
            client.post("/api/v1/funds/deposits", json={"amount": "0.01"}, headers=auth(user)),
            400,
            "IDEMPOTENCY_KEY_REQUIRED",
        )
    assert env.funds(user) == FundsBody("5000.00", "0.00", "0.00", "5000.00")
    assert env.money(user) == (5_000 * RUPEES, 0)
    assert env.findings(user) == []


def test_amounts_are_rupee_strings_exact_to_the_paisa_up_to_100_crore(env, provider):
    provider.mode = "hold"
    user = env.account()
    sent = {"0.01": "0.01", "7": "7.00", "7.5": "7.50", "1000000000.00": "1000000000.00"}
    with env.client() as client:
        for amount, answered in sent.items():
            deposit = client.post(
                "/api/v1/funds/deposits", json={"amount": amount}, headers=auth(user, key=amount)
            )
            assert deposit.status_code == 201 and deposit.json()["amount"] == answered, deposit.text
    assert env.money(user) == (1 + 700 + 750 + 100_000_000_000, 0)
    taken = withdraw(env, user, 1451)
    assert taken.amount == "14.51"
    wait_until(lambda: provider.payouts.get(f"withdrawal-{taken.withdrawal_id}"), "the payout")
    assert env.funds(user) == FundsBody("1000000014.51", "14.51", "0.00", "1000000000.00")
    [listed] = env.withdrawals(user)
    assert listed.amount == "14.51"
    assert {a["amount"] for a in provider.attempts if a["withdrawalId"] == taken.withdrawal_id} == {
        1451
    }, "the provider is sent paise"


# --- withdrawals and the provider -------------------------------------------------------


def withdraw(env: Env, user: str, amount: int, key: str | None = None) -> WithdrawalBody:
    """Withdraw ``amount`` paise (sent as the API's rupee string); the 202's withdrawal."""

    async def call(trader: Trader) -> WithdrawalBody:
        taken = await trader.withdraw(rupees(amount), key or uuid.uuid4().hex)
        assert trader.statuses == [202]
        return taken

    return env.act(user, call)


def test_a_withdrawal_is_completed_by_the_providers_signed_callback(env, provider):
    user = env.account(cash=10_000 * RUPEES)
    taken = withdraw(env, user, 2_500 * RUPEES, key="rent")
    assert taken.status == "PENDING"
    env.wait_status(taken.withdrawal_id, "COMPLETED")
    repeat = withdraw(env, user, 2_500 * RUPEES, key="rent")
    [listed] = env.withdrawals(user)
    assert repeat.withdrawal_id == taken.withdrawal_id and repeat.status == "COMPLETED"
    assert env.money(user) == (7_500 * RUPEES, 0)
    sent = [a for a in provider.attempts if a["withdrawalId"] == taken.withdrawal_id]
    assert taken.amount == repeat.amount == "2500.00"
    assert sent and all(a["amount"] == 2_500 * RUPEES for a in sent), "the provider's in paise"
    assert listed.status == "COMPLETED" and listed.provider_reference.startswith("po_")
    assert env.rows(
        "SELECT kind, amount, reference FROM funding WHERE reference LIKE 'withdrawal:%%' "
        "AND account_id = (SELECT account_id FROM accounts WHERE user_id = %s)",
        user,
    ) == [("WITHDRAWAL", 2_500 * RUPEES, f"withdrawal:{taken.withdrawal_id}")]
    assert env.findings(user) == []


def test_a_failed_payout_releases_the_block_and_leaves_cash_as_it_was(env, provider):
    provider.mode = "fail"
    user = env.account(cash=10_000 * RUPEES)
    taken = withdraw(env, user, 4_000 * RUPEES)
    assert env.money(user) == (10_000 * RUPEES, 4_000 * RUPEES)
    env.wait_status(taken.withdrawal_id, "FAILED")
    [listed] = env.withdrawals(user)
    assert listed.failure_reason == "the bank account is closed"
    assert env.money(user) == (10_000 * RUPEES, 0)
    assert env.findings(user) == []


def test_a_provider_that_is_down_leaves_it_pending_and_the_payout_is_sent_again(env, provider):
    provider.mode = "down"
    user = env.account(cash=1_000 * RUPEES)
    withdrawal_id = withdraw(env, user, 1_000 * RUPEES).withdrawal_id

    def attempts() -> int:
        return sum(a["withdrawalId"] == withdrawal_id for a in provider.attempts)

    wait_until(lambda: attempts() >= 3, "three payout attempts")
    assert env.status(withdrawal_id) == "PENDING"
    assert env.money(user) == (1_000 * RUPEES, 1_000 * RUPEES), "still blocked"
    assert env.findings(user) == []
    provider.mode = "pay"
    env.wait_status(withdrawal_id, "COMPLETED")
    assert env.money(user) == (0, 0)
    assert env.findings(user) == []


def test_a_callback_signed_wrong_or_too_old_is_refused_and_changes_nothing(env, provider):
    provider.mode = "hold"
    user = env.account(cash=1_000 * RUPEES)
    withdrawal_id = withdraw(env, user, 600 * RUPEES).withdrawal_id
    key = f"withdrawal-{withdrawal_id}"
    reference = wait_until(lambda: provider.payouts.get(key), "the payout taken")
    provider.secret = "not-the-secret"
    assert_error(provider.callback(withdrawal_id, "COMPLETED", reference), 401, "INVALID_SIGNATURE")
    provider.secret = SECRET
    old = provider.callback(withdrawal_id, "COMPLETED", reference, at=time.time() - 600)
    assert_error(old, 401, "INVALID_SIGNATURE")
    assert env.status(withdrawal_id) == "PENDING"
    assert env.money(user) == (1_000 * RUPEES, 600 * RUPEES)
    good = provider.callback(withdrawal_id, "COMPLETED", reference)
    assert good.status_code == 200 and good.json()["status"] == "COMPLETED", good.text
    again = provider.callback(withdrawal_id, "COMPLETED", reference)
    assert again.status_code == 200, "the callback is idempotent"
    assert_error(provider.callback(withdrawal_id, "FAILED", reference), 409)
    assert_error(provider.callback(999_999_999, "COMPLETED", reference), 404)
    assert env.money(user) == (400 * RUPEES, 0)
    assert env.findings(user) == []


def test_operators_complete_and_fail_withdrawals_audited_and_others_may_not(env, provider):
    provider.mode = "hold"
    user = env.account(cash=1_000 * RUPEES)
    first = withdraw(env, user, 300 * RUPEES).withdrawal_id
    second = withdraw(env, user, 200 * RUPEES).withdrawal_id

    async def not_an_operator(trader: Trader):
        return [
            await refusal(trader.complete_withdrawal(first)),
            await refusal(trader.operator_withdrawals()),
        ]

    assert env.act(user, not_an_operator) == [(403, "FORBIDDEN"), (403, "FORBIDDEN")]
    assert env.status(first) == "PENDING"
    with env.client() as client:  # raw: a status the client cannot ask for
        assert_error(
            client.get("/api/v1/operator/withdrawals?status=PAID", headers=auth("ops", "operator")),
            422,
            "INVALID_REQUEST",
        )

    async def operate(ops: Trader):
        pending = await ops.operator_withdrawals()
        done = await ops.complete_withdrawal(first)
        failed = await ops.fail_withdrawal(second, "the name on the bank account differs")
        late = await refusal(ops.complete_withdrawal(second))
        unknown = await refusal(ops.complete_withdrawal(999_999_999))
        failed_ones = await ops.operator_withdrawals("FAILED")
        return pending, done, failed, late, unknown, failed_ones, ops.statuses

    pending, done, failed, late, unknown, failed_ones, statuses = env.act(
        "ops", operate, "operator"
    )
    assert {(w.withdrawal_id, w.user_id, w.status, w.amount) for w in pending.withdrawals} >= {
        (first, user, "PENDING", "300.00"),
        (second, user, "PENDING", "200.00"),
    }, pending
    assert (done.status, failed.status) == ("COMPLETED", "FAILED")
    assert late == (409, "WITHDRAWAL_NOT_PENDING")
    assert unknown == (404, "WITHDRAWAL_NOT_FOUND")
    assert statuses == [200, 200, 200, 409, 404, 200]
    assert second in {w.withdrawal_id for w in failed_ones.withdrawals}
    assert first not in {w.withdrawal_id for w in failed_ones.withdrawals}
    assert env.money(user) == (700 * RUPEES, 0)
    assert env.rows(
        "SELECT actor, action, before->>'status', after->>'status', after->>'failureReason' "
        "FROM audit_log WHERE target = ANY(%s) ORDER BY audit_id",
        [f"withdrawal:{first}", f"withdrawal:{second}"],
    ) == [
        ("ops", "withdrawal.completed", "PENDING", "COMPLETED", None),
        ("ops", "withdrawal.failed", "PENDING", "FAILED", "the name on the bank account differs"),
    ]
    assert env.findings(user) == []


# --- T+1 ----------------------------------------------------------------------------------


def test_sale_proceeds_are_withdrawable_from_the_day_after_the_trade(env, provider):
    provider.mode = "hold"
    user = env.account(cash=100 * RUPEES, shares={"RELIANCE": 10})
    [(account,)] = env.rows("SELECT account_id FROM accounts WHERE user_id = %s", user)
    proceeds, fee = 10 * 1_000 * RUPEES, 20 * RUPEES
    with psycopg.connect(env.database) as conn:  # a sale settled as settlement would
        conn.execute(
            "INSERT INTO fills (trade_id, side, order_id, account_id, symbol, price, quantity, "
            "executed_at) VALUES (%s, 'SELL', 0, %s, 'RELIANCE', %s, 10, now())",
            (f"T+1:{user}", account, 1_000 * RUPEES),
        )
        conn.execute(
            "INSERT INTO fee_income (trade_id, side, amount) VALUES (%s, 'SELL', %s)",
            (f"T+1:{user}", fee),
        )
        conn.execute(
            "UPDATE accounts SET cash = cash + %s WHERE account_id = %s", (proceeds - fee, account)
        )
    # 10080.00 = 100.00 + 10 × 1,000.00 - 20.00
    assert env.funds(user) == FundsBody("10080.00", "0.00", "9980.00", "100.00")
    refused = env.act(user, lambda trader: refusal(trader.withdraw("100.01", "too-soon")))
    assert refused == (422, "INSUFFICIENT_FUNDS")
    assert env.money(user) == (100 * RUPEES + proceeds - fee, 0)
    yesterday = datetime.now(UTC) - timedelta(days=1)
    with psycopg.connect(env.database) as conn:
        conn.execute(
            "UPDATE fills SET executed_at = %s WHERE trade_id = %s", (yesterday, f"T+1:{user}")
        )
    funds = env.funds(user)
    assert funds.unsettled == "0.00" and funds.withdrawable == funds.cash
    taken = withdraw(env, user, 100 * RUPEES + proceeds - fee, key="all-of-it")
    assert taken.amount == funds.cash == "10080.00"
    assert env.money(user) == (1_008_000, 1_008_000)


# --- withdrawals racing orders --------------------------------------------------------------


def test_withdrawals_racing_orders_for_the_same_cash_never_overspend_it(env, provider):
    """20 orders through the OMS and 20 withdrawals (paid out meanwhile) ask for twice the
    account's cash at once: each is taken or refused whole, and what was taken fits."""
    price = 15_000 * RUPEES  # one share of RELIANCE at 15,000.00
    cash = 20 * price
    user = env.account(cash=cash)

    async def race(funds: Trader):
        async with Api(env.database, rate_limit_burst=200) as oms:
            trader = oms.trader(user)
            orders = [
                outcome(trader.place(order(quantity=1, time_in_force="GTC"))) for _ in range(20)
            ]
            asked = [outcome(funds.withdraw("15000.00", uuid.uuid4().hex)) for _ in range(20)]
            answers = await asyncio.gather(
                *(x for pair in zip(orders, asked, strict=True) for x in pair)
            )
            return answers[0::2], answers[1::2], trader.statuses + funds.statuses

    orders, withdrawn, statuses = env.act(user, race)
    assert set(statuses) <= {202, 422}, orders + withdrawn
    refused = [a for a in orders + withdrawn if isinstance(a, ApiError)]
    assert {a.code for a in refused} <= {"INSUFFICIENT_FUNDS"}, refused
    placed = sum(isinstance(a, OrderAccepted) for a in orders)
    taken = [a.withdrawal_id for a in withdrawn if isinstance(a, WithdrawalBody)]
    assert placed + len(taken) == 20, "each taken in full while cash lasts, none beyond it"
    for withdrawal_id in taken:
        env.wait_status(withdrawal_id, "COMPLETED")
    assert env.money(user) == (cash - len(taken) * price, placed * price)
    assert env.funds(user) == FundsBody(
        rupees(placed * price), rupees(placed * price), "0.00", "0.00"
    )
    assert env.findings(user) == []


# --- bad input --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body, status, code, field",
    [
        (b'{"amount": "\\u0000"}', 400, "INVALID_CHARACTERS", None),
        (b'{"amount": "100.00\\n"}', 400, "INVALID_CHARACTERS", None),
        (b'{"amount": 10000}', 422, "INVALID_REQUEST", "amount"),  # a number, not the rupee string
        (b'{"amount": 12.5}', 422, "INVALID_REQUEST", "amount"),
        (b'{"amount": 100.0}', 422, "INVALID_REQUEST", "amount"),
        (b'{"amount": 1e400}', 422, "INVALID_REQUEST", None),  # beyond a double
        (b'{"amount": 100000000000000000000000000000}', 422, "INVALID_REQUEST", "amount"),
        (b'{"amount": true}', 422, "INVALID_REQUEST", "amount"),
        (b'{"amount": null}', 422, "INVALID_REQUEST", "amount"),
        (b'{"amount": ["100.00"]}', 422, "INVALID_REQUEST", "amount"),
        (b'{"amount": ""}', 422, "INVALID_REQUEST", "amount"),
        (b'{"amount": "10.005"}', 422, "INVALID_REQUEST", "amount"),  # a fraction of a paisa
        (b'{"amount": "10.000"}', 422, "INVALID_REQUEST", "amount"),
        (b'{"amount": "1e5"}', 422, "INVALID_REQUEST", "amount"),
        (b'{"amount": "NaN"}', 422, "INVALID_REQUEST", "amount"),
        (b'{"amount": "Infinity"}', 422, "INVALID_REQUEST", "amount"),
        (b'{"amount": "-100.00"}', 422, "INVALID_REQUEST", "amount"),
        (b'{"amount": "+100.00"}', 422, "INVALID_REQUEST", "amount"),
        (b'{"amount": " 100.00"}', 422, "INVALID_REQUEST", "amount"),
        (b'{"amount": "100.00 "}', 422, "INVALID_REQUEST", "amount"),
        (b'{"amount": "1_000.00"}', 422, "INVALID_REQUEST", "amount"),
        (b'{"amount": "1,000.00"}', 422, "INVALID_REQUEST", "amount"),
        (b'{"amount": ".50"}', 422, "INVALID_REQUEST", "amount"),
        (b'{"amount": "100."}', 422, "INVALID_REQUEST", "amount"),
        (b'{"amount": "\\u0661\\u0660\\u0660"}', 422, "INVALID_REQUEST", "amount"),  # ١٠٠
        (b'{"amount": "0.00"}', 422, "INVALID_REQUEST", "amount"),
        (b'{"amount": "1000000000.01"}', 422, "INVALID_REQUEST", "amount"),  # over 100 crore
        (b'{"amount": "' + b"9" * 40 + b'"}', 422, "INVALID_REQUEST", "amount"),
        (b'{"amount": "100.00", "to": "elsewhere"}', 422, "INVALID_REQUEST", None),
        (b"{}", 422, "INVALID_REQUEST", None),
        (b"amount=100", 400, "MALFORMED_JSON", None),
    ],
)
@pytest.mark.parametrize("what", ["deposits", "withdrawals"])
def test_a_bad_amount_is_refused_with_the_json_error_and_changes_nothing(
    env, what, body, status, code, field
):
    user = env.account(cash=1_000 * RUPEES)
    with env.client() as client:
        answer = client.post(
            f"/api/v1/funds/{what}",
            content=body,
            headers=auth(user, key="k") | {"Content-Type": "application/json"},
        )
    error = assert_error(answer, status, code)
    if field is not None:
        assert [f["field"] for f in error["fields"]] == [field], error
    assert env.money(user) == (1_000 * RUPEES, 0)
    assert env.rows(
        "SELECT (SELECT count(*) FROM withdrawals w WHERE w.account_id = a.account_id), "
        "(SELECT count(*) FROM funding f WHERE f.account_id = a.account_id) "
        "FROM accounts a WHERE user_id = %s",
        user,
    ) == [(0, 1)]


def test_an_unverified_account_or_a_bad_key_moves_no_money(env):
    pending = env.account(cash=1_000 * RUPEES, kyc_status="PENDING")
    verified = env.account(cash=1_000 * RUPEES)
    refused = env.act(
        pending,
        lambda trader: asyncio.gather(
            refusal(trader.deposit("1.00", "k")), refusal(trader.withdraw("1.00", "k"))
        ),
    )
    assert refused == [(403, "ACCOUNT_NOT_VERIFIED")] * 2
    with env.client() as client:  # raw: a key too long, and none at all
        for what in ("deposits", "withdrawals"):
            assert_error(
                client.post(
                    f"/api/v1/funds/{what}",
                    json={"amount": "1.00"},
                    headers=auth(verified, key="k" * 129),
                ),
                422,
                "INVALID_REQUEST",
            )
            assert_error(
                client.post(f"/api/v1/funds/{what}", json={"amount": "1.00"}),
                401,
                "UNAUTHENTICATED",
            )
    assert env.money(pending) == (1_000 * RUPEES, 0)
    assert env.money(verified) == (1_000 * RUPEES, 0)


def test_the_database_allows_a_withdrawal_only_pending_to_completed_or_failed(env, provider):
    provider.mode = "hold"
    user = env.account(cash=1_000 * RUPEES)
    with psycopg.connect(env.database, autocommit=True) as conn:
        pending = withdrawals.request(conn, user, "a", 100).withdrawal_id
        failed = withdrawals.request(conn, user, "b", 100).withdrawal_id
        withdrawals.fail(conn, failed, "for the test")
        refused = [
            (
                "UPDATE withdrawals SET status = 'COMPLETED', finished_at = now(), "
                "failure_reason = NULL WHERE withdrawal_id = %s",
                failed,
            ),
            ("UPDATE withdrawals SET amount = 1 WHERE withdrawal_id = %s", pending),
            ("UPDATE withdrawals SET status = 'PAID' WHERE withdrawal_id = %s", pending),
            (
                "UPDATE withdrawals SET status = 'FAILED', finished_at = now() "
                "WHERE withdrawal_id = %s",
                pending,
            ),  # a failure without its reason
            ("DELETE FROM withdrawals WHERE withdrawal_id = %s", pending),
        ]
        for statement, withdrawal_id in refused:
            with pytest.raises((psycopg.errors.CheckViolation, psycopg.errors.RestrictViolation)):
                conn.execute(statement, (withdrawal_id,))
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute(
                "INSERT INTO withdrawals (account_id, amount, idempotency_key) "
                "SELECT account_id, 0, 'c' FROM accounts WHERE user_id = %s",
                (user,),
            )
    assert [env.status(pending), env.status(failed)] == ["PENDING", "FAILED"]
    assert env.money(user) == (1_000 * RUPEES, 100)
    assert env.findings(user) == []
