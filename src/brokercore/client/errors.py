"""The exceptions the client raises: ApiError for a refusal, the platform's error body
(docs/errors.md) with the HTTP status, so callers branch on ``code``; and
SecondFactorRequired, the client's own, when a login needs a code it was not given."""

from __future__ import annotations

from typing import Any

import msgspec

from brokercore.identity.answers import MfaChallenge

__all__ = ["ApiError", "SecondFactorRequired", "error_of"]


class ApiError(Exception):
    """A refused request: the HTTP ``status``, the stable ``code`` and the ``message``;
    ``details`` holds the error body's other members (``fields`` of INVALID_REQUEST)
    and ``retry_after`` the seconds a 429 or 503 asked to wait."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: dict[str, Any] | None = None,
        retry_after: float | None = None,
    ):
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.details = details or {}
        self.retry_after = retry_after


class SecondFactorRequired(Exception):
    """The password was right but the user has a second factor, and ``login`` was given
    no code: the server's ``challenge`` goes to ``Client.login_totp`` with one. Not a
    refusal of the server (which answered 200), so no ApiError and no error code."""

    def __init__(self, challenge: MfaChallenge):
        super().__init__("this user needs a second factor: give login a code")
        self.challenge = challenge


class _Body(msgspec.Struct):
    error: dict[str, Any]


_decode = msgspec.json.Decoder(_Body).decode


def error_of(status: int, body: bytes, retry_after: str | None = None) -> ApiError:
    """The ApiError an error answer stands for; a body without the error shape (a proxy's
    page) becomes code ``HTTP_<status>`` with the start of the body as its message."""
    wait = float(retry_after) if retry_after and retry_after.isdigit() else None
    try:
        error = dict(_decode(body).error)
    except (msgspec.DecodeError, msgspec.ValidationError):
        text = body[:200].decode(errors="replace")
        return ApiError(status, f"HTTP_{status}", text, retry_after=wait)
    code, message = str(error.pop("code", f"HTTP_{status}")), str(error.pop("message", ""))
    return ApiError(status, code, message, error, wait)
