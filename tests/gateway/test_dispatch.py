"""The dispatcher against in-memory ports: scripted agents, a router that records verdicts.

The live tests (tests/agent, tests/gateway) run it over the real hub; these pin the rules that
decide who is blamed, which the live network only shows indirectly.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

import pytest

from rigpool.core.errors import BadRequest, NoCapacity
from rigpool.gateway.dispatch import Dispatcher
from rigpool.gateway.ports import Frame, Limits
from rigpool.gateway.request import ModelInfo, Outcome, RequestSpec
from rigpool.protocol.messages import Done, Error, Generate, Sampling, Token, encode
from rigpool.scheduler.routing import NoCandidate

LIMITS = Limits(
    request_timeout_s=5,
    first_token_timeout_s=1,
    inter_token_timeout_s=1,
    max_attempts=3,
    hedging=False,
    max_messages=16,
)


class Routing:
    def __init__(self, agents: list[str]) -> None:
        self.agents = agents
        self.ends: list[tuple[str, str]] = []

    def on_request(self) -> None: ...
    def pick(self, model, constraints, exclude):
        left = [a for a in self.agents if a not in exclude]
        return left[0] if left else NoCandidate(model, "no_capacity", "nobody left")

    def on_dispatch(self, agent_id: str) -> None: ...
    def on_first_token(self, agent_id: str, seconds: float) -> None: ...
    def on_lost_race(self, agent_id: str, elapsed_s: float) -> None:
        self.ends.append((agent_id, "lost"))

    def on_end(self, agent_id: str, verdict: str) -> None:
        self.ends.append((agent_id, verdict))

    def hedge_delay_s(self, agent_id: str) -> float:
        return 10.0

    def try_take_hedge(self) -> bool:
        return False


class Link:
    """Agents that answer from a script: lists of frame batches per agent."""

    def __init__(self, scripts: dict[str, list[list[Frame]]]) -> None:
        self.scripts = scripts
        self.sent: list[Generate] = []

    def connected(self, agent_id: str) -> bool:
        return agent_id in self.scripts

    async def stream(self, agent_id: str, request: Generate) -> AsyncGenerator[list[Frame], None]:
        try:
            encode(request)  # what the hub does first
        except Exception as exc:
            raise BadRequest(f"the request cannot be sent to a provider: {exc}") from exc
        self.sent.append(request)
        for batch in self.scripts[agent_id]:
            yield [f.model_copy(update={"request_id": request.request_id}) for f in batch]

    async def sign_receipt(self, agent_id, attempt_id, body):
        raise ConnectionError

    def backend_of(self, agent_id: str) -> str:
        return "emulated"


def spec(prompt: str = "hi", max_tokens: int = 4) -> RequestSpec:
    return RequestSpec(
        request_id="r",
        api_key_id=1,
        consumer="c",
        idempotency_key="k",
        endpoint="completions",
        model=ModelInfo("m", "/nowhere", 2048),
        tokenizer=None,
        prompt=prompt,
        messages=None,
        sampling=Sampling(max_tokens=max_tokens),
        stream=True,
        prompt_tokens=1,
    )


def tok(i: int, text: str = "x") -> Token:
    return Token(request_id="r", index=i, text=text)


async def collect(dispatcher: Dispatcher) -> list[str]:
    return [t.text for batch in [b async for b in dispatcher.run()] for t in batch]


def run(routing: Routing, link: Link, s: RequestSpec) -> tuple[list[str], Outcome]:
    out = Outcome()
    return asyncio.run(collect(Dispatcher(routing, link, LIMITS, s, out))), out


def test_a_failure_mid_batch_delivers_what_came_before_and_fails_over():
    routing = Routing(["a", "b"])
    link = Link(
        {
            "a": [[tok(0, "1"), tok(1, "2"), Error(request_id="r", message="gpu fell off")]],
            "b": [[tok(0, "3"), tok(1, "4")], [Done(request_id="r", completion_tokens_claimed=2)]],
        }
    )
    texts, out = run(routing, link, spec())
    assert texts == ["1", "2", "3", "4"]
    assert link.sent[1].prompt == "hi12"  # continued from what the client had
    assert routing.ends == [("a", "failed"), ("b", "ok")]
    assert out.provider_id == "b" and out.attempt_offset == 2


def test_a_refusal_is_the_clients_and_not_counted_against_the_agent():
    routing = Routing(["a", "b"])
    refusal = Error(request_id="r", message="bad stop", retryable=False)
    link = Link({"a": [[refusal]], "b": [[tok(0)]]})
    with pytest.raises(BadRequest, match="refused the request"):
        run(routing, link, spec())
    assert routing.ends == [("a", "neutral")]
    assert len(link.sent) == 1  # no other agent was tried


def test_text_that_cannot_go_on_the_wire_is_a_400_not_held_against_the_agent():
    routing = Routing(["a", "b"])
    link = Link({"a": [[tok(0)]], "b": [[tok(0)]]})
    with pytest.raises(BadRequest, match="cannot be sent"):
        run(routing, link, spec(prompt="lone \ud800 surrogate"))
    assert routing.ends == [("a", "neutral")] and link.sent == []


def test_the_budget_ends_the_stream_and_takes_the_done_from_the_same_batch():
    routing = Routing(["a"])
    done = Done(request_id="r", completion_tokens_claimed=2, finish_reason="length")
    link = Link({"a": [[tok(0), tok(1), tok(2), done]]})
    texts, out = run(routing, link, spec(max_tokens=2))
    assert texts == ["x", "x"] and out.finish_reason == "length"
    assert out.claimed_tokens == 2 and routing.ends == [("a", "ok")]


def test_every_agent_failing_is_no_capacity_with_each_failure_counted():
    routing = Routing(["a", "b"])
    broken = [[tok(1)]]  # starts at index 1: a broken stream
    with pytest.raises(NoCapacity):
        run(routing, Link({"a": broken, "b": broken}), spec())
    assert routing.ends == [("a", "failed"), ("b", "failed")]
