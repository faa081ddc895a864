"""The end of a request on a live coordinator: who pays, and who is blamed, whatever ended it.

Rule (gateway/finish.py, docs/money.md): the client pays for the tokens it received; the
payment goes to the provider serving when the stream ended; only the provider's own failures
count against it.
"""

from __future__ import annotations

import json
import time

import httpx
import pytest
from sqlalchemy import select

from netsupport import API_KEY, AgentThread, ServerThread, make_settings, wait_for
from rigpool.agent.backends.base import Finish
from rigpool.agent.backends.emulated import EmulatedBackend
from rigpool.agent.setup import ProvideOptions, capabilities_for
from rigpool.coordinator.keys import create_key
from rigpool.coordinator.tables import RequestRecord
from rigpool.core.errors import BackendError
from rigpool.devnet.localnet import TOY_MODEL_NAME
from rigpool.ledger import Ledger, audit

CONSUMER = "bob-wallet"
HEADERS = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture
def billed(tmp_path, toy_model):
    settings = make_settings(
        tmp_path, [toy_model], billing=True, network_fee_bps=1000, hedging=False
    )
    with ServerThread(settings) as server:
        create_key(server.db, key=API_KEY, consumer=CONSUMER)
        Ledger(server.db).credit_deposit(CONSUMER, 50_000_000, "d" * 64)
        yield server


class FailsAfter(EmulatedBackend):
    """Streams `after` tokens, then fails (retryable: the network's problem, not the input)."""

    after = 3

    async def generate(self, request):  # type: ignore[override]
        sent = 0
        async for item in super().generate(request):
            if not isinstance(item, Finish) and sent == self.after:
                raise BackendError("the card fell off the bus", retryable=True)
            sent += 0 if isinstance(item, Finish) else 1
            yield item


class Refuses(EmulatedBackend):
    """Refuses every request as invalid (what a real engine says of a bad parameter)."""

    async def generate(self, request):  # type: ignore[override]
        raise BackendError("stop sequence not representable", retryable=False)
        yield  # an async generator


def start_agent(server, toy_model, backend_cls=EmulatedBackend, time_scale=0.05):
    backend = backend_cls(
        "A100 80GB", TOY_MODEL_NAME, time_scale=time_scale, tokenizer_dir=toy_model
    )
    options = ProvideOptions(backend="auto", price_in=2.0, price_out=4.0)
    caps, _ = capabilities_for(backend, options)
    agent = AgentThread(server.url, backend, models=caps.models).start()
    wait_for(lambda: server.agents_online() >= 1)
    return agent


def row(server, request_id=None):
    with server.db() as s:
        query = select(RequestRecord).order_by(RequestRecord.created.desc())
        if request_id:
            query = query.where(RequestRecord.id == request_id)
        return s.scalars(query).first()


def drops(server, agent_id):
    return server.app.state.coordinator.service._seen[agent_id].drops


def test_plain_client_that_hangs_up_stops_the_generation_and_pays_nothing(billed, toy_model):
    # ~2 s of tokens at this time scale: the client gives up after 0.4 s.
    agent = start_agent(billed, toy_model, time_scale=40.0)
    ledger = Ledger(billed.db)
    before = ledger.balance("consumer", CONSUMER)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            billed.url + "/v1/completions",
            headers=HEADERS,
            json={"model": TOY_MODEL_NAME, "prompt": "slow", "max_tokens": 64},
            timeout=httpx.Timeout(5.0, read=0.4),
        )
    started = time.monotonic()
    wait_for(lambda: (r := row(billed)) is not None and r.status != "running", what="row closed")
    assert time.monotonic() - started < 1.5, "generation was not stopped at the hang-up"
    record = row(billed)
    assert record.status == "cancelled" and record.completion_tokens == 0
    state = billed.app.state.coordinator
    wait_for(lambda: all(s.active == 0 for s in state.hub.sessions.values()), what="cancelled")
    assert ledger.balance("consumer", CONSUMER) == before
    assert ledger.balance("consumer_hold", CONSUMER) == 0
    assert drops(billed, agent.identity.agent_id) == 0  # the client's doing, not the provider's
    assert audit(ledger) == []
    agent.stop()


def test_streamed_failure_no_failover_rescues_bills_what_the_client_received(billed, toy_model):
    agent = start_agent(billed, toy_model, FailsAfter)
    ledger = Ledger(billed.db)
    before = ledger.balance("consumer", CONSUMER)
    with httpx.stream(
        "POST",
        billed.url + "/v1/chat/completions",
        headers=HEADERS,
        json={
            "model": TOY_MODEL_NAME,
            "messages": [{"role": "user", "content": "count"}],
            "max_tokens": 12,
            "stream": True,
        },
    ) as response:
        events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert response.status_code == 200
    received = "".join(
        c["choices"][0]["delta"].get("content", "")
        for e in events
        if e != "[DONE]" and "choices" in (c := json.loads(e)) and c["choices"]
    )
    assert received and "error" in json.loads(events[-1])  # tokens, then the error event
    wait_for(lambda: (r := row(billed)) is not None and r.status == "error", what="row closed")
    record = row(billed)
    assert 0 < record.completion_tokens <= FailsAfter.after + 1
    charged = before - ledger.balance("consumer", CONSUMER)
    assert charged > 0  # what it received is paid for ...
    assert ledger.balance("provider_earnings", agent.identity.agent_id) > 0  # ... to the server
    assert ledger.balance("consumer_hold", CONSUMER) == 0
    assert drops(billed, agent.identity.agent_id) >= 1  # its own failure counts
    assert audit(ledger) == []
    agent.stop()


def test_a_request_the_agent_refuses_is_a_400_and_not_held_against_it(billed, toy_model):
    agent = start_agent(billed, toy_model, Refuses)
    ledger = Ledger(billed.db)
    before = ledger.balance("consumer", CONSUMER)
    for _ in range(5):
        response = httpx.post(
            billed.url + "/v1/completions",
            headers=HEADERS,
            json={"model": TOY_MODEL_NAME, "prompt": "x", "max_tokens": 4, "stop": ["zz"]},
        )
        assert response.status_code == 400, response.text
        assert "refused the request" in response.json()["error"]["message"]
    aid = agent.identity.agent_id
    state = billed.app.state.coordinator
    assert drops(billed, aid) == 0
    assert state.router.stats(aid).failures == 0
    assert state.router.stats(aid).outstanding == 0
    assert ledger.balance("consumer", CONSUMER) == before
    assert audit(ledger) == []
    agent.stop()


class BrokenRouting:
    """A routing port with a bug: the first call raises."""

    def on_request(self) -> None:
        raise RuntimeError("a bug in routing")


@pytest.mark.parametrize("stream", [False, True])
def test_a_bug_mid_request_is_a_500_that_still_releases_the_hold(billed, toy_model, stream):
    import dataclasses

    agent = start_agent(billed, toy_model)
    ledger = Ledger(billed.db)
    before = ledger.balance("consumer", CONSUMER)
    app = billed.app
    app.state.gateway = dataclasses.replace(app.state.gateway, routing=BrokenRouting())
    response = httpx.post(
        billed.url + "/v1/completions",
        headers=HEADERS,
        json={"model": TOY_MODEL_NAME, "prompt": "x", "max_tokens": 4, "stream": stream},
    )
    assert response.status_code == 500
    wait_for(lambda: (r := row(billed)) is not None and r.status == "error", what="row closed")
    assert row(billed).error == "internal error"
    assert ledger.balance("consumer", CONSUMER) == before
    assert ledger.balance("consumer_hold", CONSUMER) == 0
    assert audit(ledger) == []
    agent.stop()
