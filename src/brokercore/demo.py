"""Demo accounts for the development stack (`make up`): two users with cash and shares.

    python -m brokercore.demo [--url URL]

Idempotent: existing demo accounts are left as they are.
"""

from __future__ import annotations

import argparse

import psycopg

from brokercore.migrations import database_url

__all__ = ["DEMO_USERS", "seed_demo"]

RUPEE = 100     # paise
DEMO_USERS = {
    "alice": (10_000_000 * RUPEE, {"RELIANCE": 500, "TCS": 200}),
    "bob": (5_000_000 * RUPEE, {"RELIANCE": 1_000, "INFY": 800, "ITC": 5_000}),
}
"""user -> (cash in paise, shares per symbol)."""


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
            for symbol, quantity in holdings.items():
                conn.execute("INSERT INTO positions (account_id, symbol, quantity, avg_price) "
                             "VALUES (%s, %s, %s, 0)", (row[0], symbol, quantity))
    return created


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m brokercore.demo", description=__doc__)
    parser.add_argument("--url", default=database_url())
    created = seed_demo(parser.parse_args(argv).url)
    print(f"demo accounts created: {', '.join(created) or 'none (they exist)'}")


if __name__ == "__main__":
    main()
