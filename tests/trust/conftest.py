"""Fixtures for the trust suite (the test models and validator are in tests/conftest.py)."""

from __future__ import annotations

import pytest

from rigpool.protocol.signing import Identity
from rigpool.trust.evidence import EvidenceRecord, inference_evidence
from rigpool.trust.simulate import CLAIMED_MODEL, ModelSet
from rigpool.trust.validator import Validator
from trustsupport import served

MODEL_NAME = CLAIMED_MODEL


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread(one_torch_thread: None) -> None:
    """Every trust test runs torch on one thread (tests/conftest.py says why)."""


@pytest.fixture(scope="session")
def cheat_record(trust_models: ModelSet, validator: Validator) -> EvidenceRecord:
    """A real failed check of a cheating (smaller-model) provider, as read from a file."""
    provider, checker = Identity.generate(), Identity.generate()
    claim, signature = served("smaller", trust_models, provider)
    result = validator.check(claim)
    assert not result.passed
    record = inference_evidence(
        provider=provider.agent_id,
        request_id="req-0",
        claim=claim,
        result=result,
        provider_signature=signature,
        validator=checker,
    )
    return EvidenceRecord.from_json(record.to_json())
