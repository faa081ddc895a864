"""Errors of the ledger, all under `BadRequest` so the gateway and CLI already know them.

    BadRequest (rigpool.core.errors)
     └── LedgerError            any refused money movement; nothing was moved
          ├── InvalidAmount       zero, negative or non-integer amount
          ├── UnknownAccount      the account (or hold, or unbonding) does not exist
          ├── InsufficientFunds   a balance, hold or stake would go below zero
          ├── IdempotencyConflict the key was used before for a different movement
          ├── DuplicateDeposit    this chain signature was already credited
          ├── InvalidState        e.g. capturing a released hold
          └── InvalidReceipt      bad signature, bad proof, or not paid on chain

`ChainError` is not a BadRequest: the chain failing is the server's problem, not the caller's.
"""

from __future__ import annotations

from rigpool.core.errors import BadRequest, RigpoolError


class LedgerError(BadRequest):
    code = "ledger_error"


class InvalidAmount(LedgerError):
    code = "invalid_amount"


class UnknownAccount(LedgerError):
    code = "unknown_account"


class InsufficientFunds(LedgerError):
    code = "insufficient_funds"


class IdempotencyConflict(LedgerError):
    code = "idempotency_conflict"


class DuplicateDeposit(LedgerError):
    code = "duplicate_deposit"


class InvalidState(LedgerError):
    code = "invalid_state"


class InvalidReceipt(LedgerError):
    code = "invalid_receipt"


class ChainError(RigpoolError):
    """The chain refused or could not be reached; retry or reconcile later."""

    status_code = 502
    error_type = "server_error"
    code = "chain_error"
