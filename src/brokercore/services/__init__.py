"""The platform's long-running processes, each started with ``brokercore service NAME``.

HTTP services are Starlette app factories (``create_app``) served by uvicorn; the others
are consumers and jobs with a ``main(argv)``. This package is the only place that maps the
library onto HTTP: the library below it imports no web framework.
"""

from __future__ import annotations

import argparse
import importlib
import os
from collections.abc import Sequence
from typing import NamedTuple


class ServiceSpec(NamedTuple):
    module: str  # under brokercore.services
    http: bool  # an app factory served by uvicorn, else a main(argv)
    summary: str


SERVICES = {
    "oms": ServiceSpec("oms", True, "REST order entry: place and cancel orders"),
    "query": ServiceSpec("query", True, "REST reads: orders, history, portfolio, market data"),
    "ws": ServiceSpec("ws", True, "WebSocket gateway: order updates, trades, books"),
    "funds": ServiceSpec(
        "funds", True, "REST deposits and withdrawals; the payment provider's payouts"
    ),
    "notifier-api": ServiceSpec(
        "notifier_api", True, "REST notification preferences, devices and price alerts"
    ),
    "accounts": ServiceSpec(
        "accounts", True, "REST identity: sign-up, login with TOTP, tokens and JWKS, KYC"
    ),
    "settlement": ServiceSpec("settlement", False, "consumer: fills into cash and positions"),
    "projector": ServiceSpec(
        "projector", False, "consumer: the read model, caches and real-time channels"
    ),
    "notifier": ServiceSpec("notifier", False, "consumer: notifications, alerts and pushes"),
    "triggers": ServiceSpec("triggers", False, "consumer: GTTs fired on trades, orders placed"),
    "monitor": ServiceSpec(
        "monitor", False, "job: every consumer's lag, logged; a WARNING past the bound"
    ),
    "scheduler": ServiceSpec(
        "scheduler",
        False,
        "job: the trading day's pre-open, uncross, open and close, once per symbol and day",
    ),
    "reconciler": ServiceSpec(
        "reconciler",
        False,
        "job: re-publishes the outbox, checks invariants, --report, "
        "--notifications re-delivers dead-lettered pushes",
    ),
}


def serve_http(name: str, module: str, argv: Sequence[str]) -> int:
    """Serve ``brokercore.services.<module>:create_app`` with uvicorn (uvloop, httptools)
    on the address the arguments give."""
    parser = argparse.ArgumentParser(
        prog=f"brokercore service {name}", description=SERVICES[name].summary
    )
    parser.add_argument("--host", default="127.0.0.1", help="default: %(default)s")
    parser.add_argument("--port", type=int, default=8000, help="default: %(default)s")
    parser.add_argument("--log-level", default="warning", help="uvicorn's (default: %(default)s)")
    args = parser.parse_args(argv)
    import uvicorn

    uvicorn.run(
        f"brokercore.services.{module}:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        log_level=args.log_level,
        access_log=False,
    )
    return 0


def run_service(name: str, argv: Sequence[str] = ()) -> int:
    """Run the service ``name`` (a key of SERVICES) with its arguments until it is
    stopped; its exit code."""
    spec = SERVICES[name]
    # libpq's default application_name: pg_stat_activity then tells whose each Postgres
    # backend is (benchmarks/bench_open.py splits their CPU by it); a URL's own wins.
    os.environ.setdefault("PGAPPNAME", f"brokercore-{name}")
    if spec.http:
        return serve_http(name, spec.module, argv)
    main = importlib.import_module(f"brokercore.services.{spec.module}").main
    return int(main(list(argv)) or 0)
