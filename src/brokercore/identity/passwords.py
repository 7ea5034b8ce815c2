"""Passwords: argon2id hashes and a check whose cost does not tell whether the user
exists.

The parameters are OWASP's recommended minimum for argon2id (19 MiB, 2 passes, 1 lane:
~20 ms of one core), not argon2-cffi's default (RFC 9106's low-memory profile: 64 MiB,
3 passes, 4 lanes, ~9 times the CPU): a login costs the service that much CPU, and an
attacker can make it pay for as many as the throttle lets through. A stored hash names
its own parameters, so raising them later keeps old hashes verifiable. Hashing costs
milliseconds on purpose, so callers on an event loop run these functions in a thread.

A login for an unknown email is checked against ``DUMMY_HASH`` (a hash of a random
password, made with the same parameters), so it costs what a wrong password of a real
user costs."""

from __future__ import annotations

import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

__all__ = ["MIN_PASSWORD", "MAX_PASSWORD", "DUMMY_HASH", "hash_password", "check_password"]

MIN_PASSWORD = 10
"""Characters a password has at least."""
MAX_PASSWORD = 256
"""Characters a password has at most (the hash's cost does not depend on it, but a body
of megabytes should not reach argon2)."""

_hasher = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)

DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))
"""What an unknown email's password is checked against."""


def hash_password(password: str) -> str:
    """The PHC string of ``password``'s argon2id hash (its own random salt)."""
    return _hasher.hash(password)


def check_password(stored: str | None, password: str) -> bool:
    """Whether ``password`` matches ``stored`` (a user's hash; None: no such user, checked
    against ``DUMMY_HASH`` at the same cost and refused)."""
    try:
        return _hasher.verify(stored or DUMMY_HASH, password) and stored is not None
    except (VerificationError, InvalidHashError):
        return False
