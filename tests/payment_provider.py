"""A payment provider for the tests: a real local HTTP server that takes payouts and calls
the funds service back, signed, as a real provider would (brokercore.edge.signature).

``mode`` says what it does with a payout: "pay" (take it, then call back COMPLETED),
"fail" (take it, then call back FAILED), "hold" (take it, call back nothing: the test
calls back itself with ``callback``), "down" (answer 503, as a provider that is away).
``secret`` is the key it signs with: set it wrong to sign wrong. A payout sent again with
the same Idempotency-Key is the same payout (the same payoutId, paid once)."""

from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

from brokercore.edge.signature import SIGNATURE_HEADER, sign


class PaymentProvider:
    def __init__(self, secret: str):
        self.secret = secret
        self.mode = "pay"
        self.webhook_url = ""  # where the callbacks go: set once the funds service is up
        self.attempts: list[dict] = []  # every payout request, as sent
        self.payouts: dict[str, str] = {}  # Idempotency-Key -> payoutId
        self.callbacks: list[tuple[int, str, int]] = []  # (withdrawal, status, HTTP answer)
        self._lock = threading.Lock()
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                key = self.headers.get("Idempotency-Key", "")
                with provider._lock:
                    provider.attempts.append(body)
                    mode = provider.mode
                    payout_id = provider.payouts.setdefault(key, f"po_{uuid.uuid4().hex[:12]}")
                    if mode == "down":
                        del provider.payouts[key]
                if mode == "down":
                    self.answer(503, {"error": "down for maintenance"})
                    return
                self.answer(201, {"payoutId": payout_id})
                if mode in ("pay", "fail"):
                    threading.Thread(
                        target=provider.call_back, args=(body, mode, payout_id), daemon=True
                    ).start()

            def answer(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}/payouts"
        self._thread = threading.Thread(target=self.http.serve_forever, daemon=True)
        self._thread.start()

    def call_back(self, payout: dict, mode: str, payout_id: str) -> None:
        """The callback of a payout the provider took, as a real one calls back: once, a
        funds service that is away (its test over) is not called again."""
        try:
            if mode == "pay":
                self.callback(payout["withdrawalId"], "COMPLETED", payout_id)
            else:
                self.callback(
                    payout["withdrawalId"], "FAILED", payout_id, reason="the bank account is closed"
                )
        except httpx.TransportError:
            pass

    def callback(
        self,
        withdrawal_id: int,
        status: str,
        payout_id: str,
        *,
        reason: str | None = None,
        at: float | None = None,
    ) -> httpx.Response:
        """Call the funds service back on a payout, signed with ``secret`` at ``at``
        (unix seconds, default now); its answer (also kept in ``callbacks``)."""
        body = {"withdrawalId": withdrawal_id, "status": status, "payoutId": payout_id}
        if reason is not None:
            body["reason"] = reason
        data = json.dumps(body).encode()
        signature = sign(self.secret, data, int(time.time() if at is None else at))
        response = httpx.post(
            self.webhook_url,
            content=data,
            headers={"Content-Type": "application/json", SIGNATURE_HEADER: signature},
        )
        with self._lock:
            self.callbacks.append((withdrawal_id, status, response.status_code))
        return response

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()
        self._thread.join(10)
