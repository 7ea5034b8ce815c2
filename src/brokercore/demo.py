"""Demo accounts for the development stack (`make up`): two users with cash and shares.

    python -m brokercore.demo [--url URL]

Idempotent: existing demo accounts are left as they are. Shares deposited outside
trading go into the ledger (``positions``) and the read model (``read_model.positions``)
in one transaction: the projector only sees trades.
"""

from __future__ import annotations

import argparse

import psycopg

from brokercore.migrations import database_url

__all__ = ["DEMO_USERS", "seed_demo"]

RUPEE = 100     # paise
DEMO_USERS = {
    "alice": (10_000_000 * RUPEE, {"RELIANCE": (500, 14_250 * RUPEE),
                                   "TCS": (200, 20_100 * RUPEE)}),
    "bob": (5_000_000 * RUPEE, {"RELIANCE": (1_000, 13_900 * RUPEE),
                                "INFY": (800, 7_450 * RUPEE), "ITC": (5_000, 2_150 * RUPEE)}),
}
"""user -> (cash in paise, {symbol: (shares, average cost in paise)})."""


def seed_demo(url: str) -> list[str]:
    """Create the demo accounts that do not exist yet; returns the users created."""
    created = []
    with psycopg.connect(url) as conn:
        for user, (cash, holdings) in DEMO_USERS.items():
            row = conn.execute("INSERT INTO accounts (user_id, cash) VALUES (%s, %s) "
                               "ON CONFLICT (user_id) DO NOTHING RETURNING account_id",
                               (user, cash)).fetchone()
            if row is None:
                continue
            created.append(user)
            for symbol, (quantity, avg_price) in holdings.items():
                conn.execute("INSERT INTO positions (account_id, symbol, quantity, avg_price) "
                             "VALUES (%s, %s, %s, %s)", (row[0], symbol, quantity, avg_price))
                conn.execute("INSERT INTO read_model.positions (user_id, symbol, quantity, "
                             "avg_price) VALUES (%s, %s, %s, %s)",
                             (user, symbol, quantity, avg_price))
    return created


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m brokercore.demo", description=__doc__)
    parser.add_argument("--url", default=database_url())
    created = seed_demo(parser.parse_args(argv).url)
    print(f"demo accounts created: {', '.join(created) or 'none (they exist)'}")


if __name__ == "__main__":
    main()
