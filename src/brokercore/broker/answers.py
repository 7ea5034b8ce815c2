"""The funds service's answers (brokercore.services.funds), as Structs below the
services and free of database drivers: the API's document is generated from them, and a
client (brokercore.client) decodes with the same definitions."""

from __future__ import annotations

import msgspec

__all__ = ["FundsBody", "DepositBody"]


class FundsBody(msgspec.Struct, frozen=True):
    cash: str
    blocked: str
    unsettled: str
    withdrawable: str


class DepositBody(msgspec.Struct, rename="camel", frozen=True):
    deposit_id: int
    amount: str
    status: str
    created_at: str
