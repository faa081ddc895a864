"""Ed25519 identities and signatures for protocol frames.

Keys are Solana-compatible: the public key in base58 is both the provider's id and its payout
wallet, and the keypair file is what `solana-keygen` writes (a JSON array of 64 bytes: the 32-byte
seed followed by the 32-byte public key). PyNaCl is used here rather than solders so that the
agent, which ships alone to GPU machines, stays free of the Solana stack.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import base58
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey
from pydantic import BaseModel


@dataclass(frozen=True)
class Identity:
    """An ed25519 keypair; `agent_id` is the base58 public key, as Solana prints it."""

    signing_key: SigningKey

    @cached_property
    def agent_id(self) -> str:
        """The base58 public key (computed once: receipts and evidence name it every time)."""
        return base58.b58encode(bytes(self.signing_key.verify_key)).decode()

    def sign(self, message: bytes) -> str:
        return base58.b58encode(self.signing_key.sign(message).signature).decode()

    def keypair_bytes(self) -> bytes:
        return bytes(self.signing_key) + bytes(self.signing_key.verify_key)

    @classmethod
    def generate(cls) -> Identity:
        return cls(SigningKey.generate())


def load_or_create_identity(path: Path) -> tuple[Identity, bool]:
    """Read a Solana keypair file, or create one (mode 0600). Returns (identity, created)."""
    if path.exists():
        try:
            raw = json.loads(path.read_text())
            data = bytes(raw)
        except (ValueError, TypeError) as exc:
            raise ValueError(
                f"{path} is not a Solana keypair file (JSON array of 64 bytes)"
            ) from exc
        if len(data) != 64:
            raise ValueError(f"{path} holds {len(data)} bytes; a Solana keypair has 64")
        key = SigningKey(data[:32])
        if bytes(key.verify_key) != data[32:]:
            raise ValueError(f"{path}: the public half does not match the secret half")
        return Identity(key), False
    identity = Identity.generate()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, stat.S_IRUSR | stat.S_IWUSR)
    with os.fdopen(fd, "w") as fh:
        json.dump(list(identity.keypair_bytes()), fh)
    tmp.replace(path)
    return identity, True


def canonical_bytes(frame: BaseModel) -> bytes:
    """The bytes a signature covers: sorted-key compact JSON of the frame minus `signature`."""
    payload: dict[str, Any] = frame.model_dump(mode="json", exclude={"signature"})
    return json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()


def verify(agent_id: str, message: bytes, signature: str) -> bool:
    """True when `signature` (base58) is agent_id's signature of `message`."""
    try:
        key = VerifyKey(base58.b58decode(agent_id))
        key.verify(message, base58.b58decode(signature))
    except (BadSignatureError, ValueError, TypeError):
        return False
    return True


def new_nonce() -> str:
    return secrets.token_hex(16)
