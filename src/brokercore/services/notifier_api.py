"""Notification preferences, push devices and price alerts over REST (a thin Starlette app).

    brokercore service notifier-api --port 8003      (settings: BROKERCORE_* variables)

    PUT, GET   /api/v1/notifications/preferences        {"FILL": "PUSH", ...}
    POST       /api/v1/notifications/devices            {"deviceToken": "..."}
    DELETE     /api/v1/notifications/devices/{deviceToken}
    POST, GET  /api/v1/alerts                           {"symbol": "RELIANCE", "price": "2850.00"}
    DELETE     /api/v1/alerts/{alertId}
    GET        /api/v1/notifications?unreadOnly=&limit=&cursor=   (the inbox)
    POST, GET  /api/v1/postbacks                        {"url": "https://..."}
    DELETE     /api/v1/postbacks/{postbackId}
    POST       /api/v1/notifications/{notificationId}/read
    POST       /api/v1/notifications/read-all

Each with a JWT bearer token; a user sees and changes only their own. Authentication,
the body limit and the error bodies are the OMS's (brokercore.services.http), the rate limit is the
reads' budget (BROKERCORE_READ_RATE_LIMIT_*); the logic is in brokercore.notify.preferences
brokercore.notify.alerts, brokercore.notify.inbox and brokercore.notify.postbacks.
"""

from __future__ import annotations

import msgspec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response

from brokercore.broker.market import load_market
from brokercore.broker.money import to_paise
from brokercore.config import ServiceSettings
from brokercore.engine.records import INT64_MAX
from brokercore.entry.requests import FieldError
from brokercore.notify import inbox, postbacks
from brokercore.notify.alerts import (
    CREATE_SQL,
    DELETE_SQL,
    LIST_SQL,
    MAX_ALERTS_PER_USER,
    AlertBody,
    AlertRequest,
    alert_body,
    initial_side,
)
from brokercore.notify.preferences import (
    DeviceRequest,
    Preferences,
    add_device,
    load_preferences,
    remove_device,
    store_preferences,
)
from brokercore.services.http import (
    ApiError,
    LimitedApi,
    decode_body,
    decode_query,
    guarded,
    service_app,
)
from brokercore.services.http import json_response as json
from brokercore.services.openapi import documented


class Notifications(LimitedApi):
    """The pieces one API process holds, made at start-up and closed at shutdown."""

    def __init__(self, settings: ServiceSettings):
        super().__init__(
            settings,
            "notify-ratelimit:",
            settings.read_rate_limit_burst,
            settings.read_rate_limit_per_second,
            max_connections=10,
            max_redis=32,
        )
        self.market = load_market(settings.instruments)
        self.private_hosts = settings.postback_private_hosts


class Alerts(msgspec.Struct, frozen=True):
    alerts: list[AlertBody]


class MarkedRead(msgspec.Struct, frozen=True):
    marked: int  # notifications this call marked read


class Postbacks(msgspec.Struct, frozen=True):
    postbacks: list[postbacks.Registration]


def _state(request: Request) -> Notifications:
    api: Notifications = request.app.state.notifications
    return api


# --- preferences and devices ----------------------------------------------------------


@guarded
async def get_preferences(request: Request) -> Response:
    api = _state(request)
    principal = await api.authorize(request)
    async with api.pool.connection() as conn:
        return json(await load_preferences(conn, principal.user_id))


@guarded
async def put_preferences(request: Request) -> Response:
    api = _state(request)
    principal = await api.authorize(request)
    preferences = decode_body(Preferences, await api.body(request), "preferences")
    async with api.pool.connection() as conn:
        await store_preferences(conn, principal.user_id, preferences)
    return json(preferences)


@guarded
async def register_device(request: Request) -> Response:
    api = _state(request)
    principal = await api.authorize(request)
    device = decode_body(DeviceRequest, await api.body(request), "device")
    async with api.pool.connection() as conn:
        new = await add_device(conn, principal.user_id, device.device_token)
    return json(device, 201 if new else 200)


@guarded
async def unregister_device(request: Request) -> Response:
    api = _state(request)
    principal = await api.authorize(request)
    token = request.path_params["device_token"]
    async with api.pool.connection() as conn:
        if not await remove_device(conn, principal.user_id, token):
            raise ApiError(404, "DEVICE_NOT_FOUND", "no such device of yours")
    return Response(status_code=204)


# --- price alerts -----------------------------------------------------------------------


@guarded
async def create_alert(request: Request) -> Response:
    api = _state(request)
    principal = await api.authorize(request)
    alert = decode_body(AlertRequest, await api.body(request), "alert")
    if alert.symbol not in api.market:
        raise ApiError(404, "UNKNOWN_SYMBOL", f"no symbol {alert.symbol}")
    try:
        price = to_paise(alert.price)
    except ValueError:
        price = 0
    if not 0 < price <= INT64_MAX:
        raise ApiError(
            422,
            "INVALID_REQUEST",
            "the alert is invalid",
            [FieldError("price", "must be a positive amount in rupees with at most 2 decimals")],
        )
    async with api.pool.connection() as conn:
        side = await initial_side(conn, alert.symbol, price)
        row = await (
            await conn.execute(
                CREATE_SQL,
                {
                    "user": principal.user_id,
                    "symbol": alert.symbol,
                    "price": price,
                    "side": side,
                    "limit": MAX_ALERTS_PER_USER,
                },
            )
        ).fetchone()
    if row is None:
        raise ApiError(
            409, "TOO_MANY_ALERTS", f"a user may have at most {MAX_ALERTS_PER_USER} price alerts"
        )
    return json(alert_body(row), 201)


@guarded
async def list_alerts(request: Request) -> Response:
    api = _state(request)
    principal = await api.authorize(request)
    async with api.pool.connection() as conn:
        rows = await (await conn.execute(LIST_SQL, (principal.user_id,))).fetchall()
    return json(Alerts([alert_body(row) for row in rows]))


@guarded
async def delete_alert(request: Request) -> Response:
    api = _state(request)
    principal = await api.authorize(request)
    raw = request.path_params["alert_id"]
    if raw.isascii() and raw.isdigit() and len(raw) <= 18:
        async with api.pool.connection() as conn:
            cursor = await conn.execute(DELETE_SQL, (int(raw), principal.user_id))
        if cursor.rowcount == 1:
            return Response(status_code=204)
    raise ApiError(404, "ALERT_NOT_FOUND", f"no alert {raw[:40]} of yours")


# --- the inbox ---------------------------------------------------------------------------


def _invalid_query(field: FieldError) -> ApiError:
    return ApiError(422, "INVALID_REQUEST", "the query is invalid", [field])


@guarded
async def list_inbox(request: Request) -> Response:
    api = _state(request)
    principal = await api.authorize(request)
    query = decode_query(request, inbox.InboxQuery)
    async with api.pool.connection() as conn:
        try:
            page = await inbox.inbox_page(conn, principal.user_id, query)
        except inbox.BadCursor as e:
            raise _invalid_query(FieldError("cursor", str(e))) from None
    return json(page)


@guarded
async def read_notification(request: Request) -> Response:
    api = _state(request)
    principal = await api.authorize(request)
    notification_id = request.path_params["notification_id"]
    async with api.pool.connection() as conn:
        item = await inbox.mark_read(conn, principal.user_id, notification_id)
    if item is None:
        raise ApiError(
            404, "NOTIFICATION_NOT_FOUND", f"no notification {notification_id[:40]} of yours"
        )
    return json(item)


@guarded
async def read_all_notifications(request: Request) -> Response:
    api = _state(request)
    principal = await api.authorize(request)
    async with api.pool.connection() as conn:
        marked = await inbox.mark_all_read(conn, principal.user_id)
    return json(MarkedRead(marked))


# --- postbacks --------------------------------------------------------------------------


@guarded
async def create_postback(request: Request) -> Response:
    api = _state(request)
    principal = await api.authorize(request)
    body = decode_body(postbacks.PostbackRequest, await api.body(request), "postback")
    problem = postbacks.url_problem(body.url, api.private_hosts)
    if problem is not None:
        raise ApiError(
            422, "INVALID_REQUEST", "the postback is invalid", [FieldError("url", problem)]
        )
    async with api.pool.connection() as conn:
        try:
            registration = await postbacks.register(conn, principal.user_id, body.url)
        except postbacks.TooManyPostbacks:
            raise ApiError(
                409,
                "TOO_MANY_POSTBACKS",
                f"a user may have at most {postbacks.MAX_POSTBACKS} postback URLs",
            ) from None
    return json(registration, 201)


@guarded
async def list_postbacks(request: Request) -> Response:
    api = _state(request)
    principal = await api.authorize(request)
    async with api.pool.connection() as conn:
        return json(Postbacks(await postbacks.list_postbacks(conn, principal.user_id)))


@guarded
async def delete_postback(request: Request) -> Response:
    api = _state(request)
    principal = await api.authorize(request)
    raw = request.path_params["postback_id"]
    if raw.isascii() and raw.isdigit() and len(raw) <= 18:
        async with api.pool.connection() as conn:
            if await postbacks.delete_postback(conn, principal.user_id, int(raw)):
                return Response(status_code=204)
    raise ApiError(404, "POSTBACK_NOT_FOUND", f"no postback {raw[:40]} of yours")


def create_app(settings: ServiceSettings | None = None) -> Starlette:
    settings = settings or ServiceSettings.from_env()
    return service_app(
        "notifications",
        lambda: Notifications(settings),
        [
            documented(
                "GET",
                "/api/v1/notifications/preferences",
                get_preferences,
                "How the caller hears of each kind of event",
                tag="notifications",
                response=Preferences,
            ),
            documented(
                "PUT",
                "/api/v1/notifications/preferences",
                put_preferences,
                "Replace the preferences (a kind left out is IN_APP)",
                tag="notifications",
                body=Preferences,
                response=Preferences,
            ),
            documented(
                "POST",
                "/api/v1/notifications/devices",
                register_device,
                "Register a push device (201 new, 200 known)",
                tag="notifications",
                body=DeviceRequest,
                response=DeviceRequest,
                status=201,
                also=(200,),
            ),
            documented(
                "DELETE",
                "/api/v1/notifications/devices/{device_token}",
                unregister_device,
                "Unregister a push device",
                tag="notifications",
                status=204,
                errors={404: "DEVICE_NOT_FOUND"},
            ),
            documented(
                "GET",
                "/api/v1/notifications",
                list_inbox,
                "The inbox: unread first, then newest, a page at a time",
                tag="notifications",
                query=inbox.InboxQuery,
                response=inbox.InboxPage,
            ),
            documented(
                "POST",
                "/api/v1/notifications/read-all",
                read_all_notifications,
                "Mark every notification read",
                tag="notifications",
                response=MarkedRead,
            ),
            documented(
                "POST",
                "/api/v1/notifications/{notification_id}/read",
                read_notification,
                "Mark one notification read",
                tag="notifications",
                response=inbox.InboxItem,
                errors={404: "NOTIFICATION_NOT_FOUND"},
            ),
            documented(
                "POST",
                "/api/v1/alerts",
                create_alert,
                "A price alert: a notification when the last price crosses it",
                tag="alerts",
                body=AlertRequest,
                response=AlertBody,
                status=201,
                links={"deleteAlertsAlertId": "/alertId"},
                errors={404: "UNKNOWN_SYMBOL", 409: "TOO_MANY_ALERTS"},
            ),
            documented(
                "GET",
                "/api/v1/alerts",
                list_alerts,
                "The caller's price alerts",
                tag="alerts",
                response=Alerts,
            ),
            documented(
                "DELETE",
                "/api/v1/alerts/{alert_id}",
                delete_alert,
                "Delete a price alert",
                tag="alerts",
                status=204,
                errors={404: "ALERT_NOT_FOUND"},
            ),
            documented(
                "POST",
                "/api/v1/postbacks",
                create_postback,
                "Register a postback URL (its signing secret is in this answer only)",
                tag="postbacks",
                body=postbacks.PostbackRequest,
                response=postbacks.Registration,
                status=201,
                links={"deletePostbacksPostbackId": "/id"},
                errors={409: "TOO_MANY_POSTBACKS"},
            ),
            documented(
                "GET",
                "/api/v1/postbacks",
                list_postbacks,
                "The caller's postback URLs",
                tag="postbacks",
                response=Postbacks,
            ),
            documented(
                "DELETE",
                "/api/v1/postbacks/{postback_id}",
                delete_postback,
                "Delete a postback URL",
                tag="postbacks",
                status=204,
                errors={404: "POSTBACK_NOT_FOUND"},
            ),
        ],
    )
