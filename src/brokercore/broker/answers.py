"""The funds service's answers (brokercore.services.funds), as Structs below the
services and free of database drivers: the API's document is generated from them, and a
client (brokercore.client) decodes with the same definitions."""

from __future__ import annotations

import msgspec

__all__ = [
    "FundsBody",
    "DepositBody",
    "WithdrawalBody",
    "OperatorWithdrawalBody",
    "Withdrawals",
    "OperatorWithdrawals",
]


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


class WithdrawalBody(msgspec.Struct, rename="camel", frozen=True):
    withdrawal_id: int
    amount: str
    status: str
    requested_at: str
    finished_at: str | None
    failure_reason: str | None
    provider_reference: str | None


class OperatorWithdrawalBody(WithdrawalBody, rename="camel", frozen=True):
    user_id: str


class Withdrawals(msgspec.Struct, frozen=True):
    withdrawals: list[WithdrawalBody]  # newest first


class OperatorWithdrawals(msgspec.Struct, frozen=True):
    withdrawals: list[OperatorWithdrawalBody]
