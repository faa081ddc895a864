"""Several validators' scores of every provider, combined into the one reputation the router reads.

Validator #0 is the coordinator itself (id ``"coordinator"``, stake
`Settings.coordinator_validator_stake`): its score of a provider is its own service record
(`ServiceBook.score`), and it abstains on providers it has never seen. Other validators are
registered ed25519 keys with a stake (`Settings.validators`, or the admin endpoint); each sends
signed `ValidatorReport`s (provider -> score in [0, 1]) for increasing epochs, and only its latest
report counts, until it is `validator_report_ttl_s` old.

Per provider, the consensus is `trust.reputation.yuma_consensus` over the validators that scored
it (stake-weighted, clipped to the stake-weighted median on both sides): validators holding less
than `kappa` (0.5) of the stake cannot move it outside the others' range. With no report naming a
provider the consensus *is* the coordinator's service score, exactly as before validators existed.
Results are cached per provider and dropped when a report names it, when its service record
changes, when a report expires or when stakes change.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any

import base58
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from rigpool.coordinator.settings import Settings
from rigpool.coordinator.trust_link import ServiceBook
from rigpool.core.errors import BadRequest, RigpoolError, Unauthorized
from rigpool.protocol.signing import Identity, canonical_bytes, verify
from rigpool.trust.reputation import yuma_consensus

COORDINATOR_ID = "coordinator"
#: signatures over reports cannot be replayed as any other signed rigpool message
REPORT_DOMAIN = b"rigpool-validator-report-v1:"
_BASE58_KEY = r"^[1-9A-HJ-NP-Za-km-z]{32,44}$"

KeyId = Annotated[str, StringConstraints(pattern=_BASE58_KEY)]
Score = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]


class ValidatorReport(BaseModel):
    """One validator's scores for one epoch; `signature` covers everything else (see below)."""

    model_config = ConfigDict(extra="forbid")

    validator: KeyId
    epoch: int = Field(ge=0, le=2**53)
    scores: dict[KeyId, Score]
    timestamp: float = Field(gt=0, allow_inf_nan=False)
    signature: str = Field(default="", max_length=128)


def report_message(report: ValidatorReport) -> bytes:
    """The bytes a report's signature covers: the domain prefix, then canonical JSON."""
    return REPORT_DOMAIN + canonical_bytes(report)


def sign_report(
    identity: Identity, epoch: int, scores: Mapping[str, float], timestamp: float | None = None
) -> ValidatorReport:
    report = ValidatorReport(
        validator=identity.agent_id,
        epoch=epoch,
        scores=dict(scores),
        timestamp=time.time() if timestamp is None else timestamp,
    )
    return report.model_copy(update={"signature": identity.sign(report_message(report))})


def is_validator_id(text: str) -> bool:
    """True for a base58 ed25519 public key."""
    try:
        return len(base58.b58decode(text)) == 32
    except ValueError:
        return False


def parse_validator_entries(entries: Iterable[str]) -> dict[str, int]:
    """`["BASE58ID=STAKE", ...]` (already checked by `Settings`) -> {id: stake}."""
    out: dict[str, int] = {}
    for entry in entries:
        ident, _, stake = entry.partition("=")
        out[ident.strip()] = int(stake.strip())
    return out


class UnknownValidator(RigpoolError):
    status_code = 403
    error_type = "permission_error"
    code = "unknown_validator"


class ReportConflict(RigpoolError):
    """The report is stale or replays an epoch already counted."""

    status_code = 409
    error_type = "invalid_request_error"
    code = "stale_report"


@dataclass(frozen=True)
class _Report:
    epoch: int
    scores: dict[str, float]
    timestamp: float
    received_at: float

    @property
    def measured_at(self) -> float:
        return min(self.timestamp, self.received_at)


@dataclass
class ValidatorBoard:
    service: ServiceBook
    coordinator_stake: int = 1_000_000_000
    ttl_s: float = 3600.0
    window_s: float = 300.0
    max_providers: int = 10_000
    kappa: float = 0.5
    #: external validators: id -> stake in base units
    stakes: dict[str, int] = field(default_factory=dict)
    _reports: dict[str, _Report] = field(default_factory=dict)
    #: provider -> validators whose latest report scores it
    _raters: dict[str, set[str]] = field(default_factory=dict)
    #: provider -> (consensus, valid until (wall clock), service revision it used)
    _cache: dict[str, tuple[float, float, int | None]] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: Settings, service: ServiceBook) -> ValidatorBoard:
        return cls(
            service=service,
            coordinator_stake=settings.coordinator_validator_stake,
            ttl_s=settings.validator_report_ttl_s,
            window_s=settings.validator_report_window_s,
            max_providers=settings.validator_max_providers,
            kappa=settings.validator_kappa,
            stakes=parse_validator_entries(settings.validators),
        )

    # --- registration --------------------------------------------------------------------

    def stake_of(self, validator: str) -> int | None:
        if validator == COORDINATOR_ID:
            return self.coordinator_stake
        return self.stakes.get(validator)

    def set_stake(self, validator: str, stake: int) -> set[str]:
        """Register or re-weigh a validator (stake 0 removes it). Returns the providers touched."""
        if validator == COORDINATOR_ID:
            self.coordinator_stake = stake
            touched = set(self._raters)
        else:
            touched = set(self._drop(validator)) if stake == 0 else self._scored_by(validator)
            if stake == 0:
                self.stakes.pop(validator, None)
            else:
                self.stakes[validator] = stake
        self._cache.clear()
        return touched

    # --- reports -------------------------------------------------------------------------

    def submit(self, report: ValidatorReport, now: float | None = None) -> set[str]:
        """Check and count a report. Returns the providers whose consensus may have moved.

        Raises UnknownValidator (403), Unauthorized (401: bad signature), BadRequest (400: too
        many providers) or ReportConflict (409: timestamp outside the window, epoch not newer).
        """
        now = time.time() if now is None else now
        if report.validator == COORDINATOR_ID or report.validator not in self.stakes:
            raise UnknownValidator(
                f"validator {report.validator} is not registered with this coordinator",
                param="validator",
            )
        if len(report.scores) > self.max_providers:
            raise BadRequest(
                f"a report may score at most {self.max_providers} providers, "
                f"got {len(report.scores)}",
                param="scores",
                code="too_many_providers",
            )
        if not verify(report.validator, report_message(report), report.signature):
            raise Unauthorized(
                "bad signature: it must be the validator's ed25519 signature over "
                "b'rigpool-validator-report-v1:' + canonical JSON of the other fields",
                param="signature",
                code="bad_signature",
            )
        if abs(now - report.timestamp) > self.window_s:
            raise ReportConflict(
                f"report timestamp is {now - report.timestamp:.0f} s away from the "
                f"coordinator's clock (at most {self.window_s:.0f} s)",
                param="timestamp",
            )
        last = self._reports.get(report.validator)
        if last is not None and report.epoch <= last.epoch:
            raise ReportConflict(
                f"epoch {report.epoch} is not newer than this validator's last epoch {last.epoch}",
                param="epoch",
                code="epoch_not_newer",
            )
        touched = self._drop(report.validator)
        self._reports[report.validator] = _Report(
            report.epoch, dict(report.scores), report.timestamp, now
        )
        for provider in report.scores:
            self._raters.setdefault(provider, set()).add(report.validator)
        touched.update(report.scores)
        for provider in touched:
            self._cache.pop(provider, None)
        return touched

    def prune(self, now: float | None = None) -> set[str]:
        """Forget reports past their TTL. Returns the providers they scored."""
        now = time.time() if now is None else now
        touched: set[str] = set()
        for validator, report in list(self._reports.items()):
            if now - report.measured_at > self.ttl_s:
                touched.update(self._drop(validator))
        for provider in touched:
            self._cache.pop(provider, None)
        return touched

    def _drop(self, validator: str) -> set[str]:
        report = self._reports.pop(validator, None)
        if report is None:
            return set()
        for provider in report.scores:
            raters = self._raters.get(provider)
            if raters is not None:
                raters.discard(validator)
                if not raters:
                    del self._raters[provider]
        return set(report.scores)

    def _scored_by(self, validator: str) -> set[str]:
        report = self._reports.get(validator)
        return set(report.scores) if report else set()

    def last_report(self, validator: str) -> tuple[int, float] | None:
        """(epoch, time received) of the validator's latest report."""
        report = self._reports.get(validator)
        return None if report is None else (report.epoch, report.received_at)

    # --- consensus -----------------------------------------------------------------------

    def scores_for(self, provider: str, now: float | None = None) -> dict[str, float]:
        """Every live score of `provider`: validator -> score (the coordinator's included)."""
        now = time.time() if now is None else now
        out: dict[str, float] = {}
        if provider in self.service:
            out[COORDINATOR_ID] = self.service.score(provider)
        for validator in list(self._raters.get(provider, ())):
            report = self._reports.get(validator)
            if report is not None and now - report.measured_at <= self.ttl_s:
                out[validator] = report.scores[provider]
        return out

    def consensus(self, provider: str, now: float | None = None) -> float:
        """The provider's reputation in [0, 1]."""
        if provider not in self._raters:  # nobody else scored it: the service record alone
            return self.service.score(provider)
        now = time.time() if now is None else now
        revision = self.service.revision(provider)
        cached = self._cache.get(provider)
        if cached is not None and now < cached[1] and cached[2] == revision:
            return cached[0]
        scores = self.scores_for(provider, now)
        stakes = {v: float(self.stake_of(v) or 0) for v in scores}
        matrix = {v: {provider: s} for v, s in scores.items()}
        result = yuma_consensus(matrix, stakes, kappa=self.kappa)
        value = result.scores.get(provider)
        if value is None:  # nobody with stake scored it
            value = self.service.score(provider)
        expiry = [
            r.measured_at + self.ttl_s for v in scores if (r := self._reports.get(v)) is not None
        ]
        self._cache[provider] = (value, min(expiry, default=now), revision)
        return value

    def validator_trust(self, now: float | None = None) -> dict[str, float]:
        """Yuma's validator trust: 1 - mean distance clipping moved a validator's scores.

        Counted over the providers at least two validators scored (a lone score is never
        clipped); a validator with none of those has trust 1.
        """
        now = time.time() if now is None else now
        matrix: dict[str, dict[str, float]] = {v: {} for v in [COORDINATOR_ID, *self.stakes]}
        for provider in list(self._raters):
            scores = self.scores_for(provider, now)
            if len(scores) < 2:
                continue
            for validator, score in scores.items():
                matrix.setdefault(validator, {})[provider] = score
        stakes = {v: float(self.stake_of(v) or 0) for v in matrix}
        trust = yuma_consensus(matrix, stakes, kappa=self.kappa).validator_trust
        return {v: trust.get(v, 1.0) for v in matrix}

    def describe(self, now: float | None = None) -> list[dict[str, Any]]:
        """The validator table `GET /v1/validators` shows."""
        now = time.time() if now is None else now
        trust = self.validator_trust(now)
        total = self.coordinator_stake + sum(self.stakes.values())
        rows = []
        for validator in [COORDINATOR_ID, *sorted(self.stakes)]:
            stake = self.stake_of(validator) or 0
            report = self._reports.get(validator)
            live = report is not None and now - report.measured_at <= self.ttl_s
            rows.append(
                {
                    "id": validator,
                    "stake": stake,
                    "stake_share": stake / total if total else 0.0,
                    "last_epoch": report.epoch if report else None,
                    "last_report_at": report.received_at if report else None,
                    "live": validator == COORDINATOR_ID or live,
                    "providers_scored": (
                        len(self.service)
                        if validator == COORDINATOR_ID
                        else len(report.scores)
                        if report
                        else 0
                    ),
                    "validator_trust": trust.get(validator, 1.0),
                }
            )
        return rows
