"""Signed webhooks (brokercore.edge.signature): only the secret's holder, recently."""

from __future__ import annotations

import pytest

from brokercore.edge.signature import TOLERANCE, sign, verify

BODY = b'{"withdrawalId": 1, "status": "COMPLETED", "payoutId": "po_1"}'
NOW = 1_800_000_000


def test_a_signature_made_now_with_the_secret_verifies():
    assert verify("s3cret", sign("s3cret", BODY, NOW), BODY, NOW + 1.5)


@pytest.mark.parametrize(
    "header",
    [
        sign("another", BODY, NOW),  # not the secret
        sign("s3cret", BODY + b" ", NOW),  # another body
        sign("s3cret", BODY, NOW).replace(f"t={NOW}", f"t={NOW + 1}"),  # another time
        sign("s3cret", BODY, int(NOW - TOLERANCE - 1)),  # too old
        sign("s3cret", BODY, int(NOW + TOLERANCE + 1)),  # from the future
        sign("s3cret", BODY, NOW).split(",")[1],  # no time
        f"t={NOW}",  # no mac
        "",
        "t=-5,v1=00",
        f"t={NOW},v1=é" + "0" * 63,  # not ASCII
        f"t={'9' * 40},v1=00",  # a time beyond any clock
    ],
)
def test_anything_else_does_not(header):
    assert not verify("s3cret", header, BODY, NOW)


def test_one_of_several_macs_may_match_during_a_change_of_secret():
    old, new = sign("old", BODY, NOW), sign("new", BODY, NOW)
    both = f"{new},{old.split(',')[1]}"
    assert verify("old", both, BODY, NOW) and verify("new", both, BODY, NOW)
