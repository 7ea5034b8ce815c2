"""The accounts service (brokercore.services.accounts) as a real process on the real
Postgres and Redis: sign-up that tells nothing, KYC by operators (audited), login with
and without TOTP, replayed codes, recovery codes, refresh-token rotation and reuse,
logout, brute-force lockouts, and key rotation seen by another service without a restart.

One accounts process and one database serve the whole module (a start costs seconds);
each test uses emails and client addresses of its own (X-Forwarded-For, which uvicorn
trusts from 127.0.0.1 as it trusts the edge's), so their throttles never meet.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import httpx
import jwt
import psycopg
import pyotp
import pytest
import redis
from psycopg import sql
from psycopg.conninfo import make_conninfo

from brokercore.cli import main
from brokercore.db.migrations import apply_migrations, drop_database
from brokercore.edge.auth import mint_token
from brokercore.edge.revocation import REVOKED_SESSIONS
from brokercore.services.accounts import create_app
from brokercore.services.notifier_api import create_app as notifications_app
from edge_support import Edge, Recorder
from http_support import assert_error
from oms_support import JWT, auth
from private_servers import free_port
from processes import LoggedProcess
from shared_servers import REDIS_URL, service_settings
from waiting import wait_until

PASSWORD = "correct horse battery staple"


class Accounts:
    """The service's process and an HTTP client on it."""

    def __init__(self, database: str, log: Path):
        self.database = database
        self.prefix = f"t{uuid.uuid4().hex[:12]}:"
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.jwks_url = self.url + "/api/v1/auth/jwks"
        self.env = os.environ | {
            "BROKERCORE_DATABASE_URL": database,
            "BROKERCORE_REDIS_URL": REDIS_URL,
            "BROKERCORE_REDIS_PREFIX": self.prefix,
            "BROKERCORE_JWKS_URL": self.jwks_url,
        }
        self.process = LoggedProcess(["service", "accounts", "--port", str(port)], log, self.env)
        self.client = httpx.Client(base_url=self.url, timeout=30)
        wait_until(self._serving, "the accounts service answering", timeout=60)

    def _serving(self) -> bool:
        if self.process.process.poll() is not None:
            raise AssertionError(f"the accounts service exited:\n{self.process.text()[-3000:]}")
        try:
            return self.client.get("/api/v1/auth/jwks").status_code == 200
        except httpx.TransportError:
            return False

    def cli(self, *args: str) -> tuple[int, str]:
        """``brokercore ARGS`` (in this process, on the service's database): its exit
        code and what it printed."""
        out = io.StringIO()
        with (
            mock.patch.dict(os.environ, self.env),
            contextlib.redirect_stdout(out),
            contextlib.redirect_stderr(out),
        ):
            code = main(list(args))
        return code, out.getvalue()

    def post(self, path: str, body: dict | None = None, *, token=None, address="10.0.0.1"):
        headers = {"X-Forwarded-For": address}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return self.client.post(path, json=body, headers=headers)

    def get(self, path: str, token: str, **params):
        return self.client.get(path, params=params, headers={"Authorization": f"Bearer {token}"})

    def sign_up(self, email: str, password: str = PASSWORD) -> None:
        response = self.post("/api/v1/auth/signup", {"email": email, "password": password})
        assert response.status_code == 202, response.text

    def login(self, email: str, password: str = PASSWORD, address: str = "10.0.0.1") -> dict:
        response = self.post(
            "/api/v1/auth/login", {"email": email, "password": password}, address=address
        )
        assert response.status_code == 200, response.text
        return response.json()

    def new_user(self) -> tuple[str, dict]:
        """A signed-up user's email and the tokens of their first login."""
        email = f"{uuid.uuid4().hex[:10]}@example.com"
        self.sign_up(email)
        return email, self.login(email)

    def close(self) -> None:
        self.client.close()
        self.process.terminate()
        self.process.close()


@pytest.fixture(scope="module")
def accounts(postgres: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Accounts]:
    name = f"test_{uuid.uuid4().hex}"
    with psycopg.connect(postgres, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    database = make_conninfo(postgres, dbname=name)
    try:
        apply_migrations(database)
        service = Accounts(database, tmp_path_factory.mktemp("accounts") / "accounts.log")
        try:
            yield service
        finally:
            service.close()
            client = redis.Redis.from_url(REDIS_URL)
            for key in client.scan_iter(match=service.prefix + "*", count=1000):
                client.delete(key)
            client.close()
    finally:
        drop_database(postgres, name)


def rows(database: str, query: str, *args) -> list[tuple]:
    with psycopg.connect(database, autocommit=True) as conn:
        return conn.execute(query, args).fetchall()


def test_sign_up_answers_the_same_for_a_taken_email_and_creates_nothing(accounts):
    email = f"{uuid.uuid4().hex[:10]}@example.com"
    first = accounts.post("/api/v1/auth/signup", {"email": email.upper(), "password": PASSWORD})
    again = accounts.post("/api/v1/auth/signup", {"email": email, "password": "another one!"})
    assert (first.status_code, first.json()) == (again.status_code, again.json())
    assert first.json() == {"status": "ACCEPTED"} and first.status_code == 202
    [(user_id, stored)] = rows(
        accounts.database, "SELECT user_id, email FROM users WHERE email = %s", email
    )
    assert stored == email  # lower-cased
    assert rows(
        accounts.database, "SELECT kyc_status, cash FROM accounts WHERE user_id = %s", user_id
    ) == [("PENDING", 0)]
    accounts.login(email)  # the first password, not the second
    me = accounts.get("/api/v1/me", accounts.login(email)["accessToken"]).json()
    assert me == {
        "userId": user_id,
        "email": email,
        "kycStatus": "PENDING",
        "roles": [],
        "totpEnrolled": False,
    }
    short = accounts.post("/api/v1/auth/signup", {"email": "x@example.com", "password": "short"})
    assert_error(short, 422, "INVALID_REQUEST")
    bad = accounts.post("/api/v1/auth/signup", {"email": "not an email", "password": PASSWORD})
    assert_error(bad, 422, "INVALID_REQUEST")
    assert rows(accounts.database, "SELECT count(*) FROM users WHERE email LIKE 'x@%%'") == [(0,)]


def test_kyc_is_an_operators_decision_and_audited(accounts):
    operator_email, _ = accounts.new_user()
    customer_email, customer = accounts.new_user()
    customer_token = customer["accessToken"]
    customer_id = jwt.decode(customer_token, options={"verify_signature": False})["sub"]
    refused = [
        accounts.get("/api/v1/operator/accounts", customer_token, kycStatus="PENDING"),
        accounts.post(
            f"/api/v1/operator/accounts/{customer_id}/kyc",
            {"status": "VERIFIED"},
            token=customer_token,
        ),
    ]
    for response in refused:
        assert_error(response, 403, "FORBIDDEN")
    granted = accounts.cli("operator", "grant", operator_email.upper())
    assert granted[0] == 0, granted
    assert accounts.cli("operator", "grant", "nobody@example.com")[0] == 2
    operator = accounts.login(operator_email)["accessToken"]
    operator_id = jwt.decode(operator, options={"verify_signature": False})["sub"]
    assert jwt.decode(operator, options={"verify_signature": False})["roles"] == ["operator"]

    pending = accounts.get("/api/v1/operator/accounts", operator, kycStatus="PENDING").json()
    assert customer_id in [a["userId"] for a in pending["accounts"]]
    decided = accounts.post(
        f"/api/v1/operator/accounts/{customer_id}/kyc",
        {"status": "VERIFIED", "reason": "documents checked"},
        token=operator,
    )
    assert decided.status_code == 200, decided.text
    assert decided.json()["kycStatus"] == "VERIFIED"
    assert accounts.get("/api/v1/me", customer_token).json()["kycStatus"] == "VERIFIED"
    audit = rows(
        accounts.database,
        "SELECT actor, action, target, before, after FROM audit_log "
        "WHERE target IN (%s, %s) ORDER BY audit_id",
        f"user:{operator_id}",
        f"account:{customer_id}",
    )
    assert audit == [
        ("cli", "ROLE_GRANTED", f"user:{operator_id}", {"roles": []}, {"roles": ["operator"]}),
        (
            operator_id,
            "KYC_DECISION",
            f"account:{customer_id}",
            {"kycStatus": "PENDING"},
            {"kycStatus": "VERIFIED", "reason": "documents checked"},
        ),
    ]
    missing = accounts.post(
        "/api/v1/operator/accounts/unobody/kyc", {"status": "REJECTED"}, token=operator
    )
    assert_error(missing, 404, "ACCOUNT_NOT_FOUND")
    assert_error(
        accounts.post(
            f"/api/v1/operator/accounts/{customer_id}/kyc", {"status": "MAYBE"}, token=operator
        ),
        422,
        "INVALID_REQUEST",
    )
    with psycopg.connect(accounts.database, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.RestrictViolation):
            conn.execute("UPDATE audit_log SET actor = 'someone else'")
        with pytest.raises(psycopg.errors.RestrictViolation):
            conn.execute("DELETE FROM audit_log")


def test_totp_enrolment_login_replay_and_recovery_codes(accounts):
    email, tokens = accounts.new_user()
    token = tokens["accessToken"]
    enrolment = accounts.post("/api/v1/auth/totp/enrol", token=token).json()
    totp = pyotp.TOTP(enrolment["secret"])
    assert enrolment["otpauthUri"].startswith("otpauth://totp/")
    assert_error(
        accounts.post("/api/v1/auth/totp/confirm", {"code": "000000x"}, token=token),
        422,
        "INVALID_CODE",
    )
    confirmed = accounts.post("/api/v1/auth/totp/confirm", {"code": totp.now()}, token=token)
    assert confirmed.status_code == 200, confirmed.text
    recovery = confirmed.json()["recoveryCodes"]
    assert len(set(recovery)) == 10
    assert_error(accounts.post("/api/v1/auth/totp/enrol", token=token), 409)
    assert accounts.get("/api/v1/me", token).json()["totpEnrolled"] is True

    def second_factor(code: str) -> httpx.Response:
        ticket = accounts.login(email)
        assert ticket["mfaRequired"] is True and "accessToken" not in ticket
        return accounts.post(
            "/api/v1/auth/login/totp", {"mfaToken": ticket["mfaToken"], "code": code}
        )

    next_step = totp.at(time.time() + 30)  # the confirmation used up the current step
    passed = second_factor(next_step)
    assert passed.status_code == 200, passed.text
    assert set(passed.json()) == {"accessToken", "refreshToken", "expiresIn", "tokenType"}
    assert_error(second_factor(next_step), 401, "INVALID_CODE")  # replayed
    assert second_factor(recovery[0].upper()).status_code == 200
    assert_error(second_factor(recovery[0]), 401, "INVALID_CODE")  # used once
    ticket = accounts.login(email)["mfaToken"]
    not_a_ticket = tokens["accessToken"]  # an access token is no MFA ticket
    assert_error(
        accounts.post("/api/v1/auth/login/totp", {"mfaToken": not_a_ticket, "code": "123456"}),
        401,
        "INVALID_MFA_TOKEN",
    )
    assert jwt.decode(ticket, options={"verify_signature": False})["aud"] != "brokercore"
    for _ in range(4):  # with the used recovery code's, five failures: the email locks
        wrong = accounts.post("/api/v1/auth/login/totp", {"mfaToken": ticket, "code": "000000"})
        assert_error(wrong, 401, "INVALID_CODE")
    relogin = accounts.post("/api/v1/auth/login", {"email": email, "password": PASSWORD})
    assert_error(relogin, 429, "LOGIN_LOCKED")  # a right password alone resets nothing


def revoked_sids(accounts) -> set[str]:
    """The sessions revoked in the service's deployment (its Redis prefix)."""
    client = redis.Redis.from_url(REDIS_URL)
    key = accounts.prefix + REVOKED_SESSIONS
    try:
        return {m.decode() for m in client.zrangebyscore(key, time.time(), "+inf")}
    finally:
        client.close()


def sid(token: str) -> str:
    return jwt.decode(token, options={"verify_signature": False})["sid"]


def test_refresh_rotates_and_a_reused_token_revokes_its_family(accounts):
    email, first = accounts.new_user()
    other = accounts.login(email)  # a second session of the same user
    chain = [first]
    for _ in range(2):
        response = accounts.post(
            "/api/v1/auth/refresh", {"refreshToken": chain[-1]["refreshToken"]}
        )
        assert response.status_code == 200, response.text
        chain.append(response.json())
    assert len({sid(t["accessToken"]) for t in chain}) == 1
    assert len({t["refreshToken"] for t in chain}) == 3

    reused = accounts.post("/api/v1/auth/refresh", {"refreshToken": first["refreshToken"]})
    assert_error(reused, 401, "INVALID_REFRESH_TOKEN")
    latest = accounts.post("/api/v1/auth/refresh", {"refreshToken": chain[-1]["refreshToken"]})
    assert_error(latest, 401, "INVALID_REFRESH_TOKEN")  # the family is revoked
    assert sid(first["accessToken"]) in revoked_sids(accounts)
    wait_until(
        lambda: accounts.get("/api/v1/me", chain[-1]["accessToken"]).status_code == 401,
        "the revoked session's access token refused",
    )
    assert_error(accounts.get("/api/v1/me", chain[-1]["accessToken"]), 401, "TOKEN_REVOKED")
    again = accounts.post("/api/v1/auth/refresh", {"refreshToken": other["refreshToken"]})
    assert again.status_code == 200, again.text  # the other session lives on
    assert accounts.get("/api/v1/me", again.json()["accessToken"]).status_code == 200


def test_logout_revokes_the_session(accounts):
    _, tokens = accounts.new_user()
    assert accounts.post("/api/v1/auth/logout", token=tokens["accessToken"]).status_code == 204
    refresh = accounts.post("/api/v1/auth/refresh", {"refreshToken": tokens["refreshToken"]})
    assert_error(refresh, 401, "INVALID_REFRESH_TOKEN")
    assert sid(tokens["accessToken"]) in revoked_sids(accounts)
    wait_until(
        lambda: accounts.get("/api/v1/me", tokens["accessToken"]).status_code == 401,
        "the logged-out access token refused",
    )


def test_five_bad_passwords_lock_an_email_whether_it_exists_or_not(accounts):
    known, _ = accounts.new_user()
    unknown = f"{uuid.uuid4().hex[:10]}@example.com"
    answers = {}
    for n, email in enumerate((known, unknown)):
        address = f"10.1.0.{n + 1}"
        failures = [
            accounts.post(
                "/api/v1/auth/login", {"email": email, "password": "wrong!"}, address=address
            )
            for _ in range(5)
        ]
        locked = accounts.post(
            "/api/v1/auth/login", {"email": email, "password": PASSWORD}, address=address
        )
        for failure in failures:
            assert_error(failure, 401, "INVALID_CREDENTIALS")
        assert_error(locked, 429, "LOGIN_LOCKED")
        assert 0 < int(locked.headers["Retry-After"]) <= 900
        answers[email] = (failures[0].json(), locked.json(), set(locked.headers) - {"date"})
    assert answers[known] == answers[unknown]


def test_an_address_gets_twenty_failed_logins_per_window(accounts):
    address = "10.2.0.1"
    for n in range(20):
        failure = accounts.post(
            "/api/v1/auth/login",
            {"email": f"guess{n}-{uuid.uuid4().hex[:6]}@example.com", "password": "wrong!"},
            address=address,
        )
        assert_error(failure, 401, "INVALID_CREDENTIALS")
    email, _ = accounts.new_user()
    limited = accounts.post(
        "/api/v1/auth/login", {"email": email, "password": PASSWORD}, address=address
    )
    assert_error(limited, 429, "LOGIN_LOCKED")
    accounts.login(email, address="10.2.0.2")  # another address may


def test_a_rotated_key_is_published_and_verified_without_a_restart(accounts):
    settings = service_settings(
        accounts.database, accounts.prefix, jwt_hs256_secret=None, jwks_url=accounts.jwks_url
    )
    _, before = accounts.new_user()
    [old] = accounts.client.get("/.well-known/jwks.json").json()["keys"]

    async def scenario() -> list[int]:
        app = notifications_app(settings)
        async with app.router.lifespan_context(app):
            verifier = app.state.notifications.verifier
            verifier.jwks.min_interval = 0  # B's refetch spacing is tested on its own
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://notify"
            ) as client:

                async def status(token: str) -> int:
                    headers = {"Authorization": f"Bearer {token}"}
                    response = await client.get(
                        "/api/v1/notifications/preferences", headers=headers
                    )
                    return response.status_code

                statuses = [await status(before["accessToken"])]
                rotated = await asyncio.to_thread(accounts.cli, "keys", "rotate")
                assert rotated[0] == 0, rotated
                _, after = await asyncio.to_thread(accounts.new_user)
                return [*statuses, await status(after["accessToken"])]

    assert asyncio.run(scenario()) == [200, 200]
    published = accounts.client.get("/api/v1/auth/jwks").json()["keys"]
    assert len(published) == 2 and old in published
    new = next(key["kid"] for key in published if key["kid"] != old["kid"])
    assert (
        jwt.get_unverified_header(accounts.login(accounts.new_user()[0])["accessToken"])["kid"]
        == new
    )
    assert accounts.cli("keys", "retire", old["kid"])[0] == 0
    assert [k["kid"] for k in accounts.client.get("/api/v1/auth/jwks").json()["keys"]] == [new]
    assert accounts.cli("keys", "retire", new)[0] == 2  # the last one stays
    code, listed = accounts.cli("keys", "list")
    assert code == 0, listed
    assert new in listed and old["kid"] in listed and "retired" in listed


def test_the_edge_sends_identity_paths_to_accounts_and_money_paths_to_funds():
    paths = {
        "accounts": [
            ("POST", "/api/v1/auth/login"),
            ("POST", "/api/v1/auth/totp/enrol"),
            ("GET", "/api/v1/me"),
            ("GET", "/.well-known/jwks.json"),
            ("GET", "/api/v1/operator/accounts"),
            ("POST", "/api/v1/operator/accounts/u1/kyc"),
        ],
        "funds": [
            ("GET", "/api/v1/funds"),
            ("POST", "/api/v1/funds/deposits"),
            ("POST", "/api/v1/operator/withdrawals/7/complete"),
        ],
    }
    with (
        Recorder() as accounts,
        Recorder() as funds,
        Edge(accounts=accounts.address, funds=funds.address) as edge,
        httpx.Client(base_url=edge.url, timeout=30) as client,
    ):
        for method, path in paths["accounts"] + paths["funds"]:
            assert client.request(method, path).status_code == 200, (method, path)
        assert_error(client.get("/api/v1/mine"), 404, "NOT_FOUND")
        for upstream, name in ((accounts, "accounts"), (funds, "funds")):
            assert [(r["method"], r["path"]) for r in upstream.requests] == paths[name]


BAD_REQUESTS = [
    # (method, path, body, token: None / "user" / "operator", status, code)
    ("POST", "/api/v1/auth/signup", b"{", None, 400, "MALFORMED_JSON"),
    ("POST", "/api/v1/auth/signup", b'{"email": 5, "password": "0123456789"}', None, 422, None),
    ("POST", "/api/v1/auth/signup", b'{"email": "a@b.co", "password": "short"}', None, 422, None),
    (
        "POST",
        "/api/v1/auth/signup",
        b'{"email": "a\\u0000@b.co", "password": "0123456789"}',
        None,
        400,
        "INVALID_CHARACTERS",
    ),
    (
        "POST",
        "/api/v1/auth/signup",
        b'{"email": "a@b.co", "password": "0123456789", "x": 1}',
        None,
        422,
        None,
    ),
    ("POST", "/api/v1/auth/login", b'{"email": "a@b.co"}', None, 422, "INVALID_REQUEST"),
    (
        "POST",
        "/api/v1/auth/login/totp",
        b'{"mfaToken": "a.b.c", "code": "123456"}',
        None,
        401,
        "INVALID_MFA_TOKEN",
    ),
    ("POST", "/api/v1/auth/refresh", b'{"refreshToken": null}', None, 422, "INVALID_REQUEST"),
    (
        "POST",
        "/api/v1/auth/refresh",
        b'{"refreshToken": "made up"}',
        None,
        401,
        "INVALID_REFRESH_TOKEN",
    ),
    ("POST", "/api/v1/auth/logout", b"", None, 401, "UNAUTHENTICATED"),
    ("GET", "/api/v1/me", b"", "user", 404, "USER_NOT_FOUND"),
    ("POST", "/api/v1/auth/totp/confirm", b'{"code": "123456"}', "user", 422, "INVALID_CODE"),
    ("GET", "/api/v1/operator/accounts?kycStatus=MAYBE", b"", "operator", 422, None),
    ("GET", "/api/v1/operator/accounts?cursor=-1", b"", "operator", 422, None),
    (
        "POST",
        "/api/v1/operator/accounts/%00/kyc",
        b'{"status": "VERIFIED"}',
        "operator",
        400,
        "INVALID_CHARACTERS",
    ),
    (
        "POST",
        "/api/v1/operator/accounts/alice/kyc",
        b'{"status": "VERIFIED", "reason": 5}',
        "operator",
        422,
        None,
    ),
    (
        "POST",
        "/api/v1/operator/accounts/alice/kyc",
        b'{"status": "VERIFIED"}',
        "user",
        403,
        "FORBIDDEN",
    ),
    ("GET", "/api/v1/auth/login", b"", None, 405, "METHOD_NOT_ALLOWED"),
]


def test_bad_requests_answer_in_the_json_shape_and_change_nothing(database):
    """In this process (the app's logic; HS256 development tokens)."""
    operator = mint_token("carol", JWT, roles=["operator"])
    tokens = {"user": auth("alice"), "operator": {"Authorization": f"Bearer {operator}"}}
    settings = service_settings(database, f"t{uuid.uuid4().hex[:12]}:")
    tables = ("users", "refresh_tokens", "audit_log", "recovery_codes")
    count = "SELECT " + ", ".join(f"(SELECT count(*) FROM {t})" for t in tables)
    before = rows(database, count) + rows(database, "SELECT user_id, kyc_status FROM accounts")

    async def scenario() -> None:
        app = create_app(settings)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app, raise_app_exceptions=False),
                base_url="http://accounts",
            ) as client,
        ):
            for method, path, body, token, status, code in BAD_REQUESTS:
                headers = {"Content-Type": "application/json"} if body else {}
                headers |= tokens.get(token or "", {})
                response = await client.request(method, path, content=body, headers=headers)
                assert_error(response, status, code)

    asyncio.run(scenario())
    after = rows(database, count) + rows(database, "SELECT user_id, kyc_status FROM accounts")
    assert after == before
