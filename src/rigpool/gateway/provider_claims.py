"""What an agent claimed about a request it served, held against what the gateway saw.

Two uses of the agent's `done` frame once a request has ended well:

* **metering** (`check_metering`, every request): the agent's token count against the tokens it
  really returned. Billing never uses the claim; an inflated one is evidence.
* **verification** (`live_claim`, requests the verifier samples): the agent's signed data (token
  ids, logprobs, TOPLOC commitments) as a `LiveClaim` for `coordinator/verify_link.py`.

Both rest on one question, answered at most once per request (`statement_holds`): does the
agent's signature cover the data in its `done`? The honest path never needs it for metering (a
count that matches the streamed list is no inflation), so no request pays for a signature check
it does not need.
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Awaitable

from rigpool.gateway.ports import Trust
from rigpool.gateway.request import Outcome, RequestSpec
from rigpool.protocol.messages import Done
from rigpool.protocol.signing import verify
from rigpool.trust.evidence import claimed_sampling, metering_evidence, provider_statement
from rigpool.trust.live import VERIFIABLE_BACKENDS, LiveClaim
from rigpool.trust.metering import MeteringPolicy, MeterReading, compare
from rigpool.trust.verification import ProviderClaim
from rigpool.trust.verification import Sampling as VerifiedSampling

log = logging.getLogger(__name__)

#: an agent may claim a little more than the gateway counts (tokenizer round trips differ by a
#: token or two on odd text); more than this is inflation
METERING_POLICY = MeteringPolicy(abs_tolerance=2, rel_tolerance=0.1)


def check_metering(spec: RequestSpec, out: Outcome, trust: Trust) -> Awaitable[None] | None:
    """Compare the agent's token claim with what it really returned; inflation is evidence.

    The reference is the agent's own list of output ids when that list is what the gateway
    streamed, else the tokens the finishing attempt streamed or the gateway's recount of the
    text, whichever is larger. Never the recount alone: text cut at a stop string was generated
    (and is counted by an honest agent) but never sent. Only a record under the agent's valid
    signature can lead to a slash; an unsigned mismatch lowers the provider's reputation and is
    kept as an unsigned record. Returns the evidence record's durability, when one is kept.
    """
    if out.provider_id is None or out.claimed_tokens is None or out.attempt_id is None:
        return None
    done = out.done
    listed = done is not None and _output_matches_stream(out, done)
    if listed and done is not None and done.output_ids is not None:
        reference = len(done.output_ids)
    else:
        streamed = len(out.tokens) - out.attempt_offset
        reference = max(streamed, out.completion_tokens(spec) if not out.attempt_offset else 0)
    reading = MeterReading(
        request_id=out.attempt_id,
        agent_id=out.provider_id,
        model=spec.model.name,
        claimed_prompt_tokens=spec.prompt_tokens,  # agents do not claim prompt tokens
        claimed_completion_tokens=out.claimed_tokens,
        gateway_prompt_tokens=spec.prompt_tokens,
        gateway_completion_tokens=reference,
    )
    mismatch = compare(reading, METERING_POLICY)
    # Only inflation harms anyone: an agent claiming fewer tokens is not billed for them either.
    inflated = mismatch is not None and mismatch.completion_delta > 0
    trust.metering_checked(out.provider_id, passed=not inflated)
    identity = trust.identity
    if not inflated or identity is None:
        return None
    signed = listed and done is not None and statement_holds(spec, out, done)
    if signed and done is not None:
        # What the agent signed: its own prompt count and sampling, so anyone can check it.
        reading = MeterReading(
            **{**reading.__dict__, "claimed_prompt_tokens": len(done.prompt_ids or [])}
        )
    record = metering_evidence(
        reading=reading,
        provider_signature=done.statement_signature if signed and done else "",
        coordinator=identity,
        prompt_ids=done.prompt_ids if signed and done else None,
        output_ids=done.output_ids if signed and done else None,
        sampling=attempt_sampling(spec, out) if signed else None,
        logprobs=done.logprobs if signed and done else None,
        commitments=_commitments(done) if signed and done else None,
    )
    log.warning("metering evidence against %s: %s", out.provider_id, record.record_hash)
    out.metering_evidence = signed
    return trust.store_evidence(record)


def _commitments(done: Done) -> list[bytes] | None:
    if done.commitments is None:
        return None
    try:
        return [base64.b64decode(c, validate=True) for c in done.commitments]
    except (binascii.Error, ValueError):
        return None


def _output_matches_stream(out: Outcome, done: Done) -> bool:
    """Whether the agent's output ids are the tokens the finishing attempt streamed.

    One more is allowed: a final EOS the gateway did not wait for once the budget was spent.
    """
    if done.output_ids is None:
        return False
    streamed = [t.token_id for t in out.tokens[out.attempt_offset :]]
    listed = done.output_ids
    return listed[: len(streamed)] == streamed and len(listed) <= len(streamed) + 1


def attempt_sampling(spec: RequestSpec, out: Outcome) -> VerifiedSampling:
    """The sampling the finishing attempt was sent (a continuation asks for fewer tokens)."""
    sent = spec.sampling.model_copy(
        update={"max_tokens": spec.sampling.max_tokens - out.attempt_offset}
    )
    return claimed_sampling(sent)


def statement_holds(spec: RequestSpec, out: Outcome, done: Done) -> bool:
    """The agent's signature covers exactly the verification data in its `done` (memoised)."""
    if out.statement_ok is None:
        out.statement_ok = _check_statement(spec, out, done)
    return out.statement_ok


def _check_statement(spec: RequestSpec, out: Outcome, done: Done) -> bool:
    if (
        out.provider_id is None
        or out.attempt_id is None
        or not done.statement_signature
        or done.prompt_ids is None
        or done.output_ids is None
    ):
        return False
    commitments = _commitments(done)
    if done.commitments is not None and commitments is None:
        return False
    statement = provider_statement(
        request_id=out.attempt_id,
        model=spec.model.name,
        prompt_ids=done.prompt_ids,
        output_ids=done.output_ids,
        sampling=attempt_sampling(spec, out),
        logprobs=done.logprobs,
        commitments=commitments,
        prompt_tokens=len(done.prompt_ids),
        completion_tokens=done.completion_tokens_claimed,
    )
    return verify(out.provider_id, statement, done.statement_signature)


def live_claim(spec: RequestSpec, out: Outcome, backend: str) -> LiveClaim | None:
    """What the verifier needs to re-check the job, or None when there is nothing to check.

    `backend` is the serving agent's backend kind. Only a request served whole by one agent is
    checked (a failover continuation was generated from a prompt the client never sent). An
    agent whose backend runs the model itself must send the full data (ids, logprobs,
    commitments) under a valid signature, matching what the gateway streamed and its own
    tokenisation of the prompt; anything less is a failed check (`LiveClaim.mismatch`) rather
    than "unverifiable", or dropping the data would be a way out. Runs on the verifier's
    thread, only for sampled requests.
    """
    done = out.done
    if done is None or out.provider_id is None or out.attempt_id is None or out.attempt_offset:
        return None
    complete = (
        done.prompt_ids is not None
        and done.output_ids is not None
        and done.logprobs is not None
        and done.commitments is not None
        and bool(done.statement_signature)
    )
    if not complete and backend not in VERIFIABLE_BACKENDS:
        return None  # proxies and emulated GPUs: unverifiable (no checks, lower reputation)
    mismatch = ""
    if not complete:
        mismatch = f"a {backend} agent sent no complete verification data"
    elif not statement_holds(spec, out, done):
        mismatch = "the agent's signature does not cover its verification data"
    elif not _output_matches_stream(out, done):
        mismatch = "claimed output ids differ from the streamed tokens"
    elif spec.tokenizer.encode(spec.prompt) not in ([], done.prompt_ids):
        mismatch = "claimed prompt ids are not the gateway's tokenisation of the prompt"
    elif done.logprobs is not None and len(done.logprobs) != len(done.output_ids or []):
        mismatch = "logprob count differs from the output"
    commitments = _commitments(done)
    return LiveClaim(
        provider=out.provider_id,
        request_id=out.attempt_id,
        consumer=spec.consumer,
        model=spec.model.name,
        model_path=spec.model.path,
        claim=ProviderClaim(
            model=spec.model.name,
            prompt_ids=tuple(done.prompt_ids or ()),
            output_ids=tuple(done.output_ids or ()),
            sampling=attempt_sampling(spec, out),
            logprobs=None if done.logprobs is None else tuple(done.logprobs),
            commitments=None if commitments is None else tuple(commitments),
        ),
        signature=done.statement_signature,
        prompt_text=spec.prompt,
        output_text=out.output,
        prompt_tokens=len(done.prompt_ids or ()),
        completion_tokens=done.completion_tokens_claimed,
        mismatch=mismatch,
    )
