"""Signed webhooks: a caller outside (the payment provider) proves a callback is its own.

The header is ``X-Signature: t=<unix seconds>,v1=<hex>``, where the hex is the
HMAC-SHA256 of ``b"<t>." + body`` under the secret both sides share (the scheme of
Stripe's webhooks). The time is signed with the body, and a callback whose time is more
than ``tolerance`` seconds away from ours is refused, so a recorded callback cannot be
played again later; a replay within that window changes nothing when the receiver is
idempotent, as the funds service is.
"""

from __future__ import annotations

import hashlib
import hmac

__all__ = ["SIGNATURE_HEADER", "TOLERANCE", "sign", "verify"]

SIGNATURE_HEADER = "X-Signature"

TOLERANCE = 300.0
"""Seconds a signed time may be off ours, either way."""


def _mac(secret: str, timestamp: int, body: bytes) -> str:
    return hmac.new(secret.encode(), b"%d." % timestamp + body, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The ``X-Signature`` value of ``body`` sent at ``timestamp`` (unix seconds)."""
    return f"t={timestamp},v1={_mac(secret, timestamp, body)}"


def verify(secret: str, header: str, body: bytes, now: float, tolerance: float = TOLERANCE) -> bool:
    """Whether ``header`` signs ``body`` under ``secret`` at a time within ``tolerance``
    of ``now`` (any one of several ``v1`` values may match, as during a change of
    secret); compared in constant time."""
    timestamp: int | None = None
    macs: list[str] = []
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        if name == "t" and value.isascii() and value.isdigit() and len(value) <= 12:
            timestamp = int(value)
        elif name == "v1" and value.isascii():  # compare_digest takes ASCII text only
            macs.append(value)
    if timestamp is None or abs(now - timestamp) > tolerance:
        return False
    expected = _mac(secret, timestamp, body)
    return any(hmac.compare_digest(expected, mac) for mac in macs)
