"""API keys: created once, shown once, stored as SHA-256, compared in constant time.

A key is 32 random bytes (URL-safe base64) behind the prefix `rp-`; with that much entropy a plain
SHA-256 is enough (no password-style stretching is needed, as for GitHub or Stripe tokens).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from rigpool.coordinator.tables import ApiKey

KEY_PREFIX = "rp-"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def create_key(
    db: sessionmaker[Session], name: str = "", key: str | None = None, consumer: str | None = None
) -> str:
    """Store a key (a fresh one unless `key` is given) and return it in clear, once.

    `consumer` is the ledger account the key spends from (the consumer's wallet); without it
    the key spends from an account of its own, "apikey-<id>".
    """
    key = key or new_key()
    if len(key) < 16:
        raise ValueError("an API key must be at least 16 characters")
    digest = hash_key(key)
    with db.begin() as session:
        existing = session.scalar(select(ApiKey).where(ApiKey.key_hash == digest))
        if existing is None:
            session.add(
                ApiKey(
                    name=name,
                    prefix=key[:8],
                    key_hash=digest,
                    consumer=consumer,
                    created=datetime.now(UTC).replace(tzinfo=None),
                )
            )
        else:
            existing.revoked = False
            if consumer is not None:
                existing.consumer = consumer
    return key


def authenticate(db: sessionmaker[Session], key: str) -> tuple[int, str] | None:
    """Return (key id, consumer account) when `key` is a live API key, else None."""
    digest = hash_key(key)
    with db() as session:
        row = session.scalar(select(ApiKey).where(ApiKey.key_hash == digest))
    # The lookup is by hash (an index), so timing reveals nothing about the key; the final
    # comparison is constant-time all the same, as defence in depth.
    if row is None or row.revoked or not hmac.compare_digest(row.key_hash, digest):
        return None
    return row.id, row.consumer or f"apikey-{row.id}"
