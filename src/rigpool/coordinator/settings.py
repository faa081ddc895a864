"""Coordinator settings, read from RIGPOOL_* environment variables or CLI flags.

Settings fail closed: outside development mode the coordinator refuses to start with the
development admin secret or an in-memory database.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEV_ADMIN_SECRET = "dev-admin-secret-change-me"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RIGPOOL_", extra="ignore")

    mode: Literal["development", "production"] = "development"
    database_url: str = "sqlite:///.rigpool/coordinator.db"
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    admin_secret: str = DEV_ADMIN_SECRET
    #: the coordinator's ed25519 key (Solana keypair file): countersigns receipts, owns the vault
    identity_path: Path = Path(".rigpool/coordinator-keypair.json")
    #: Hugging Face model folders whose tokenizer the gateway uses to count tokens.
    model_dirs: list[Path] = Field(default_factory=list)

    # Limits on what callers may send.
    max_body_bytes: int = Field(default=1 << 20, ge=1024)
    max_messages: int = Field(default=256, ge=1)
    max_n: int = Field(default=1, ge=1)
    # Per API key: requests per minute (token bucket with `rate_limit_burst`), daily tokens.
    rate_limit_per_min: float = Field(default=6000, gt=0)
    rate_limit_burst: float = Field(default=1000, ge=1)
    daily_token_quota: int | None = Field(default=None, ge=1)

    # Time limits: every request ends, none hangs.
    request_timeout_s: float = Field(default=120.0, gt=0)
    first_token_timeout_s: float = Field(default=30.0, gt=0)
    inter_token_timeout_s: float = Field(default=15.0, gt=0)
    max_attempts: int = Field(default=3, ge=1, le=10)

    # Routing (scheduler/): the live policy, and hedging of slow first tokens.
    routing_policy: Literal["rigpool", "round-robin", "least-loaded", "random"] = "rigpool"
    hedging: bool = True
    hedge_share: float = Field(default=0.05, ge=0, le=1)

    # Money: escrow every request (hold -> capture/release) in the ledger.
    billing: bool = True
    network_fee_bps: int = Field(default=500, ge=0, le=10_000)
    #: a first token later than this counts against the provider's reputation
    ttft_slo_s: float = Field(default=5.0, gt=0)
    #: base units an agent must have bonded before it may serve (0: no stake required)
    min_stake: int = Field(default=0, ge=0)

    # Agents.
    heartbeat_interval_s: float = Field(default=2.0, gt=0)
    heartbeat_timeout_s: float = Field(default=8.0, gt=0)
    hello_window_s: float = Field(default=60.0, gt=0)
    allow_unverified_agents: bool = True

    @model_validator(mode="after")
    def _fail_closed(self) -> Settings:
        if self.mode == "production":
            if self.admin_secret == DEV_ADMIN_SECRET:
                raise ValueError("RIGPOOL_ADMIN_SECRET must be set outside development mode")
            if self.allow_unverified_agents:
                raise ValueError("unverified (CPU/emulated) agents are only allowed in development")
        return self
