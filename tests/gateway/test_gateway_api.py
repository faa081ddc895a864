"""The OpenAI-compatible edge against a real coordinator on loopback with real agents."""

from __future__ import annotations

import httpx
import openai
import pytest

from netsupport import API_KEY, AgentThread, wait_for
from rigpool.agent.backends.emulated import EmulatedBackend
from rigpool.devnet.localnet import TOY_MODEL_NAME


@pytest.fixture
def served(coordinator, toy_model):
    backend = EmulatedBackend("RTX 4090", TOY_MODEL_NAME, time_scale=0.1, tokenizer_dir=toy_model)
    agent = AgentThread(coordinator.url, backend).start()
    wait_for(lambda: coordinator.agents_online() == 1, what="agent online")
    yield coordinator
    agent.stop()


def client(server, key=API_KEY):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=30)


def post(server, path, body, key=API_KEY, headers=None):
    auth = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(server.url + path, headers={**auth, **(headers or {})}, timeout=30, json=body)


CHAT = {"model": TOY_MODEL_NAME, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}


def test_models_and_chat_with_usage(served):
    c = client(served)
    assert [m.id for m in c.models.list()] == [TOY_MODEL_NAME]
    reply = c.chat.completions.create(**CHAT)
    assert reply.choices[0].message.content
    assert reply.usage.prompt_tokens > 0 and reply.usage.completion_tokens > 0
    assert reply.choices[0].finish_reason == "length"


def test_stream_with_include_usage(served):
    chunks = list(
        client(served).chat.completions.create(
            **CHAT, stream=True, stream_options={"include_usage": True}
        )
    )
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    assert chunks[-2].choices[0].finish_reason == "length"


def test_usage_is_counted_by_the_gateway_not_the_agent(served):
    # The emulated agent claims one token per word; the gateway counts with the real tokenizer.
    from rigpool.gateway.tokenization import load_tokenizer

    state = served.app.state.coordinator
    tokenizer = load_tokenizer(state.model(TOY_MODEL_NAME).path)
    reply = client(served).completions.create(model=TOY_MODEL_NAME, prompt="abc", max_tokens=6)
    assert reply.usage.completion_tokens == tokenizer.count(reply.choices[0].text) == 6
    assert reply.usage.prompt_tokens == tokenizer.count("abc")


def test_completions_stream(served):
    chunks = list(
        client(served).completions.create(
            model=TOY_MODEL_NAME, prompt="abc", max_tokens=4, stream=True
        )
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices)


def test_idempotency_key_replays_the_first_answer(served):
    headers = {"Idempotency-Key": "same-key-1"}
    first = post(served, "/v1/chat/completions", CHAT, headers=headers)
    again = post(served, "/v1/chat/completions", CHAT, headers=headers)
    assert first.status_code == again.status_code == 200
    assert again.headers.get("idempotent-replayed") == "true"
    assert again.json()["id"] == first.json()["id"]


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({"messages": [{"role": "user", "content": "x"}]}, 400, "model"),
        ({**CHAT, "max_tokens": "many"}, 400, "max_tokens"),
        ({**CHAT, "temperature": 9}, 400, "temperature"),
        ({**CHAT, "messages": []}, 400, "messages"),
        ({**CHAT, "model": "gpt-17"}, 404, "does not exist"),
        ({**CHAT, "max_tokens": 10**6}, 400, "maximum context length is 2048"),
        ({**CHAT, "n": 3}, 400, "n"),
    ],
)
def test_bad_requests_get_openai_error_bodies(served, body, status, needle):
    response = post(served, "/v1/chat/completions", body)
    assert response.status_code == status
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert needle in error["message"] or needle == error["param"]


def test_malformed_json(served):
    response = httpx.post(
        served.url + "/v1/chat/completions",
        content=b"{not json",
        headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"},
    )
    assert response.status_code == 400
    assert "not valid JSON" in response.json()["error"]["message"]


@pytest.mark.parametrize("key", [None, "rp-wrong-key-000000000000"])
def test_missing_or_wrong_key_is_401(served, key):
    response = post(served, "/v1/chat/completions", CHAT, key=key)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        client(served, key="rp-wrong-key-000000000000").models.list()


def test_body_over_limit_is_413(served):
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * (2 << 20)}]}
    response = post(served, "/v1/chat/completions", big)
    assert response.status_code == 413


def test_prompt_beyond_context_is_400(served):
    long_prompt = "word " * 5000
    with pytest.raises(openai.BadRequestError, match="maximum context length"):
        client(served).completions.create(model=TOY_MODEL_NAME, prompt=long_prompt, max_tokens=1)


def test_no_agent_serving_is_503(coordinator):
    response = post(coordinator, "/v1/chat/completions", CHAT)
    assert response.status_code == 503
    assert "no agent serves model" in response.json()["error"]["message"]


def test_fleet_view_lists_agents(served):
    data = httpx.get(served.url + "/v1/providers").json()["data"]
    assert len(data) == 1
    entry = data[0]
    assert entry["state"] == "online" and entry["emulated"] is True
    assert entry["gpus"][0]["name"] == "RTX 4090" and entry["gpus"][0]["emulated"]
    assert entry["models"] == [TOY_MODEL_NAME]


def test_rate_limit_is_429_with_retry_after(tmp_path, toy_model):
    from netsupport import ServerThread, make_settings
    from rigpool.coordinator.keys import create_key

    settings = make_settings(tmp_path, [toy_model], rate_limit_per_min=1, rate_limit_burst=2)
    with ServerThread(settings) as server:
        create_key(server.db, key=API_KEY)
        codes = [
            httpx.get(server.url + "/v1/models", headers={"Authorization": f"Bearer {API_KEY}"})
            for _ in range(3)
        ]
        assert [r.status_code for r in codes] == [200, 200, 429]
        assert int(codes[-1].headers["retry-after"]) >= 1
        assert codes[-1].json()["error"]["code"] == "rate_limit_exceeded"
        with pytest.raises(openai.RateLimitError):
            client(server).models.list()


def test_daily_quota_is_enforced(tmp_path, toy_model):
    from netsupport import AgentThread, ServerThread, make_settings, wait_for
    from rigpool.coordinator.keys import create_key

    settings = make_settings(tmp_path, [toy_model], daily_token_quota=10)
    with ServerThread(settings) as server:
        create_key(server.db, key=API_KEY)
        agent = AgentThread(
            server.url,
            EmulatedBackend("L4", TOY_MODEL_NAME, time_scale=0.05, tokenizer_dir=toy_model),
        ).start()
        wait_for(lambda: server.agents_online() == 1)
        c = client(server)
        c.completions.create(model=TOY_MODEL_NAME, prompt="hello", max_tokens=16)
        with pytest.raises(openai.RateLimitError, match="Daily quota"):
            c.completions.create(model=TOY_MODEL_NAME, prompt="hello", max_tokens=16)
        agent.stop()
