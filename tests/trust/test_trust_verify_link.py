"""The coordinator's verifier: sampled checks -> evidence -> one slash, crash-safe, never twice."""

from __future__ import annotations

import asyncio
import json

import pytest
from sqlalchemy import select, update

from rigpool.coordinator.db import open_database
from rigpool.coordinator.tables import Evidence
from rigpool.coordinator.verify_link import LiveClaim, Verifier, store_evidence
from rigpool.ledger import Ledger, audit
from rigpool.ledger.tables import Slash
from rigpool.protocol.signing import Identity
from rigpool.trust.evidence import (
    EvidenceRecord,
    SlashPolicy,
    evidence_ref,
    inference_evidence,
    provider_statement,
)
from rigpool.trust.sampling import SamplingPolicy, check_rate
from rigpool.trust.simulate import CLAIMED_MODEL, make_provider, random_prompts
from rigpool.trust.verification import ProviderClaim, Sampling

CONSUMER = "harmed-consumer"
STAKE = 1_000_000
GREEDY = Sampling(temperature=0.0, max_tokens=16)


@pytest.fixture(scope="module")
def providers(trust_models):
    return {k: make_provider(k, trust_models) for k in ("honest", "smaller")}


def live(kind, providers, trust_models, agent: Identity, seed: int, **extra) -> LiveClaim:
    """What the gateway hands the verifier for one request `agent` served as `kind`."""
    prompt = random_prompts(1, 1024, seed=seed)[0]
    gen = providers[kind](prompt, GREEDY)
    claim = ProviderClaim(
        CLAIMED_MODEL, tuple(prompt), tuple(gen.output_ids), GREEDY,
        tuple(round(x, 6) for x in gen.logprobs), tuple(gen.commitments),
    )  # fmt: skip
    request_id = f"cmpl-{kind}-{seed}.1"
    statement = provider_statement(
        request_id=request_id, model=CLAIMED_MODEL, prompt_ids=claim.prompt_ids,
        output_ids=claim.output_ids, sampling=GREEDY, logprobs=claim.logprobs,
        commitments=claim.commitments, prompt_tokens=len(prompt),
        completion_tokens=len(gen.output_ids),
    )  # fmt: skip
    values = dict(
        provider=agent.agent_id, request_id=request_id, consumer=CONSUMER, model=CLAIMED_MODEL,
        model_path=str(trust_models.claimed), claim=claim, signature=agent.sign(statement),
        prompt_text="", output_text="", prompt_tokens=len(prompt),
        completion_tokens=len(gen.output_ids),
    )  # fmt: skip
    values.update(extra)
    return LiveClaim(**values)


def stored_failures(v, providers, trust_models, cheat, validator, seeds) -> list[EvidenceRecord]:
    """Evidence records of failed checks of `cheat` (a smaller model), stored, not yet weighed."""
    records = []
    for seed in seeds:
        c = live("smaller", providers, trust_models, cheat, seed)
        result = v._validator(CLAIMED_MODEL, str(trust_models.claimed)).check(c.claim)
        records.append(inference_evidence(
            provider=cheat.agent_id, request_id=c.request_id, claim=c.claim, result=result,
            provider_signature=c.signature, validator=validator,
            prompt_tokens=c.prompt_tokens, completion_tokens=c.completion_tokens,
        ))  # fmt: skip
        store_evidence(v.db, records[-1])
    return records


@pytest.fixture
def book(tmp_path):
    db = open_database(f"sqlite:///{tmp_path / 'c.db'}")
    return db, Ledger(db)


def verifier(db, ledger, **policy) -> Verifier:
    v = Verifier(
        db, Identity.generate(), ledger,
        policy=SamplingPolicy(floor=1.0, cap=1.0, **policy),
        slash_policy=SlashPolicy(min_records=3), seed=0,
    )  # fmt: skip
    v.expelled_calls = []  # type: ignore[attr-defined]
    v.on_slashed = lambda p, r: v.expelled_calls.append((p, r))  # type: ignore[attr-defined]
    return v


def run(v: Verifier, claims: list[tuple[str, LiveClaim | None]]) -> None:
    async def go() -> None:
        for provider, claim in claims:
            v.consider(provider, lambda claim=claim: claim)
        await v.wait_idle(120)
        await v.close()

    asyncio.run(go())


def test_failed_checks_become_evidence_and_exactly_one_slash(book, providers, trust_models):
    db, ledger = book
    cheat = Identity.generate()
    ledger.stake(cheat.agent_id, STAKE, "s" * 64)
    v = verifier(db, ledger)
    run(v, [(cheat.agent_id, live("smaller", providers, trust_models, cheat, i)) for i in range(5)])

    status = v.status()["providers"][cheat.agent_id]
    assert status["checked"] == 5 and status["failed"] == 5 and status["evidence"] == 5
    with db() as s:
        rows = list(s.scalars(select(Evidence)))
    assert len(rows) == 5 and {r.kind for r in rows} == {"inference"}
    with ledger.sessions() as s:
        slashes = list(s.scalars(select(Slash)))
    assert len(slashes) == 1  # the two later failures do not slash an expelled provider again
    assert slashes[0].amount == STAKE // 2 and slashes[0].consumer == CONSUMER
    assert ledger.balance("provider_stake", cheat.agent_id) == STAKE // 2
    assert ledger.balance("consumer", CONSUMER) == STAKE // 4
    marked = [r for r in rows if r.slash_ref]
    assert len(marked) == 3 and {r.slash_ref for r in marked} == {slashes[0].evidence_ref}
    assert v.expelled_calls == [(cheat.agent_id, slashes[0].reason)]  # type: ignore[attr-defined]
    assert audit(ledger) == []


def test_honest_claims_pass_and_the_check_rate_falls(book, providers, trust_models):
    db, ledger = book
    honest = Identity.generate()
    v = verifier(db, ledger)
    v.policy = SamplingPolicy()  # production rates, but check everything via the rng below
    v._rng.random = lambda: 0.0  # type: ignore[method-assign]
    before = check_rate(v.provider(honest.agent_id).belief, v.policy)
    run(
        v, [(honest.agent_id, live("honest", providers, trust_models, honest, i)) for i in range(6)]
    )
    status = v.status()["providers"][honest.agent_id]
    assert status["passed"] == 6 and status["failed"] == 0 and status["evidence"] == 0
    assert status["check_rate"] < before
    with db() as s:
        assert s.scalar(select(Evidence.id)) is None


def test_a_claim_that_disagrees_with_the_stream_fails_but_is_not_evidence(
    book, providers, trust_models
):
    db, ledger = book
    agent = Identity.generate()
    v = verifier(db, ledger)
    claim = live("honest", providers, trust_models, agent, 1, mismatch="claimed ids differ")
    run(v, [(agent.agent_id, claim), (agent.agent_id, None)])
    status = v.status()["providers"][agent.agent_id]
    assert status["failed"] == 1 and status["unverifiable"] == 1
    assert status["last_failure"] == "claimed ids differ"
    with db() as s:
        assert s.scalar(select(Evidence.id)) is None  # stream frames are not signed


def test_a_model_the_validator_cannot_load_is_unverifiable(book, providers, trust_models, tmp_path):
    db, ledger = book
    agent = Identity.generate()
    v = verifier(db, ledger)
    claim = live("smaller", providers, trust_models, agent, 2, model_path=str(tmp_path / "gone"))
    run(v, [(agent.agent_id, claim)])
    status = v.status()
    assert status["providers"][agent.agent_id]["unverifiable"] == 1
    assert status["providers"][agent.agent_id]["failed"] == 0
    assert CLAIMED_MODEL in status["validators"]["unavailable"]


def test_a_crash_between_marking_and_slashing_is_finished_once(book, providers, trust_models):
    """Records are marked with the slash's reference before the ledger call; a crash there is
    finished on the next review, with the reference as idempotency key: never twice."""
    db, ledger = book
    cheat, validator = Identity.generate(), Identity.generate()
    ledger.stake(cheat.agent_id, STAKE, "t" * 64)
    v = verifier(db, ledger)
    records = stored_failures(v, providers, trust_models, cheat, validator, seeds=range(10, 13))
    ref = evidence_ref(records)
    with db.begin() as s:  # marked, then "crashed" before Ledger.slash
        s.execute(update(Evidence).values(slash_ref=ref))

    done = v.maybe_slash(cheat.agent_id, CONSUMER)  # the pending slash is finished and
    assert done is not None and done.evidence_ref == ref  # returned, so the agent is expelled
    with ledger.sessions() as s:
        rows = list(s.scalars(select(Slash)))
    assert len(rows) == 1 and rows[0].evidence_ref == ref
    v.expelled.clear()
    assert v.retry_pending_slashes(cheat.agent_id) == []
    with ledger.sessions() as s:
        assert len(list(s.scalars(select(Slash)))) == 1
    assert ledger.balance("provider_stake", cheat.agent_id) == STAKE // 2
    assert audit(ledger) == []
    # The stored records are what `rigpool evidence verify` re-checks.
    with db() as s:
        stored = [
            EvidenceRecord.from_json(json.dumps(r.record)) for r in s.scalars(select(Evidence))
        ]
    assert sorted(r.record_hash for r in stored) == sorted(r.record_hash for r in records)


def test_an_expulsion_outlives_a_coordinator_restart(tmp_path, book):
    """The ledger's slashes are the record: a restarted coordinator still refuses the agent."""
    from netsupport import make_settings
    from rigpool.agent.daemon import signed_hello
    from rigpool.coordinator.agent_link import check_hello
    from rigpool.coordinator.state import CoordinatorState
    from rigpool.protocol.messages import Capabilities

    db, ledger = book
    cheat = Identity.generate()
    ledger.stake(cheat.agent_id, STAKE, "u" * 64)
    ledger.slash(cheat.agent_id, 10, 0, "inference fraud: test", "sha256:x", key="sha256:x")
    settings = make_settings(tmp_path, [], billing=True, database_url=str(db.kw["bind"].url))
    state = CoordinatorState(settings=settings, db=db)
    assert cheat.agent_id in state.banned and cheat.agent_id in state.verifier.expelled
    hello = signed_hello(cheat, Capabilities(backend="transformers"))
    reason = check_hello(state, hello, hello.timestamp)
    assert reason is not None and "slashed" in reason and "inference fraud: test" in reason


def test_a_restart_finishes_an_interrupted_slash_before_any_hello(
    tmp_path, book, providers, trust_models
):
    db, ledger = book
    cheat, validator = Identity.generate(), Identity.generate()
    ledger.stake(cheat.agent_id, STAKE, "v" * 64)
    v = verifier(db, ledger)
    records = stored_failures(v, providers, trust_models, cheat, validator, seeds=range(20, 23))
    with db.begin() as s:
        s.execute(update(Evidence).values(slash_ref=evidence_ref(records)))
    fresh = verifier(db, ledger)
    assert set(fresh.finish_pending()) == {cheat.agent_id}
    assert ledger.balance("provider_stake", cheat.agent_id) == STAKE // 2
    assert fresh.finish_pending() == {}  # nothing twice


def test_an_unstaked_cheater_is_expelled_all_the_same(book, providers, trust_models):
    db, ledger = book
    cheat = Identity.generate()  # nothing staked (a network without min_stake)
    v = verifier(db, ledger)
    run(v, [(cheat.agent_id, live("smaller", providers, trust_models, cheat, i)) for i in range(3)])
    assert cheat.agent_id in v.expelled
    assert v.expelled_calls and v.expelled_calls[0][0] == cheat.agent_id  # type: ignore[attr-defined]
    with ledger.sessions() as s:
        assert list(s.scalars(select(Slash))) == []  # nothing to take
    assert set(verifier(db, ledger).finish_pending()) == {cheat.agent_id}  # kept out after restart


def test_an_agent_that_keeps_sending_unverifiable_answers_is_expelled(
    book, providers, trust_models
):
    """Dropping the data, a bad signature or ids that differ from the stream is no evidence,
    but it must not be a way out: after as many such answers as a slash needs, expelled."""
    db, ledger = book
    agent = Identity.generate()
    v = verifier(db, ledger)
    claims = [
        live("honest", providers, trust_models, agent, i, mismatch="no verification data")
        for i in range(3)
    ]
    run(v, [(agent.agent_id, c) for c in claims])
    assert agent.agent_id in v.expelled
    assert "could not be verified" in v.expelled_calls[0][1]  # type: ignore[attr-defined]
    with db() as s:
        assert s.scalar(select(Evidence.id)) is None
