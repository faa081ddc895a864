"""Shared fixtures: the toy model and a real coordinator on loopback with an API key."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from netsupport import API_KEY, ServerThread, make_settings
from rigpool.coordinator.keys import create_key
from rigpool.devnet.toymodel import default_cache_root, ensure_toy_model
from rigpool.trust.simulate import CLAIMED_MODEL, ModelSet, build_test_models
from rigpool.trust.torchops import load_model
from rigpool.trust.validator import Validator


@pytest.fixture(scope="session")
def toy_model() -> Path:
    """The untrained test model, built once per machine (cached like `make run` does)."""
    return ensure_toy_model()


@pytest.fixture
def coordinator(tmp_path: Path, toy_model: Path) -> Iterator[ServerThread]:
    with ServerThread(make_settings(tmp_path, [toy_model])) as server:
        create_key(server.db, key=API_KEY)
        yield server


# --- the trust suite's peaked test models (tests/trust, tests/backends) ----------------------


@pytest.fixture(scope="session")
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
    return Validator(load_model(trust_models.claimed), CLAIMED_MODEL)
