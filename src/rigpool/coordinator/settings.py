"""Coordinator settings, read from RIGPOOL_* environment variables or CLI flags.

Settings fail closed: outside development mode the coordinator refuses to start with the
development admin secret or an in-memory database.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

import base58
from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEV_ADMIN_SECRET = "dev-admin-secret-change-me"

#: attestation sizes a development coordinator uses for fields not set explicitly: CPU test
#: agents answer in well under a second (the production values are the fields' defaults). The
#: target still sizes an A100's work at ~1.9 TFLOP (tens of seconds on a CPU), so a CPU that
#: claims one misses even the generous 10 s allowance: 0.002 s let it through when idle.
DEV_ATTESTATION: dict[str, object] = {
    "attest_matrix_size": 256,
    "attest_target_s": 0.01,
    "attest_max_buffer_mb": 4,
    "attest_allowance_s": 10.0,
}


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
    #: seconds from a request's headers to the last byte of its body (coordinator/body_limit.py):
    #: a slower body is answered 408 and its connection closed, so a client that dribbles bytes
    #: cannot hold a connection; 30 s is 1 MiB at ~35 kB/s
    body_read_timeout_s: float = Field(default=30.0, gt=0)
    #: a request line and headers not complete within this (from the connection, or from the
    #: first byte of a later request on a kept-alive one) close the connection: a client that
    #: connects and says nothing, or dribbles its headers, cannot hold a connection either
    header_read_timeout_s: float = Field(default=10.0, gt=0)
    max_messages: int = Field(default=256, ge=1)
    max_n: int = Field(default=1, ge=1)
    #: answer POST /v1/chat/completions and /v1/completions in gateway/lean.py, without FastAPI's
    #: routing and dependency injection (same answers; off: FastAPI's routes serve them)
    lean_routes: bool = True
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

    # Validators (coordinator/validators.py): who else scores providers, and with what stake.
    #: "BASE58ID=STAKE" entries (env: comma-separated, or a JSON list); stake in base units
    validators: Annotated[list[str], NoDecode] = Field(default_factory=list)
    #: the coordinator's own weight as validator #0 (its scores are its service record)
    coordinator_validator_stake: int = Field(default=1_000_000_000, ge=0)
    #: reports older than this no longer count towards the consensus
    validator_report_ttl_s: float = Field(default=3600.0, gt=0)
    #: a report's timestamp may differ from the coordinator's clock by at most this
    validator_report_window_s: float = Field(default=300.0, gt=0)
    validator_max_providers: int = Field(default=10_000, ge=1)
    #: share of the stake whose scores bound the consensus (Yuma's kappa)
    validator_kappa: float = Field(default=0.5, gt=0, le=1)

    # Verified inference (coordinator/verify_link.py, docs/trust.md): sampled teacher-forced
    # checks of live traffic, evidence records, slashing.
    verification: bool = True
    #: the dtype the validator loads the claimed model in (tolerances are calibrated for fp32)
    verification_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    #: the check rate never falls below `check_rate_floor` nor exceeds `check_rate_cap`
    check_rate_floor: float = Field(default=0.02, ge=0, le=1)
    check_rate_cap: float = Field(default=0.5, ge=0, le=1)
    #: checks waiting beyond this are shed (the validator never slows down serving)
    verification_queue: int = Field(default=64, ge=1)
    #: distinct failed requests before a slash; None: the fewest that keep the chance of ever
    #: slashing an honest provider below `false_slash_target` over `slash_window_checks` checks,
    #: given `honest_false_positive_rate` (trust.sampling.failures_required; docs/trust.md)
    slash_min_records: int | None = Field(default=None, ge=1)
    #: per-check false-positive rate of honest providers: the 95 % upper bound (rule of three)
    #: of 0 false positives in 10,002 honest requests (fp32/bf16/fp16, bench/trust.py)
    honest_false_positive_rate: float = Field(default=3e-4, gt=0, lt=1)
    #: checks the bound covers: 10,000 requests of one provider at the 50 % cap
    slash_window_checks: int = Field(default=5000, ge=1)
    false_slash_target: float = Field(default=1e-6, gt=0, lt=1)
    #: sampled requests per fixed window of the aggregate token-statistics test
    token_test_window: int = Field(default=50, ge=2)

    # Agents.
    heartbeat_interval_s: float = Field(default=2.0, gt=0)
    heartbeat_timeout_s: float = Field(default=8.0, gt=0)
    hello_window_s: float = Field(default=60.0, gt=0)
    allow_unverified_agents: bool = True

    # Attestation (coordinator/attest_link.py, docs/trust.md): agents are challenged at join
    # and at random times after. In development mode, fields not set explicitly take the small
    # sizes of DEV_ATTESTATION; production uses the defaults here.
    attestation: bool = True
    #: mean of the exponential wait between re-attestations of a live agent
    attest_interval_s: float = Field(default=3600.0, gt=0)
    #: seconds the compute part takes on the claimed card per the performance model
    attest_target_s: float = Field(default=1.0, gt=0)
    #: side of the challenge's square matrices
    attest_matrix_size: int = Field(default=4096, ge=16, le=16384)
    #: cap on the memory buffer, MiB (development only: production must fill the claimed VRAM)
    attest_max_buffer_mb: int | None = Field(default=None, ge=1)
    #: fixed seconds added to both deadlines (network round trip, kernel launches)
    attest_allowance_s: float = Field(default=2.0, gt=0)
    #: most of the claimed VRAM an agent's heartbeat may report in use (its loaded model) and
    #: so leave out of a challenge; a card with less memory than this share is still caught
    attest_max_reserved: float = Field(default=0.5, ge=0, lt=1)

    @field_validator("validators", mode="before")
    @classmethod
    def _split_validators(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @field_validator("validators")
    @classmethod
    def _check_validators(cls, value: list[str]) -> list[str]:
        for entry in value:
            ident, sep, stake = entry.partition("=")
            try:
                key = base58.b58decode(ident.strip())
            except ValueError:
                key = b""
            if not sep or len(key) != 32 or not stake.strip().isdigit():
                raise ValueError(f"validator entry {entry!r} is not BASE58ID=STAKE")
        return value

    @model_validator(mode="after")
    def _development_attestation(self) -> Settings:
        if self.mode == "development":
            for name, value in DEV_ATTESTATION.items():
                if name not in self.model_fields_set:
                    setattr(self, name, value)
        return self

    def slash_records(self) -> int:
        """Distinct failed requests a slash needs (the setting, or derived from the rates)."""
        if self.slash_min_records is not None:
            return self.slash_min_records
        from rigpool.trust.sampling import failures_required

        return failures_required(
            self.honest_false_positive_rate, self.slash_window_checks, self.false_slash_target
        )

    @model_validator(mode="after")
    def _fail_closed(self) -> Settings:
        if self.mode == "production":
            if not self.attestation:
                raise ValueError("attestation of agents cannot be turned off in production")
            if self.attest_max_buffer_mb is not None:
                raise ValueError(
                    "attest_max_buffer_mb is for development networks: production challenges "
                    "must fill the claimed VRAM"
                )
            if self.admin_secret == DEV_ADMIN_SECRET:
                raise ValueError("RIGPOOL_ADMIN_SECRET must be set outside development mode")
            if self.allow_unverified_agents:
                raise ValueError("unverified (CPU/emulated) agents are only allowed in development")
        return self
