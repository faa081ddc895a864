"""Fixtures for the trust suite: the peaked test models, built once per machine and cached."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from rigpool.devnet.toymodel import default_cache_root, ensure_toy_model
from rigpool.trust.simulate import CLAIMED_MODEL, ModelSet, build_test_models
from rigpool.trust.torchops import load_model
from rigpool.trust.verification import Validator

MODEL_NAME = CLAIMED_MODEL


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Tiny models on a shared 2-core machine: one thread is several times faster than two."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def trust_models() -> ModelSet:
    return build_test_models(default_cache_root() / "trust-models-v1", ensure_toy_model())


@pytest.fixture(scope="session")
def validator(trust_models: ModelSet) -> Validator:
    return Validator(load_model(trust_models.claimed), MODEL_NAME)
