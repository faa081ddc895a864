"""Tail control on a live coordinator: failover mid-stream, hedging, residency, draining."""

from __future__ import annotations

import json
import threading
import time

import httpx
import openai

from netsupport import API_KEY, AgentThread, RawAgent, ServerThread, make_settings, wait_for
from rigpool.agent.backends.emulated import EmulatedBackend
from rigpool.coordinator.keys import create_key
from rigpool.devnet.localnet import TOY_MODEL_NAME
from rigpool.protocol.messages import Capabilities, Done, ModelOffer, Token

CAPS = Capabilities(
    backend="emulated", emulated=True, models=[ModelOffer(name=TOY_MODEL_NAME, context_length=2048)]
)


class ScriptedAgent:
    """Serves the first request by a script: `tokens` tokens, then waits for `release`, then
    either disconnects or finishes (after `delay_s`)."""

    def __init__(self, server: ServerThread, *, tokens: int, then: str, delay_s: float = 0.0):
        self.raw = RawAgent(server.url, CAPS)
        self.ws = self.raw.ws
        self.got_request = threading.Event()
        self.release = threading.Event()
        self.tokens, self.then, self.delay_s = tokens, then, delay_s
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        try:
            while True:
                frame = json.loads(self.ws.recv())
                if frame["type"] != "generate":
                    continue
                rid = frame["request_id"]
                time.sleep(self.delay_s)
                for i in range(self.tokens):
                    self.raw.send(Token(request_id=rid, index=i, text=f" s{i}"))
                self.got_request.set()
                self.release.wait(30)
                if self.then == "disconnect":
                    self.ws.close()
                    return
                self.raw.send(Done(request_id=rid, finish_reason="length"))
        except Exception:
            return


def emulated(server, gpu="A100 80GB", **caps):
    backend = EmulatedBackend(gpu, TOY_MODEL_NAME, time_scale=0.05)
    return AgentThread(server.url, backend, **caps).start()


def test_stream_fails_over_mid_stream_without_gaps_or_repeats(coordinator):
    flaky = ScriptedAgent(coordinator, tokens=3, then="disconnect")
    wait_for(lambda: coordinator.agents_online() == 1)
    client = openai.OpenAI(base_url=coordinator.url + "/v1", api_key=API_KEY, max_retries=0)
    stream = client.completions.create(
        model=TOY_MODEL_NAME, prompt="go", max_tokens=8, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    pieces: list[str] = []
    it = iter(stream)
    for _ in range(3):
        pieces.append(next(it).choices[0].text)
    assert pieces == [" s0", " s1", " s2"]
    good = emulated(coordinator)
    wait_for(lambda: coordinator.agents_online() == 2)
    flaky.release.set()  # the flaky agent now drops the connection mid-stream
    rest = list(it)
    pieces += [c.choices[0].text for c in rest if c.choices]
    text = "".join(pieces)
    assert text.startswith(" s0 s1 s2")
    continuation = [p for p in pieces[3:] if p]
    assert len(continuation) == 5  # exactly the 5 tokens still owed, none repeated
    assert rest[-1].usage is not None
    good.stop()


def test_non_streamed_request_is_retried_transparently(coordinator):
    flaky = ScriptedAgent(coordinator, tokens=2, then="disconnect")
    wait_for(lambda: coordinator.agents_online() == 1)
    result: dict[str, object] = {}

    def call() -> None:
        client = openai.OpenAI(base_url=coordinator.url + "/v1", api_key=API_KEY, max_retries=0)
        result["r"] = client.completions.create(model=TOY_MODEL_NAME, prompt="go", max_tokens=6)

    caller = threading.Thread(target=call)
    caller.start()
    assert flaky.got_request.wait(10)
    good = emulated(coordinator)
    wait_for(lambda: coordinator.agents_online() == 2)
    flaky.release.set()
    caller.join(30)
    reply = result["r"]
    assert reply.choices[0].text.startswith(" s0 s1")  # type: ignore[attr-defined]
    assert reply.system_fingerprint == good.identity.agent_id  # type: ignore[attr-defined]
    good.stop()


def test_slow_first_token_is_hedged(tmp_path, toy_model):
    settings = make_settings(tmp_path, [toy_model], hedge_share=1.0)
    with ServerThread(settings) as server:
        create_key(server.db, key=API_KEY)
        ScriptedAgent(server, tokens=1, then="finish", delay_s=8.0)  # a straggler
        wait_for(lambda: server.agents_online() == 1)
        result: dict[str, object] = {}

        def call() -> None:
            client = openai.OpenAI(base_url=server.url + "/v1", api_key=API_KEY, max_retries=0)
            start = time.monotonic()
            result["r"] = client.completions.create(model=TOY_MODEL_NAME, prompt="x", max_tokens=4)
            result["s"] = time.monotonic() - start

        caller = threading.Thread(target=call)
        caller.start()
        time.sleep(0.2)  # the request is on the straggler now
        good = emulated(server)
        caller.join(30)
        assert result["s"] < 4.0  # hedge delay (1 s default) + a fast agent, not 8 s
        assert result["r"].system_fingerprint == good.identity.agent_id  # type: ignore[attr-defined]
        assert server.app.state.coordinator.hedge.hedges == 1
        good.stop()


EU_ONLY = {"rigpool": {"regions": ["eu"]}}


def test_data_residency_never_leaves_the_region(coordinator):
    eu = emulated(coordinator, region="eu-west")
    us = emulated(coordinator, gpu="RTX 4090", region="us-east")
    wait_for(lambda: coordinator.agents_online() == 2)
    client = openai.OpenAI(base_url=coordinator.url + "/v1", api_key=API_KEY, max_retries=0)
    for i in range(12):
        reply = client.completions.create(
            model=TOY_MODEL_NAME,
            prompt=f"p{i}",
            max_tokens=2,
            extra_body={"rigpool": {"regions": ["eu"]}},
        )
        assert reply.system_fingerprint == eu.identity.agent_id
    eu.stop()
    wait_for(lambda: coordinator.agents_online() == 1)
    response = httpx.post(
        coordinator.url + "/v1/completions",
        headers={"Authorization": f"Bearer {API_KEY}"},
        json={
            "model": TOY_MODEL_NAME,
            "prompt": "x",
            "max_tokens": 2,
            "rigpool": {"regions": ["eu"]},
        },
    )
    assert response.status_code == 503
    assert "no agent in region eu" in response.json()["error"]["message"]
    us.stop()


def test_draining_agent_finishes_its_work_and_gets_nothing_new(coordinator):
    slow = AgentThread(
        coordinator.url, EmulatedBackend("RTX 3060 8GB", TOY_MODEL_NAME, time_scale=1.0)
    ).start()
    wait_for(lambda: coordinator.agents_online() == 1)
    result: dict[str, object] = {}

    def call() -> None:
        client = openai.OpenAI(base_url=coordinator.url + "/v1", api_key=API_KEY, max_retries=0)
        result["r"] = client.completions.create(model=TOY_MODEL_NAME, prompt="x", max_tokens=40)

    caller = threading.Thread(target=call)
    caller.start()
    wait_for(lambda: any(s.active for s in coordinator.app.state.coordinator.hub.sessions.values()))
    slow.loop.call_soon_threadsafe(slow.agent.stop)
    wait_for(
        lambda: all(s.draining for s in coordinator.app.state.coordinator.hub.sessions.values()),
        what="draining flag",
    )
    refused = httpx.post(
        coordinator.url + "/v1/completions",
        headers={"Authorization": f"Bearer {API_KEY}"},
        json={"model": TOY_MODEL_NAME, "prompt": "y", "max_tokens": 2},
    )
    assert refused.status_code == 503
    caller.join(30)
    assert result["r"].choices[0].finish_reason == "length"  # type: ignore[attr-defined]
    slow.thread.join(15)
    assert not slow.thread.is_alive()
