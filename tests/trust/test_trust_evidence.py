"""Evidence records: failed checks become re-verifiable records; slashing needs several."""

from __future__ import annotations

import dataclasses
import json

import pytest

from rigpool.protocol.signing import Identity
from rigpool.trust.evidence import (
    EvidenceRecord,
    SlashPolicy,
    inference_evidence,
    metering_evidence,
    provider_statement,
    recommend_slash,
    verify_evidence,
)
from rigpool.trust.metering import MeterReading
from rigpool.trust.simulate import CLAIMED_MODEL as MODEL_NAME
from rigpool.trust.verification import Sampling
from trustsupport import served


def test_failed_check_reverifies_from_its_json(cheat_record, validator):
    check = verify_evidence(cheat_record, lambda name: validator)
    assert check.ok, check.reasons
    assert check.result is not None and not check.result.passed
    assert json.loads(cheat_record.to_json())["record_hash"] == cheat_record.record_hash


def test_tampered_record_is_rejected(cheat_record, validator):
    forged = dataclasses.replace(cheat_record, body={**cheat_record.body, "output_ids": [5, 6]})
    check = verify_evidence(forged, lambda name: validator)
    assert not check.ok
    assert any("signature" in r for r in check.reasons)


def test_honest_output_cannot_be_framed(trust_models, validator):
    provider, framer = Identity.generate(), Identity.generate()
    claim, signature = served("honest", trust_models, provider, seed=3)
    result = validator.check(claim)
    fake_fail = dataclasses.replace(result, passed=False)
    record = inference_evidence(
        provider=provider.agent_id,
        request_id="req-3",
        claim=claim,
        result=fake_fail,
        provider_signature=signature,
        validator=framer,
    )
    check = verify_evidence(record, lambda name: validator)
    assert not check.ok
    assert any("does not reproduce" in r for r in check.reasons)


def test_metering_evidence_reverifies():
    provider, coordinator = Identity.generate(), Identity.generate()
    reading = MeterReading("r9", provider.agent_id, MODEL_NAME, 12, 40, 12, 20)
    statement = provider_statement(
        request_id="r9",
        model=MODEL_NAME,
        prompt_ids=[],
        output_ids=list(range(20)),
        sampling=Sampling(),
        prompt_tokens=12,
        completion_tokens=40,
    )
    record = metering_evidence(
        reading=reading,
        provider_signature=provider.sign(statement),
        coordinator=coordinator,
        output_ids=list(range(20)),
    )
    assert verify_evidence(EvidenceRecord.from_json(record.to_json())).ok


@pytest.mark.parametrize(
    ("claimed", "gateway_prompt"),
    [(20, 0), (19, 12), (21, 12)],  # a prompt count it never signed; fewer; one more (EOS)
)
def test_a_coordinator_cannot_frame_an_honest_count(claimed, gateway_prompt):
    """Only a completion claim above the agent's own signed output list is inflation."""
    provider, coordinator = Identity.generate(), Identity.generate()
    reading = MeterReading("r10", provider.agent_id, MODEL_NAME, 12, claimed, gateway_prompt, 20)
    statement = provider_statement(
        request_id="r10", model=MODEL_NAME, prompt_ids=[], output_ids=list(range(20)),
        sampling=Sampling(), prompt_tokens=12, completion_tokens=claimed,
    )  # fmt: skip
    record = metering_evidence(
        reading=reading,
        provider_signature=provider.sign(statement),
        coordinator=coordinator,
        output_ids=list(range(20)),
    )
    check = verify_evidence(EvidenceRecord.from_json(record.to_json()))
    assert not check.ok and any("no inflation to prove" in r for r in check.reasons)


def test_slash_needs_enough_independent_records(cheat_record):
    policy = SlashPolicy(min_records=3)
    assert recommend_slash([cheat_record] * 5, stake=1000, policy=policy) is None  # one request
    records = [dataclasses.replace(cheat_record, request_id=f"req-{i}") for i in range(3)]
    rec = recommend_slash(records, stake=1000, policy=policy)
    assert rec is not None
    assert rec.amount == 500 and rec.consumer_share == 250
    assert rec.evidence_ref.startswith("sha256:") and len(rec.records) == 3
    assert "failed checks" in rec.reason
