"""What a GTT's notification costs Postgres (migration 0019, docs/gtt.md): the backend's
CPU per GTT end (one UPDATE per GTT, as the placer and a per-GTT expiry issue them) with
the ``gtts_notice_on_end`` trigger disabled and enabled, alternately, and the CPU of the
notifier's read of what is owed (``brokercore.notify.owed``, once a second) on an empty
table.

    python benchmarks/bench_gtt_notices.py               # 4,000 GTTs per round, 3 rounds
    python benchmarks/bench_gtt_notices.py --gtts 20000 --rounds 5

On the development Postgres, a fresh database dropped at the end; CPU from /proc ticks of
the backend. Prints numbers; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics

import psycopg

from brokercore.db.migrations import drop_database
from brokercore.notify.owed import OWED_SQL
from harness import cpu_ticks, create_database, dev_server

TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")

_SEED = """
INSERT INTO gtts (account_id, symbol, kind, condition_1, trigger_1, order_1, expires_at)
SELECT a.account_id, 'RELIANCE', 'SINGLE', '>=', 1500000,
       '{"side": "BUY", "type": "MARKET", "quantity": 10}', now() + interval '1 day'
  FROM accounts a, generate_series(1, %s) RETURNING gtt_id"""


def backend_us(conn: psycopg.Connection, statements: list[tuple[str, tuple]]) -> float:
    """Backend CPU µs per statement, running them one by one."""
    pid = [conn.info.backend_pid]
    before = cpu_ticks({"pg": pid})["pg"]
    for query, params in statements:
        conn.execute(query, params)
    return (cpu_ticks({"pg": pid})["pg"] - before) / TICKS_PER_SECOND * 1e6 / len(statements)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gtts", type=int, default=4000, help="GTTs ended per round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    server = dev_server()
    name, url = create_database(server, "bench_gtt_notices")
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("INSERT INTO accounts (user_id, cash) VALUES ('bench', 0)")
            per_end: dict[str, list[float]] = {"DISABLE": [], "ENABLE": []}
            for _ in range(args.rounds):
                for mode, runs in per_end.items():
                    conn.execute(f"ALTER TABLE gtts {mode} TRIGGER gtts_notice_on_end")
                    ids = [i for (i,) in conn.execute(_SEED, (args.gtts,)).fetchall()]
                    end = "UPDATE gtts SET status = 'EXPIRED', updated_at = now() WHERE gtt_id = %s"
                    runs.append(backend_us(conn, [(end, (i,)) for i in ids]))
            conn.execute("DELETE FROM owed_notifications")
            poll = backend_us(conn, [(OWED_SQL, ([], 500))] * args.gtts)
        for mode, label in (("DISABLE", "without"), ("ENABLE", "with")):
            runs = per_end[mode]
            print(
                f"GTT end {label} the notice: Postgres CPU µs/GTT median "
                f"{statistics.median(runs):.0f} (rounds {', '.join(f'{r:.0f}' for r in runs)})"
            )
        print(f"owed notifications read (empty): Postgres CPU µs/read {poll:.0f}")
    finally:
        drop_database(server, name)


if __name__ == "__main__":
    main()
