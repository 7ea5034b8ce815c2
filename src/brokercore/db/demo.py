"""Demo accounts for the development stack (`make up`): two users with cash and shares.

    python -m brokercore.db.demo [--url URL]

Idempotent: existing demo accounts are left as they are. Each account is opened with
brokercore.broker.funding, so its cash and shares are journalled deposits (what the
reconciler's conservation checks start from) and the shares are in the read model too.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import psycopg

from brokercore.broker.funding import open_account
from brokercore.broker.money import PAISE_PER_RUPEE as RUPEE
from brokercore.config import ServiceSettings

__all__ = ["DEMO_USERS", "seed_demo"]

DEMO_USERS = {
    "alice": (
        10_000_000 * RUPEE,
        {"RELIANCE": (500, 14_250 * RUPEE), "TCS": (200, 20_100 * RUPEE)},
    ),
    "bob": (
        5_000_000 * RUPEE,
        {
            "RELIANCE": (1_000, 13_900 * RUPEE),
            "INFY": (800, 7_450 * RUPEE),
            "ITC": (5_000, 2_150 * RUPEE),
        },
    ),
}
"""user -> (cash in paise, {symbol: (shares, average cost in paise)})."""


def seed_demo(url: str) -> list[str]:
    """Create the demo accounts that do not exist yet; returns the users created."""
    with psycopg.connect(url) as conn:
        return [
            user
            for user, (cash, holdings) in DEMO_USERS.items()
            if open_account(conn, user, cash=cash, shares=holdings) is not None
        ]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m brokercore.db.demo", description=__doc__)
    parser.add_argument("--url", default=ServiceSettings.from_env().database_url)
    created = seed_demo(parser.parse_args(argv).url)
    print(f"demo accounts created: {', '.join(created) or 'none (they exist)'}")


if __name__ == "__main__":
    main()
