"""The embedded chain: a real Solana runtime in-process (LiteSVM from solders).

LiteSVM runs the real SPL Token, Associated Token Account and Memo programs, checks signatures
and blockhashes and rejects a transaction it has already processed, so settlement code is
tested against Solana's actual rules rather than a mock. What it lacks is a node's history
API (`getSignaturesForAddress`, full transactions by signature), so this class keeps that
index itself, exactly as an RPC node would.

With `journal=PATH` the chain survives restarts: every landed transaction (and airdrop) is
appended to the file before `send` returns, and reopening replays the file. A process killed
mid-settlement therefore finds on restart the chain it left, which is what the crash tests
and `rigpool receipt verify` against the embedded chain need.
"""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Sequence
from pathlib import Path

from solders.hash import Hash
from solders.keypair import Keypair
from solders.litesvm import LiteSVM
from solders.pubkey import Pubkey
from solders.signature import Signature
from solders.transaction import Transaction
from solders.transaction_metadata import FailedTransactionMetadata
from spl.token.constants import MINT_LEN

from rigpool.ledger.chain import ChainTransaction, PreparedTx
from rigpool.ledger.errors import ChainError
from rigpool.ledger.solana import common

SOL = 1_000_000_000


class LiteSVMChain:
    """A mint, a vault owned by the coordinator's key, and dev helpers to fund wallets."""

    def __init__(
        self,
        authority_keypair: bytes | None,
        *,
        decimals: int = 6,
        journal: Path | None = None,
    ):
        """Create a chain (mint + vault of the authority), or reopen one from `journal`.

        Without `authority_keypair` the chain opens read-only from its journal: enough to
        verify receipts, which needs no secret.
        """
        self.svm = LiteSVM()
        self._txs: dict[str, tuple[bytes, bool]] = {}
        self._by_address: dict[str, list[str]] = {}
        self._journal = journal
        self.sent = 0  # landed transactions (for benchmarks)
        self.decimals = decimals
        self._payer = common.keypair(authority_keypair) if authority_keypair else None
        replay = journal is not None and journal.exists() and journal.stat().st_size > 0
        if replay and journal is not None:
            header = json.loads(journal.open().readline())
            self.authority, self.mint = header["authority"], header["mint"]
            self.decimals = int(header["decimals"])
            if self._payer is not None and str(self._payer.pubkey()) != self.authority:
                raise ChainError(f"{journal} belongs to authority {self.authority}")
            self._replay(journal)
        elif authority_keypair is None or self._payer is None:
            raise ChainError("a new embedded chain needs the coordinator's keypair")
        else:
            mint_kp = common.derived_keypair(authority_keypair, b"rigpool/mint")
            self.authority, self.mint = str(self._payer.pubkey()), str(mint_kp.pubkey())
            self._record(
                {
                    "t": "header",
                    "authority": self.authority,
                    "mint": self.mint,
                    "decimals": decimals,
                }
            )
            self.airdrop(self._payer.pubkey(), 1_000 * SOL)
            rent = self.svm.minimum_balance_for_rent_exemption(MINT_LEN)
            ixs = common.create_mint_ixs(self._payer.pubkey(), mint_kp.pubkey(), rent, decimals)
            tx = Transaction.new_signed_with_payer(
                ixs, self._payer.pubkey(), [self._payer, mint_kp], self.svm.latest_blockhash()
            )
            self.send(bytes(tx))
        self._mint = Pubkey.from_string(self.mint)
        self.vault = str(common.ata(Pubkey.from_string(self.authority), self._mint))

    @property
    def payer(self) -> Keypair:
        if self._payer is None:
            raise ChainError("this chain was opened read-only (no coordinator keypair)")
        return self._payer

    # ---------------------------------------------------------------- journal

    def _record(self, entry: dict[str, object]) -> None:
        if self._journal is not None:
            self._journal.parent.mkdir(parents=True, exist_ok=True)
            with self._journal.open("a") as fh:
                fh.write(json.dumps(entry) + "\n")

    def _replay(self, journal: Path) -> None:
        self.svm.with_blockhash_check(False)
        for line in journal.read_text().splitlines():
            entry = json.loads(line)
            if entry["t"] == "header":
                continue
            if entry["t"] == "airdrop":
                self.svm.airdrop(Pubkey.from_string(entry["to"]), int(entry["lamports"]))
            else:
                raw = base64.b64decode(entry["raw"])
                result = self.svm.send_transaction(Transaction.from_bytes(raw))
                if isinstance(result, FailedTransactionMetadata):
                    raise ChainError(f"chain journal {journal} does not replay: {result.err()}")
                self._index(raw)
        self.svm.with_blockhash_check(True)
        self.svm.expire_blockhash()

    def _index(self, raw: bytes) -> str:
        tx = Transaction.from_bytes(raw)
        sig = str(tx.signatures[0])
        self._txs[sig] = (raw, True)
        for key in tx.message.account_keys:
            self._by_address.setdefault(str(key), []).append(sig)
        self.sent += 1
        return sig

    # ------------------------------------------------------------------ Chain

    def token_account(self, wallet: str) -> str:
        return str(common.ata(Pubkey.from_string(wallet), self._mint))

    def _token_balance_at(self, token_account: Pubkey) -> int:
        acc = self.svm.get_account(token_account)
        return common.token_amount(bytes(acc.data)) if acc is not None else 0

    def token_balance(self, wallet: str) -> int:
        return self._token_balance_at(Pubkey.from_string(self.token_account(wallet)))

    def vault_balance(self) -> int:
        return self._token_balance_at(Pubkey.from_string(self.vault))

    def _ata_exists(self, wallet: Pubkey) -> bool:
        return self.svm.get_account(common.ata(wallet, self._mint)) is not None

    def prepare_payouts(self, payments: Sequence[tuple[str, int]], memo: str) -> list[PreparedTx]:
        return common.pack_payouts(
            self.payer,
            self._mint,
            self.decimals,
            payments,
            memo,
            self.svm.latest_blockhash(),
            self._ata_exists,
        )

    def send(self, raw: bytes) -> None:
        tx = Transaction.from_bytes(raw)
        sig = str(tx.signatures[0])
        result = self.svm.send_transaction(tx)
        if isinstance(result, FailedTransactionMetadata):
            if sig in self._txs:  # AlreadyProcessed: landed before, nothing happens twice
                return
            raise ChainError(f"transaction {sig} failed: {result.err()}")
        self._record({"t": "tx", "raw": base64.b64encode(raw).decode()})
        self._index(raw)

    def get_transaction(self, signature: str) -> ChainTransaction | None:
        found = self._txs.get(signature)
        if found is None:
            return None
        raw, ok = found
        return common.decode(signature, Transaction.from_bytes(raw).message, ok)

    def blockhash_valid(self, blockhash: str) -> bool:
        return Hash.from_string(blockhash) == self.svm.latest_blockhash()

    def signatures_for_address(self, address: str, limit: int = 1000) -> list[str]:
        return list(reversed(self._by_address.get(address, [])))[:limit]

    def deposit(self, payer_keypair: bytes, amount: int) -> str:
        kp = common.keypair(payer_keypair)
        ix = common.transfer_ix(
            self._mint, kp.pubkey(), Pubkey.from_string(self.authority), amount, self.decimals
        )
        ixs = [ix, common.memo_ix(f"rigpool:deposit:{secrets.token_hex(8)}")]
        tx = Transaction.new_signed_with_payer(ixs, kp.pubkey(), [kp], self.svm.latest_blockhash())
        self.send(bytes(tx))
        return str(tx.signatures[0])

    # ------------------------------------------------------------- dev helpers

    def airdrop(self, wallet: Pubkey, lamports: int) -> None:
        result = self.svm.airdrop(wallet, lamports)
        if isinstance(result, FailedTransactionMetadata):
            raise ChainError(f"airdrop failed: {result.err()}")
        self._record({"t": "airdrop", "to": str(wallet), "lamports": lamports})

    def fund(self, wallet: str, amount: int) -> None:
        """Give a wallet SOL for fees and mint it `amount` tokens (dev networks only)."""
        owner = Pubkey.from_string(wallet)
        if (self.svm.get_balance(owner) or 0) < SOL // 10:
            self.airdrop(owner, SOL)
        mint = self._mint
        ixs = [
            common.token_ix.create_idempotent_associated_token_account(
                self.payer.pubkey(), owner, mint
            ),
            common.mint_to_ix(mint, owner, self.payer.pubkey(), amount),
            common.memo_ix(f"rigpool:fund:{secrets.token_hex(8)}"),
        ]
        tx = Transaction.new_signed_with_payer(
            ixs, self.payer.pubkey(), [self.payer], self.svm.latest_blockhash()
        )
        self.send(bytes(tx))

    def expire_blockhash(self) -> None:
        """Move to a new blockhash: transactions signed before can no longer land."""
        self.svm.expire_blockhash()

    def transaction_signature(self, raw: bytes) -> Signature:
        return Transaction.from_bytes(raw).signatures[0]


def new_keypair_bytes() -> bytes:
    """64 bytes (seed + public key), the layout `rigpool.protocol.signing` uses."""
    return bytes(Keypair())
