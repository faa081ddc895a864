"""SSE token events: the spliced template gives exactly the bytes of encoding each chunk."""

from __future__ import annotations

import json

import pytest

from rigpool.gateway.chat.router import ChatFormatter
from rigpool.gateway.completions.router import CompletionFormatter
from rigpool.gateway.request import ModelInfo, Outcome, RequestSpec
from rigpool.gateway.serving import _Events, _sse
from rigpool.protocol.messages import Sampling, Token

TEXTS = ["hello", ' "quoted" ', "back\\slash", "new\nline", "é ü 日本", "\x00nul", "😀"]


def spec(logprobs: bool = False) -> RequestSpec:
    return RequestSpec(
        request_id="chatcmpl-x",
        api_key_id=1,
        consumer="c",
        idempotency_key="k",
        endpoint="chat",
        model=ModelInfo("m", "/nowhere", 2048),
        tokenizer=None,
        prompt="p",
        messages=None,
        sampling=Sampling(max_tokens=16, logprobs=logprobs),
        stream=True,
        prompt_tokens=1,
    )


@pytest.mark.parametrize("formatter_cls", [ChatFormatter, CompletionFormatter])
@pytest.mark.parametrize("logprobs", [False, True])
def test_template_events_equal_per_token_encoding(formatter_cls, logprobs):
    s = spec(logprobs)
    out = Outcome(provider_id="agent-1")
    tokens = [Token(request_id="r", index=i, text=t, logprob=-0.5) for i, t in enumerate(TEXTS)]
    rendered = _Events(formatter_cls(), s, out).render(tokens)
    slow = formatter_cls()
    expected = "".join(_sse(slow.token_chunk(s, out, t)) for t in tokens)
    assert [json.loads(e[6:]) for e in rendered.split("\n\n") if e] == [
        json.loads(e[6:]) for e in expected.split("\n\n") if e
    ]


def test_template_follows_the_serving_provider_after_a_failover():
    s, out = spec(), Outcome(provider_id="agent-1")
    events = _Events(ChatFormatter(), s, out)
    first = events.render([Token(request_id="r", index=0, text="a")])
    out.provider_id = "agent-2"
    second = events.render([Token(request_id="r", index=1, text="b")])
    assert json.loads(first[6:])["system_fingerprint"] == "agent-1"
    assert json.loads(second[6:])["system_fingerprint"] == "agent-2"
