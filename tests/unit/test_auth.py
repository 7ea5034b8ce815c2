"""JWT verification: what is accepted, and every way a token is refused."""

from __future__ import annotations

import base64
import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from brokercore.edge.auth import AuthError, JwtConfig, TokenVerifier, mint_token

SECRET = "s" * 64


def rsa_pair() -> tuple[str, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return private, public


PRIVATE, PUBLIC = rsa_pair()
CONFIG = JwtConfig(
    issuer="brokercore-dev", audience="brokercore", hs256_secret=SECRET, rs256_public_key=PUBLIC
)
VERIFIER = TokenVerifier(CONFIG)


def claims(**changes):
    now = int(time.time())
    base = {
        "sub": "alice",
        "iss": "brokercore-dev",
        "aud": "brokercore",
        "iat": now,
        "exp": now + 60,
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def refused(token: str) -> str:
    with pytest.raises(AuthError) as info:
        VERIFIER.verify(token)
    return info.value.code


def test_hs256_and_rs256_tokens_are_accepted():
    assert VERIFIER.verify(mint_token("alice", CONFIG)).user_id == "alice"
    assert VERIFIER.verify(mint_token("bob", CONFIG, private_key=PRIVATE)).user_id == "bob"


def test_expired_token_is_refused_as_expired():
    assert refused(jwt.encode(claims(exp=int(time.time()) - 5), SECRET, "HS256")) == "TOKEN_EXPIRED"


@pytest.mark.parametrize(
    "change",
    [
        {"aud": "someone-else"},
        {"iss": "evil"},
        {"exp": None},
        {"sub": None},
        {"aud": None},
        {"iss": None},
        {"iat": None},
        {"sub": ""},
        {"sub": 42},
    ],
)
def test_wrong_or_missing_claims_are_refused(change):
    assert refused(jwt.encode(claims(**change), SECRET, "HS256")) == "INVALID_TOKEN"


def test_forged_signature_is_refused():
    assert refused(jwt.encode(claims(), "x" * 64, "HS256")) == "INVALID_TOKEN"
    other_private, _ = rsa_pair()
    assert refused(jwt.encode(claims(), other_private, "RS256")) == "INVALID_TOKEN"


def b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def test_alg_none_is_refused():
    assert refused(f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(claims())}.") == "INVALID_TOKEN"


def test_rs256_public_key_used_as_hs256_secret_is_refused():
    """Algorithm confusion: HMAC-sign with the public key, claim HS256."""
    import hashlib
    import hmac

    head_body = f"{b64({'alg': 'HS256', 'typ': 'JWT'})}.{b64(claims())}"
    signature = hmac.new(PUBLIC.encode(), head_body.encode(), hashlib.sha256).digest()
    token = f"{head_body}.{base64.urlsafe_b64encode(signature).rstrip(b'=').decode()}"
    assert refused(token) == "INVALID_TOKEN"
    rs_only = TokenVerifier(JwtConfig("brokercore-dev", "brokercore", rs256_public_key=PUBLIC))
    with pytest.raises(AuthError):
        rs_only.verify(token)


@pytest.mark.parametrize("token", ["", "abc", "a.b.c", "Bearer x", "é.é.é"])
def test_garbage_is_refused(token):
    assert refused(token) == "INVALID_TOKEN"


def test_other_algorithms_are_refused():
    assert refused(jwt.encode(claims(), SECRET, "HS512")) == "INVALID_TOKEN"


def test_config_needs_a_key_and_a_long_secret():
    with pytest.raises(ValueError):
        JwtConfig("i", "a")
    with pytest.raises(ValueError):
        JwtConfig("i", "a", hs256_secret="short")


def run_token_command(env_extra: dict):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKERCORE_")}
    return subprocess.run(
        [sys.executable, "-m", "brokercore.cli", "token", "--user", "alice"],
        env=env | env_extra,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_development_tokens_only_in_dev_mode():
    from brokercore.config import DEV_JWT_SECRET

    refused_run = run_token_command({})
    assert refused_run.returncode == 2 and "BROKERCORE_DEV_MODE=1" in refused_run.stderr
    minted = run_token_command({"BROKERCORE_DEV_MODE": "1"})
    assert minted.returncode == 0
    dev = TokenVerifier(JwtConfig("brokercore-dev", "brokercore", hs256_secret=DEV_JWT_SECRET))
    assert dev.verify(minted.stdout.strip()).user_id == "alice"


def test_a_verified_token_is_remembered_and_answers_the_same():
    verifier = TokenVerifier(CONFIG)
    token = mint_token("alice", CONFIG)
    first = verifier.verify(token)
    assert list(verifier.remembered) == [token]
    assert verifier.verify(token) is first


def test_a_refused_token_is_never_remembered():
    verifier = TokenVerifier(CONFIG)
    forged = jwt.encode(claims(), "x" * 64, "HS256")
    expired = jwt.encode(claims(exp=int(time.time()) - 5), SECRET, "HS256")
    for token, code in [(forged, "INVALID_TOKEN"), (expired, "TOKEN_EXPIRED")] * 2:
        with pytest.raises(AuthError) as info:
            verifier.verify(token)
        assert info.value.code == code
    assert not verifier.remembered


def test_a_remembered_token_is_refused_once_it_expires():
    """The memory answers until the token's exp and never beyond (about 2 s of real time:
    PyJWT reads the real clock)."""
    verifier = TokenVerifier(CONFIG)
    expiry = int(time.time()) + 2
    token = jwt.encode(claims(exp=expiry), SECRET, "HS256")
    assert verifier.verify(token).user_id == "alice"
    assert verifier.remembered[token][1] == expiry
    time.sleep(max(0.0, expiry - time.time()) + 0.05)
    with pytest.raises(AuthError) as info:
        verifier.verify(token)
    assert info.value.code == "TOKEN_EXPIRED" and not verifier.remembered


def test_the_memory_is_bounded_and_forgets_the_least_recently_used():
    verifier = TokenVerifier(CONFIG, cache_size=2)
    a, b, c = (mint_token(user, CONFIG) for user in ("a", "b", "c"))
    for token in (a, b, a, c):
        verifier.verify(token)
    assert list(verifier.remembered) == [a, c]
    assert verifier.verify(b).user_id == "b" and len(verifier.remembered) == 2
