"""Bracket orders over REST on the OMS (brokercore.entry.brackets; docs/brackets.md):

    POST /api/v1/brackets, GET /api/v1/brackets[?status=&limit=&cursor=],
    GET /api/v1/brackets/{bracketId}, DELETE /api/v1/brackets/{bracketId}

each with a JWT bearer token and the OMS's per-user rate limit. Another user's bracket is
404, as one that does not exist. The POST answers 201 with the bracket once its entry
order is stored (its command handed to the publisher, as a new order's).
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TypeVar

from starlette.requests import Request
from starlette.responses import Response

from brokercore.entry.brackets import BracketRefusal, BracketRefused
from brokercore.entry.order_entry import Refusal
from brokercore.entry.requests import BracketList, BracketQuery, BracketView, NewBracket
from brokercore.services.http import (
    ApiError,
    decode_body,
    decode_query,
    guarded,
    json_response,
    path_id,
)
from brokercore.services.oms import Oms, entry, refusals
from brokercore.services.openapi import documented, refusal_codes

__all__ = ["BRACKET_ROUTES"]

T = TypeVar("T")

_STATUS = {
    BracketRefusal.BRACKET_NOT_FOUND: 404,
    BracketRefusal.BRACKET_NOT_ACTIVE: 409,
    BracketRefusal.BRACKET_INVALID_PRICES: 422,
}


async def _book(call: Awaitable[T]) -> T:
    """The bracket book's answer; a refusal (nothing changed) as an API error."""
    try:
        return await entry(call)
    except BracketRefused as e:
        raise ApiError(_STATUS[e.reason], e.reason.value, e.message) from None


def _bracket_id(request: Request) -> int:
    return path_id(request, "bracket_id", BracketRefusal.BRACKET_NOT_FOUND.value, "bracket")


@guarded
async def create_bracket(request: Request) -> Response:
    oms: Oms = request.app.state.oms
    principal = await oms.authorize(request)
    new = decode_body(NewBracket, await oms.body(request), "bracket")
    bracket, receipt = await _book(oms.brackets.create(principal.user_id, new))
    await oms.published(principal.user_id, receipt)
    return json_response(bracket, 201)


@guarded
async def list_brackets(request: Request) -> Response:
    oms: Oms = request.app.state.oms
    principal = await oms.authorize(request)
    query = decode_query(request, BracketQuery)
    return json_response(await _book(oms.brackets.list(principal.user_id, query)))


@guarded
async def get_bracket(request: Request) -> Response:
    oms: Oms = request.app.state.oms
    principal = await oms.authorize(request)
    return json_response(await _book(oms.brackets.get(principal.user_id, _bracket_id(request))))


@guarded
async def exit_bracket(request: Request) -> Response:
    oms: Oms = request.app.state.oms
    principal = await oms.authorize(request)
    return json_response(await _book(oms.brackets.exit(principal.user_id, _bracket_id(request))))


BRACKET_ROUTES = [
    documented(
        "POST",
        "/api/v1/brackets",
        create_bracket,
        "Place a bracket: a limit entry with a target and a stop-loss leg",
        tag="brackets",
        body=NewBracket,
        response=BracketView,
        status=201,
        links={"getBracketsBracketId": "/bracketId", "deleteBracketsBracketId": "/bracketId"},
        errors=refusals(Refusal.NO_ACCOUNT, Refusal.ACCOUNT_NOT_VERIFIED)
        | {
            422: "BRACKET_INVALID_PRICES, IDEMPOTENCY_KEY_REUSED, AMO_MARKET_OPEN, "
            "the order checks' codes for the entry and each leg's price"
        },
    ),
    documented(
        "GET",
        "/api/v1/brackets",
        list_brackets,
        "The caller's brackets, newest first, a page at a time",
        tag="brackets",
        query=BracketQuery,
        response=BracketList,
    ),
    documented(
        "GET",
        "/api/v1/brackets/{bracket_id}",
        get_bracket,
        "One bracket and its legs",
        tag="brackets",
        response=BracketView,
        errors=refusal_codes(_STATUS, BracketRefusal.BRACKET_NOT_FOUND),
    ),
    documented(
        "DELETE",
        "/api/v1/brackets/{bracket_id}",
        exit_bracket,
        "Exit a bracket: cancel its entry's open part and its targets (the position stays)",
        tag="brackets",
        response=BracketView,
        errors=refusal_codes(
            _STATUS, BracketRefusal.BRACKET_NOT_FOUND, BracketRefusal.BRACKET_NOT_ACTIVE
        ),
    ),
]
