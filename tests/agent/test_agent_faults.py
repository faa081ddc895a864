"""Agents that lie, break or vanish: the coordinator refuses or routes around them, never hangs."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest
from websockets.sync.client import connect

from netsupport import API_KEY, AgentThread, RawAgent, ServerThread, make_settings, wait_for
from rigpool.agent.backends.emulated import EmulatedBackend
from rigpool.agent.daemon import agent_url, signed_hello
from rigpool.coordinator.keys import create_key
from rigpool.devnet.localnet import TOY_MODEL_NAME
from rigpool.protocol.messages import Capabilities, Heartbeat, ModelOffer, Token, encode
from rigpool.protocol.signing import Identity

CHAT = {"model": TOY_MODEL_NAME, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
CAPS = Capabilities(
    backend="emulated", emulated=True, models=[ModelOffer(name=TOY_MODEL_NAME, context_length=2048)]
)


def post_chat(server, **extra):
    return httpx.post(
        server.url + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {API_KEY}"},
        json={**CHAT, **extra},
        timeout=60,
    )


def hello_reply(server, hello_json: str) -> dict:
    with connect(agent_url(server.url)) as ws:
        ws.send(hello_json)
        return json.loads(ws.recv(timeout=10))


def test_bad_signature_is_refused(coordinator, caplog):
    hello = signed_hello(Identity.generate(), CAPS)
    forged = hello.model_copy(update={"agent_id": Identity.generate().agent_id})
    reply = hello_reply(coordinator, encode(forged))
    assert reply["type"] == "refused" and "bad signature" in reply["reason"]
    assert any("bad signature" in r.getMessage() for r in caplog.records)


def test_replayed_hello_is_refused(coordinator):
    hello = encode(signed_hello(Identity.generate(), CAPS))
    assert hello_reply(coordinator, hello)["type"] == "welcome"
    reply = hello_reply(coordinator, hello)
    assert reply["type"] == "refused" and "replayed" in reply["reason"]


def test_stale_timestamp_and_wrong_version_are_refused(coordinator):
    identity = Identity.generate()
    stale = signed_hello(identity, CAPS)
    from rigpool.protocol.signing import canonical_bytes

    old = stale.model_copy(update={"timestamp": time.time() - 3600})
    old = old.model_copy(update={"signature": identity.sign(canonical_bytes(old))})
    assert "clock" in hello_reply(coordinator, encode(old))["reason"]
    future = stale.model_copy(update={"protocol_version": "9.0", "nonce": "f" * 32})
    future = future.model_copy(update={"signature": identity.sign(canonical_bytes(future))})
    assert "not compatible" in hello_reply(coordinator, encode(future))["reason"]


def test_garbage_first_frame_is_refused(coordinator):
    reply = hello_reply(coordinator, "definitely not a hello")
    assert reply["type"] == "refused"
    assert coordinator.agents_online() == 0


class RogueAgent:
    """A hand-driven agent: says a valid hello, then misbehaves as told when work arrives."""

    def __init__(self, server: ServerThread, behaviour: str):
        self.behaviour = behaviour
        self.raw = RawAgent(server.url, CAPS)
        self.ws = self.raw.ws
        self.requests = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            while True:
                frame = json.loads(self.ws.recv())
                if frame["type"] != "generate":
                    continue
                self.requests += 1
                rid = frame["request_id"]
                if self.behaviour == "garbage":
                    self.raw.send(Token(request_id=rid, index=0, text="ok"))
                    for _ in range(3):
                        self.raw.send_raw("\x00garbage{{{")
                elif self.behaviour == "disconnect-before-token":
                    self.ws.close()
                    return
                elif self.behaviour == "disconnect-mid-stream":
                    self.raw.send(Token(request_id=rid, index=0, text="partial"))
                    time.sleep(0.2)
                    self.ws.close()
                    return
                elif self.behaviour == "silent":
                    pass
                elif self.behaviour == "duplicate-token":
                    self.raw.send(Token(request_id=rid, index=0, text="a"))
                    self.raw.send(Token(request_id=rid, index=0, text="a"))
        except Exception:
            return

    def close(self) -> None:
        self.ws.close()


@pytest.mark.parametrize(
    "behaviour", ["garbage", "disconnect-before-token", "disconnect-mid-stream", "duplicate-token"]
)
def test_broken_agent_alone_fails_cleanly_and_coordinator_survives(coordinator, behaviour):
    rogue = RogueAgent(coordinator, behaviour)
    wait_for(lambda: coordinator.agents_online() == 1)
    start = time.monotonic()
    response = post_chat(coordinator)
    assert time.monotonic() - start < 20
    assert response.status_code in (502, 503)
    error = response.json()["error"]
    assert "retry" in error["message"]
    rogue.close()
    assert httpx.get(coordinator.url + "/healthz").json()["ok"]


def test_silent_agent_times_out_instead_of_hanging(tmp_path, toy_model):
    settings = make_settings(tmp_path, [toy_model], first_token_timeout_s=1.0, max_attempts=1)
    with ServerThread(settings) as server:
        create_key(server.db, key=API_KEY)
        rogue = RogueAgent(server, "silent")
        wait_for(lambda: server.agents_online() == 1)
        start = time.monotonic()
        response = post_chat(server)
        assert time.monotonic() - start < 10
        assert response.status_code == 503
        assert "no token within the timeout" in response.json()["error"]["message"]
        rogue.close()


def test_failed_agent_is_routed_around(coordinator):
    RogueAgent(coordinator, "disconnect-before-token")
    good = AgentThread(
        coordinator.url, EmulatedBackend("A100 80GB", TOY_MODEL_NAME, time_scale=0.1)
    ).start()
    wait_for(lambda: coordinator.agents_online() == 2)
    responses = [post_chat(coordinator) for _ in range(6)]
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    good.stop()


def test_streamed_failure_mid_stream_ends_with_an_error_event(coordinator):
    rogue = RogueAgent(coordinator, "disconnect-mid-stream")
    wait_for(lambda: coordinator.agents_online() == 1)
    with httpx.stream(
        "POST",
        coordinator.url + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {API_KEY}"},
        json={**CHAT, "stream": True},
        timeout=30,
    ) as response:
        assert response.status_code == 200
        events = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert "partial" in events[1]
    last = json.loads(events[-1][len("data: ") :])
    assert "error" in last and "retry" in last["error"]["message"]
    rogue.close()


def test_agent_reconnects_after_coordinator_restart(tmp_path, toy_model):
    settings = make_settings(tmp_path, [toy_model])
    port = None
    with ServerThread(settings) as server:
        port = server.port
        agent = AgentThread(
            server.url, EmulatedBackend("L4", TOY_MODEL_NAME, time_scale=0.1)
        ).start()
        wait_for(lambda: server.agents_online() == 1)
    restarted = ServerThread(settings, port=port)
    with restarted:
        wait_for(lambda: restarted.agents_online() == 1, timeout_s=40, what="reconnect")
    agent.stop()
    assert agent.error is None


def test_unsealed_forged_or_replayed_frames_are_refused(coordinator):
    raw = RawAgent(coordinator.url, CAPS)
    raw._closed.set()  # no background heartbeats: this test counts frames itself
    wait_for(lambda: coordinator.agents_online() == 1)
    session = next(iter(coordinator.app.state.coordinator.hub.sessions.values()))
    # 1. a plain (unsealed) frame after hello
    raw.send_raw(encode(Heartbeat(active=1)))
    # 2. a frame sealed with the wrong key (someone who does not hold the agent's key)
    from rigpool.protocol.channel import Sealer

    raw.send_raw(Sealer(b"\x00" * 32).seal(encode(Heartbeat(active=2))))
    # 3. a replay of a genuine sealed frame
    genuine = raw.sealer.seal(encode(Heartbeat(active=3)))
    raw.send_raw(genuine)
    wait_for(lambda: session.reported_active == 3, what="genuine frame accepted")
    raw.send_raw(genuine)
    wait_for(lambda: coordinator.agents_online() == 0, what="session closed after 3 bad frames")
    assert session.garbage_frames == 3
