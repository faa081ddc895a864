"""Shared fixtures: the toy model is built once per session (it is deterministic anyway)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from rigpool.devnet.toymodel import TOY_MODEL_NAME, build_toy_model


@pytest.fixture(scope="session")
def toy_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_toy_model(tmp_path_factory.mktemp("toy") / TOY_MODEL_NAME)


@pytest.fixture(scope="session")
def toy_backend(toy_model_dir: Path) -> Iterator[object]:
    from rigpool.agent.backends.transformers_backend import TransformersBackend

    backend = TransformersBackend(str(toy_model_dir), device="cpu")
    yield backend
