"""GTT triggers over REST on the OMS (brokercore.entry.gtt; docs/gtt.md):

    POST /api/v1/gtt, GET /api/v1/gtt[?status=], GET, PATCH, DELETE /api/v1/gtt/{gttId}

each with a JWT bearer token and the OMS's per-user rate limit. Another user's GTT is
404, as one that does not exist.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Literal, TypeVar

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from brokercore.entry.gtt import GttRefusal, GttRefused
from brokercore.entry.order_entry import Refusal
from brokercore.entry.requests import GttChange, GttList, GttView, NewGtt
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

__all__ = ["GTT_ROUTES"]

T = TypeVar("T")

_STATUS = {
    GttRefusal.GTT_NOT_FOUND: 404,
    GttRefusal.GTT_NOT_ACTIVE: 409,
    GttRefusal.GTT_INVALID_LEGS: 422,
    GttRefusal.GTT_INVALID_EXPIRY: 422,
    GttRefusal.GTT_LIMIT: 422,
}


async def _book(call: Awaitable[T]) -> T:
    """The GTT book's answer; a refusal (nothing changed) as an API error."""
    try:
        return await entry(call)
    except GttRefused as e:
        raise ApiError(_STATUS[e.reason], e.reason.value, e.message) from None


def _gtt_id(request: Request) -> int:
    return path_id(request, "gtt_id", GttRefusal.GTT_NOT_FOUND.value, "GTT")


@guarded
async def create_gtt(request: Request) -> Response:
    oms: Oms = request.app.state.oms
    principal = await oms.authorize(request)
    gtt = decode_body(NewGtt, await oms.body(request), "GTT")
    return json_response(await _book(oms.gtts.create(principal.user_id, gtt)), 201)


class GttQuery(msgspec.Struct, frozen=True):
    """GET /api/v1/gtt's query: one status only."""

    status: Literal["ACTIVE", "TRIGGERED", "CANCELLED", "EXPIRED", "FAILED"] | None = None


@guarded
async def list_gtts(request: Request) -> Response:
    """The caller's GTTs, newest first; ``?status=`` one status only."""
    oms: Oms = request.app.state.oms
    principal = await oms.authorize(request)
    query = decode_query(request, GttQuery)
    return json_response(await _book(oms.gtts.list(principal.user_id, query.status)))


@guarded
async def get_gtt(request: Request) -> Response:
    oms: Oms = request.app.state.oms
    principal = await oms.authorize(request)
    return json_response(await _book(oms.gtts.get(principal.user_id, _gtt_id(request))))


@guarded
async def change_gtt(request: Request) -> Response:
    oms: Oms = request.app.state.oms
    principal = await oms.authorize(request)
    gtt_id = _gtt_id(request)
    change = decode_body(GttChange, await oms.body(request), "GTT change")
    return json_response(await _book(oms.gtts.change(principal.user_id, gtt_id, change)))


@guarded
async def cancel_gtt(request: Request) -> Response:
    oms: Oms = request.app.state.oms
    principal = await oms.authorize(request)
    return json_response(await _book(oms.gtts.cancel(principal.user_id, _gtt_id(request))))


GTT_ROUTES = [
    documented(
        "POST",
        "/api/v1/gtt",
        create_gtt,
        "Create a GTT (SINGLE or OCO): orders placed when the last price meets a trigger",
        tag="gtt",
        body=NewGtt,
        response=GttView,
        status=201,
        links={
            "getGttGttId": "/gttId",
            "patchGttGttId": "/gttId",
            "deleteGttGttId": "/gttId",
        },
        errors=refusals(Refusal.NO_ACCOUNT, Refusal.ACCOUNT_NOT_VERIFIED)
        | {
            422: "GTT_INVALID_LEGS, GTT_INVALID_EXPIRY, GTT_LIMIT, IDEMPOTENCY_KEY_REUSED, "
            "the order checks' codes for each leg"
        },
    ),
    documented(
        "GET",
        "/api/v1/gtt",
        list_gtts,
        "The caller's GTTs, newest first",
        tag="gtt",
        query=GttQuery,
        response=GttList,
    ),
    documented(
        "GET",
        "/api/v1/gtt/{gtt_id}",
        get_gtt,
        "One GTT",
        tag="gtt",
        response=GttView,
        errors=refusal_codes(_STATUS, GttRefusal.GTT_NOT_FOUND),
    ),
    documented(
        "PATCH",
        "/api/v1/gtt/{gtt_id}",
        change_gtt,
        "New legs (and expiry) of an active GTT",
        tag="gtt",
        body=GttChange,
        response=GttView,
        errors=refusal_codes(_STATUS, GttRefusal.GTT_NOT_FOUND, GttRefusal.GTT_NOT_ACTIVE)
        | {422: "GTT_INVALID_LEGS, GTT_INVALID_EXPIRY, the order checks' codes for each leg"},
    ),
    documented(
        "DELETE",
        "/api/v1/gtt/{gtt_id}",
        cancel_gtt,
        "Cancel an active GTT",
        tag="gtt",
        response=GttView,
        errors=refusal_codes(_STATUS, GttRefusal.GTT_NOT_FOUND, GttRefusal.GTT_NOT_ACTIVE),
    ),
]
