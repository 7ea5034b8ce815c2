"""Money in and out over REST, and the payment provider's payouts (docs/funds.md).

    brokercore service funds --port 8005        (settings: BROKERCORE_* variables)

    GET  /api/v1/funds                               {cash, blocked, unsettled, withdrawable}
    POST /api/v1/funds/deposits     {"amount": "50000.00"}  + Idempotency-Key
    POST /api/v1/funds/withdrawals  {"amount": "50000.00"}  + Idempotency-Key
    GET  /api/v1/funds/withdrawals                   the user's, newest first
    POST /api/v1/funds/webhooks/payments             the provider's signed callback
    GET  /api/v1/operator/withdrawals?status=PENDING operators only: every user's
    POST /api/v1/operator/withdrawals/{id}/complete  operators only, audited
    POST /api/v1/operator/withdrawals/{id}/fail      {"reason": "..."}, likewise

The rules are brokercore.broker.withdrawals', run on a blocking connection in a worker
thread (deposits and completed withdrawals go through brokercore.broker.funding.fund,
which is blocking); reads use the async pool. A withdrawal's payout is sent to the
provider (BROKERCORE_PAYMENT_PROVIDER_URL) after its transaction commits, and again on a
doubling schedule until the provider takes it; the provider's callback, signed with
BROKERCORE_PAYMENT_WEBHOOK_SECRET (brokercore.edge.signature), or an operator ends it.
A provider that is away leaves it PENDING, never lost.

Amounts are rupee strings with two decimals to clients, as everywhere in the API
(brokercore.broker.money), and int paise inside and to the provider (as providers speak).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Annotated, Any, Concatenate, Literal, ParamSpec, TypeVar

import httpx
import msgspec
import psycopg
from psycopg_pool import ConnectionPool
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response

from brokercore.broker import withdrawals
from brokercore.broker.answers import (
    DepositBody,
    FundsBody,
    OperatorWithdrawalBody,
    OperatorWithdrawals,
    WithdrawalBody,
    Withdrawals,
)
from brokercore.broker.money import rupees, to_paise
from brokercore.broker.withdrawals import MAX_AMOUNT, FundsRefused, Refusal, Withdrawal
from brokercore.config import ServiceSettings
from brokercore.edge.signature import SIGNATURE_HEADER, verify
from brokercore.entry.requests import FieldError
from brokercore.identity.audit import record_blocking
from brokercore.read.cache import UserCache
from brokercore.services.http import (
    ApiError,
    LimitedApi,
    check_text,
    decode_body,
    decode_query,
    guarded,
    json_response,
    path_id,
    read_body,
    require_operator,
    service_app,
)
from brokercore.services.openapi import documented, refusal_codes

log = logging.getLogger("brokercore.funds")

P = ParamSpec("P")
T = TypeVar("T")

MAX_KEY = 128
"""Characters an Idempotency-Key may have (as the OMS's idempotencyKey)."""

LISTED = 100
"""Withdrawals ``GET /api/v1/funds/withdrawals`` lists at most (the newest)."""


# --- bodies ----------------------------------------------------------------------------


class AmountRequest(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    amount: str  # rupees, such as "50000.00": see amount_of


RUPEE_AMOUNT = re.compile(r"[0-9]{1,10}(\.[0-9]{1,2})?")
"""A request's amount: ASCII digits and at most two decimals, so no sign, exponent,
NaN, space or digit separator (which ``Decimal`` would take), nor a fraction of a paisa."""


def amount_of(body: bytes, what: str) -> int:
    """The paise of a deposit's or withdrawal's body: 422 unless its amount is a string of
    rupees (``RUPEE_AMOUNT``) more than zero and at most ``MAX_AMOUNT``."""
    text = decode_body(AmountRequest, body, what).amount
    if not RUPEE_AMOUNT.fullmatch(text):
        wrong = 'a string of rupees with at most two decimals, such as "50000.00"'
    else:
        paise = to_paise(Decimal(text))
        if 0 < paise <= MAX_AMOUNT:
            return paise
        wrong = f"more than 0.00 and at most {rupees(MAX_AMOUNT)}"
    raise ApiError(422, "INVALID_REQUEST", f"the {what} is invalid", [FieldError("amount", wrong)])


class FailRequest(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    reason: Annotated[str, msgspec.Meta(min_length=1, max_length=500)]


class PaymentCallback(msgspec.Struct, rename="camel", frozen=True):
    """The provider's word on a payout (fields it adds besides these are ignored)."""

    withdrawal_id: int
    status: Literal["COMPLETED", "FAILED"]
    payout_id: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    reason: Annotated[str, msgspec.Meta(min_length=1, max_length=500)] | None = None


class CallbackAnswer(msgspec.Struct, rename="camel", frozen=True):
    """The answer to the provider's callback: the withdrawal's status after it."""

    withdrawal_id: int
    status: str


class OperatorQuery(msgspec.Struct, frozen=True):
    """GET /api/v1/operator/withdrawals' query (read by ``operator_list``)."""

    status: Literal["PENDING", "COMPLETED", "FAILED"] = "PENDING"


def withdrawal_body(w: Withdrawal) -> WithdrawalBody:
    return WithdrawalBody(
        w.withdrawal_id,
        rupees(w.amount),
        w.status,
        w.requested_at.isoformat(),
        None if w.finished_at is None else w.finished_at.isoformat(),
        w.failure_reason,
        w.provider_reference,
    )


# --- the provider -----------------------------------------------------------------------


class PayoutClient:
    """Sends payouts to the provider. Each is sent with its withdrawal's id as the
    Idempotency-Key, so a payout sent again (its answer lost) is paid once."""

    def __init__(self, url: str, timeout: float = 10.0):
        self.url = url
        self.client = httpx.AsyncClient(timeout=timeout)

    async def send(self, w: Withdrawal) -> tuple[str, str]:
        """("TAKEN", the provider's payout id), ("REFUSED", why: it never will be
        paid), or ("AWAY", why: try again later)."""
        try:
            response = await self.client.post(
                self.url,
                json={
                    "withdrawalId": w.withdrawal_id,
                    "accountId": w.account_id,
                    "amount": w.amount,  # paise, as providers (Razorpay...) take it
                },
                headers={"Idempotency-Key": f"withdrawal-{w.withdrawal_id}"},
            )
        except httpx.HTTPError as e:
            return "AWAY", f"{type(e).__name__}: {e}"
        said = f"HTTP {response.status_code}: {response.text[:200]}"
        if response.is_success:
            try:
                payout_id = response.json()["payoutId"]
            except (ValueError, KeyError, TypeError):
                return "AWAY", f"{said} (no payoutId)"
            return "TAKEN", str(payout_id)
        if 400 <= response.status_code < 500 and response.status_code not in (408, 425, 429):
            return "REFUSED", f"the payment provider refused the payout: {said}"
        return "AWAY", said

    async def aclose(self) -> None:
        await self.client.aclose()


# --- the service ------------------------------------------------------------------------


class FundsService(LimitedApi):
    """The pieces one funds process holds: the API's (reads on its async pool), a
    blocking pool for the library's writes, the payout client and its retry sweep."""

    def __init__(self, settings: ServiceSettings):
        super().__init__(
            settings,
            "funds-ratelimit:",
            settings.rate_limit_burst,
            settings.rate_limit_per_second,
            max_connections=4,
            max_redis=16,
        )
        self.writes = ConnectionPool(
            settings.database_url,
            min_size=1,
            max_size=8,
            open=False,
            timeout=settings.db_pool_timeout,
            kwargs={"autocommit": True},
            check=ConnectionPool.check_connection,
        )
        self.cache = UserCache(self.redis, settings.redis_prefix, settings.cache_ttl)
        url = settings.payment_provider_url
        self.provider = PayoutClient(url) if url else None
        self._tasks: set[asyncio.Task[None]] = set()

    async def open(self) -> None:
        await super().open()
        await asyncio.to_thread(self.writes.open, True)
        if self.provider is None:
            log.warning("no BROKERCORE_PAYMENT_PROVIDER_URL: withdrawals wait for an operator")
        else:
            self.spawn(self.sweep())
        if not self.settings.payment_webhook_secret:
            log.warning("no BROKERCORE_PAYMENT_WEBHOOK_SECRET: every payment callback is refused")

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.provider is not None:
            await self.provider.aclose()
        await asyncio.to_thread(self.writes.close)
        await super().close()

    def spawn(self, job: Any) -> None:
        """Run ``job`` (a coroutine) in the background until it ends or the service does."""
        task = asyncio.create_task(job)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def write(
        self,
        action: Callable[Concatenate[psycopg.Connection[Any], P], T],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        """``action(conn, ...)`` on a connection of the blocking pool, in a worker thread;
        a refusal as an API error."""

        def run() -> T:
            with self.writes.connection() as conn:
                return action(conn, *args, **kwargs)

        try:
            return await asyncio.to_thread(run)
        except FundsRefused as e:
            raise ApiError(_STATUS[e.reason], e.reason.value, e.message) from None

    async def send_due(self, only: int | None = None) -> None:
        """Send the payouts that are due (``only`` that withdrawal's): each the provider
        takes is not due again, each it refuses fails (its cash free again), the others
        stay due on their retry schedule. Errors are logged (one line for the payouts
        the provider did not answer), never raised: what was not sent stays due."""
        assert self.provider is not None  # called only with a provider
        settings = self.settings
        away: list[str] = []
        try:
            due = await self.write(
                withdrawals.due_payouts, settings.payout_retry_base, settings.payout_retry_cap, only
            )
            for w in due:
                outcome, detail = await self.provider.send(w)
                try:
                    if outcome == "TAKEN":
                        await self.write(withdrawals.payout_taken, w.withdrawal_id, detail)
                    elif outcome == "REFUSED":
                        await self.write(withdrawals.fail, w.withdrawal_id, detail)
                    else:
                        away.append(f"{w.withdrawal_id} ({detail})")
                except ApiError as e:  # the provider's callback ended it meanwhile
                    log.info("withdrawal %d: %s", w.withdrawal_id, e.message)
        except Exception:
            log.exception("sending the due payouts failed")
        if away:
            log.warning(
                "%d payouts not taken by the provider, sent again later: %s",
                len(away),
                ", ".join(away[:3]),
            )

    async def sweep(self) -> None:
        """The payouts' retry job: what is due is sent, every retry_base seconds."""
        while True:
            await asyncio.sleep(self.settings.payout_retry_base)
            await self.send_due()


_STATUS = {
    Refusal.NO_ACCOUNT: 403,
    Refusal.ACCOUNT_NOT_VERIFIED: 403,
    Refusal.INSUFFICIENT_FUNDS: 422,
    Refusal.IDEMPOTENCY_KEY_REUSED: 422,
    Refusal.WITHDRAWAL_NOT_FOUND: 404,
    Refusal.WITHDRAWAL_NOT_PENDING: 409,
}


def _funds(request: Request) -> FundsService:
    funds: FundsService = request.app.state.funds
    return funds


def idempotency_key(request: Request) -> str:
    """The request's Idempotency-Key header: required, 1 to MAX_KEY characters."""
    key = request.headers.get("idempotency-key")
    if not key:
        raise ApiError(400, "IDEMPOTENCY_KEY_REQUIRED", "an Idempotency-Key header is required")
    check_text(key, "Idempotency-Key")
    if len(key) > MAX_KEY:
        raise ApiError(
            422,
            "INVALID_REQUEST",
            f"the Idempotency-Key may have at most {MAX_KEY} characters",
        )
    return key


def _withdrawal_id(request: Request) -> int:
    return path_id(request, "withdrawal_id", "WITHDRAWAL_NOT_FOUND", "withdrawal")


# --- the customer's endpoints -----------------------------------------------------------


@guarded
async def get_funds(request: Request) -> Response:
    funds = _funds(request)
    principal = await funds.authorize(request)
    async with funds.pool.connection() as conn:
        row = await (await conn.execute(withdrawals.FUNDS_SQL, (principal.user_id,))).fetchone()
    if row is None:
        raise ApiError(403, Refusal.NO_ACCOUNT.value, "there is no account for this user")
    state = withdrawals.funds_of(row)
    return json_response(
        FundsBody(
            rupees(state.cash),
            rupees(state.blocked),
            rupees(state.unsettled),
            rupees(state.withdrawable),
        )
    )


@guarded
async def post_deposit(request: Request) -> Response:
    funds = _funds(request)
    principal = await funds.authorize(request)
    key = idempotency_key(request)
    amount = amount_of(await funds.body(request), "deposit")
    done = await funds.write(withdrawals.deposit, principal.user_id, key, amount)
    await funds.cache.invalidate([principal.user_id])
    return json_response(
        DepositBody(done.deposit_id, rupees(done.amount), "COMPLETED", done.at.isoformat()), 201
    )


@guarded
async def post_withdrawal(request: Request) -> Response:
    funds = _funds(request)
    principal = await funds.authorize(request)
    key = idempotency_key(request)
    amount = amount_of(await funds.body(request), "withdrawal")
    taken = await funds.write(withdrawals.request, principal.user_id, key, amount)
    await funds.cache.invalidate([principal.user_id])
    if funds.provider is not None and taken.status == "PENDING":
        funds.spawn(funds.send_due(taken.withdrawal_id))  # a repeat's is due, or it is not
    return json_response(withdrawal_body(taken), 202)


@guarded
async def list_withdrawals(request: Request) -> Response:
    funds = _funds(request)
    principal = await funds.authorize(request)
    async with funds.pool.connection() as conn:
        rows = await (
            await conn.execute(withdrawals.LIST_SQL, (principal.user_id, LISTED))
        ).fetchall()
    return json_response(Withdrawals([withdrawal_body(Withdrawal(*row)) for row in rows]))


# --- the provider's callback ------------------------------------------------------------


@guarded
async def payment_callback(request: Request) -> Response:
    funds = _funds(request)
    body = await read_body(request, funds.settings.max_body_bytes)
    secret = funds.settings.payment_webhook_secret
    if not secret or not verify(
        secret, request.headers.get(SIGNATURE_HEADER, ""), body, time.time()
    ):
        raise ApiError(
            401, "INVALID_SIGNATURE", "the callback's signature is missing, wrong or too old"
        )
    callback = decode_body(PaymentCallback, body, "callback")
    if callback.status == "COMPLETED":
        _, after = await funds.write(
            withdrawals.complete, callback.withdrawal_id, callback.payout_id
        )
    else:
        reason = callback.reason or "the payment provider failed the payout"
        _, after = await funds.write(
            withdrawals.fail, callback.withdrawal_id, reason, callback.payout_id
        )
    return json_response(CallbackAnswer(after.withdrawal_id, after.status))


# --- operators --------------------------------------------------------------------------


def _decided(
    conn: psycopg.Connection[Any],
    actor: str,
    withdrawal_id: int,
    reason: str | None,
) -> Withdrawal:
    """Complete (no ``reason``) or fail a withdrawal for an operator, with its audit row
    in the same transaction; a repeat of what is done already changes nothing."""
    with conn.transaction():
        if reason is None:
            before, after = withdrawals.complete(conn, withdrawal_id)
        else:
            before, after = withdrawals.fail(conn, withdrawal_id, reason)
        if after != before:
            record_blocking(
                conn,
                actor,
                f"withdrawal.{after.status.lower()}",
                f"withdrawal:{withdrawal_id}",
                before.facts(),
                after.facts(),
            )
    return after


@guarded
async def operator_list(request: Request) -> Response:
    funds = _funds(request)
    principal = await funds.authorize(request)
    require_operator(principal)
    status = decode_query(request, OperatorQuery).status
    async with funds.pool.connection() as conn:
        rows = await (
            await conn.execute(withdrawals.OPERATOR_LIST_SQL, (status, LISTED))
        ).fetchall()
    return json_response(
        OperatorWithdrawals(
            [
                OperatorWithdrawalBody(
                    **msgspec.structs.asdict(withdrawal_body(Withdrawal(*row[:-1]))),
                    user_id=row[-1],
                )
                for row in rows
            ]
        )
    )


@guarded
async def operator_complete(request: Request) -> Response:
    funds = _funds(request)
    principal = await funds.authorize(request)
    require_operator(principal)
    after = await funds.write(_decided, principal.user_id, _withdrawal_id(request), None)
    return json_response(withdrawal_body(after))


@guarded
async def operator_fail(request: Request) -> Response:
    funds = _funds(request)
    principal = await funds.authorize(request)
    require_operator(principal)
    withdrawal_id = _withdrawal_id(request)
    reason = decode_body(FailRequest, await funds.body(request), "decision").reason
    after = await funds.write(_decided, principal.user_id, withdrawal_id, reason)
    return json_response(withdrawal_body(after))


_KEYED = {400: "IDEMPOTENCY_KEY_REQUIRED"}
_OPERATOR_DECISION = {403: "FORBIDDEN"} | refusal_codes(
    _STATUS, Refusal.WITHDRAWAL_NOT_FOUND, Refusal.WITHDRAWAL_NOT_PENDING
)


def create_app(settings: ServiceSettings | None = None) -> Starlette:
    settings = settings or ServiceSettings.from_env()
    return service_app(
        "funds",
        lambda: FundsService(settings),
        [
            documented(
                "GET",
                "/api/v1/funds",
                get_funds,
                "Cash, blocked, unsettled and withdrawable",
                tag="funds",
                response=FundsBody,
                errors=refusal_codes(_STATUS, Refusal.NO_ACCOUNT, Refusal.IDEMPOTENCY_KEY_REUSED),
            ),
            documented(
                "POST",
                "/api/v1/funds/deposits",
                post_deposit,
                "Deposit money (the demo's provider: at once)",
                tag="funds",
                body=AmountRequest,
                response=DepositBody,
                status=201,
                idempotency_key=True,
                errors=_KEYED
                | refusal_codes(_STATUS, Refusal.NO_ACCOUNT, Refusal.IDEMPOTENCY_KEY_REUSED),
            ),
            documented(
                "POST",
                "/api/v1/funds/withdrawals",
                post_withdrawal,
                "Request a withdrawal (PENDING until the provider pays it out)",
                tag="funds",
                body=AmountRequest,
                response=WithdrawalBody,
                status=202,
                idempotency_key=True,
                errors=_KEYED
                | refusal_codes(
                    _STATUS,
                    Refusal.NO_ACCOUNT,
                    Refusal.ACCOUNT_NOT_VERIFIED,
                    Refusal.INSUFFICIENT_FUNDS,
                    Refusal.IDEMPOTENCY_KEY_REUSED,
                ),
            ),
            documented(
                "GET",
                "/api/v1/funds/withdrawals",
                list_withdrawals,
                "The caller's withdrawals, newest first",
                tag="funds",
                response=Withdrawals,
            ),
            documented(
                "POST",
                "/api/v1/funds/webhooks/payments",
                payment_callback,
                "The payment provider's word on a payout (signed, no bearer token)",
                tag="funds",
                body=PaymentCallback,
                response=CallbackAnswer,
                public=True,
                headers={SIGNATURE_HEADER: "the provider's signature of the body"},
                errors={401: "INVALID_SIGNATURE"}
                | refusal_codes(_STATUS, Refusal.WITHDRAWAL_NOT_FOUND),
            ),
            documented(
                "GET",
                "/api/v1/operator/withdrawals",
                operator_list,
                "(operator) withdrawals of one status",
                tag="operator",
                query=OperatorQuery,
                response=OperatorWithdrawals,
                errors={403: "FORBIDDEN"},
            ),
            documented(
                "POST",
                "/api/v1/operator/withdrawals/{withdrawal_id}/complete",
                operator_complete,
                "(operator) a withdrawal paid out",
                tag="operator",
                response=WithdrawalBody,
                errors=_OPERATOR_DECISION,
            ),
            documented(
                "POST",
                "/api/v1/operator/withdrawals/{withdrawal_id}/fail",
                operator_fail,
                "(operator) a withdrawal failed: its money back to cash",
                tag="operator",
                body=FailRequest,
                response=WithdrawalBody,
                errors=_OPERATOR_DECISION,
            ),
        ],
    )
