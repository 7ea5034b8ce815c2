"""The identity library's pieces that need no server: argon2id password hashes and the
TOTP step matching (brokercore.identity.passwords, brokercore.identity.totp)."""

from __future__ import annotations

from urllib.parse import parse_qs, urlparse

import pyotp

from brokercore.identity.passwords import DUMMY_HASH, check_password, hash_password
from brokercore.identity.totp import Enrolment, matching_step
from brokercore.identity.users import new_user_id

NOW = 1_800_000_015.0  # 15 s into step 60_000_000


def test_a_password_is_stored_as_an_argon2id_hash_with_its_own_salt():
    first, second = hash_password("correct horse battery"), hash_password("correct horse battery")
    assert first.startswith("$argon2id$") and first != second
    assert check_password(first, "correct horse battery")
    assert not check_password(first, "correct horse batterY")
    assert not check_password("not a hash", "correct horse battery")


def test_an_unknown_user_is_checked_against_the_dummy_hash_and_refused():
    assert DUMMY_HASH.startswith("$argon2id$")
    assert DUMMY_HASH.split("$")[3] == hash_password("x" * 10).split("$")[3]  # same cost
    assert not check_password(None, "anything at all")


def test_a_totp_code_matches_its_step_within_one_step_of_drift():
    secret = pyotp.random_base32()
    totp, step = pyotp.TOTP(secret), int(NOW // 30)
    for offset in (-1, 0, 1):
        assert matching_step(secret, totp.at(NOW + 30 * offset), NOW) == step + offset
    for offset in (-3, -2, 2, 3):
        code = totp.at(NOW + 30 * offset)
        if code not in {totp.at(NOW + 30 * o) for o in (-1, 0, 1)}:  # a 1e-6 collision
            assert matching_step(secret, code, NOW) is None


def test_only_six_ascii_digits_are_a_totp_code():
    secret = pyotp.random_base32()
    code = pyotp.TOTP(secret).at(NOW)
    for text in ("", code[:5], code + "0", " " + code[1:], "１２３４５６", "abcdef"):
        assert matching_step(secret, text, NOW) is None


def test_the_enrolment_uri_names_the_issuer_and_the_user():
    enrolment = Enrolment(pyotp.random_base32(), "alice@example.com")
    uri = urlparse(enrolment.otpauth_uri)
    assert (uri.scheme, uri.netloc) == ("otpauth", "totp")
    assert "alice%40example.com" in uri.path
    assert parse_qs(uri.query)["secret"] == [enrolment.secret]
    assert parse_qs(uri.query)["issuer"] == ["brokercore"]


def test_a_user_id_is_u_and_twelve_base32_characters():
    ids = {new_user_id() for _ in range(100)}
    assert len(ids) == 100
    for user_id in ids:
        assert len(user_id) == 13 and user_id[0] == "u"
        assert set(user_id[1:]) <= set("abcdefghijklmnopqrstuvwxyz234567")
