"""The chain seam: what settlement needs from Solana, in plain Python types.

Addresses and signatures are base58 strings and amounts integer base units, so nothing outside
`ledger/solana/` imports solders. Two implementations live there: `LiteSVMChain` (a real
Solana runtime in-process: the embedded default and the test double) and `RpcChain` (any RPC
URL through solana-py).

The vault is the associated token account (ATA) of the coordinator's key for the mint; a
provider or consumer is paid to the ATA of its wallet.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class TokenTransfer:
    """One SPL token transfer inside a transaction (token accounts, not wallets)."""

    source: str
    destination: str
    authority: str
    amount: int


@dataclass(frozen=True)
class ChainTransaction:
    """A transaction as read back from the chain."""

    signature: str
    ok: bool
    signers: tuple[str, ...]
    memos: tuple[str, ...]
    transfers: tuple[TokenTransfer, ...]


@dataclass(frozen=True)
class PreparedTx:
    """A signed transaction not yet sent: its signature is final before it is sent."""

    signature: str
    blockhash: str
    raw: bytes
    payments: tuple[tuple[str, int], ...]  # (wallet, amount)


class Chain(Protocol):
    """The coordinator's view of the chain (its key signs payouts from the vault)."""

    mint: str
    authority: str  # the coordinator's public key: vault owner and fee payer
    vault: str  # the authority's ATA for the mint

    def token_account(self, wallet: str) -> str:
        """The ATA of `wallet` for the mint."""
        ...

    def token_balance(self, wallet: str) -> int:
        """Balance of `wallet`'s ATA (0 when it does not exist)."""
        ...

    def vault_balance(self) -> int: ...

    def prepare_payouts(self, payments: Sequence[tuple[str, int]], memo: str) -> list[PreparedTx]:
        """Sign transfers vault -> wallets, packed several per transaction, each with `memo`."""
        ...

    def send(self, raw: bytes) -> None:
        """Submit a signed transaction; raises ChainError unless it landed (or already had)."""
        ...

    def get_transaction(self, signature: str) -> ChainTransaction | None:
        """The landed transaction with this signature, or None."""
        ...

    def blockhash_valid(self, blockhash: str) -> bool:
        """False once a transaction with this blockhash can never land."""
        ...

    def signatures_for_address(self, address: str, limit: int = 1000) -> list[str]:
        """Signatures of landed transactions touching `address`, newest first."""
        ...

    def deposit(self, payer_keypair: bytes, amount: int) -> str:
        """Transfer `amount` from the payer's ATA into the vault; returns the signature.

        Signed by the payer's 64-byte keypair: this is the consumer's side of a deposit.
        """
        ...
