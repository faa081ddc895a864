"""Live checks of honest and evasive agents: stop strings are no inflation, evasion is no way out.

A real coordinator on loopback, a real CPU agent running the toy model through the daemon, the
official openai client; every request is checked (check rate floor 1.0).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from sqlalchemy import select

from netsupport import API_KEY, AgentThread, ServerThread, SharedBackend, make_settings, wait_for
from rigpool.coordinator.keys import create_key
from rigpool.coordinator.tables import Evidence
from rigpool.devnet.toymodel import TOY_MODEL_NAME


@pytest.fixture(scope="module")
def loaded(toy_model: Path) -> Any:
    from rigpool.agent.backends.transformers_backend import TransformersBackend

    return TransformersBackend(str(toy_model), device="cpu")


@pytest.fixture
def toy_backend(loaded: Any) -> SharedBackend:
    return SharedBackend(loaded)


@pytest.fixture
def network(tmp_path, toy_model):
    settings = make_settings(
        tmp_path, [toy_model], check_rate_floor=1.0, check_rate_cap=1.0, slash_min_records=3
    )
    with ServerThread(settings) as server:
        create_key(server.db, key=API_KEY)
        yield server


def trust_of(server: ServerThread, agent_id: str) -> dict[str, Any]:
    return httpx.get(server.url + "/v1/trust", timeout=10).json()["providers"].get(agent_id, {})


def test_stop_strings_and_recounts_never_make_an_honest_agent_an_inflater(network, toy_backend):
    """The agent counts the tokens of a stop string it never streams, and re-encoding an
    untrained model's text gives other counts: the reference is its own signed output list."""
    agent = AgentThread(network.url, toy_backend).start()
    try:
        wait_for(lambda: agent.identity.agent_id in network.app.state.coordinator.fleet)
        client = openai.OpenAI(base_url=network.url + "/v1", api_key=API_KEY, max_retries=0)
        stopped = 0
        for i in range(16):
            reply = client.completions.create(
                model=TOY_MODEL_NAME,
                prompt=f"request {i}:",
                max_tokens=24,
                temperature=1.0,
                seed=i,
                stop=["e", "a"] if i % 2 else None,
            )
            stopped += reply.choices[0].finish_reason == "stop"
        state = network.app.state.coordinator
        wait_for(lambda: state.verifier.idle, 60, "checks done")
        view = trust_of(network, agent.identity.agent_id)
        assert stopped >= 1  # some answers really were cut at a stop string
        assert view["checked"] == 16 and view["failed"] == 0 and view["unprovable"] == 0
        with network.db() as s:
            assert s.scalar(select(Evidence.id)) is None
        assert agent.identity.agent_id not in state.banned
    finally:
        agent.stop()


@pytest.mark.parametrize("evasion", ["no data", "bad signature"])
def test_an_agent_that_evades_checks_is_expelled(network, toy_backend, evasion):
    """A transformers agent that drops its verification data or signs something else is not
    "unverifiable": each such answer fails its check, and after three it is expelled."""
    agent = AgentThread(network.url, toy_backend)
    honest_done = agent.agent._done

    def evasive_done(frame: Any, finish: Any) -> Any:
        done = honest_done(frame, finish)
        if evasion == "no data":
            return done.model_copy(update={"logprobs": None, "commitments": None})
        return done.model_copy(update={"statement_signature": agent.identity.sign(b"other")})

    agent.agent._done = evasive_done  # type: ignore[method-assign]
    agent.start()
    try:
        state = network.app.state.coordinator
        wait_for(lambda: agent.identity.agent_id in state.fleet)
        client = openai.OpenAI(base_url=network.url + "/v1", api_key=API_KEY, max_retries=0)
        for i in range(3):
            client.completions.create(model=TOY_MODEL_NAME, prompt=f"x{i}", max_tokens=8)
        wait_for(lambda: agent.identity.agent_id in state.banned, 30, "expulsion")
        view = trust_of(network, agent.identity.agent_id)
        assert view["failed"] == 3 and view["unprovable"] == 3 and view["evidence"] == 0
        assert "could not be verified" in state.banned[agent.identity.agent_id]
        wait_for(lambda: agent.error is not None, 30, "the agent to be turned away")
        assert "expelled" in str(agent.error) or "slashed" in str(agent.error)
    finally:
        agent.stop()
