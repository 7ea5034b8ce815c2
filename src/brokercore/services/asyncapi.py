"""The WebSocket gateway described: an AsyncAPI 3.0 document generated, as the OpenAPI
one (brokercore.services.openapi), from the msgspec Structs that define the frames.

A socket route is declared as a ``DocumentedSocket``, which keeps the frames a client
may send and those the gateway sends on the route; the document is built by
walking the apps' WebSocket routes. The query service serves it at
``GET /api/v1/asyncapi.json``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import msgspec
from starlette.routing import BaseRoute, WebSocketRoute

from brokercore import __version__

__all__ = ["Channel", "DocumentedSocket", "asyncapi_document"]

Document = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Channel:
    """A socket route's frames: ``receives`` those a client sends, ``sends`` those the
    gateway sends; ``query`` the connect URL's query parameters (name: JSON schema)."""

    name: str
    summary: str
    description: str
    receives: Sequence[type[msgspec.Struct]]
    sends: Sequence[type[msgspec.Struct]]
    query: dict[str, Document] = dataclasses.field(default_factory=dict)


class DocumentedSocket(WebSocketRoute):
    """A Starlette WebSocket route carrying its ``Channel``."""

    def __init__(self, path: str, endpoint: Callable[..., Any], channel: Channel) -> None:
        super().__init__(path, endpoint)
        self.channel = channel


def asyncapi_document(routes: Iterable[BaseRoute]) -> Document:
    """The AsyncAPI 3.0 document of ``routes``' WebSocket routes; ValueError names one
    without a ``Channel``."""
    sockets: list[DocumentedSocket] = []
    for route in routes:
        if isinstance(route, WebSocketRoute):
            if not isinstance(route, DocumentedSocket):
                raise ValueError(f"the socket {route.path} is not documented")
            sockets.append(route)
    kinds = list(
        dict.fromkeys(kind for s in sockets for kind in (*s.channel.receives, *s.channel.sends))
    )
    _, schemas = msgspec.json.schema_components(kinds, ref_template="#/components/schemas/{name}")
    messages = {
        kind.__name__: {
            "name": kind.__name__,
            "title": _tag(kind),
            "summary": (kind.__doc__ or _tag(kind)).split("\n\n")[0].replace("\n", " ").strip(),
            "contentType": "application/json",
            "payload": {"$ref": f"#/components/schemas/{kind.__name__}"},
        }
        for kind in kinds
    }
    channels: Document = {}
    operations: Document = {}
    for socket in sockets:
        channel = socket.channel
        channels[channel.name] = {
            "address": socket.path,
            "title": channel.summary,
            "description": channel.description,
            "messages": {
                kind.__name__: {"$ref": f"#/components/messages/{kind.__name__}"}
                for kind in (*channel.receives, *channel.sends)
            },
            "bindings": {"ws": {"query": {"type": "object", "properties": channel.query}}},
        }
        for action, frames in (("receive", channel.receives), ("send", channel.sends)):
            operations[f"{action}{channel.name.capitalize()}"] = {
                "action": action,
                "channel": {"$ref": f"#/channels/{channel.name}"},
                "summary": "frames a client sends" if action == "receive" else "frames sent",
                "security": [{"$ref": "#/components/securitySchemes/bearer"}],
                "messages": [
                    {"$ref": f"#/channels/{channel.name}/messages/{kind.__name__}"}
                    for kind in frames
                ],
            }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "brokercore WebSocket gateway",
            "version": __version__,
            "description": "Order updates, notifications and market data pushed live; "
            "every frame is a JSON text message (docs/errors.md, WebSocket gateway).",
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": {
            "messages": messages,
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "Authorization: Bearer, or ?token= for browsers",
                }
            },
        },
    }


def _tag(kind: type[msgspec.Struct]) -> str:
    """A frame's discriminator value (its ``type`` or ``op``)."""
    info = kind.__struct_config__
    return str(info.tag) if info.tag is not None else kind.__name__
