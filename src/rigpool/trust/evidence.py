"""Evidence: a failed check as a self-contained, signed record that anyone can re-verify.

A record carries everything needed to repeat the check without trusting whoever produced it:

* the provider's own signed statement of what it returned (`provider_statement`: request id,
  model, prompt and output token ids, reported logprobs, commitments, claimed token counts),
  so a validator cannot frame a provider with output it never produced;
* the claimed model's name (the re-checker loads its own copy);
* the validator's result and the validator's signature over the record hash.

`verify_evidence(record, model_loader)` checks the hash and both signatures and then repeats the
check itself: for inference, a fresh teacher-forced pass through the model that `model_loader`
returns; for metering, the comparison of the signed counts. A record is only good evidence if
the failure reproduces.

`recommend_slash` turns enough independent records into an amount and a reason for
`ledger.Ledger.slash(provider, amount, consumer_share, reason, evidence_ref, ...)`. Independent
means distinct requests; how many are needed follows from the measured per-check false-positive
rate (`sampling.failures_required`), so an honest provider is practically never slashed.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol

from rigpool.protocol.signing import Identity, verify
from rigpool.trust.metering import MeteringPolicy, MeterReading
from rigpool.trust.verification import ProviderClaim, Sampling, VerificationResult

EVIDENCE_VERSION = 1
#: domain separation of a provider's statement signature (as receipts have theirs), so it can
#: never be replayed as any other message the agent signs
STATEMENT_DOMAIN = b"rigpool-statement-v1:"
Kind = Literal["inference", "metering"]


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def _b64(items: Sequence[bytes] | None) -> list[str] | None:
    return None if items is None else [base64.b64encode(b).decode() for b in items]


def _unb64(items: Sequence[str] | None) -> tuple[bytes, ...] | None:
    return None if items is None else tuple(base64.b64decode(s) for s in items)


class _WireSampling(Protocol):
    @property
    def temperature(self) -> float: ...
    @property
    def top_p(self) -> float: ...
    @property
    def max_tokens(self) -> int: ...
    @property
    def seed(self) -> int | None: ...


def claimed_sampling(sampling: _WireSampling) -> Sampling:
    """The sampling a provider states it used, from the request's wire sampling fields."""
    return Sampling(
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        max_tokens=sampling.max_tokens,
        seed=sampling.seed,
    )


def provider_statement(
    *,
    request_id: str,
    model: str,
    prompt_ids: Sequence[int],
    output_ids: Sequence[int],
    sampling: Sampling,
    logprobs: Sequence[float] | None = None,
    commitments: Sequence[bytes] | None = None,
    prompt_tokens: int | None = None,
    completion_tokens: int | None = None,
) -> bytes:
    """The bytes a provider signs when it returns a generation (agent side).

    Canonical JSON of what the provider asserts. Token-id lists and logprobs are included as
    SHA-256 digests so the statement stays small; the record carries the full lists.
    """

    def digest(obj: Any) -> str:
        return hashlib.sha256(_canonical(obj)).hexdigest()

    return STATEMENT_DOMAIN + _canonical(
        {
            "request_id": request_id,
            "model": model,
            "prompt_ids": digest(list(prompt_ids)),
            "output_ids": digest(list(output_ids)),
            "sampling": asdict(sampling),
            "logprobs": None if logprobs is None else digest([round(x, 6) for x in logprobs]),
            "commitments": None if commitments is None else digest(_b64(commitments)),
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
        }
    )


@dataclass
class EvidenceRecord:
    """One failed check. Serialise with `to_json` / `from_json`; `record_hash` identifies it."""

    kind: Kind
    provider: str
    request_id: str
    body: dict[str, Any]
    validator: str
    result: dict[str, Any]
    provider_signature: str
    validator_signature: str = ""
    created: float = field(default_factory=time.time)
    version: int = EVIDENCE_VERSION

    def _hashed_part(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("validator_signature")
        return d

    @property
    def record_hash(self) -> str:
        return hashlib.sha256(_canonical(self._hashed_part())).hexdigest()

    def sign(self, validator: Identity) -> EvidenceRecord:
        """Set `validator` and its signature over the record hash; returns self."""
        self.validator = validator.agent_id
        self.validator_signature = validator.sign(self.record_hash.encode())
        return self

    def to_json(self) -> str:
        d = asdict(self)
        d["record_hash"] = self.record_hash
        return json.dumps(d, sort_keys=True, indent=1)

    @classmethod
    def from_json(cls, text: str) -> EvidenceRecord:
        d = json.loads(text)
        d.pop("record_hash", None)
        return cls(**d)

    def claim(self) -> ProviderClaim:
        """The provider's claim, rebuilt from the body (inference records)."""
        b = self.body
        logprobs = b.get("logprobs")
        return ProviderClaim(
            model=b["model"],
            prompt_ids=tuple(b["prompt_ids"]),
            output_ids=tuple(b["output_ids"]),
            sampling=Sampling(**b["sampling"]),
            logprobs=None if logprobs is None else tuple(logprobs),
            commitments=_unb64(b.get("commitments")),
        )

    def statement(self) -> bytes:
        """The provider statement this record's provider signature must cover."""
        b = self.body
        if self.kind == "inference":
            c = self.claim()
            return provider_statement(
                request_id=self.request_id,
                model=c.model,
                prompt_ids=c.prompt_ids,
                output_ids=c.output_ids,
                sampling=c.sampling,
                logprobs=c.logprobs,
                commitments=c.commitments,
                prompt_tokens=b.get("prompt_tokens"),
                completion_tokens=b.get("completion_tokens"),
            )
        logprobs = b.get("logprobs")
        return provider_statement(
            request_id=self.request_id,
            model=b["model"],
            prompt_ids=b.get("prompt_ids", []),
            output_ids=b.get("output_ids", []),
            sampling=Sampling(**b.get("sampling", {})),
            logprobs=None if logprobs is None else tuple(logprobs),
            commitments=_unb64(b.get("commitments")),
            prompt_tokens=b["claimed_prompt_tokens"],
            completion_tokens=b["claimed_completion_tokens"],
        )


def inference_evidence(
    *,
    provider: str,
    request_id: str,
    claim: ProviderClaim,
    result: VerificationResult,
    provider_signature: str,
    validator: Identity,
    prompt_text: str | None = None,
    output_text: str | None = None,
    prompt_tokens: int | None = None,
    completion_tokens: int | None = None,
) -> EvidenceRecord:
    """A signed record of a failed inference check."""
    body = {
        "model": claim.model,
        "prompt_ids": list(claim.prompt_ids),
        "output_ids": list(claim.output_ids),
        "sampling": asdict(claim.sampling),
        "logprobs": None if claim.logprobs is None else [round(x, 6) for x in claim.logprobs],
        "commitments": _b64(claim.commitments),
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "prompt_text": prompt_text,
        "output_text": output_text,
    }
    record = EvidenceRecord(
        kind="inference",
        provider=provider,
        request_id=request_id,
        body=body,
        validator=validator.agent_id,
        result=result.to_json(),
        provider_signature=provider_signature,
    )
    return record.sign(validator)


def metering_evidence(
    *,
    reading: MeterReading,
    provider_signature: str,
    coordinator: Identity,
    output_ids: Sequence[int] | None = None,
    prompt_ids: Sequence[int] | None = None,
    sampling: Sampling | None = None,
    logprobs: Sequence[float] | None = None,
    commitments: Sequence[bytes] | None = None,
) -> EvidenceRecord:
    """A signed record of a claimed token count that disagrees with the gateway's.

    With the agent's signed statement (`provider_signature` over the token ids, logprobs and
    commitments it reported, passed here unchanged), the record proves inflation on its own:
    the agent signed `output_ids` and claimed more tokens than that list holds.
    """
    body = asdict(reading)
    body["prompt_ids"] = list(prompt_ids or [])
    body["output_ids"] = list(output_ids or [])
    body["sampling"] = asdict(sampling or Sampling())
    body["logprobs"] = None if logprobs is None else [round(x, 6) for x in logprobs]
    body["commitments"] = _b64(commitments)
    record = EvidenceRecord(
        kind="metering",
        provider=reading.agent_id,
        request_id=reading.request_id,
        body=body,
        validator=coordinator.agent_id,
        result={"passed": False},
        provider_signature=provider_signature,
    )
    return record.sign(coordinator)


class Checker(Protocol):
    def check(self, claim: ProviderClaim) -> VerificationResult: ...


ModelLoader = Callable[[str], Checker]


@dataclass(frozen=True)
class EvidenceCheck:
    """Outcome of re-verifying a record: `ok` means the record is authentic and reproduces."""

    ok: bool
    reasons: tuple[str, ...]
    result: VerificationResult | None = None


def verify_evidence(
    record: EvidenceRecord, model_loader: ModelLoader | None = None
) -> EvidenceCheck:
    """Re-check a record from scratch.

    Args:
        record: The record (e.g. ``EvidenceRecord.from_json(path.read_text())``).
        model_loader: Model name -> a checker with ``check(claim)`` (normally a
            `validator.Validator` around the re-checker's own copy of the model). Needed for
            inference records only.

    """
    reasons: list[str] = []
    if record.version != EVIDENCE_VERSION:
        return EvidenceCheck(False, (f"unknown evidence version {record.version}",))
    if not verify(record.validator, record.record_hash.encode(), record.validator_signature):
        reasons.append("validator signature does not match the record")
    if not verify(record.provider, record.statement(), record.provider_signature):
        reasons.append("provider signature does not cover this output")
    if record.kind == "metering":
        b = record.body
        reading = MeterReading(**{k: b[k] for k in MeterReading.__dataclass_fields__})
        # Only an inflated completion count is fraud (agents claim no prompt tokens, and
        # claiming fewer tokens harms nobody), so the test is one-sided on completions.
        policy = MeteringPolicy()
        if b.get("output_ids"):
            # The agent's own signed output is the reference: the agent signed `output_ids` and
            # a count; a count above the list (beyond the tolerance) is inflation by its own word.
            reference = len(b["output_ids"])
        else:
            reference = reading.gateway_completion_tokens
        excess = reading.claimed_completion_tokens - reference
        if excess <= policy.abs_tolerance + policy.rel_tolerance * reference:
            reasons.append(
                f"a claim of {reading.claimed_completion_tokens} tokens against {reference} "
                "is no inflation to prove"
            )
        return EvidenceCheck(not reasons, tuple(reasons))
    if model_loader is None:
        return EvidenceCheck(False, (*reasons, "inference evidence needs a model loader"))
    claim = record.claim()
    result = model_loader(claim.model).check(claim)
    if result.passed:
        reasons.append("the output passes verification here: the failure does not reproduce")
    return EvidenceCheck(not reasons, tuple(reasons), result)


@dataclass(frozen=True)
class SlashPolicy:
    """How much to slash, and on how much evidence."""

    min_records: int = 3  # distinct failed requests; see sampling.failures_required
    inference_fraction: float = 0.5  # of the stake, for serving something else than claimed
    metering_fraction: float = 0.1  # for lying about counts (billing used the gateway's anyway)
    consumer_share: float = 0.5  # of the slash, to the harmed consumer when there is one


@dataclass(frozen=True)
class SlashRecommendation:
    """What to pass to `Ledger.slash`; `evidence_ref` is a hash over the records' hashes."""

    provider: str
    amount: int
    consumer_share: int
    reason: str
    evidence_ref: str
    records: tuple[str, ...]


def evidence_ref(records: Iterable[EvidenceRecord]) -> str:
    """A stable reference to a set of records: sha256 over their sorted hashes."""
    hashes = sorted(r.record_hash for r in records)
    return "sha256:" + hashlib.sha256("\n".join(hashes).encode()).hexdigest()


def recommend_slash(
    records: Sequence[EvidenceRecord], stake: int, policy: SlashPolicy | None = None
) -> SlashRecommendation | None:
    """A slash for one provider's records, or None while the evidence is not enough.

    Only records of one provider are accepted; duplicates of the same request count once. The
    caller should pass records that `verify_evidence` accepted.
    """
    p = policy or SlashPolicy()
    if not records:
        return None
    providers = {r.provider for r in records}
    if len(providers) != 1:
        raise ValueError("records of several providers")
    by_request = {r.request_id: r for r in records}
    if len(by_request) < p.min_records or stake <= 0:
        return None
    unique = list(by_request.values())
    kinds = {r.kind for r in unique}
    fraction = p.inference_fraction if "inference" in kinds else p.metering_fraction
    amount = max(1, min(stake, int(stake * fraction)))
    failed = sorted(
        {c["name"] for r in unique for c in r.result.get("checks", []) if not c["passed"]}
    )
    what = ", ".join(failed) if failed else "token counts"
    reason = f"{'/'.join(sorted(kinds))} fraud: {len(unique)} failed checks ({what})"
    return SlashRecommendation(
        provider=providers.pop(),
        amount=amount,
        consumer_share=int(amount * p.consumer_share) if "inference" in kinds else 0,
        reason=reason,
        evidence_ref=evidence_ref(unique),
        records=tuple(sorted(r.record_hash for r in unique)),
    )
