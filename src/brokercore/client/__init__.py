"""A typed Python client of the platform's API through the edge: REST calls with the
library's own request and answer Structs, refusals as ApiError (a login that lacks its
second factor as SecondFactorRequired), and the WebSocket's updates as an async
iterator that resumes across reconnects. docs/client.md."""

from brokercore.client.api import Client, new_key
from brokercore.client.errors import ApiError, SecondFactorRequired
from brokercore.client.stream import MarketChannel, Update

__all__ = ["ApiError", "Client", "MarketChannel", "SecondFactorRequired", "Update", "new_key"]
