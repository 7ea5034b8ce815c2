"""The ``brokercore`` command line: ``brokercore shard`` runs a shard on a built-in load;
``brokercore engine`` runs the Kafka-fed engine daemon of one shard; ``brokercore plan``
shows (and writes) the shard plan; ``brokercore status`` is the operator's view of the
shards and the consumers; ``brokercore keys`` rotates the token signing keys and
``brokercore operator grant`` makes an operator."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from decimal import Decimal

from brokercore import __version__
from brokercore.config import EngineOptions, KafkaSettings
from brokercore.engine.instruments import Instrument, load_instruments
from brokercore.runtime._ringbuffer import WaitStrategy
from brokercore.runtime.driver import drive, print_progress
from brokercore.runtime.loadgen import HALF_BAND, MID, order_flow
from brokercore.runtime.shard import Shard

_WAITS = {
    "busy-spin": WaitStrategy.BUSY_SPIN,
    "yield": WaitStrategy.YIELD,
    "blocking": WaitStrategy.BLOCKING,
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="brokercore", description=__doc__)
    parser.add_argument("--version", action="version", version=__version__)
    commands = parser.add_subparsers(dest="command", required=True)
    shard = commands.add_parser(
        "shard",
        help="run one shard fed by a built-in deterministic order flow",
        description="Run one shard (its matcher pinned to --core) on a built-in, seeded "
        "order flow; print progress each second and a summary at the end.",
    )
    shard.add_argument("--core", type=int, help="CPU core for the matcher thread")
    symbols = shard.add_mutually_exclusive_group()
    symbols.add_argument(
        "--symbols",
        default="AAA,BBB,CCC,DDD",
        help="comma-separated symbol names (ids 1.., band around "
        f"{MID} ticks) (default: %(default)s)",
    )
    symbols.add_argument("--instruments", help="TOML file of [[instrument]] tables")
    shard.add_argument(
        "--orders", type=int, default=2_000_000, help="commands to send (default: %(default)s)"
    )
    shard.add_argument(
        "--batch", type=int, default=256, help="commands per submit (default: %(default)s)"
    )
    shard.add_argument(
        "--rate", type=float, help="commands per second (default: as fast as the shard takes them)"
    )
    shard.add_argument(
        "--wait",
        choices=_WAITS,
        default="blocking",
        help="wait strategy of the rings (default: %(default)s)",
    )
    shard.add_argument("--ring-capacity", type=int, default=1 << 16)
    shard.add_argument("--seed", type=int, default=1)

    engine = commands.add_parser(
        "engine",
        help="run the engine daemon of one shard, fed from Kafka",
        description="Consume partition SHARD of `orders` (read_committed), match, and "
        "publish events, dead letters and snapshots with the input offsets in "
        "Kafka transactions. A second daemon for the same shard is a hot "
        "standby. SIGTERM stops gracefully (commit, snapshot, exit 0). "
        "Defaults come from BROKERCORE_KAFKA_BOOTSTRAP, BROKERCORE_TOPIC_PREFIX, "
        "BROKERCORE_SHARDS and BROKERCORE_SHARD_PLAN.",
    )
    settings = KafkaSettings.from_env()
    engine.add_argument("--shard", type=int, required=True, help="the shard (partition) to run")
    engine.add_argument(
        "--shards",
        type=int,
        default=settings.shards,
        help="partitions of orders/events/snapshots (default: %(default)s)",
    )
    engine.add_argument(
        "--bootstrap",
        default=settings.bootstrap,
        help="Kafka bootstrap servers (default: %(default)s)",
    )
    engine.add_argument(
        "--topic-prefix",
        default=settings.topic_prefix,
        help="prefix of every topic and group name (default: none)",
    )
    engine.add_argument(
        "--instruments",
        default="config/instruments.toml",
        help="TOML file of [[instrument]] tables (default: %(default)s)",
    )
    engine.add_argument(
        "--plan",
        default=settings.shard_plan,
        help="shard plan file (default: BROKERCORE_SHARD_PLAN, else computed from the "
        "instruments' weights)",
    )
    engine.add_argument("--core", type=int, help="CPU core for the matcher thread")
    engine.add_argument(
        "--linger-ms",
        type=float,
        default=EngineOptions.linger * 1000,
        help="how long the publisher gathers batches before a commit (default: %(default)s)",
    )
    engine.add_argument(
        "--snapshot-every",
        type=int,
        default=EngineOptions.snapshot_every,
        help="commands between snapshots (default: %(default)s)",
    )
    engine.add_argument(
        "--snapshot-interval",
        type=float,
        default=EngineOptions.snapshot_interval,
        help="seconds between snapshots (default: %(default)s)",
    )
    engine.add_argument(
        "--no-transactions",
        action="store_true",
        help="publish without transactions (NOT exactly-once; only to "
        "measure what transactions cost)",
    )
    plan = commands.add_parser(
        "plan",
        help="show the shard plan (which shard each symbol is on), or write it to a file",
        description="Print the shard plan the OMS and the engine daemons use: the file "
        "BROKERCORE_SHARD_PLAN names if set, else the plan computed from the "
        "instruments' weights (hot symbols on shards of their own, the rest "
        "balanced). --write FILE computes it and writes it, for pinning with "
        "BROKERCORE_SHARD_PLAN=FILE.",
    )
    plan.add_argument(
        "--instruments",
        default="config/instruments.toml",
        help="TOML file of [[instrument]] tables (default: %(default)s)",
    )
    plan.add_argument(
        "--shards", type=int, default=settings.shards, help="shards (default: %(default)s)"
    )
    plan.add_argument(
        "--hot-ratio",
        type=float,
        default=1.0,
        help="hot: weight above this times total/shards (default: %(default)s; with --write)",
    )
    plan.add_argument("--write", metavar="FILE", help="compute the plan and write it to FILE")
    plan.add_argument(
        "--from-events",
        action="store_true",
        help="with --write: weigh each symbol by its orders in the events topic (the "
        "sessions Kafka retains; a symbol without any weighs 1) instead of its weight",
    )

    status = commands.add_parser(
        "status",
        help="the shards' daemons, orders/s and lag, and every consumer's lag",
        description="Print, for each shard, its symbols, the daemon holding its lease "
        "(active) and the hot standbys, orders/s (the orders partition's end, "
        "sampled --sample seconds apart) and the engine's lag; then each "
        "consumer's lag on events; then a WARNING for each partition past --bound "
        "and each shard without an active daemon. Exit 1 when a shard has no "
        "active daemon. Settings come from BROKERCORE_* variables.",
    )
    status.add_argument(
        "--bound",
        type=int,
        default=1_000,
        help="messages behind on a partition past which it warns (default: %(default)s)",
    )
    status.add_argument(
        "--sample", type=float, default=1.0, help="seconds to measure orders/s over (default: 1)"
    )

    move = commands.add_parser(
        "move",
        help="move a symbol to another shard, its book with it, at a session boundary",
        description="With the daemons of both shards stopped gracefully and the symbol's "
        "session closed: add the symbol's book to the target shard's snapshot (one Kafka "
        "transaction), then write the plan's next version to BROKERCORE_SHARD_PLAN. Start "
        "the daemons and restart the OMS afterwards (brokercore.kafka.move has the details).",
    )
    move.add_argument("symbol", help="the symbol to move")
    move.add_argument("--to", type=int, required=True, help="the target shard")
    move.add_argument(
        "--instruments",
        default="config/instruments.toml",
        help="TOML file of [[instrument]] tables (default: %(default)s)",
    )

    for action, summary in (
        ("halt", "halt a symbol: no matching, new orders refused, until a resume or the close"),
        ("close", "close a symbol's session now: DAY orders expire, new ones are refused"),
        ("resume", "re-open a halted symbol: a pre-open, then the uncross --uncross-after s later"),
    ):
        operator = commands.add_parser(action, help=summary, description=summary)
        operator.add_argument("symbol", help="the symbol")
        operator.add_argument("--id", help="this command's id, to run it again (default: new)")
        if action == "resume":
            operator.add_argument(
                "--uncross-after", type=float, default=300.0, help="seconds (default: 300)"
            )
    reband = commands.add_parser(
        "reband",
        help="move a symbol's circuit limits (the engine cancels what falls outside)",
        description="Publish a REBAND of SYMBOL into its partition of orders, exactly once "
        "per --id: its band becomes --low..--high (rupees, tick multiples), in any phase; "
        "the engine cancels the orders and stops outside it (docs/engine.md). The OMS "
        "keeps checking the instruments file's band until restarted with a new one.",
    )
    reband.add_argument("symbol", help="the symbol")
    reband.add_argument("--low", type=Decimal, required=True, help="the new lower limit (rupees)")
    reband.add_argument("--high", type=Decimal, required=True, help="the new upper limit (rupees)")
    reband.add_argument("--id", help="this command's id, to run it again (default: new)")

    token = commands.add_parser(
        "token",
        help="DEVELOPMENT ONLY: mint an HS256 JWT for a user (only with BROKERCORE_DEV_MODE=1)",
        description="Development only: print an HS256 token for USER signed with the "
        "development secret, for trying the APIs by hand and for tests. Refused unless "
        "BROKERCORE_DEV_MODE=1. Real users log in through the accounts service "
        "(docs/identity.md).",
    )
    token.add_argument("--user", required=True, help="the user id (the token's subject)")
    token.add_argument("--ttl", type=float, default=3600.0, help="seconds (default: 3600)")

    keys = commands.add_parser(
        "keys",
        help="the access tokens' signing keys: rotate, retire, list",
        description="The RSA keys the accounts service signs access tokens with, in "
        "Postgres (BROKERCORE_DATABASE_URL). rotate adds a key, which signs from now on; "
        "every key not retired stays in the JWKS, so tokens signed before still verify. "
        "retire KID stops publishing a key (once the tokens it signed have expired: 15 "
        "minutes after the rotation). Services fetch the JWKS again by themselves.",
    )
    key_actions = keys.add_subparsers(dest="action", required=True)
    key_actions.add_parser("rotate", help="add a signing key (the new current one)")
    retire = key_actions.add_parser("retire", help="stop publishing a key")
    retire.add_argument("kid", help="the key's id (brokercore keys list)")
    key_actions.add_parser("list", help="every key, newest first")

    operators = commands.add_parser(
        "operator",
        help="give a user the operator role (KYC decisions, the operator endpoints)",
        description="Give the user with EMAIL the operator role, audited with actor "
        "'cli' (there is no HTTP way to become an operator). The role is in the user's "
        "tokens from their next login or refresh.",
    )
    operator_actions = operators.add_subparsers(dest="action", required=True)
    grant = operator_actions.add_parser("grant", help="make a user an operator")
    grant.add_argument("email", help="the user's email")

    service = commands.add_parser(
        "service",
        help="run one of the platform's services (--list names them)",
        description="Run a platform service until SIGTERM: an HTTP app served by uvicorn "
        "(its arguments: --host, --port, --log-level), or a consumer or job. "
        "The arguments after NAME are the service's own (brokercore service "
        "NAME --help). Settings come from BROKERCORE_* variables.",
    )
    service.add_argument("--list", action="store_true", help="list the services and exit")
    service.add_argument("name", nargs="?", help="the service")
    service.add_argument("args", nargs=argparse.REMAINDER, help="its own arguments")

    openapi = commands.add_parser(
        "openapi",
        help="print the REST API's OpenAPI 3.1 document (docs/api.md)",
        description="Print the OpenAPI document the edge serves at /api/v1/openapi.json, "
        "generated from the services' routes; --asyncapi: the WebSocket gateway's.",
    )
    openapi.add_argument("--asyncapi", action="store_true", help="the AsyncAPI document")

    simulate = commands.add_parser(
        "simulate",
        help="a market of N traders trading through the API (make demo runs it)",
        description="Sign up and fund N traders through the edge, then trade with them "
        "over HTTP and WebSocket: market makers, takers, stop-loss users; a progress line "
        "each second and a summary (docs/client.md). Exit 1 if a request met a 5xx.",
    )
    simulate.add_argument("--api", default="http://127.0.0.1:8080", help="the edge's URL")
    simulate.add_argument("--url", help="the database, for the shares' transfer-in")
    simulate.add_argument("--traders", type=int, default=20, help="traders (default 20)")
    simulate.add_argument("--rate", type=float, default=20.0, help="requests/s (default 20)")
    simulate.add_argument("--duration", type=float, help="seconds (default: until Ctrl-C)")
    simulate.add_argument("--symbols", default="RELIANCE,TCS,INFY,ITC", help="comma-separated")
    simulate.add_argument("--open-burst", type=int, default=0, help="requests sent at once first")
    simulate.add_argument("--concurrency", type=int, default=64, help="requests in flight at most")
    simulate.add_argument("--seed", type=int, default=1, help="the random choices' seed")
    simulate.add_argument("--json", help="also write the summary here (JSON)")
    return parser


def run_simulate(args: argparse.Namespace) -> int:
    from brokercore.simulate import main as simulate

    return simulate(args)


def run_openapi(args: argparse.Namespace) -> int:
    from brokercore.services.openapi import document_bytes

    sys.stdout.write(document_bytes("asyncapi" if args.asyncapi else "openapi").decode() + "\n")
    return 0


def run_service(args: argparse.Namespace) -> int:
    from brokercore.services import SERVICES
    from brokercore.services import run_service as run

    if args.list or args.name is None:
        width = max(map(len, SERVICES))
        for name, spec in SERVICES.items():
            print(f"{name:<{width}}  {'http' if spec.http else 'process':<7}  {spec.summary}")
        return 0 if args.list else 2
    if args.name not in SERVICES:
        print(
            f"brokercore service: no service {args.name!r} (choose from {', '.join(SERVICES)})",
            file=sys.stderr,
        )
        return 2
    return run(args.name, args.args)


def run_plan(args: argparse.Namespace) -> int:
    from brokercore.kafka.placement import compute_plan, shard_plan, weights_from_events

    if args.from_events and not args.write:
        print("brokercore plan: --from-events computes a plan to --write", file=sys.stderr)
        return 2
    instruments = load_instruments(args.instruments)
    settings = KafkaSettings.from_env()
    if args.write:
        weights = {i.symbol: i.weight for i in instruments}
        if args.from_events:
            seen = weights_from_events(dataclasses.replace(settings, shards=args.shards))
            weights = {symbol: max(seen.get(symbol, 0.0), 1.0) for symbol in weights}
        plan = compute_plan(weights, args.shards, args.hot_ratio)
        with open(args.write, "wb") as f:
            f.write(plan.to_file())
    else:
        plan = shard_plan(dataclasses.replace(settings, shards=args.shards), instruments)
        print(f"from {settings.shard_plan or 'the weights in ' + args.instruments}")
    print("\n".join(plan.describe()))
    return 0


def deployment_kafka(env: Mapping[str, str] = os.environ) -> KafkaSettings:
    """The Kafka settings of the operator commands (status, halt, resume, reband): the
    BROKERCORE_* ones, and without BROKERCORE_SHARDS the partition count of the running
    deployment's ``orders`` topic (``make up`` runs 2 shards, the default is 4), which
    routes each symbol to the partition its daemon reads."""
    from brokercore.kafka.topics import topic_partitions

    settings = KafkaSettings.from_env(env)
    if "BROKERCORE_SHARDS" in env:
        return settings
    found = topic_partitions(settings.bootstrap, settings.orders_topic)
    return settings if found is None else dataclasses.replace(settings, shards=found)


def run_status(args: argparse.Namespace) -> int:
    from confluent_kafka import KafkaException

    try:
        return _status(args)
    except (KafkaException, TimeoutError) as e:
        print(f"brokercore status: Kafka: {str(e) or 'no answer in time'}", file=sys.stderr)
        return 2


def _status(args: argparse.Namespace) -> int:
    """Print the status (see the ``status`` command's help); 1 if a shard has no active
    daemon."""
    from brokercore.config import ServiceSettings
    from brokercore.kafka.daemon import lease_members
    from brokercore.kafka.lag import KafkaLagProbe, over_bound, summary
    from brokercore.kafka.placement import shard_plan
    from brokercore.services.monitor import platform_lags

    kafka, services = deployment_kafka(), ServiceSettings.from_env()
    plan = shard_plan(kafka, load_instruments(services.instruments))
    probe = KafkaLagProbe(kafka.bootstrap)
    before, started = probe.watermarks(kafka.orders_topic, kafka.shards), time.monotonic()
    time.sleep(args.sample)
    after, elapsed = probe.watermarks(kafka.orders_topic, kafka.shards), time.monotonic() - started
    daemons = lease_members(probe.admin, kafka)
    lags, problems = platform_lags(kafka, services.database_url, probe)
    engine = lags.pop("engine")
    engine_lag = {lag.partition: lag.lag for lag in engine}
    warnings = [
        f"shard {k}: no active daemon" for k in range(kafka.shards) if not daemons[k].active
    ]
    print(f"shards ({kafka.shards}, plan version {plan.version}):")
    for k in range(kafka.shards):
        rate = (after[k][1] - before[k][1]) / elapsed
        symbols = ", ".join(f"{s} (hot)" if s in plan.hot else s for s in plan.on_shard(k))
        print(
            f"  shard {k}: active {', '.join(daemons[k].active) or 'NONE'}; "
            f"standby {', '.join(daemons[k].standby) or 'none'}; "
            f"{rate:,.1f} orders/s; lag {engine_lag[k]:,}; {symbols or 'no symbols'}"
        )
    print("consumers (lag on events):")
    for name, readings in lags.items():
        print(f"  {summary(name, readings)}")
    warnings += [f"{problem} (not measured)" for problem in problems]
    warnings += [
        f"{lag.describe()}, past the bound of {args.bound:,}"
        for lag in over_bound(engine + [r for rs in lags.values() for r in rs], args.bound)
    ]
    for warning in warnings:
        print(f"WARNING: {warning}")
    return 1 if any(not daemons[k].active for k in range(kafka.shards)) else 0


def run_move(args: argparse.Namespace) -> int:
    from brokercore.kafka.move import move_symbol

    move_symbol(KafkaSettings.from_env(), load_instruments(args.instruments), args.symbol, args.to)
    return 0


def run_operator(args: argparse.Namespace) -> int:
    from brokercore.services.scheduler import operate

    band = (args.low, args.high) if args.command == "reband" else None
    return operate(
        deployment_kafka(),
        args.command,
        args.symbol,
        args.id,
        getattr(args, "uncross_after", 0.0),
        band,
    )


def run_token(args: argparse.Namespace) -> int:
    from brokercore.config import ServiceSettings
    from brokercore.edge.auth import JwtConfig, mint_token

    settings = ServiceSettings.from_env()
    if not settings.dev_mode:
        print(
            "brokercore token: refused: development tokens need BROKERCORE_DEV_MODE=1",
            file=sys.stderr,
        )
        return 2
    config = JwtConfig(settings.jwt_issuer, settings.jwt_audience, settings.jwt_hs256_secret)
    print(mint_token(args.user, config, ttl=args.ttl))
    return 0


def run_keys(args: argparse.Namespace) -> int:
    import psycopg

    from brokercore.config import ServiceSettings
    from brokercore.identity.keys import add_key, list_keys, retire_key

    async def run() -> int:
        async with await psycopg.AsyncConnection.connect(
            ServiceSettings.from_env().database_url, autocommit=True
        ) as conn:
            if args.action == "rotate":
                kid = await add_key(conn)
                print(f"signing key {kid} added: it signs from now on; retire the previous one")
                print("with `brokercore keys retire KID` once its tokens have expired (15 min)")
            elif args.action == "retire":
                if not await retire_key(conn, args.kid):
                    print(
                        f"brokercore keys retire: {args.kid} is not a published key, or it is "
                        "the only one (rotate first)",
                        file=sys.stderr,
                    )
                    return 2
                print(f"signing key {args.kid} retired: no longer published")
            else:
                for key in await list_keys(conn):
                    state = (
                        f"retired {key.retired_at:%Y-%m-%d %H:%M:%S %Z}"
                        if key.retired_at
                        else "published"
                    )
                    print(f"{key.kid}  created {key.created_at:%Y-%m-%d %H:%M:%S %Z}  {state}")
        return 0

    return asyncio.run(run())


def run_grant(args: argparse.Namespace) -> int:
    import psycopg

    from brokercore.config import ServiceSettings
    from brokercore.edge.auth import OPERATOR
    from brokercore.identity.audit import CLI_ACTOR
    from brokercore.identity.users import grant_role

    async def run() -> str | None:
        async with await psycopg.AsyncConnection.connect(
            ServiceSettings.from_env().database_url
        ) as conn:
            return await grant_role(conn, CLI_ACTOR, args.email.strip().lower(), OPERATOR)

    user_id = asyncio.run(run())
    if user_id is None:
        print(f"brokercore operator grant: no user with email {args.email!r}", file=sys.stderr)
        return 2
    print(f"{args.email} (user {user_id}) is an operator from their next login or refresh")
    return 0


def _instruments(args: argparse.Namespace) -> list[Instrument]:
    if args.instruments:
        return load_instruments(args.instruments)
    names = [name.strip() for name in args.symbols.split(",") if name.strip()]
    per_book = args.orders // max(len(names), 1) + 1  # id maps sized for the whole run
    return [
        Instrument(name, n, MID - HALF_BAND, MID + HALF_BAND, session_orders=per_book)
        for n, name in enumerate(names, 1)
    ]


def run_shard(args: argparse.Namespace) -> int:
    instruments = _instruments(args)
    if not instruments:
        print("brokercore shard: no instruments", file=sys.stderr)
        return 2
    shard = Shard.from_instruments(
        instruments, core=args.core, wait=_WAITS[args.wait], ring_capacity=args.ring_capacity
    )
    driver_cores = os.sched_getaffinity(0) - ({args.core} if args.core is not None else set())
    if driver_cores:
        os.sched_setaffinity(0, driver_cores)  # keep this (feeder) thread off the matcher
    print(
        f"brokercore shard: {len(instruments)} symbols, matcher on core "
        f"{args.core if args.core is not None else 'any'}, wait {args.wait}, "
        f"{args.orders:,} commands, batch {args.batch}"
        + (f", {args.rate:,.0f} commands/s" if args.rate else ", as fast as possible"),
        file=sys.stderr,
    )
    # Generated up front, so that making the flow never stalls the measured pipeline.
    flow = list(order_flow([i.symbol_id for i in instruments], args.orders, args.seed))
    shard.start()
    report = drive(shard, flow, batch=args.batch, rate=args.rate, progress=print_progress)
    for line in report.summary_lines():
        print(line)
    if shard.last_error is not None:
        print(f"matcher failed: {shard.last_error!r}", file=sys.stderr)
        return 1
    return 0


def run_engine(args: argparse.Namespace) -> int:
    try:
        from brokercore.kafka.daemon import EngineDaemon
    except ImportError as e:
        print(
            f"brokercore engine needs the Kafka client: pip install 'brokercore[kafka]' ({e})",
            file=sys.stderr,
        )
        return 2
    settings = KafkaSettings(args.bootstrap, args.topic_prefix, args.shards, args.plan)
    settings.validate()
    options = EngineOptions(
        core=args.core,
        linger=args.linger_ms / 1000,
        snapshot_every=args.snapshot_every,
        snapshot_interval=args.snapshot_interval,
        transactions=not args.no_transactions,
    )
    daemon = EngineDaemon(settings, args.shard, load_instruments(args.instruments), options)
    signal.signal(signal.SIGTERM, lambda *_: daemon.stop())
    signal.signal(signal.SIGINT, lambda *_: daemon.stop())
    code = daemon.run()
    # Exit without destroying the Kafka clients: after a failure a thread may still be
    # in a librdkafka call, and destroying a producer with a transaction call in flight
    # aborts the process. What matters is committed in Kafka already.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        commands = {
            "engine": run_engine,
            "simulate": run_simulate,
            "plan": run_plan,
            "move": run_move,
            "status": run_status,
            "shard": run_shard,
            "token": run_token,
            "keys": run_keys,
            "operator": run_grant,
            "halt": run_operator,
            "close": run_operator,
            "resume": run_operator,
            "reband": run_operator,
            "service": run_service,
            "openapi": run_openapi,
        }
        return commands[args.command](args)
    except (ValueError, OSError) as e:
        print(f"brokercore {args.command}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
