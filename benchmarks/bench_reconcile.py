"""How long one round of the reconciler's invariant checks (brokercore.consumers.reconcile.
check_invariants) takes on a big ledger.

    python benchmarks/bench_reconcile.py                  # 100,000 accounts, 1,000,000 trades
    python benchmarks/bench_reconcile.py --quick          # 10,000 accounts, 100,000 trades

Needs the development Postgres up (scripts/postgres/postgres.sh start). Set-up, undone at
the end: a fresh database with --accounts accounts, each funded through the journal with
cash and 10 symbols; --trades trades between them (two FILLED orders, two fills and a fee
each), and the accounts' cash and positions set to what the journal and fills say, so
the checks find nothing and read everything. Then --rounds rounds of the checks, each
timed, then each kind of check alone. It prints numbers; it asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import time
from datetime import UTC, datetime

import psycopg

from brokercore.broker.market import load_market
from brokercore.consumers.reconcile import INVARIANTS, check_invariants
from brokercore.db.migrations import drop_database
from harness import create_database, dev_server, interrupt_on_sigterm
from machine import machine_line

SYMBOLS = [f"S{i}" for i in range(10)]
SEED = """
INSERT INTO accounts (user_id, cash) SELECT 'u' || g, 0 FROM generate_series(1, %(accounts)s) g;
INSERT INTO funding (account_id, kind, amount)
    SELECT account_id, 'DEPOSIT', 10000000000 FROM accounts;
INSERT INTO funding (account_id, kind, symbol, quantity)
    SELECT account_id, 'SHARES_IN', s, 1000000
    FROM accounts CROSS JOIN unnest(%(symbols)s::text[]) s;
SELECT create_orders_partition('2026-03-02');
INSERT INTO orders (order_id, trade_date, account_id, symbol, side, type, time_in_force, price,
                    quantity, filled_quantity, filled_notional, status)
    SELECT 2 * t + k, '2026-03-02',
           CASE k WHEN 1 THEN t %% %(accounts)s + 1 ELSE (7 * t + 3) %% %(accounts)s + 1 END,
           'S' || t %% 10, CASE k WHEN 1 THEN 'BUY' ELSE 'SELL' END, 'LIMIT', 'DAY',
           1000, 10, 10, 10000, 'FILLED'
      FROM generate_series(0, %(trades)s - 1) t CROSS JOIN (VALUES (1), (2)) v (k);
SELECT setval('order_id_seq', 2 * %(trades)s + 2);
INSERT INTO fills (trade_id, side, order_id, account_id, symbol, price, quantity, executed_at)
    SELECT 'S' || (order_id - 1) / 2 %% 10 || ':' || (order_id - 1) / 2, side, order_id,
           account_id, symbol, 1000, 10, now()
      FROM orders;
INSERT INTO fee_income (trade_id, side, amount) SELECT trade_id, side, 3 FROM fills;
UPDATE accounts a SET cash = 10000000000 + e.net FROM (
    SELECT f.account_id, sum(CASE f.side WHEN 'SELL' THEN 10000 ELSE -10000 END - fi.amount) AS net
      FROM fills f JOIN fee_income fi USING (trade_id, side) GROUP BY f.account_id) e
 WHERE a.account_id = e.account_id;
INSERT INTO positions (account_id, symbol, quantity)
    SELECT a.account_id, s, 1000000 + coalesce(f.net, 0)
      FROM accounts a CROSS JOIN unnest(%(symbols)s::text[]) s LEFT JOIN (
           SELECT account_id, symbol, sum(CASE side WHEN 'BUY' THEN 10 ELSE -10 END) AS net
             FROM fills GROUP BY account_id, symbol) f
        ON f.account_id = a.account_id AND f.symbol = s;
ANALYZE;
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--accounts", type=int, default=100_000)
    parser.add_argument("--trades", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="10,000 accounts, 100,000 trades")
    args = parser.parse_args()
    if args.quick:
        args.accounts, args.trades = 10_000, 100_000
    interrupt_on_sigterm()
    print(machine_line("Postgres and whatever else runs here"))
    server = dev_server()
    name, url = create_database(server, "bench_reconcile")
    try:
        started = time.perf_counter()
        with psycopg.connect(url, autocommit=True) as conn:
            for statement in SEED.split(";\n"):
                if statement.strip():
                    conn.execute(
                        statement,
                        {"accounts": args.accounts, "trades": args.trades, "symbols": SYMBOLS},
                    )
            rows = {
                t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                for t in ("accounts", "positions", "funding", "orders", "fills")
            }
        print(
            f"seeded  : {', '.join(f'{n:,} {t}' for t, n in rows.items())} "
            f"in {time.perf_counter() - started:.1f} s"
        )
        sessions = {s: i.session for s, i in load_market("config/instruments.toml").items()}
        times = []
        with psycopg.connect(url, autocommit=True) as conn:
            for round_ in range(1, args.rounds + 1):
                started = time.perf_counter()
                found = check_invariants(conn, sessions, datetime.now(UTC))
                times.append(time.perf_counter() - started)
                print(f"round {round_} : {times[-1]:.2f} s, {len(found)} finding(s)")
            for invariant in INVARIANTS:  # where the time goes
                started = time.perf_counter()
                check_invariants(conn, sessions, datetime.now(UTC), invariants=[invariant])
                print(f"  {invariant.kind:<26} {time.perf_counter() - started:6.2f} s")
        print(f"checks  : median {statistics.median(times):.2f} s per round ({len(times)} rounds)")
    finally:
        drop_database(server, name)


if __name__ == "__main__":
    main()
