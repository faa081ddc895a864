"""Attestation on the live path: real coordinators on loopback challenge real agents.

Development settings (`DEV_ATTESTATION`) keep every challenge tiny: a CPU agent answers in a
fraction of a second, while a CPU claiming an A100 faces 256x256 work sized for 187 TFLOPS.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from netsupport import API_KEY, AgentThread, ServerThread, SharedBackend, make_settings, wait_for
from rigpool.agent.attest import Attester
from rigpool.agent.daemon import AgentRefused
from rigpool.coordinator.keys import create_key
from rigpool.devnet.localnet import TOY_MODEL_NAME
from rigpool.protocol.messages import AttestData, GpuInfo
from rigpool.trust import attestation_agent

A100 = [GpuInfo(name="NVIDIA A100-SXM4-80GB", vram_mb=81920)]


@pytest.fixture(scope="module")
def loaded(toy_model: Path) -> Any:
    from rigpool.agent.backends.transformers_backend import TransformersBackend

    return TransformersBackend(str(toy_model), device="cpu")


@pytest.fixture
def backend(loaded: Any) -> SharedBackend:
    return SharedBackend(loaded)


def serve(tmp_path: Path, toy_model: Path, **overrides: object) -> ServerThread:
    return ServerThread(make_settings(tmp_path, [toy_model], **overrides))


def complete(server: ServerThread) -> httpx.Response:
    return httpx.post(
        server.url + "/v1/completions",
        headers={"Authorization": f"Bearer {API_KEY}"},
        json={"model": TOY_MODEL_NAME, "prompt": "attested?", "max_tokens": 3},
        timeout=30,
    )


def attestation_of(server: ServerThread, agent: AgentThread) -> dict[str, Any] | None:
    data = httpx.get(server.url + "/v1/providers", timeout=5).json()["data"]
    row = next(p for p in data if p["id"] == agent.identity.agent_id)
    return row["attestation"]  # type: ignore[no-any-return]


def admitted(server: ServerThread) -> bool:
    state = server.app.state.coordinator
    return any(s.admitted for s in state.hub.sessions.values())


@pytest.fixture
def stop_agents() -> Iterator[list[AgentThread]]:
    agents: list[AgentThread] = []
    yield agents
    for agent in agents:
        agent.stop()


def test_honest_cpu_agent_is_attested_unverified_and_serves(
    tmp_path, toy_model, backend, stop_agents
):
    with serve(tmp_path, toy_model) as server:
        create_key(server.db, key=API_KEY)
        agent = AgentThread(server.url, backend).start()
        stop_agents.append(agent)
        wait_for(lambda: admitted(server) or agent.error, what="attestation")
        assert agent.error is None
        record = attestation_of(server, agent)
        assert record is not None and record["status"] == "unverified", record
        assert record["gpu"] == "CPU" and record["passed"] == 1
        assert 0 < record["reply_s"] < record["limit_s"]
        assert 0 < record["probe_s"] < record["probe_limit_s"]
        assert any("development networks only" in r for r in record["reasons"])
        response = complete(server)
        assert response.status_code == 200, response.text
        assert backend.requests == 1


@pytest.mark.parametrize("capped", [True, False], ids=["too-slow", "cannot-hold"])
def test_cpu_agent_claiming_an_a100_is_refused_and_never_served(
    tmp_path, toy_model, backend, stop_agents, monkeypatch, capped
):
    overrides: dict[str, object] = {"attest_allowance_s": 1.0}
    if not capped:
        # A production-sized buffer (68 GiB) on a machine with 2 GiB free: the agent says it
        # cannot hold it instead of trying.
        overrides["attest_max_buffer_mb"] = None
        monkeypatch.setattr(attestation_agent, "host_available_bytes", lambda: 2 << 30)
    with serve(tmp_path, toy_model, **overrides) as server:
        create_key(server.db, key=API_KEY)
        agent = AgentThread(server.url, backend, gpus=A100, emulated=False).start()
        stop_agents.append(agent)
        wait_for(lambda: agent.error is not None, what="refusal")
        assert isinstance(agent.error, AgentRefused)
        message = str(agent.error)
        assert "attestation failed" in message and "A100 80GB" in message
        expected = "no reply" if capped else "cannot hold the challenge buffer"
        assert expected in message, message
        record = attestation_of(server, agent)
        assert record is not None and record["status"] == "refused"
        assert server.agents_online() == 0
        assert complete(server).status_code == 503
        assert backend.requests == 0


def test_unverified_agents_are_refused_where_not_allowed(tmp_path, toy_model, backend, stop_agents):
    with serve(tmp_path, toy_model, allow_unverified_agents=False) as server:
        create_key(server.db, key=API_KEY)
        # A CPU agent is refused at hello: it could only ever be unverified.
        cpu = AgentThread(server.url, backend).start()
        stop_agents.append(cpu)
        wait_for(lambda: cpu.error is not None, what="refusal at hello")
        assert "unverified" in str(cpu.error)
        # A card the catalog does not know is challenged with CPU figures: a pass is unverified.
        odd = AgentThread(
            server.url, backend, gpus=[GpuInfo(name="Imaginary GPU 9000", vram_mb=24576)]
        ).start()
        stop_agents.append(odd)
        wait_for(lambda: odd.error is not None, what="refusal after attestation")
        assert "does not allow unverified agents" in str(odd.error)
        record = attestation_of(server, odd)
        assert record is not None and record["status"] == "unverified"
        assert any("unknown GPU 'Imaginary GPU 9000'" in r for r in record["reasons"])
        assert backend.requests == 0


class ForgetfulAttester(Attester):
    """Honest for the first `honest` probes, then answers from a zeroed buffer, as an agent
    that gave the memory away after its last check would."""

    honest = 2

    def _answer(self, challenge_id: str, payload: dict[str, Any]) -> list[AttestData]:
        self.honest -= 1
        if self.honest < 0 and self._run is not None:
            self._run._buffer.zero_()
        return super()._answer(challenge_id, payload)


def test_failed_re_attestation_takes_the_agent_out_of_routing(
    tmp_path, toy_model, backend, stop_agents
):
    refusals: list[str] = []
    with serve(tmp_path, toy_model, attest_interval_s=0.3) as server:
        create_key(server.db, key=API_KEY)
        state = server.app.state.coordinator
        agent = AgentThread(server.url, backend)
        agent.agent._attester = ForgetfulAttester("cpu")
        agent.agent.on_status = refusals.append
        stop_agents.append(agent.start())
        agent_id = agent.identity.agent_id
        wait_for(lambda: admitted(server), what="admission")
        # One random re-attestation passes (routing pauses, then resumes) ...
        wait_for(
            lambda: (state.attestations[agent_id].passed >= 2) or agent.error, what="re-attestation"
        )
        # ... and the next one fails: out of the fleet, socket closed with the reason. A live
        # agent may reconnect after a failed re-attestation (it may have been unlucky), and
        # then faces the join challenge, which it fails the same way: refused for good.
        wait_for(lambda: agent.error is not None, what="refusal")
        assert "attestation failed" in str(agent.error)
        assert "not in the committed buffer" in str(agent.error)
        assert any("re-attestation: attestation failed" in r for r in refusals)
        assert agent_id not in state.fleet
        assert server.agents_online() == 0
        assert attestation_of(server, agent)["status"] == "refused"  # type: ignore[index]
        assert complete(server).status_code == 503


def test_an_agent_that_leaves_mid_challenge_is_not_left_pending(tmp_path, toy_model):
    from netsupport import RawAgent
    from rigpool.protocol.messages import Capabilities, GpuInfo, ModelOffer

    caps = Capabilities(
        backend="transformers",
        gpus=[GpuInfo(name="NVIDIA GeForce RTX 3060", vram_mb=12288)],
        models=[ModelOffer(name=TOY_MODEL_NAME, context_length=2048)],
    )
    with serve(tmp_path, toy_model) as server:
        state = server.app.state.coordinator
        raw = RawAgent(server.url, caps)
        assert raw.recv(timeout=10)["type"] == "attest_challenge"  # ... and it never answers
        assert state.attestations[raw.identity.agent_id].status == "pending"
        raw.close()
        wait_for(
            lambda: state.attestations[raw.identity.agent_id].status == "not attested",
            what="the verdict of an agent that left",
        )
        assert "left before" in state.attestations[raw.identity.agent_id].reasons[0]
