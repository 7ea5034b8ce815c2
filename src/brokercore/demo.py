"""Demo users for the development stack (`make up`), made the way a customer is made.

    python -m brokercore.demo --api URL [--url DATABASE_URL] [--out FILE]

Through the running platform's HTTP API (``--api``: the edge), as a customer and a
member of staff would: alice and bob sign up; ops, a user made operator the one way
there is (``brokercore operator grant``'s function, the server-side step), verifies
their KYC; each logs in and deposits their cash through the funds service. Their shares
arrive as a depository transfer-in (``SHARES_IN`` in the funding journal): a broker's
customer brings shares from another depository, never through the broker's API.

Idempotent: sign-up of a taken email changes nothing, a verified account is left as it
is, the deposit's Idempotency-Key and the transfer's reference are the same every run.
The logins (development passwords, printed by `make up`) and user ids are written to
``--out`` as JSON {name: {"email", "password", "userId"}}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import psycopg

from brokercore.broker.funding import FundingKind, fund
from brokercore.broker.money import PAISE_PER_RUPEE as RUPEE
from brokercore.broker.money import rupees
from brokercore.config import ServiceSettings
from brokercore.identity.users import grant_role

__all__ = ["DEMO_USERS", "OPERATOR", "seed_demo"]

DEMO_USERS = {
    "alice": (
        10_000_000 * RUPEE,
        {"RELIANCE": (500, 14_250 * RUPEE), "TCS": (200, 20_100 * RUPEE)},
    ),
    "bob": (
        5_000_000 * RUPEE,
        {
            "RELIANCE": (1_000, 13_900 * RUPEE),
            "INFY": (800, 7_450 * RUPEE),
            "ITC": (5_000, 2_150 * RUPEE),
        },
    ),
}
"""name -> (cash in paise, {symbol: (shares, average cost in paise)})."""

OPERATOR = "ops"
"""The demo's member of staff: verifies the customers' KYC."""


def login_of(name: str) -> dict[str, str]:
    """A demo user's email and development password (a dev stack's, printed by make up)."""
    return {"email": f"{name}@example.com", "password": f"{name}-demo-password"}


class _Api:
    """The few calls the demo makes; a refused one raises with the platform's answer."""

    def __init__(self, client: httpx.AsyncClient):
        self.client = client

    async def call(self, method: str, path: str, token: str | None = None, **kw: Any) -> Any:
        """The answer's JSON. A 503 (a service that has just started and not fetched
        the signing keys yet) is asked again after its Retry-After, for up to 30 s."""
        headers = kw.pop("headers", {}) | ({"Authorization": f"Bearer {token}"} if token else {})
        for _ in range(30):
            answer = await self.client.request(method, path, headers=headers, **kw)
            if answer.status_code != 503:
                break
            await asyncio.sleep(min(1.0, float(answer.headers.get("retry-after", "1"))))
        if answer.status_code >= 400:
            raise RuntimeError(f"{method} {path}: {answer.status_code} {answer.text}")
        return answer.json() if answer.content else None

    async def login(self, name: str) -> str:
        tokens = await self.call("POST", "/api/v1/auth/login", json=login_of(name))
        if "accessToken" not in tokens:
            raise RuntimeError(f"{name} has a second factor now: log in by hand")
        token: str = tokens["accessToken"]
        return token


async def _seed(api: _Api, database_url: str) -> dict[str, dict[str, str]]:
    for name in (OPERATOR, *DEMO_USERS):
        await api.call("POST", "/api/v1/auth/signup", json=login_of(name))
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await grant_role(conn, "make up (brokercore.demo)", login_of(OPERATOR)["email"], "operator")
    operator = await api.login(OPERATOR)
    made = {
        OPERATOR: login_of(OPERATOR)
        | {"userId": (await api.call("GET", "/api/v1/me", operator))["userId"]}
    }
    with psycopg.connect(database_url) as conn:
        for name, (cash, holdings) in DEMO_USERS.items():
            token = await api.login(name)
            me = await api.call("GET", "/api/v1/me", token)
            user_id = me["userId"]
            if me["kycStatus"] == "PENDING":
                await api.call(
                    "POST",
                    f"/api/v1/operator/accounts/{user_id}/kyc",
                    operator,
                    json={"status": "VERIFIED", "reason": "demo customer"},
                )
            await api.call(
                "POST",
                "/api/v1/funds/deposits",
                token,
                json={"amount": rupees(cash)},
                headers={"Idempotency-Key": "demo-opening-deposit"},
            )
            (account_id,) = conn.execute(
                "SELECT account_id FROM accounts WHERE user_id = %s", (user_id,)
            ).fetchone() or (None,)
            for symbol, (quantity, cost) in holdings.items():
                fund(
                    conn,
                    account_id,
                    FundingKind.SHARES_IN,
                    symbol=symbol,
                    quantity=quantity,
                    price=cost,
                    reference=f"demo transfer-in: {user_id} {symbol}",
                )
            made[name] = login_of(name) | {"userId": user_id}
    return made


def seed_demo(api_url: str, database_url: str) -> dict[str, dict[str, str]]:
    """Make (or find) the demo users through the API at ``api_url``; their logins and ids."""

    async def run() -> dict[str, dict[str, str]]:
        async with httpx.AsyncClient(base_url=api_url, timeout=30) as client:
            return await _seed(_Api(client), database_url)

    return asyncio.run(run())


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m brokercore.demo", description=__doc__)
    parser.add_argument("--api", required=True, help="the platform's HTTP entry (the edge)")
    parser.add_argument("--url", default=ServiceSettings.from_env().database_url)
    parser.add_argument("--out", type=Path, help="write the logins and user ids here (JSON)")
    args = parser.parse_args(argv)
    made = seed_demo(args.api, args.url)
    if args.out:
        args.out.write_text(json.dumps(made, indent=2) + "\n")
    print("demo users: " + ", ".join(f"{n} ({u['userId']})" for n, u in made.items()))


if __name__ == "__main__":
    main()
