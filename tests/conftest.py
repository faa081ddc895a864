"""Shared fixtures: the toy model and a real coordinator on loopback with an API key."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from netsupport import API_KEY, ServerThread, make_settings
from rigpool.coordinator.keys import create_key
from rigpool.devnet.toymodel import ensure_toy_model


@pytest.fixture(scope="session")
def toy_model() -> Path:
    """The untrained test model, built once per machine (cached like `make run` does)."""
    return ensure_toy_model()


@pytest.fixture
def coordinator(tmp_path: Path, toy_model: Path) -> Iterator[ServerThread]:
    with ServerThread(make_settings(tmp_path, [toy_model])) as server:
        create_key(server.db, key=API_KEY)
        yield server
