"""Verified inference on live traffic: sampled teacher-forced checks, evidence, slashing.

After a request has ended well, `Verifier.consider` decides with the serving provider's check
rate whether to re-check it (`trust.sampling`: a Beta belief about the provider cheating, high
for new or suspicious agents, never below a floor). Checks run off the request path, one at a
time in a worker thread: the claimed model (the registered folder, loaded once, in
`settings.verification_dtype`) reads prompt + output in one teacher-forced pass and
`trust.verification.judge` compares logprobs, top-k membership, greedy agreement, TOPLOC
commitments and token statistics with the agent's signed claim (docs/trust.md).

A failed check becomes an `EvidenceRecord` (the agent's signed statement, the claim, the
validator's result, the coordinator's signature) in the `evidence` table. Once a provider has
`settings.slash_records()` records on distinct requests (11 by default, from the measured
false-positive bound: docs/trust.md), `trust.evidence.recommend_slash` sizes the penalty and
`Ledger.slash` moves it from the provider's stake (consumer share to the harmed consumer, the
rest to the treasury); the agent is then disconnected. Records are marked
with the slash's `evidence_ref` *before* the ledger call, whose idempotency key is that same
reference: a crash in between is retried (`retry_pending_slashes`) and can never slash twice.

Before the model runs, the claim must match what the gateway itself saw: the streamed token ids
and the tokenisation of the prompt. A mismatch is a failed check (reputation, check rate) but not
evidence: the stream frames are MAC-sealed, not signed, so nobody else could re-check it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter, Request
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from rigpool.coordinator.tables import Evidence
from rigpool.core.errors import RigpoolError
from rigpool.ledger import Ledger
from rigpool.ledger.tables import Slash
from rigpool.protocol.signing import Identity
from rigpool.trust.evidence import (
    EvidenceRecord,
    SlashPolicy,
    SlashRecommendation,
    inference_evidence,
    recommend_slash,
    verify_evidence,
)
from rigpool.trust.live import LiveClaim
from rigpool.trust.sampling import SamplingPolicy, SpooferBelief, check_rate, should_check
from rigpool.trust.validator import Validator
from rigpool.trust.verification import (
    TokenStats,
    Tolerances,
    VerificationResult,
    aggregate_token_test,
)

log = logging.getLogger(__name__)

router = APIRouter()


@router.get("/v1/trust")
async def trust_view(request: Request) -> dict[str, Any]:
    """Verification per provider: check rate, checks passed and failed, evidence, slashes."""
    verifier = request.app.state.coordinator.verifier
    if verifier is None:
        return {"verification": False, "providers": {}}
    return {"verification": True, **verifier.status()}


@dataclass
class ProviderVerification:
    """What the verifier knows of one provider."""

    belief: SpooferBelief
    served: int = 0
    selected: int = 0
    checked: int = 0
    passed: int = 0
    failed: int = 0
    unverifiable: int = 0
    skipped: int = 0
    evidence: int = 0
    unprovable: int = 0
    slashed: int = 0
    tokens_checked: int = 0
    validator_s: float = 0.0
    window: list[TokenStats] = field(default_factory=list)
    last_failure: str = ""

    def to_json(self, policy: SamplingPolicy) -> dict[str, Any]:
        return {
            "check_rate": round(check_rate(self.belief, policy), 4),
            "belief": {"a": self.belief.a, "b": self.belief.b},
            "served": self.served,
            "selected": self.selected,
            "checked": self.checked,
            "passed": self.passed,
            "failed": self.failed,
            "unverifiable": self.unverifiable,
            "skipped": self.skipped,
            "evidence": self.evidence,
            "unprovable": self.unprovable,
            "slashed": self.slashed,
            "tokens_checked": self.tokens_checked,
            "validator_s": round(self.validator_s, 4),
            "last_failure": self.last_failure,
        }


@dataclass(frozen=True)
class Outcome:
    """The end of one check, handed back to the event loop."""

    provider: str
    passed: bool | None  # None: could not be checked (no validator for the model)
    result: VerificationResult | None = None
    seconds: float = 0.0
    evidence_hash: str = ""
    slash: SlashRecommendation | None = None
    reason: str = ""


@dataclass(frozen=True)
class _Check:
    """A sampled request: `claim` builds what to check (on the verifier's thread)."""

    provider: str
    claim: Callable[[], LiveClaim | None]


@dataclass(frozen=True)
class _SlashReview:
    """Weigh a provider's evidence for a slash (after the gateway recorded metering evidence)."""

    provider: str
    consumer: str


#: prefix of the reference marking records that expelled a provider with nothing staked
EXPELLED_UNSTAKED = "expelled:"


def _counts(record: EvidenceRecord) -> bool:
    """Whether a record may count towards a slash.

    It must be signed by the agent and, for metering (which needs no model), re-verify here.
    """
    if not record.provider_signature:
        return False
    return record.kind != "metering" or verify_evidence(record).ok


def _utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class Verifier:
    """Samples, checks, records evidence and slashes. One per coordinator."""

    def __init__(
        self,
        db: sessionmaker[Session],
        identity: Identity | None,
        ledger: Ledger | None,
        *,
        dtype: str = "float32",
        policy: SamplingPolicy | None = None,
        slash_policy: SlashPolicy | None = None,
        tolerances: Tolerances | None = None,
        queue_size: int = 64,
        token_window: int = 50,
        evidence_window_s: float = 7 * 86400.0,
        seed: int | None = None,
    ) -> None:
        self.db = db
        self.identity = identity
        self.ledger = ledger
        self.dtype = dtype
        self.policy = policy or SamplingPolicy()
        self.slash_policy = slash_policy or SlashPolicy()
        self.tolerances = tolerances or Tolerances()
        self.queue_size = queue_size
        self.token_window = token_window
        self.evidence_window_s = evidence_window_s
        self.providers: dict[str, ProviderVerification] = {}
        #: providers slashed already (expelled; not slashed twice for one offence): the owner
        #: seeds it with the ledger's slashed providers at start-up
        self.expelled: set[str] = set()
        self._rng = random.Random(seed)
        self._validators: dict[str, Validator] = {}
        self._unavailable: dict[str, str] = {}
        self._model_lock = threading.Lock()
        # Its own thread: checks never wait behind (or hold up) the request path's thread pool.
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="rigpool-validator")
        self._queue: asyncio.Queue[_Check | _SlashReview] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._idle.set()
        #: called on the event loop with (provider, passed) after every check
        self.on_checked: Callable[[str, bool], None] = lambda _p, _ok: None
        #: called on the event loop after a provider was slashed, with the reason
        self.on_slashed: Callable[[str, str], Any] = lambda _p, _r: None

    # --- sampling ------------------------------------------------------------------------------

    def provider(self, agent_id: str, *, suspicious: bool = False) -> ProviderVerification:
        seen = self.providers.get(agent_id)
        if seen is None:
            belief = SpooferBelief.new(self.policy, suspicious=suspicious)
            seen = self.providers[agent_id] = ProviderVerification(belief=belief)
        return seen

    def consider(
        self,
        provider: str,
        claim: Callable[[], LiveClaim | None],
        *,
        metering_evidence: str | None = None,
    ) -> bool:
        """Count one served request and maybe queue it for a check (call on the event loop).

        `claim` builds the `LiveClaim` (on the verifier's thread, and only for a sampled
        request); it returns None when the agent sent nothing to check (emulated and proxy
        backends, generations too long for one frame). `metering_evidence` names the consumer
        of a request whose token claim became signed evidence: the provider's evidence is
        weighed for a slash whatever the sampling says. Returns whether a check was queued.
        """
        seen = self.provider(provider)
        seen.served += 1
        if metering_evidence is not None:
            seen.evidence += 1
            self._idle.clear()
            self._ensure_worker().put_nowait(_SlashReview(provider, metering_evidence))
        if not should_check(seen.belief, self._rng.random(), self.policy):
            return False
        seen.selected += 1
        queue = self._ensure_worker()
        if queue.qsize() >= self.queue_size:
            seen.skipped += 1  # the validator is saturated: shed checks, never requests
            return False
        self._idle.clear()
        queue.put_nowait(_Check(provider, claim))
        return True

    def _ensure_worker(self) -> asyncio.Queue[_Check | _SlashReview]:
        if self._queue is None or self._worker is None or self._worker.done():
            self._queue = asyncio.Queue()
            self._worker = asyncio.get_running_loop().create_task(self._work(self._queue))
        return self._queue

    @property
    def idle(self) -> bool:
        """No check queued or running (safe to read from any thread)."""
        return self._idle.is_set()

    async def wait_idle(self, timeout_s: float = 60.0) -> None:
        """Wait until every queued check has finished (tests, the demo's report)."""
        await asyncio.wait_for(self._idle.wait(), timeout_s)

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _work(self, queue: asyncio.Queue[_Check | _SlashReview]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            item = await queue.get()
            try:
                if isinstance(item, _SlashReview):
                    slash = await loop.run_in_executor(
                        self._executor, self.maybe_slash, item.provider, item.consumer
                    )
                    await self._slashed(self.provider(item.provider), item.provider, slash)
                else:
                    await self._settle(await loop.run_in_executor(self._executor, self._run, item))
            except Exception:  # one bad check must not stop verification for everyone
                log.exception("verification for %s failed", item.provider)
            finally:
                if queue.empty():
                    self._idle.set()

    def _run(self, item: _Check) -> Outcome:
        live = item.claim()
        if live is None:
            return Outcome(item.provider, None, reason="nothing to check")
        return self._check(live)

    async def _settle(self, outcome: Outcome) -> None:
        seen = self.provider(outcome.provider)
        if outcome.passed is None:
            seen.unverifiable += 1
            return
        seen.checked += 1
        seen.validator_s += outcome.seconds
        seen.belief = seen.belief.update(outcome.passed, self.policy)
        if outcome.passed:
            seen.passed += 1
        else:
            seen.failed += 1
            seen.last_failure = outcome.reason
        if outcome.result is not None:
            seen.tokens_checked += outcome.result.n_tokens
            if outcome.result.token_stats.n:
                self._token_window(outcome.provider, seen, outcome.result.token_stats)
        if outcome.evidence_hash:
            seen.evidence += 1
        self.on_checked(outcome.provider, outcome.passed)
        await self._slashed(seen, outcome.provider, outcome.slash)
        if not outcome.passed and outcome.result is None:
            self._unprovable(outcome.provider, seen, outcome.reason)

    def _unprovable(self, provider: str, seen: ProviderVerification, reason: str) -> None:
        """Count a failure nobody else could re-check; expel an agent that keeps failing so.

        A claim without data, under a bad signature or with ids that differ from the stream is
        no slashing evidence; but an agent that keeps answering that way is refusing
        verification, and is expelled after as many such failures as a slash needs.
        """
        seen.unprovable += 1
        if seen.unprovable < self.slash_policy.min_records or provider in self.expelled:
            return
        self.expelled.add(provider)
        why = f"{seen.unprovable} checked answers could not be verified (last: {reason})"
        log.warning("expelled %s: %s", provider, why)
        self._expel(provider, why)

    async def _slashed(
        self, seen: ProviderVerification, provider: str, slash: SlashRecommendation | None
    ) -> None:
        if slash is not None:
            seen.slashed += slash.amount
            self._expel(provider, slash.reason)

    def _expel(self, provider: str, reason: str) -> None:
        result = self.on_slashed(provider, reason)
        if asyncio.iscoroutine(result):
            # Closing the expelled agent's socket waits for its close handshake: never let that
            # hold up the checks queued behind this one.
            task = asyncio.get_running_loop().create_task(result)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _token_window(self, provider: str, seen: ProviderVerification, stats: TokenStats) -> None:
        """The token test over a fixed window of checked requests (docs/trust.md).

        A single request's statistic is weak against "generate cheaply, prefill the real model";
        summed over `token_window` requests it is not. The window is fixed in advance, so the
        test is not a sequential one; a failure raises the provider's check rate.
        """
        seen.window.append(stats)
        if len(seen.window) < self.token_window:
            return
        verdict = aggregate_token_test(seen.window, self.tolerances.token_z)
        seen.window.clear()
        if not verdict.passed:
            log.warning("token statistics of %s fail over a window: %s", provider, verdict.detail)
            seen.belief = seen.belief.update(False, self.policy)
            seen.last_failure = f"token_statistics_aggregate: z = {verdict.value:.2f}"

    def warm(self, model: str, path: str) -> None:
        """Load `model`'s validator in the background (an agent that can be checked joined).

        Loading takes seconds; done at the first check instead, it would hold up (and shed)
        the checks queued meanwhile.
        """
        if model not in self._validators and model not in self._unavailable:
            self._executor.submit(self._validator, model, path)

    # --- the check itself (worker thread) -----------------------------------------------------

    def _validator(self, model: str, path: str) -> Validator | None:
        with self._model_lock:
            if model in self._validators:
                return self._validators[model]
            if model in self._unavailable:
                return None
            try:
                from rigpool.trust.torchops import load_model

                loaded = load_model(path, self.dtype)
            except ImportError as exc:
                self._unavailable[model] = f"no torch on the coordinator ({exc})"
            except (OSError, ValueError) as exc:
                self._unavailable[model] = f"cannot load {path}: {exc}"
            else:
                self._validators[model] = Validator(loaded, model, self.tolerances)
                return self._validators[model]
            log.warning("verification of %s is off: %s", model, self._unavailable[model])
            return None

    def _check(self, live: LiveClaim) -> Outcome:
        if live.mismatch:
            log.warning("claim of %s by %s: %s", live.request_id, live.provider, live.mismatch)
            return Outcome(live.provider, False, reason=live.mismatch)
        validator = self._validator(live.model, live.model_path)
        if validator is None:
            return Outcome(live.provider, None, reason=self._unavailable.get(live.model, ""))
        start = time.perf_counter()
        result = validator.check(live.claim)
        seconds = time.perf_counter() - start
        if result.passed:
            return Outcome(live.provider, True, result, seconds)
        reason = "; ".join(result.reasons)
        log.warning("verification failed for %s by %s: %s", live.request_id, live.provider, reason)
        if self.identity is None:
            return Outcome(live.provider, False, result, seconds, reason=reason)
        record = inference_evidence(
            provider=live.provider,
            request_id=live.request_id,
            claim=live.claim,
            result=result,
            provider_signature=live.signature,
            validator=self.identity,
            prompt_text=live.prompt_text,
            output_text=live.output_text,
            prompt_tokens=live.prompt_tokens,
            completion_tokens=live.completion_tokens,
        )
        store_evidence(self.db, record)
        slash = self.maybe_slash(live.provider, live.consumer)
        return Outcome(live.provider, False, result, seconds, record.record_hash, slash, reason)

    # --- slashing -----------------------------------------------------------------------------

    def maybe_slash(self, provider: str, consumer: str | None) -> SlashRecommendation | None:
        """Slash `provider` once its unslashed evidence is enough; returns what was slashed.

        Counted: records on distinct requests, within `evidence_window_s` (the false-slash
        bound assumes a window), that carry the agent's signature and, for metering, re-verify
        (an unsigned record proves nothing to anyone else). One slash per expulsion: checks of
        requests served before the expulsion still become evidence but do not slash again. A
        provider with nothing staked is expelled all the same (amount 0), or an unstaked
        cheater could never be stopped.
        """
        if self.ledger is None or provider in self.expelled:
            return None
        for pending in self.retry_pending_slashes(provider):
            return pending
        since = _utcnow() - timedelta(seconds=self.evidence_window_s)
        with self.db() as s:
            rows = s.scalars(
                select(Evidence).where(
                    Evidence.provider == provider,
                    Evidence.slash_ref.is_(None),
                    Evidence.created >= since,
                )
            ).all()
            records = [EvidenceRecord.from_json(json.dumps(r.record)) for r in rows]
        records = [r for r in records if _counts(r)]
        stake = self.ledger.balance("provider_stake", provider) + self.ledger.balance(
            "provider_unbonding", provider
        )
        recommendation = recommend_slash(records, max(stake, 1), self.slash_policy)
        if recommendation is None:
            return None
        if stake <= 0:
            recommendation = replace(
                recommendation,
                amount=0,
                consumer_share=0,
                evidence_ref=EXPELLED_UNSTAKED + recommendation.evidence_ref,
            )
        with self.db.begin() as s:
            s.execute(
                update(Evidence)
                .where(Evidence.record_hash.in_(recommendation.records))
                .values(slash_ref=recommendation.evidence_ref)
            )
        if stake <= 0:
            self.expelled.add(provider)
            log.warning(
                "expelled %s (nothing staked to slash): %s", provider, recommendation.reason
            )
            return recommendation
        return self._slash(recommendation, consumer)

    def _slash(self, rec: SlashRecommendation, consumer: str | None) -> SlashRecommendation | None:
        assert self.ledger is not None
        share = rec.consumer_share if consumer else 0
        try:
            self.ledger.slash(
                rec.provider,
                rec.amount,
                share,
                rec.reason,
                rec.evidence_ref,
                key=rec.evidence_ref,
                consumer=consumer if share else None,
            )
        except RigpoolError as exc:
            log.error("slash of %s failed: %s", rec.provider, exc.message)
            return None
        self.expelled.add(rec.provider)
        log.warning(
            "slashed %s by %d base units: %s (%s)",
            rec.provider,
            rec.amount,
            rec.reason,
            rec.evidence_ref,
        )
        return rec

    def retry_pending_slashes(self, provider: str) -> list[SlashRecommendation]:
        """Finish slashes whose records were marked but whose ledger call did not happen.

        Returns the slashes done now (the caller expels those providers).
        """
        assert self.ledger is not None
        with self.db() as s:
            refs = set(
                s.scalars(
                    select(Evidence.slash_ref).where(
                        Evidence.provider == provider, Evidence.slash_ref.is_not(None)
                    )
                )
            )
        pending: set[str] = {r for r in refs if r and not r.startswith(EXPELLED_UNSTAKED)}
        if not pending:
            return []
        with self.ledger.sessions() as s:
            done = set(s.scalars(select(Slash.evidence_ref).where(Slash.provider == provider)))
        finished = []
        for ref in sorted(pending - done):
            with self.db() as s:
                rows = s.scalars(select(Evidence).where(Evidence.slash_ref == ref)).all()
                records = [EvidenceRecord.from_json(json.dumps(r.record)) for r in rows]
            stake = self.ledger.balance("provider_stake", provider) + self.ledger.balance(
                "provider_unbonding", provider
            )
            policy = replace(self.slash_policy, min_records=1)
            rec = recommend_slash(records, stake, policy)
            if rec is not None and rec.evidence_ref == ref and self._slash(rec, None):
                finished.append(rec)
        return finished

    def finish_pending(self) -> dict[str, str]:
        """At start-up: finish interrupted slashes; every provider to keep out, with the reason.

        Slashed providers are read from the ledger by the caller; this adds the ones whose slash
        was interrupted and the unstaked ones that were expelled without a slash.
        """
        if self.ledger is None:
            return {}
        with self.db() as s:
            marked = s.execute(
                select(Evidence.provider, Evidence.slash_ref).where(Evidence.slash_ref.is_not(None))
            ).all()
        out: dict[str, str] = {}
        for provider in sorted({p for p, _ref in marked}):
            for rec in self.retry_pending_slashes(provider):
                out[provider] = rec.reason
        for provider, ref in marked:
            if ref and ref.startswith(EXPELLED_UNSTAKED):
                out.setdefault(provider, "expelled on evidence (nothing staked to slash)")
        self.expelled.update(out)
        return out

    def status(self) -> dict[str, Any]:
        return {
            "queued": 0 if self._queue is None or self.idle else max(1, self._queue.qsize()),
            "policy": {
                "floor": self.policy.floor,
                "cap": self.policy.cap,
                "slash_min_records": self.slash_policy.min_records,
            },
            "validators": {
                "loaded": sorted(self._validators),
                "unavailable": dict(self._unavailable),
            },
            "providers": {p: v.to_json(self.policy) for p, v in sorted(self.providers.items())},
        }


def store_evidence(
    db: sessionmaker[Session], record: EvidenceRecord, created: datetime | None = None
) -> None:
    """Keep a record in the `evidence` table (idempotent on its hash); `created`: now."""
    with db.begin() as s:
        evidence_unit(record, created)(s)


def evidence_unit(
    record: EvidenceRecord, created: datetime | None = None
) -> Callable[[Session], None]:
    """`store_evidence` as a unit of work for a group-commit writer (or any open session)."""

    def unit(s: Session) -> None:
        if s.scalar(select(Evidence.id).where(Evidence.record_hash == record.record_hash)):
            return
        s.add(
            Evidence(
                provider=record.provider,
                kind=record.kind,
                request_id=record.request_id,
                record_hash=record.record_hash,
                record=json.loads(record.to_json()),
                created=created or _utcnow(),
            )
        )

    return unit
