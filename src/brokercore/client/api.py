"""An async client of the platform's REST API through the edge (httpx): typed bodies
in, typed answers out, every refusal raised as one ApiError.

    async with Client("http://127.0.0.1:8080") as api:
        await api.login("alice@example.com", "alice-demo-password", totp_secret=None)
        accepted = await api.place(PlaceOrderRequest(symbol="RELIANCE", side="BUY",
            type="LIMIT", quantity=10, price=Decimal("15000.00"), idempotency_key=new_key()))
        async for update in api.updates(since=0): ...

An expired access token is refreshed once (with the refresh token a login gave) and the
request sent again; a retried order is never doubled, as its idempotency key travels
with it.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import Literal, TypeVar

import httpx
import msgspec
import pyotp

from brokercore.broker.answers import (
    DepositBody,
    FundsBody,
    OperatorWithdrawals,
    WithdrawalBody,
    Withdrawals,
)
from brokercore.client.errors import ApiError, SecondFactorRequired, error_of
from brokercore.client.stream import MarketChannel, Update, stream_updates
from brokercore.entry.requests import (
    BracketList,
    BracketStatus,
    BracketView,
    CancelsRequested,
    GttChange,
    GttList,
    GttView,
    MarginAnswer,
    ModifyOrderRequest,
    NewBracket,
    NewGtt,
    OrderAccepted,
    PlaceOrderRequest,
)
from brokercore.identity.answers import Me, MfaChallenge, RecoveryCodes, Tokens, TotpEnrolment
from brokercore.read.answers import (
    Instrument,
    OrderPage,
    OrderWithFills,
    Portfolio,
    Statement,
    TradePage,
)
from brokercore.realtime.channels import BookUpdate

__all__ = ["Client", "new_key"]

T = TypeVar("T")
_encode = msgspec.json.Encoder().encode


def new_key() -> str:
    """A fresh idempotency key."""
    return uuid.uuid4().hex


class Client:
    """One user's session with the platform at ``base_url`` (the edge). ``token`` is an
    access token to start with (a development token, say); ``login`` sets one.
    ``transport`` replaces httpx's network one (an ``httpx.ASGITransport`` on the apps
    in this process, say); the WebSocket ignores it."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        timeout: float = 10.0,
        max_connections: int = 10,
        transport: httpx.AsyncBaseTransport | None = None,
    ):
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.refresh_token: str | None = None
        self._refreshing = asyncio.Lock()
        limits = httpx.Limits(max_connections=max_connections)
        self.http = httpx.AsyncClient(
            base_url=self.base_url, timeout=timeout, limits=limits, transport=transport
        )

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()

    # --- the one way a request goes -------------------------------------------------------

    async def request(
        self,
        method: str,
        path: str,
        answer: type[T],
        *,
        body: object = None,
        params: Sequence[tuple[str, str | int]] = (),
        headers: Mapping[str, str] | None = None,
        auth: bool = True,
    ) -> T:
        """``answer`` decoded from the JSON the platform answers, or ApiError."""
        for attempt in range(2):
            sent = dict(headers or {})
            if auth and self.token:
                sent["Authorization"] = f"Bearer {self.token}"
            if body is not None:
                sent["Content-Type"] = "application/json"
            response = await self.http.request(
                method,
                path,
                content=None if body is None else _encode(body),
                params=list(params),
                headers=sent,
            )
            if response.status_code < 400:
                if answer is type(None):
                    return None
                return msgspec.json.decode(response.content, type=answer)
            error = error_of(
                response.status_code, response.content, response.headers.get("retry-after")
            )
            if error.code != "TOKEN_EXPIRED" or not self.refresh_token or attempt:
                raise error
            await self.refresh_expired(sent.get("Authorization", "")[7:])
        raise AssertionError("unreachable")

    # --- accounts (docs/identity.md) ------------------------------------------------------

    async def signup(self, email: str, password: str) -> None:
        """Sign up (202 whether the email is new or taken; log in to learn which)."""
        await self.request(
            "POST",
            "/api/v1/auth/signup",
            dict,
            body={"email": email, "password": password},
            auth=False,
        )

    async def login(
        self, email: str, password: str, *, totp_secret: str | None = None, code: str | None = None
    ) -> Tokens:
        """Log in; a user with a second factor needs ``code`` (a TOTP code or a recovery
        code) or ``totp_secret`` (the code is made from it with pyotp), else
        SecondFactorRequired carries the server's challenge for ``login_totp``."""
        answer = await self.request(
            "POST",
            "/api/v1/auth/login",
            msgspec.Raw,
            body={"email": email, "password": password},
            auth=False,
        )
        try:
            return self._keep(msgspec.json.decode(answer, type=Tokens))
        except msgspec.ValidationError:
            challenge = msgspec.json.decode(answer, type=MfaChallenge)
        if code is None and totp_secret is None:
            raise SecondFactorRequired(challenge)
        return await self.login_totp(challenge, code or pyotp.TOTP(totp_secret or "").now())

    async def login_totp(self, challenge: MfaChallenge, code: str) -> Tokens:
        """A login's second step: ``code`` (a TOTP or recovery code) for ``challenge``."""
        tokens = await self.request(
            "POST",
            "/api/v1/auth/login/totp",
            Tokens,
            body={"mfaToken": challenge.mfa_token, "code": code},
            auth=False,
        )
        return self._keep(tokens)

    async def refresh(self) -> Tokens:
        """New tokens for the refresh token held (which is spent)."""
        if not self.refresh_token:
            raise ApiError(401, "INVALID_REFRESH_TOKEN", "no refresh token: log in")
        tokens = await self.request(
            "POST",
            "/api/v1/auth/refresh",
            Tokens,
            body={"refreshToken": self.refresh_token},
            auth=False,
        )
        return self._keep(tokens)

    async def refresh_expired(self, expired: str | None) -> None:
        """Refresh once for the ``expired`` access token, however many requests found it
        expired at once: a refresh token presented twice would end the session."""
        async with self._refreshing:
            if self.token == expired:
                await self.refresh()

    def _keep(self, tokens: Tokens) -> Tokens:
        self.token, self.refresh_token = tokens.access_token, tokens.refresh_token
        return tokens

    async def logout(self) -> None:
        await self.request("POST", "/api/v1/auth/logout", type(None))
        self.token = self.refresh_token = None

    async def enrol_totp(self) -> TotpEnrolment:
        return await self.request("POST", "/api/v1/auth/totp/enrol", TotpEnrolment)

    async def confirm_totp(self, code: str) -> RecoveryCodes:
        return await self.request(
            "POST", "/api/v1/auth/totp/confirm", RecoveryCodes, body={"code": code}
        )

    async def me(self) -> Me:
        return await self.request("GET", "/api/v1/me", Me)

    async def decide_kyc(
        self, user_id: str, status: Literal["VERIFIED", "REJECTED"], reason: str | None = None
    ) -> dict[str, str]:
        """An operator's KYC decision on ``user_id``'s account."""
        return await self.request(
            "POST",
            f"/api/v1/operator/accounts/{user_id}/kyc",
            dict[str, str],
            body={"status": status, "reason": reason},
        )

    # --- funds (docs/funds.md) ----------------------------------------------------------

    async def funds(self) -> FundsBody:
        return await self.request("GET", "/api/v1/funds", FundsBody)

    async def deposit(self, amount: Decimal | str, idempotency_key: str) -> DepositBody:
        """Deposit ``amount`` rupees (at most two decimals)."""
        return await self._move("deposits", DepositBody, amount, idempotency_key)

    async def withdraw(self, amount: Decimal | str, idempotency_key: str) -> WithdrawalBody:
        """Withdraw ``amount`` rupees: blocked now (PENDING), paid out after."""
        return await self._move("withdrawals", WithdrawalBody, amount, idempotency_key)

    async def _move(self, kind: str, answer: type[T], amount: Decimal | str, key: str) -> T:
        body = {"amount": f"{Decimal(amount):.2f}"}
        headers = {"Idempotency-Key": key}
        return await self.request(
            "POST", f"/api/v1/funds/{kind}", answer, body=body, headers=headers
        )

    async def withdrawals(self) -> Withdrawals:
        """The user's withdrawals, newest first."""
        return await self.request("GET", "/api/v1/funds/withdrawals", Withdrawals)

    async def operator_withdrawals(
        self, status: Literal["PENDING", "COMPLETED", "FAILED"] = "PENDING"
    ) -> OperatorWithdrawals:
        """Every user's withdrawals of ``status`` (operators)."""
        path, params = "/api/v1/operator/withdrawals", [("status", status)]
        return await self.request("GET", path, OperatorWithdrawals, params=params)

    async def complete_withdrawal(self, withdrawal_id: int) -> WithdrawalBody:
        """An operator's word that a pending withdrawal was paid (audited)."""
        path = f"/api/v1/operator/withdrawals/{withdrawal_id}/complete"
        return await self.request("POST", path, WithdrawalBody)

    async def fail_withdrawal(self, withdrawal_id: int, reason: str) -> WithdrawalBody:
        """An operator's word that a pending withdrawal failed, and why (audited)."""
        path = f"/api/v1/operator/withdrawals/{withdrawal_id}/fail"
        return await self.request("POST", path, WithdrawalBody, body={"reason": reason})

    # --- orders (docs/orders.md) --------------------------------------------------------

    async def place(self, order: PlaceOrderRequest) -> OrderAccepted:
        return await self.request("POST", "/api/v1/orders", OrderAccepted, body=order)

    async def modify(self, order_id: int, change: ModifyOrderRequest) -> OrderAccepted:
        return await self.request("PATCH", f"/api/v1/orders/{order_id}", OrderAccepted, body=change)

    async def cancel(self, order_id: int) -> OrderAccepted:
        return await self.request("DELETE", f"/api/v1/orders/{order_id}", OrderAccepted)

    async def cancel_all(self, symbol: str | None = None) -> CancelsRequested:
        """Ask to cancel every open order (of ``symbol``); ``more``: ask again."""
        params: list[tuple[str, str | int]] = [("symbol", symbol)] if symbol else []
        return await self.request("DELETE", "/api/v1/orders", CancelsRequested, params=params)

    async def margin(self, orders: PlaceOrderRequest | Sequence[PlaceOrderRequest]) -> MarginAnswer:
        """What the order, or the orders together, would block, and which would be
        refused; nothing sent."""
        return await self.request("POST", "/api/v1/margins/orders", MarginAnswer, body=orders)

    async def orders(
        self,
        *,
        status: Sequence[str] = (),
        symbol: str | None = None,
        page: int = 1,
        page_size: int = 50,
    ) -> OrderPage:
        params: list[tuple[str, str | int]] = [("status", s) for s in status]
        params += [("page", page), ("pageSize", page_size)]
        if symbol:
            params.append(("symbol", symbol))
        return await self.request("GET", "/api/v1/orders", OrderPage, params=params)

    async def order(self, order_id: int) -> OrderWithFills:
        return await self.request("GET", f"/api/v1/orders/{order_id}", OrderWithFills)

    async def portfolio(self) -> Portfolio:
        return await self.request("GET", "/api/v1/portfolio", Portfolio)

    async def statement(self, start: date | None = None, end: date | None = None) -> Statement:
        params: list[tuple[str, str | int]] = [
            (k, v.isoformat()) for k, v in (("from", start), ("to", end)) if v
        ]
        return await self.request("GET", "/api/v1/statement", Statement, params=params)

    async def trades(
        self,
        *,
        symbol: str | None = None,
        side: Literal["BUY", "SELL"] | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> TradePage:
        """A page of the user's fills, newest first, from ``start`` (inclusive) to
        ``end`` (exclusive); ``cursor``: a page's ``next_cursor``, for the older ones."""
        params: list[tuple[str, str | int]] = [("limit", limit)]
        params += [(k, v) for k, v in (("symbol", symbol), ("side", side), ("cursor", cursor)) if v]
        params += [(k, v.isoformat()) for k, v in (("from", start), ("to", end)) if v]
        return await self.request("GET", "/api/v1/trades", TradePage, params=params)

    # --- GTTs and brackets (docs/gtt.md, docs/brackets.md) --------------------------------

    async def create_gtt(self, gtt: NewGtt) -> GttView:
        return await self.request("POST", "/api/v1/gtt", GttView, body=gtt)

    async def gtts(self, status: str | None = None) -> GttList:
        """The user's GTTs, newest first; ``status``: of that status only."""
        params: list[tuple[str, str | int]] = [("status", status)] if status else []
        return await self.request("GET", "/api/v1/gtt", GttList, params=params)

    async def gtt(self, gtt_id: int) -> GttView:
        return await self.request("GET", f"/api/v1/gtt/{gtt_id}", GttView)

    async def change_gtt(self, gtt_id: int, change: GttChange) -> GttView:
        """New legs (and expiry) for an active GTT."""
        return await self.request("PATCH", f"/api/v1/gtt/{gtt_id}", GttView, body=change)

    async def cancel_gtt(self, gtt_id: int) -> GttView:
        return await self.request("DELETE", f"/api/v1/gtt/{gtt_id}", GttView)

    async def create_bracket(self, bracket: NewBracket) -> BracketView:
        return await self.request("POST", "/api/v1/brackets", BracketView, body=bracket)

    async def brackets(
        self, status: BracketStatus | None = None, limit: int = 50, cursor: str | None = None
    ) -> BracketList:
        """A page of the user's brackets, newest first; ``cursor``: a page's
        ``next_cursor``, for the older ones."""
        params: list[tuple[str, str | int]] = [("limit", limit)]
        params += [(k, v) for k, v in (("status", status), ("cursor", cursor)) if v]
        return await self.request("GET", "/api/v1/brackets", BracketList, params=params)

    async def bracket(self, bracket_id: int) -> BracketView:
        return await self.request("GET", f"/api/v1/brackets/{bracket_id}", BracketView)

    async def exit_bracket(self, bracket_id: int) -> BracketView:
        return await self.request("DELETE", f"/api/v1/brackets/{bracket_id}", BracketView)

    # --- market data --------------------------------------------------------------------

    async def instrument(self, symbol: str) -> Instrument:
        return await self.request("GET", f"/api/v1/instruments/{symbol}", Instrument)

    async def market_data(self, symbol: str) -> BookUpdate:
        return await self.request("GET", f"/api/v1/marketdata/{symbol}", BookUpdate)

    # --- the WebSocket ------------------------------------------------------------------

    def updates(
        self, since: int | None = None, market: Sequence[MarketChannel] = ()
    ) -> AsyncIterator[Update]:
        """The user's ORDER_UPDATEs (after ``since``, when given) and NOTIFICATIONs, and
        the TRADE or BOOK messages of ``market``'s (channel, symbol) pairs, over
        /ws/v1/orders; reconnects and resumes after the last ORDER_UPDATE seen
        (client/stream.py)."""
        return stream_updates(self, since, market)
