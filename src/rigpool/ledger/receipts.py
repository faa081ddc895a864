"""Receipts: what one completed request cost, signed by the agent and by the coordinator.

Why two signatures: the agent's says "I served these tokens at this price"; the coordinator's
countersignature (over the body *and* the agent's signature) says "the network metered and
charged exactly this". A receipt is the unit of proof; its hash is a leaf of the epoch's Merkle
tree, and the epoch's settlement transaction carries the root, so anyone holding the receipt,
its proof and the chain can check it was paid without asking the coordinator.

Keys are the Solana-compatible ed25519 identities of `rigpool.protocol.signing`; the
coordinator's key is also the vault's authority, so the settlement transaction on chain is
signed by the same key that countersigned the receipt.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import base58
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey
from pydantic import BaseModel, ConfigDict, Field

from rigpool.ledger import merkle
from rigpool.ledger.errors import InvalidReceipt
from rigpool.protocol.messages import RECEIPT_AGENT_DOMAIN
from rigpool.protocol.signing import Identity

_B58_DIGITS = {c: i for i, c in enumerate(base58.BITCOIN_ALPHABET.decode())}


def b58decode(text: str) -> bytes:
    """Base58 (Bitcoin alphabet, as Solana uses) to bytes; `ValueError` on a foreign character.

    Gives what `base58.b58decode` gives, in a third of the time: a receipt carries two
    signatures, and decoding them cost as much as one signature check.
    """
    n = 0
    try:
        for ch in text:
            n = n * 58 + _B58_DIGITS[ch]
    except KeyError as exc:
        raise ValueError(f"{exc.args[0]!r} is not a base58 character") from None
    zeros = len(text) - len(text.lstrip("1"))
    return b"\0" * zeros + n.to_bytes((n.bit_length() + 7) // 8, "big")


@lru_cache(maxsize=65_536)
def _verify_key(public_key: str) -> VerifyKey | None:
    try:
        return VerifyKey(base58.b58decode(public_key))
    except (ValueError, TypeError):
        return None


def verify(public_key: str, message: bytes, signature: str) -> bool:
    """`rigpool.protocol.signing.verify` with the decoded key cached.

    Receipts repeat a few thousand provider keys and one coordinator key millions of times;
    decoding base58 and building the key object each time cost as much as the check itself.
    """
    key = _verify_key(public_key)
    if key is None:
        return False
    try:
        key.verify(message, b58decode(signature))
    except (BadSignatureError, ValueError, TypeError):
        return False
    return True


def verify_all(receipts: list[SignedReceipt]) -> None:
    """Verify many receipts on all cores (libsodium releases the GIL); raise on the first bad."""

    def check(chunk: list[SignedReceipt]) -> None:
        for r in chunk:
            r.verify()

    workers = min(8, os.cpu_count() or 1)
    if len(receipts) < 256 or workers == 1:
        check(receipts)
        return
    with ThreadPoolExecutor(workers) as pool:
        for fut in [pool.submit(check, receipts[i::workers]) for i in range(workers)]:
            fut.result()


AGENT_DOMAIN = RECEIPT_AGENT_DOMAIN  # defined by the protocol: the agent signs it
COORDINATOR_DOMAIN = b"rigpool-receipt-v1/coordinator:"


class ReceiptBody(BaseModel):
    """The metered facts of one request. Amounts are integer base units of the token."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    request_id: str = Field(min_length=1, max_length=64)
    model: str = Field(min_length=1, max_length=256)
    prompt_tokens: int = Field(ge=0)
    completion_tokens: int = Field(ge=0)
    price_input_per_million: int = Field(ge=0)
    price_output_per_million: int = Field(ge=0)
    amount: int = Field(ge=0, description="what the consumer paid")
    fee: int = Field(ge=0, description="the network's fee, part of amount")
    provider_amount: int = Field(ge=0, description="amount - fee, paid to the provider")
    provider: str = Field(min_length=32, max_length=64, description="agent id = wallet")
    consumer: str = Field(min_length=1, max_length=64)
    coordinator: str = Field(min_length=32, max_length=64)
    time: datetime

    def canonical(self) -> bytes:
        payload = self.model_dump(mode="json")
        return json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()


class SignedReceipt(BaseModel):
    """A receipt body with the agent's signature and the coordinator's countersignature."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    body: ReceiptBody
    agent_signature: str
    coordinator_signature: str

    def leaf(self) -> bytes:
        """The Merkle leaf: domain-separated hash of the canonical signed receipt."""
        payload = self.model_dump(mode="json")
        return merkle.leaf_hash(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode())

    def verify(self) -> None:
        """Raise `InvalidReceipt` unless both signatures and the arithmetic hold."""
        _check_signatures(self, self.body.canonical())


def _check_signatures(receipt: SignedReceipt, canonical: bytes) -> None:
    """Both signatures over `canonical` (the body's canonical bytes, computed once)."""
    b = receipt.body
    if b.provider_amount + b.fee != b.amount:
        raise InvalidReceipt(f"receipt {b.request_id}: provider_amount + fee != amount")
    if not verify(b.provider, AGENT_DOMAIN + canonical, receipt.agent_signature):
        raise InvalidReceipt(f"receipt {b.request_id}: bad agent signature")
    countersigned = _countersigned(canonical, receipt.agent_signature)
    if not verify(b.coordinator, countersigned, receipt.coordinator_signature):
        raise InvalidReceipt(f"receipt {b.request_id}: bad coordinator signature")


@dataclass(frozen=True)
class CheckedReceipt:
    """A receipt ready to store: signatures checked, leaf and stored payload computed once.

    Made only by `check_receipt` (both signatures checked) and `countersign_checked` (the
    agent's checked, the coordinator's just made): holding one means the signatures are good,
    which is why the group-committed receipt path stores it without checking them again.

    `payload` is `receipt.model_dump(mode="json")` and `leaf` is `receipt.leaf().hex()`; both
    come from one serialization of the body, which is also what the signatures cover.
    """

    receipt: SignedReceipt
    leaf: str
    payload: dict[str, Any]
    #: `payload` as canonical JSON (what the leaf hashes); stored as the receipt's body
    payload_json: str = ""


def check_receipt(receipt: SignedReceipt, *, signatures: bool = True) -> CheckedReceipt:
    """Check both signatures (unless `signatures` is False) and prepare the stored row.

    Raises `InvalidReceipt` for a bad signature or inconsistent amounts. Thread-safe; the
    ed25519 checks release the GIL, so several threads check receipts in parallel. This is the
    path for every receipt the coordinator did not just countersign itself (an agent presenting
    one, `rigpool receipt verify`, recovery): both signatures, always.
    """
    body = receipt.body.model_dump(mode="json")
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    if signatures:
        _check_signatures(receipt, canonical)
    return _prepared(receipt, body, canonical)


def _prepared(receipt: SignedReceipt, body: dict[str, Any], canonical: bytes) -> CheckedReceipt:
    """The stored row of a checked receipt, from its body's JSON form and canonical bytes."""
    # The canonical JSON of the whole signed receipt (sorted keys: agent_signature, body,
    # coordinator_signature) embeds the body's canonical bytes unchanged.
    whole = b"".join(
        (
            b'{"agent_signature":',
            json.dumps(receipt.agent_signature).encode(),
            b',"body":',
            canonical,
            b',"coordinator_signature":',
            json.dumps(receipt.coordinator_signature).encode(),
            b"}",
        )
    )
    payload = {
        "body": body,
        "agent_signature": receipt.agent_signature,
        "coordinator_signature": receipt.coordinator_signature,
    }
    return CheckedReceipt(receipt, merkle.leaf_hash(whole).hex(), payload, whole.decode())


def _countersigned(canonical: bytes, agent_signature: str) -> bytes:
    """What the coordinator signs: the body's canonical bytes and the agent's signature."""
    return COORDINATOR_DOMAIN + canonical + b"|" + agent_signature.encode()


def agent_sign(body: ReceiptBody, agent: Identity) -> str:
    """The agent's signature over a receipt body (what the agent returns at request end)."""
    if agent.agent_id != body.provider:
        raise InvalidReceipt("the signing agent is not the receipt's provider")
    return agent.sign(AGENT_DOMAIN + body.canonical())


def countersign(body: ReceiptBody, agent_signature: str, coordinator: Identity) -> SignedReceipt:
    """Check the agent's signature, then add the coordinator's."""
    return countersign_checked(body, agent_signature, coordinator).receipt


def countersign_checked(
    body: ReceiptBody, agent_signature: str, coordinator: Identity
) -> CheckedReceipt:
    """`countersign`, returning the receipt ready to store (no second check needed).

    The agent's signature is checked here, and the coordinator's is the one just made with
    its own key, so both signatures of the result are known good: `Billing` stores a
    `CheckedReceipt` without checking them again (an external `SignedReceipt` is always checked
    in full). The body is serialized once, for the agent's check, the countersignature, the
    Merkle leaf and the stored row (`payload` is what `model_dump(mode="json")` gives).
    """
    if coordinator.agent_id != body.coordinator:
        raise InvalidReceipt("the countersigning key is not the receipt's coordinator")
    dumped = body.model_dump(mode="json")
    canonical = json.dumps(dumped, sort_keys=True, separators=(",", ":")).encode()
    if body.provider_amount + body.fee != body.amount:
        raise InvalidReceipt(f"receipt {body.request_id}: provider_amount + fee != amount")
    if not verify(body.provider, AGENT_DOMAIN + canonical, agent_signature):
        raise InvalidReceipt(f"receipt {body.request_id}: bad agent signature")
    signed = SignedReceipt(
        body=body,
        agent_signature=agent_signature,
        coordinator_signature=coordinator.sign(_countersigned(canonical, agent_signature)),
    )
    return _prepared(signed, dumped, canonical)


class ReceiptProof(BaseModel):
    """What `rigpool receipt verify FILE` reads: a receipt and its inclusion proof.

    `settlement_signatures` says where on chain its epoch was paid: a hint only, the verifier
    checks it on chain (and searches the provider's token account without it).
    """

    receipt: SignedReceipt
    epoch_id: int
    merkle_root: str
    proof: list[dict[str, Any]]
    mint: str
    settlement_signatures: list[str] = Field(default_factory=list)

    def steps(self) -> list[merkle.ProofStep]:
        return [merkle.ProofStep(str(p["sibling"]), bool(p["left"])) for p in self.proof]

    def write(self, path: Path) -> None:
        path.write_text(self.model_dump_json(indent=2))

    @classmethod
    def read(cls, path: Path) -> ReceiptProof:
        try:
            return cls.model_validate_json(path.read_text())
        except ValueError as exc:
            raise InvalidReceipt(f"{path} is not a receipt proof file: {exc}") from exc


def check_all(receipts: list[SignedReceipt], *, signatures: bool = True) -> list[CheckedReceipt]:
    """`check_receipt` for many, on all cores for a large batch; raises on the first bad one."""
    workers = min(8, os.cpu_count() or 1)
    if len(receipts) < 256 or workers == 1 or not signatures:
        return [check_receipt(r, signatures=signatures) for r in receipts]
    with ThreadPoolExecutor(workers) as pool:
        return list(
            pool.map(lambda r: check_receipt(r, signatures=signatures), receipts, chunksize=64)
        )
