"""The production chain: any Solana RPC URL through solana-py, with an existing mint.

Untested here: the build machine has no network, so this class has never talked to a real
node. It uses the same packing and decoding code as `LiteSVMChain` (which is tested), and only
standard RPC methods: getLatestBlockhash, sendTransaction, getTransaction, isBlockhashValid,
getSignaturesForAddress, getTokenAccountBalance, getMultipleAccounts. The coordinator's key
must hold SOL for fees and ATA rent, and own the vault ATA of `mint`.

solana-py 0.40 ships only an async client; this class runs it on a private event loop so it
fits the synchronous `Chain` seam (call it from a worker thread, never from a running loop).
Reads use the "confirmed" commitment, so after a crash a transaction that landed is found;
`blockhash_valid` going false is the signal that an unseen transaction can never land.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from solana.rpc.async_api import AsyncClient
from solana.rpc.commitment import Confirmed
from solana.rpc.jsonrpc import JsonRpcRequest
from solana.rpc.models import TxOpts
from solders.keypair import Keypair
from solders.pubkey import Pubkey
from solders.signature import Signature
from solders.transaction import Transaction

from rigpool.ledger.chain import ChainTransaction, PreparedTx
from rigpool.ledger.errors import ChainError
from rigpool.ledger.solana import common


class RpcChain:
    """Settlement against a real cluster (devnet, testnet or mainnet)."""

    def __init__(
        self,
        url: str,
        mint: str,
        authority_keypair: bytes | None = None,
        *,
        decimals: int = 6,
        confirm_timeout_s: float = 60.0,
    ):
        # Without a keypair the chain is read-only: enough to verify receipts.
        self._payer = common.keypair(authority_keypair) if authority_keypair else None
        self.authority = str(self._payer.pubkey()) if self._payer else ""
        self.mint = mint
        self.decimals = decimals
        self._mint = Pubkey.from_string(mint)
        self.vault = str(common.ata(self._payer.pubkey(), self._mint)) if self._payer else ""
        self.confirm_timeout_s = confirm_timeout_s
        self._loop = asyncio.new_event_loop()
        self._client = AsyncClient(url, commitment=Confirmed)

    @property
    def payer(self) -> Keypair:
        if self._payer is None:
            raise ChainError("this chain was opened read-only (no coordinator keypair)")
        return self._payer

    def _run(self, coro: Any) -> Any:
        try:
            return self._loop.run_until_complete(coro)
        except ChainError:
            raise
        except Exception as exc:  # the RPC failing is a chain error, whatever its type
            raise ChainError(f"RPC call failed: {exc}") from exc

    def close(self) -> None:
        self._run(self._client.close())
        self._loop.close()

    def token_account(self, wallet: str) -> str:
        return str(common.ata(Pubkey.from_string(wallet), self._mint))

    def _balance(self, token_account: str) -> int:
        try:
            resp = self._run(
                self._client.get_token_account_balance(Pubkey.from_string(token_account))
            )
        except ChainError:
            return 0  # no such token account yet
        return int(resp.value.amount)

    def token_balance(self, wallet: str) -> int:
        return self._balance(self.token_account(wallet))

    def vault_balance(self) -> int:
        return self._balance(self.vault)

    def prepare_payouts(self, payments: Sequence[tuple[str, int]], memo: str) -> list[PreparedTx]:
        wallets = [Pubkey.from_string(w) for w, _ in payments]
        atas = [common.ata(w, self._mint) for w in wallets]
        exists: dict[Pubkey, bool] = {}
        for i in range(0, len(atas), 100):  # getMultipleAccounts takes at most 100 keys
            resp = self._run(self._client.get_multiple_accounts(atas[i : i + 100]))
            for w, acc in zip(wallets[i : i + 100], resp.value, strict=True):
                exists[w] = acc is not None
        blockhash = self._run(self._client.get_latest_blockhash()).value.blockhash
        return common.pack_payouts(
            self.payer,
            self._mint,
            self.decimals,
            payments,
            memo,
            blockhash,
            lambda w: exists.get(w, False),
        )

    def send(self, raw: bytes) -> None:
        sig = Transaction.from_bytes(raw).signatures[0]
        if self.get_transaction(str(sig)) is not None:
            return
        self._run(self._client.send_raw_transaction(raw, TxOpts(preflight_commitment=Confirmed)))
        deadline = time.monotonic() + self.confirm_timeout_s
        while time.monotonic() < deadline:
            status = self._run(self._client.get_signature_statuses([sig])).value[0]
            if status is not None and status.err is not None:
                raise ChainError(f"transaction {sig} failed: {status.err}")
            if status is not None and status.confirmation_status is not None:
                return
            time.sleep(0.5)
        raise ChainError(f"transaction {sig} not confirmed within {self.confirm_timeout_s}s")

    def get_transaction(self, signature: str) -> ChainTransaction | None:
        resp = self._run(
            self._client.get_transaction(
                Signature.from_string(signature),
                encoding="base64",
                max_supported_transaction_version=0,
            )
        )
        if resp.value is None:
            return None
        meta = resp.value.transaction.meta
        tx = resp.value.transaction.transaction
        ok = meta is None or meta.err is None
        return common.decode(signature, tx.message, ok)

    def blockhash_valid(self, blockhash: str) -> bool:
        request = JsonRpcRequest(
            method="isBlockhashValid", params=[blockhash, {"commitment": "confirmed"}]
        )
        result = self._run(self._client.send_rpc_request(request, dict))
        return bool(result["value"])

    def signatures_for_address(self, address: str, limit: int = 1000) -> list[str]:
        resp = self._run(
            self._client.get_signatures_for_address(Pubkey.from_string(address), limit=limit)
        )
        return [str(item.signature) for item in resp.value if item.err is None]

    def deposit(self, payer_keypair: bytes, amount: int) -> str:
        kp = common.keypair(payer_keypair)
        blockhash = self._run(self._client.get_latest_blockhash()).value.blockhash
        ix = common.transfer_ix(
            self._mint, kp.pubkey(), Pubkey.from_string(self.authority), amount, self.decimals
        )
        tx = Transaction.new_signed_with_payer([ix], kp.pubkey(), [kp], blockhash)
        self.send(bytes(tx))
        return str(tx.signatures[0])
