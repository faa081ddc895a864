"""An authenticated channel for every agent frame after the signed hello.

Signing each streamed token with ed25519 would cost the coordinator ~60 µs of verification per
token (seconds of CPU per second at a thousand streams). Instead the hello is signed, and the
session gets a key that only the agent's private key can derive:

* the coordinator draws an ephemeral X25519 key pair per connection and sends its public half
  in `welcome`;
* both sides compute X25519 between that key and the agent's identity key (the ed25519 key
  converted to Curve25519, as libsodium defines it), then hash it with the hello's nonce;
* every later agent frame travels as `sealed`: a strictly increasing sequence number and an
  HMAC-SHA256 (128-bit tag) over `seq:body`.

So a frame cannot be forged without the agent's private key (the secret never crosses the wire),
cannot be altered in flight, and cannot be replayed: within a session the sequence number only
grows, and a new session has a new key.
"""

from __future__ import annotations

import hashlib
import hmac
import os

from nacl.bindings import (
    crypto_scalarmult,
    crypto_scalarmult_base,
    crypto_sign_ed25519_pk_to_curve25519,
    crypto_sign_ed25519_sk_to_curve25519,
)

from rigpool.protocol.messages import ProtocolError, Sealed, seal_text

TAG_BYTES = 16
_CONTEXT = b"rigpool-session-v1"


def new_ephemeral() -> tuple[bytes, bytes]:
    """(private, public) X25519 keys for one connection."""
    private = os.urandom(32)
    return private, crypto_scalarmult_base(private)


def _derive(shared: bytes, nonce: str) -> bytes:
    return hashlib.sha256(_CONTEXT + shared + nonce.encode()).digest()


def coordinator_session_key(
    ephemeral_private: bytes, agent_public_ed25519: bytes, nonce: str
) -> bytes:
    agent_x25519 = crypto_sign_ed25519_pk_to_curve25519(agent_public_ed25519)
    return _derive(crypto_scalarmult(ephemeral_private, agent_x25519), nonce)


def agent_session_key(keypair64: bytes, coordinator_ephemeral_public: bytes, nonce: str) -> bytes:
    own_x25519 = crypto_sign_ed25519_sk_to_curve25519(keypair64)
    return _derive(crypto_scalarmult(own_x25519, coordinator_ephemeral_public), nonce)


class Sealer:
    """The agent's side: wraps each frame's JSON with a sequence number and a tag."""

    def __init__(self, key: bytes):
        self._key = key
        self._seq = 0

    def seal(self, body: str) -> str:
        """The wire text of `body` (a frame's JSON) as the next sealed frame."""
        self._seq += 1
        return seal_text(self._seq, _tag(self._key, self._seq, body), body)


class Opener:
    """The coordinator's side: checks the tag and that sequence numbers only grow."""

    def __init__(self, key: bytes):
        self._key = key
        self._last = 0

    def open(self, sealed: Sealed) -> str:
        """The body of a sealed frame whose tag and sequence number check out."""
        return self.open_parts(sealed.seq, sealed.mac, sealed.body)

    def open_parts(self, seq: int, mac: str, body: str) -> str:
        """`open` for a frame already split by `messages.decode_sealed` (no model built)."""
        if not hmac.compare_digest(_tag(self._key, seq, body), mac):
            raise ProtocolError("bad frame authentication tag")
        if seq <= self._last:
            raise ProtocolError(f"replayed or reordered frame (seq {seq} <= {self._last})")
        self._last = seq
        return body


def _tag(key: bytes, seq: int, body: str) -> str:
    return hmac.digest(key, b"%d:%s" % (seq, body.encode()), "sha256")[:TAG_BYTES].hex()
