"""The push provider's client: one notification handed to one device, over HTTP in an
FCM-style body. Retrying and dead-lettering are the router's (``Notifier.deliver``)."""

from __future__ import annotations

from typing import Any, Protocol

import httpx

from brokercore.realtime.channels import Notification

__all__ = ["PushFailed", "PushProvider", "push_payload", "HttpPushProvider"]


class PushFailed(Exception):
    """The provider did not take the push (refused, unreachable, timed out)."""


class PushProvider(Protocol):
    async def send(self, device_token: str, notification: Notification) -> None:
        """Hand one notification to the provider for one device; PushFailed if not."""


def push_payload(device_token: str, n: Notification) -> dict[str, Any]:
    """The FCM-style body of a push (data values are strings, as FCM requires)."""
    data = {"id": n.id, "kind": n.kind}
    if n.order_id is not None:
        data["orderId"] = str(n.order_id)
    return {
        "message": {
            "token": device_token,
            "notification": {"title": n.title, "body": n.body},
            "data": data,
        }
    }


class HttpPushProvider:
    """Posts pushes to an HTTP endpoint; any answer but 2xx, or no answer within
    ``timeout`` seconds, is a failure."""

    def __init__(self, url: str, timeout: float = 10.0):
        self.url = url
        self.client = httpx.AsyncClient(timeout=timeout)

    async def send(self, device_token: str, notification: Notification) -> None:
        try:
            response = await self.client.post(
                self.url, json=push_payload(device_token, notification)
            )
        except httpx.HTTPError as e:
            raise PushFailed(f"{type(e).__name__}: {e}") from None
        if not response.is_success:
            raise PushFailed(f"HTTP {response.status_code}: {response.text[:200]}")

    async def aclose(self) -> None:
        await self.client.aclose()
