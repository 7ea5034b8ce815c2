"""The services' token verifier with an identity provider's JWKS (a real HTTP server in
this process): keys found by kid, a rotation picked up without a restart, a retired key
refused, tokens of a key set not configured refused, roles, and revoked sessions."""

from __future__ import annotations

import asyncio

import jwt
import pytest
from redis.asyncio import Redis

from brokercore.edge.auth import AuthError, JwtConfig, TokenVerifier, UnknownKey, mint_token
from brokercore.edge.jwks import KeysUnavailable, rsa_keys
from brokercore.edge.revocation import RevokedSessions
from jwks_support import JwksServer, signing_key

SECRET = "s" * 64
ISSUER, AUDIENCE = "brokercore-dev", "brokercore"
OLD, NEW, LATER, STRANGER = (signing_key(k) for k in ("k-old", "k-new", "k-later", "k-old"))
# STRANGER: another provider's key that happens to have OLD's key id


def config(url: str | None, **changes) -> JwtConfig:
    fields = {"issuer": ISSUER, "audience": AUDIENCE, "hs256_secret": SECRET, "jwks_url": url}
    return JwtConfig(**fields | changes)


def run(server: JwksServer, scenario, **changes):
    """``scenario(verifier)`` with a verifier on ``server``'s JWKS, opened and closed."""

    async def main():
        verifier = TokenVerifier(config(server.url, **changes))
        await verifier.open()
        try:
            return await scenario(verifier)
        finally:
            await verifier.close()

    return asyncio.run(main())


async def refused(verifier: TokenVerifier, token: str) -> str:
    with pytest.raises(AuthError) as info:
        await verifier.authenticate(token)
    return info.value.code


def test_both_published_keys_verify_and_dev_tokens_still_do():
    with JwksServer(OLD, NEW) as server:

        async def scenario(verifier):
            cfg = verifier.config
            users = [
                (await verifier.authenticate(OLD.token("alice", cfg))).user_id,
                (await verifier.authenticate(NEW.token("bob", cfg))).user_id,
                (await verifier.authenticate(mint_token("carol", cfg))).user_id,  # HS256
            ]
            return users, server.requests

        assert run(server, scenario) == (["alice", "bob", "carol"], 1)


def test_an_unknown_kid_fetches_the_keys_again_at_most_once_per_interval():
    with JwksServer(OLD) as server:

        async def scenario(verifier):
            cfg = verifier.config
            token = LATER.token("alice", cfg)
            with pytest.raises(UnknownKey):
                verifier.verify(token)  # not known yet: the sync check says so
            server.publish(OLD, LATER)  # a rotation
            verifier.jwks.min_interval = 0.0
            assert (await verifier.authenticate(token)).user_id == "alice"
            fetched = server.requests
            verifier.jwks.min_interval = 3600.0
            made_up = [
                mint_token("eve", cfg, private_key=OLD.private_pem, kid=f"made-up-{n}")
                for n in range(3)
            ]
            codes = await asyncio.gather(*(refused(verifier, t) for t in made_up))
            return fetched, codes, server.requests

        fetched, codes, requests = run(server, scenario)
        assert fetched == 2  # at start, then once for the new kid
        assert codes == ["INVALID_TOKEN"] * 3
        assert requests == 2  # within the interval, no fetch for made-up key ids


def test_concurrent_unknown_kids_share_one_fetch():
    with JwksServer(OLD) as server:

        async def scenario(verifier):
            server.publish(OLD, LATER)
            verifier.jwks.min_interval = 0.0
            tokens = [LATER.token(f"u{n}", verifier.config) for n in range(5)]
            principals = await asyncio.gather(*(verifier.authenticate(t) for t in tokens))
            return [p.user_id for p in principals], server.requests

        users, requests = run(server, scenario)
        assert users == [f"u{n}" for n in range(5)]
        assert requests == 2


def test_a_key_that_leaves_the_jwks_stops_verifying_after_the_next_refresh():
    with JwksServer(OLD, NEW) as server:

        async def scenario(verifier):
            token = OLD.token("alice", verifier.config)
            first = (await verifier.authenticate(token)).user_id  # and remembered
            server.publish(NEW)  # OLD retired
            await verifier.jwks.refresh()
            return first, await refused(verifier, token), len(verifier.remembered)

        assert run(server, scenario) == ("alice", "INVALID_TOKEN", 0)


def test_the_background_refresh_picks_up_a_retirement():
    with JwksServer(OLD, NEW) as server:

        async def scenario(verifier):
            token = OLD.token("alice", verifier.config)
            await verifier.authenticate(token)
            server.publish(NEW)
            for _ in range(200):
                if "k-old" not in verifier.jwks.keys:
                    break
                await asyncio.sleep(0.05)
            return await refused(verifier, token)

        assert run(server, scenario, jwks_refresh=0.1) == "INVALID_TOKEN"


def test_tokens_of_a_key_set_not_configured_are_refused():
    with JwksServer(OLD) as server:

        async def scenario(verifier):
            cfg = verifier.config
            no_kid = mint_token("alice", cfg, private_key=OLD.private_pem)
            return [
                await refused(verifier, STRANGER.token("alice", cfg)),  # same kid, other key
                await refused(verifier, OLD.token("alice", cfg, now=0)),  # expired
                await refused(verifier, no_kid),
            ]

        assert run(server, scenario) == ["INVALID_TOKEN", "TOKEN_EXPIRED", "INVALID_TOKEN"]
    no_key_set = TokenVerifier(config(None))
    with pytest.raises(AuthError) as info:
        no_key_set.verify(OLD.token("alice", no_key_set.config))
    assert info.value.code == "INVALID_TOKEN"
    other_issuer = TokenVerifier(config(None, issuer="https://idp.example"))
    with pytest.raises(AuthError):
        other_issuer.verify(mint_token("alice", config(None)))


def test_while_the_provider_is_down_an_unknown_key_is_neither_accepted_nor_refused():
    with JwksServer(OLD) as server:
        server.status = 503

        async def scenario(verifier):
            token = OLD.token("alice", verifier.config)
            verifier.jwks.min_interval = 3600.0  # spaces fetches while they work only
            with pytest.raises(KeysUnavailable):
                await verifier.authenticate(token)
            server.status = 200  # back: the next token that needs the keys fetches them
            return (await verifier.authenticate(token)).user_id, server.requests

        assert run(server, scenario) == ("alice", 3)  # at start, then one per token


def test_roles_come_from_the_token():
    verifier = TokenVerifier(config(None))
    cfg = verifier.config
    operator = verifier.verify(mint_token("olga", cfg, roles=["operator"]))
    customer = verifier.verify(mint_token("alice", cfg))
    assert (operator.roles, operator.is_operator) == (frozenset({"operator"}), True)
    assert (customer.roles, customer.is_operator) == (frozenset(), False)
    for roles in ("operator", [1], {"operator": True}):
        token = jwt.encode(
            {"sub": "x", "iss": ISSUER, "aud": AUDIENCE, "iat": 0, "exp": 2**40, "roles": roles},
            SECRET,
            "HS256",
        )
        with pytest.raises(AuthError) as info:
            verifier.verify(token)
        assert info.value.code == "INVALID_TOKEN"


def test_a_revoked_session_is_refused_even_when_remembered():
    revoked = RevokedSessions(Redis(), "t:")  # never asked: the copy is set by hand here
    verifier = TokenVerifier(config(None), revoked=revoked)
    token = mint_token("alice", verifier.config, session_id="s-1")
    other = mint_token("alice", verifier.config, session_id="s-2")
    assert verifier.verify(token).session_id == "s-1"  # remembered now
    revoked.sids = frozenset({"s-1"})
    with pytest.raises(AuthError) as info:
        verifier.verify(token)
    assert info.value.code == "TOKEN_REVOKED"
    assert verifier.verify(other).user_id == "alice"


def test_only_rs256_signature_keys_with_a_kid_are_taken_from_a_jwks():
    entry = OLD.jwk
    document = {
        "keys": [
            entry,
            {k: v for k, v in entry.items() if k != "kid"},
            entry | {"kid": "enc", "use": "enc"},
            entry | {"kid": "rs512", "alg": "RS512"},
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
            entry | {"kid": "broken", "n": "AQAB"[:2]},
            "not a key",
        ]
    }
    assert list(rsa_keys(document)) == ["k-old"]
    for bad in ({}, [], {"keys": "x"}, "keys"):
        with pytest.raises(ValueError):
            rsa_keys(bad)
