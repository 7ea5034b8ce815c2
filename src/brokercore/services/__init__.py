"""The platform's long-running processes, each started with ``brokercore service NAME``.

HTTP services are Starlette app factories (``create_app``) served by uvicorn; the others
are consumers and jobs with a ``main(argv)``. This package is the only place that maps the
library onto HTTP: the library below it imports no web framework.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import NamedTuple


class ServiceSpec(NamedTuple):
    module: str         # under brokercore.services
    http: bool          # an app factory served by uvicorn, else a main(argv)
    summary: str


SERVICES = {
    "oms": ServiceSpec("oms", True, "REST order entry: place and cancel orders"),
    "query": ServiceSpec("query", True, "REST reads: orders, history, portfolio, market data"),
    "ws": ServiceSpec("ws", True, "WebSocket gateway: order updates, trades, books"),
    "notifier-api": ServiceSpec("notifier_api", True,
                                "REST notification preferences, devices and price alerts"),
    "settlement": ServiceSpec("settlement", False, "consumer: fills into cash and positions"),
    "projector": ServiceSpec("projector", False,
                             "consumer: the read model, caches and real-time channels"),
    "notifier": ServiceSpec("notifier", False, "consumer: notifications, alerts and pushes"),
    "reconciler": ServiceSpec("reconciler", False,
                              "job: re-publishes the outbox, checks invariants, --report, "
                              "--notifications re-delivers dead-lettered pushes"),
}


def serve_http(module: str, host: str, port: int, log_level: str = "warning") -> int:
    """Serve ``brokercore.services.<module>:create_app`` with uvicorn (uvloop, httptools)."""
    import uvicorn
    uvicorn.run(f"brokercore.services.{module}:create_app", factory=True, host=host,
                port=port, loop="uvloop", http="httptools", log_level=log_level,
                access_log=False)
    return 0


def run_service(name: str, argv: Sequence[str] = (), host: str = "127.0.0.1",
                port: int = 8000, log_level: str = "warning") -> int:
    """Run the service ``name`` (a key of SERVICES) until it is stopped; its exit code."""
    spec = SERVICES[name]
    if spec.http:
        if argv:
            raise SystemExit(f"service {name} takes no arguments besides --host and --port")
        return serve_http(spec.module, host, port, log_level)
    main = importlib.import_module(f"brokercore.services.{spec.module}").main
    return main(list(argv)) or 0
