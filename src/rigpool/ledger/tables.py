"""Ledger tables on the shared declarative base (SQLAlchemy 2 ORM).

Money is integers of the token's base unit everywhere (never floats): a float cannot hold
0.1 exactly, and a ledger that drifts by one unit per million requests is a ledger that lies.

The shape is classic double entry:

    journal_txs  one money movement, unique per idempotency key
      └── postings  (account, signed amount); the postings of one journal tx sum to zero
    accounts     (kind, owner) -> cached balance = the sum of the account's postings

Everything else (holds, deposits, payouts, chain transactions, epochs, receipts, unbondings,
slashes) is the business record that explains *why* a journal tx exists, linked by its id.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from rigpool.core.sqlbase import Base


class AccountKind(enum.StrEnum):
    """What an account holds. Balances are positive claims on the vault, except EXTERNAL.

    EXTERNAL is the one account allowed below zero: the outside world (the mint). Every token
    that enters the vault is a posting of -X on EXTERNAL and +X somewhere inside, so minus the
    EXTERNAL balance is what the on-chain vault must hold.
    """

    EXTERNAL = "external"
    CONSUMER = "consumer"  # spendable balance of a consumer
    CONSUMER_HOLD = "consumer_hold"  # reserved for requests in flight (sum of active holds)
    PROVIDER_EARNINGS = "provider_earnings"  # earned, not yet settled on chain
    PROVIDER_STAKE = "provider_stake"  # bonded, slashable
    PROVIDER_UNBONDING = "provider_unbonding"  # leaving the stake; still slashable until due
    TREASURY = "treasury"  # network fees and the treasury's part of slashes
    PAYOUT_PENDING = "payout_pending"  # queued or sent on chain, not yet confirmed


EXTERNAL_OWNER = "world"
NETWORK_OWNER = "network"


class Account(Base):
    """One balance: a (kind, owner) pair. `balance` is a cache of the sum of its postings."""

    __tablename__ = "ledger_accounts"
    __table_args__ = (UniqueConstraint("kind", "owner", name="uq_ledger_accounts_kind_owner"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(32))
    owner: Mapped[str] = mapped_column(String(64))
    balance: Mapped[int] = mapped_column(BigInteger, default=0)
    created: Mapped[datetime] = mapped_column(DateTime)


class JournalTx(Base):
    """One balanced money movement. `request_hash` makes a replayed key safe to compare."""

    __tablename__ = "ledger_journal_txs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    idempotency_key: Mapped[str] = mapped_column(String(200), unique=True)
    kind: Mapped[str] = mapped_column(String(32))
    request_hash: Mapped[str] = mapped_column(String(64))
    memo: Mapped[str] = mapped_column(Text, default="")
    reference: Mapped[str | None] = mapped_column(String(200), nullable=True)
    result: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created: Mapped[datetime] = mapped_column(DateTime)


class Posting(Base):
    """One leg of a journal tx: a signed amount on one account."""

    __tablename__ = "ledger_postings"
    __table_args__ = (Index("ix_ledger_postings_account", "account_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tx_id: Mapped[int] = mapped_column(ForeignKey("ledger_journal_txs.id"), index=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("ledger_accounts.id"))
    amount: Mapped[int] = mapped_column(BigInteger)


class Hold(Base):
    """Worst-case cost reserved at admission; captured (partly) or released at the end."""

    __tablename__ = "ledger_holds"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    consumer: Mapped[str] = mapped_column(String(64), index=True)
    amount: Mapped[int] = mapped_column(BigInteger)
    state: Mapped[str] = mapped_column(String(16), default="active")  # active|captured|released
    captured: Mapped[int] = mapped_column(BigInteger, default=0)
    provider: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created: Mapped[datetime] = mapped_column(DateTime)
    closed: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


class Deposit(Base):
    """A confirmed transfer into the vault; the unique signature makes crediting exactly-once."""

    __tablename__ = "ledger_deposits"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tx_signature: Mapped[str] = mapped_column(String(128), unique=True)
    owner: Mapped[str] = mapped_column(String(64))
    purpose: Mapped[str] = mapped_column(String(16))  # consumer | stake
    amount: Mapped[int] = mapped_column(BigInteger)
    journal_tx_id: Mapped[int] = mapped_column(ForeignKey("ledger_journal_txs.id"))
    created: Mapped[datetime] = mapped_column(DateTime)


class Epoch(Base):
    """A settlement epoch: the receipts it covers, their Merkle root, and its payouts."""

    __tablename__ = "ledger_epochs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    state: Mapped[str] = mapped_column(String(16), default="closed")  # closed | paid
    merkle_root: Mapped[str] = mapped_column(String(64))
    receipt_count: Mapped[int] = mapped_column(Integer, default=0)
    total_paid: Mapped[int] = mapped_column(BigInteger, default=0)
    created: Mapped[datetime] = mapped_column(DateTime)


class Receipt(Base):
    """A signed, countersigned receipt; `leaf` is its Merkle leaf hash, `epoch_id` set at close."""

    __tablename__ = "ledger_receipts"
    __table_args__ = (Index("ix_ledger_receipts_epoch", "epoch_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(String(64), unique=True)
    provider: Mapped[str] = mapped_column(String(64), index=True)
    consumer: Mapped[str] = mapped_column(String(64))
    amount: Mapped[int] = mapped_column(BigInteger)
    provider_amount: Mapped[int] = mapped_column(BigInteger)
    leaf: Mapped[str] = mapped_column(String(64))
    body: Mapped[dict[str, Any]] = mapped_column(JSON)
    epoch_id: Mapped[int | None] = mapped_column(ForeignKey("ledger_epochs.id"), nullable=True)
    created: Mapped[datetime] = mapped_column(DateTime)


class ChainTx(Base):
    """A settlement intent: written (with its signature) *before* the transaction is sent.

    The signature of a Solana transaction is fixed once signed, and a transaction with an expired
    blockhash can never land. So after a crash, looking the signature up on chain and checking the
    blockhash tells exactly whether the money moved; nothing is paid twice and nothing is missed.
    """

    __tablename__ = "ledger_chain_txs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    signature: Mapped[str] = mapped_column(String(128), unique=True)
    blockhash: Mapped[str] = mapped_column(String(64))
    raw: Mapped[bytes] = mapped_column(LargeBinary)
    memo: Mapped[str] = mapped_column(Text, default="")
    state: Mapped[str] = mapped_column(String(16), default="prepared")  # prepared|confirmed|dropped
    created: Mapped[datetime] = mapped_column(DateTime)
    updated: Mapped[datetime] = mapped_column(DateTime)


class Payout(Base):
    """Tokens leaving the vault: a settlement, a withdrawal or an unbonded stake."""

    __tablename__ = "ledger_payouts"
    __table_args__ = (Index("ix_ledger_payouts_state", "state"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(16))  # settlement | withdrawal | unbonded
    owner: Mapped[str] = mapped_column(String(64))
    destination: Mapped[str] = mapped_column(String(64))  # wallet (base58); paid to its ATA
    amount: Mapped[int] = mapped_column(BigInteger)
    epoch_id: Mapped[int | None] = mapped_column(ForeignKey("ledger_epochs.id"), nullable=True)
    state: Mapped[str] = mapped_column(String(16), default="queued")  # queued|sent|paid
    chain_tx_id: Mapped[int | None] = mapped_column(
        ForeignKey("ledger_chain_txs.id"), nullable=True
    )
    created: Mapped[datetime] = mapped_column(DateTime)


class Unbonding(Base):
    """Stake on its way out; slashable until `available_at`, then withdrawable."""

    __tablename__ = "ledger_unbondings"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    provider: Mapped[str] = mapped_column(String(64), index=True)
    amount: Mapped[int] = mapped_column(BigInteger)
    available_at: Mapped[datetime] = mapped_column(DateTime)
    state: Mapped[str] = mapped_column(String(16), default="pending")  # pending | withdrawn
    created: Mapped[datetime] = mapped_column(DateTime)


class Slash(Base):
    """A penalty on a provider's stake, with the reason and a reference to the evidence."""

    __tablename__ = "ledger_slashes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    provider: Mapped[str] = mapped_column(String(64), index=True)
    amount: Mapped[int] = mapped_column(BigInteger)
    consumer: Mapped[str | None] = mapped_column(String(64), nullable=True)
    consumer_share: Mapped[int] = mapped_column(BigInteger, default=0)
    reason: Mapped[str] = mapped_column(Text)
    evidence_ref: Mapped[str] = mapped_column(Text)
    journal_tx_id: Mapped[int] = mapped_column(ForeignKey("ledger_journal_txs.id"))
    created: Mapped[datetime] = mapped_column(DateTime)
