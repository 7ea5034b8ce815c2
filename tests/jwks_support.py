"""An identity provider's key set for the token tests: RSA signing keys with key ids, and
a real HTTP server (http.server in a thread) publishing them as a JWKS document that a
test changes at will (a rotation, a retired key, an outage)."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from brokercore.edge.auth import JwtConfig, mint_token


@dataclass(frozen=True)
class SigningKey:
    kid: str
    private_pem: str
    jwk: dict[str, Any]  # the public key as a JWKS entry

    def token(self, user_id: str, config: JwtConfig, **options: Any) -> str:
        """An RS256 token of ``config``'s issuer and audience signed by this key."""
        return mint_token(user_id, config, private_key=self.private_pem, kid=self.kid, **options)


def signing_key(kid: str) -> SigningKey:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    jwk = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True) | {
        "kid": kid,
        "use": "sig",
        "alg": "RS256",
    }
    return SigningKey(kid, private, jwk)


class JwksServer:
    """Serves ``document`` (JSON) at ``url``, or ``status`` when it is not 200; counts
    the requests. A context manager: the server runs inside it."""

    def __init__(self, *keys: SigningKey):
        self.document: object = {"keys": [k.jwk for k in keys]}
        self.status = 200
        self.requests = 0
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(  # a short poll: shutdown() waits for it
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/jwks.json"

    def publish(self, *keys: SigningKey) -> None:
        self.document = {"keys": [k.jwk for k in keys]}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests += 1
                body = json.dumps(server.document).encode()
                self.send_response(server.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # not a line per request in the test output

        return Handler

    def __enter__(self) -> JwksServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
