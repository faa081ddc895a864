"""Database tables of the coordinator (SQLAlchemy 2 ORM).

Only durable state lives here; live connection state lives in the hub. Every schema change is
an Alembic migration under `coordinator/migrations/versions` (a test checks that the migrations
produce exactly these tables).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from rigpool.core.sqlbase import Base


class Provider(Base):
    """An agent that has said hello at least once. Its id is its ed25519 public key."""

    __tablename__ = "providers"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    state: Mapped[str] = mapped_column(String(16), default="offline")  # online | offline
    backend: Mapped[str] = mapped_column(String(32), default="")
    emulated: Mapped[bool] = mapped_column(Boolean, default=False)
    region: Mapped[str] = mapped_column(String(64), default="local")
    gpus: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    models: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    agent_version: Mapped[str] = mapped_column(String(64), default="")
    first_seen: Mapped[datetime] = mapped_column(DateTime)
    last_seen: Mapped[datetime] = mapped_column(DateTime)


class Model(Base):
    """A model the gateway can meter: its tokenizer lives in `path`."""

    __tablename__ = "models"

    name: Mapped[str] = mapped_column(String(256), primary_key=True)
    path: Mapped[str] = mapped_column(Text)
    context_length: Mapped[int] = mapped_column(Integer)
    created: Mapped[datetime] = mapped_column(DateTime)


class ApiKey(Base):
    """An API key, stored as the SHA-256 of the secret (the key itself is shown once)."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128), default="")
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    #: the ledger account the key spends from (a wallet address, or "apikey-<id>")
    consumer: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created: Mapped[datetime] = mapped_column(DateTime)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)


class RequestRecord(Base):
    """One API request, from admission to its end, with the gateway's own token counts."""

    __tablename__ = "requests"
    __table_args__ = (
        UniqueConstraint("api_key_id", "idempotency_key", name="uq_requests_idempotency"),
        Index("ix_requests_created", "created"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    api_key_id: Mapped[int] = mapped_column(Integer)
    idempotency_key: Mapped[str] = mapped_column(String(128))
    endpoint: Mapped[str] = mapped_column(String(32))
    model: Mapped[str] = mapped_column(String(256))
    stream: Mapped[bool] = mapped_column(Boolean, default=False)
    # running | ok | error (costs nothing) | cancelled (client hung up; pays what it received)
    status: Mapped[str] = mapped_column(String(16), default="running")
    provider_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens_claimed: Mapped[int | None] = mapped_column(Integer, nullable=True)
    ttft_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    latency_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    response: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created: Mapped[datetime] = mapped_column(DateTime)
    finished: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


class AgentNonce(Base):
    """Nonces of accepted hellos, kept for the replay window (durable across restarts)."""

    __tablename__ = "agent_nonces"

    agent_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    nonce: Mapped[str] = mapped_column(String(64), primary_key=True)
    timestamp: Mapped[float] = mapped_column(Float, index=True)


class Evidence(Base):
    """A failed check as a self-contained record (trust.evidence.EvidenceRecord JSON)."""

    __tablename__ = "evidence"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    provider: Mapped[str] = mapped_column(String(64), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    request_id: Mapped[str] = mapped_column(String(128))
    record_hash: Mapped[str] = mapped_column(String(64), unique=True)
    record: Mapped[dict[str, Any]] = mapped_column(JSON)
    created: Mapped[datetime] = mapped_column(DateTime)
    #: the ledger slash this record was counted in (`trust.evidence.evidence_ref`); None while
    #: the record still waits for enough independent evidence
    slash_ref: Mapped[str | None] = mapped_column(String(80), nullable=True, index=True)
