"""A typed Python client of the platform's API through the edge: REST calls with the
library's own request and answer Structs, refusals as ApiError, and the WebSocket's
updates as an async iterator that resumes across reconnects. docs/client.md."""

from brokercore.client.api import Client, new_key
from brokercore.client.errors import ApiError
from brokercore.client.models import Deposit, Funds, Me, MfaChallenge, Tokens
from brokercore.client.stream import MarketChannel, Update

__all__ = [
    "ApiError",
    "Client",
    "Deposit",
    "Funds",
    "Me",
    "MarketChannel",
    "MfaChallenge",
    "Tokens",
    "Update",
    "new_key",
]
