"""The lean completion route (gateway/lean.py) answers exactly as FastAPI's routes do.

Two real coordinators on loopback, one with `lean_routes` on and one with it off, each with a
priced emulated agent and billing on, get the same matrix of requests; status, the headers that
matter and the bodies (ids, timestamps and the serving provider normalised) must be identical.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from netsupport import AgentThread, ServerThread, make_settings, wait_for
from rigpool.agent.backends.emulated import EmulatedBackend
from rigpool.agent.setup import ProvideOptions, capabilities_for
from rigpool.coordinator.keys import create_key
from rigpool.devnet.localnet import TOY_MODEL_NAME
from rigpool.gateway.lean import LeanRoutes
from rigpool.gateway.ratelimit import RateLimited
from rigpool.ledger import Ledger

FUNDED = "rp-lean-funded-key-0123456789"
POOR = "rp-lean-poor-key-0123456789ab"
LIMITED = "rp-lean-limited-key-012345678"
HEADERS = (
    "content-type",
    "idempotent-replayed",
    "retry-after",
    "cache-control",
    "connection",
    "allow",
)
CHAT_PATH, TEXT_PATH = "/v1/chat/completions", "/v1/completions"
CHAT = {"model": TOY_MODEL_NAME, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 6}
TEXT = {"model": TOY_MODEL_NAME, "prompt": "hello there", "max_tokens": 6}
JSON = {"Content-Type": "application/json"}


def _pair_member(tmp: Path, toy_model: Path, lean: bool) -> tuple[ServerThread, AgentThread]:
    settings = make_settings(
        tmp,
        [toy_model],
        lean_routes=lean,
        billing=True,
        max_messages=4,
        rate_limit_per_min=1,
        rate_limit_burst=1000,
    )
    server = ServerThread(settings).__enter__()
    create_key(server.db, key=FUNDED, consumer="funded")
    create_key(server.db, key=POOR, consumer="poor")
    create_key(server.db, key=LIMITED, consumer="limited")
    Ledger(server.db).credit_deposit("funded", 10**12, "d" * 64)
    backend = EmulatedBackend("A100 80GB", TOY_MODEL_NAME, time_scale=0.0, tokenizer_dir=toy_model)
    caps, _ = capabilities_for(backend, ProvideOptions(backend="auto", price_in=2, price_out=4))
    agent = AgentThread(server.url, backend, models=caps.models).start()
    wait_for(lambda: server.agents_online() == 1, what="agent online")
    return server, agent


@pytest.fixture(scope="module")
def pair(
    tmp_path_factory: pytest.TempPathFactory, toy_model: Path
) -> Iterator[tuple[ServerThread, ServerThread]]:
    lean = _pair_member(tmp_path_factory.mktemp("lean"), toy_model, lean=True)
    plain = _pair_member(tmp_path_factory.mktemp("fastapi"), toy_model, lean=False)
    yield lean[0], plain[0]
    for server, agent in (lean, plain):
        agent.stop()
        server.__exit__(None, None, None)


def _bearer(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


def _json_body(body: Any) -> dict[str, Any]:
    return {"content": json.dumps(body).encode(), "headers": JSON}


#: name -> (method, path, key, request kwargs); sent in this order to both coordinators
CASES: list[tuple[str, str, str, str | None, dict[str, Any]]] = [
    ("chat", "POST", CHAT_PATH, FUNDED, _json_body(CHAT)),
    (
        "chat logprobs",
        "POST",
        CHAT_PATH,
        FUNDED,
        _json_body({**CHAT, "logprobs": True, "top_logprobs": 2}),
    ),
    ("chat stream", "POST", CHAT_PATH, FUNDED, _json_body({**CHAT, "stream": True})),
    (
        "chat stream usage",
        "POST",
        CHAT_PATH,
        FUNDED,
        _json_body({**CHAT, "stream": True, "stream_options": {"include_usage": True}}),
    ),
    ("text", "POST", TEXT_PATH, FUNDED, _json_body(TEXT)),
    ("text logprobs", "POST", TEXT_PATH, FUNDED, _json_body({**TEXT, "logprobs": 2})),
    ("text stream", "POST", TEXT_PATH, FUNDED, _json_body({**TEXT, "stream": True})),
    (
        "charset",
        "POST",
        CHAT_PATH,
        FUNDED,
        {
            "content": json.dumps(CHAT).encode(),
            "headers": {"Content-Type": "Application/JSON; charset=utf-8"},
        },
    ),
    ("malformed json", "POST", CHAT_PATH, FUNDED, {"content": b"{not json", "headers": JSON}),
    ("malformed json no key", "POST", CHAT_PATH, None, {"content": b"{not json", "headers": JSON}),
    ("json array", "POST", CHAT_PATH, FUNDED, _json_body([CHAT])),
    ("json string", "POST", TEXT_PATH, FUNDED, _json_body("hello")),
    ("empty body", "POST", CHAT_PATH, FUNDED, {"content": b"", "headers": JSON}),
    ("no content type", "POST", CHAT_PATH, FUNDED, {"content": json.dumps(CHAT).encode()}),
    (
        "text/plain",
        "POST",
        CHAT_PATH,
        FUNDED,
        {"content": json.dumps(CHAT).encode(), "headers": {"Content-Type": "text/plain"}},
    ),
    (
        "vnd+json",
        "POST",
        TEXT_PATH,
        FUNDED,
        {
            "content": json.dumps(TEXT).encode(),
            "headers": {"Content-Type": "application/vnd.api+json"},
        },
    ),
    (
        "utf-8 bom",
        "POST",
        TEXT_PATH,
        FUNDED,
        {"content": b"\xef\xbb\xbf" + json.dumps(TEXT).encode(), "headers": JSON},
    ),
    ("wrong type", "POST", CHAT_PATH, FUNDED, _json_body({**CHAT, "max_tokens": "many"})),
    ("wrong type messages", "POST", CHAT_PATH, FUNDED, _json_body({**CHAT, "messages": "hi"})),
    (
        "wrong content part",
        "POST",
        CHAT_PATH,
        FUNDED,
        _json_body({**CHAT, "messages": [{"role": "user", "content": [{"type": "image"}]}]}),
    ),
    ("temperature", "POST", CHAT_PATH, FUNDED, _json_body({**CHAT, "temperature": 9})),
    ("n", "POST", CHAT_PATH, FUNDED, _json_body({**CHAT, "n": 3})),
    ("missing model", "POST", CHAT_PATH, FUNDED, _json_body({"messages": CHAT["messages"]})),
    ("missing prompt", "POST", TEXT_PATH, FUNDED, _json_body({"model": TOY_MODEL_NAME})),
    ("empty object", "POST", TEXT_PATH, FUNDED, _json_body({})),
    ("unknown model", "POST", CHAT_PATH, FUNDED, _json_body({**CHAT, "model": "gpt-17"})),
    ("unknown model text", "POST", TEXT_PATH, FUNDED, _json_body({**TEXT, "model": "gpt-17"})),
    (
        "lone surrogate content",
        "POST",
        CHAT_PATH,
        FUNDED,
        {
            "content": b'{"model": "%s", "messages": [{"role": "user", "content": "a\\ud800"}]}'
            % TOY_MODEL_NAME.encode(),
            "headers": JSON,
        },
    ),
    (
        "lone surrogate prompt",
        "POST",
        TEXT_PATH,
        FUNDED,
        {
            "content": b'{"model": "%s", "prompt": "\\udc00", "max_tokens": 2}'
            % TOY_MODEL_NAME.encode(),
            "headers": JSON,
        },
    ),
    (
        "lone surrogate stop",
        "POST",
        TEXT_PATH,
        FUNDED,
        {
            "content": b'{"model": "%s", "prompt": "x", "stop": ["\\ud800"]}'
            % TOY_MODEL_NAME.encode(),
            "headers": JSON,
        },
    ),
    (
        "lone surrogate region",
        "POST",
        CHAT_PATH,
        FUNDED,
        {
            "content": b'{"model": "%s", "messages": [{"role": "user", "content": "x"}], '
            b'"rigpool": {"regions": ["\\ud800"]}}' % TOY_MODEL_NAME.encode(),
            "headers": JSON,
        },
    ),
    (
        "too many messages",
        "POST",
        CHAT_PATH,
        FUNDED,
        _json_body({**CHAT, "messages": [{"role": "user", "content": "hi"}] * 5}),
    ),
    (
        "top_logprobs without logprobs",
        "POST",
        CHAT_PATH,
        FUNDED,
        _json_body({**CHAT, "top_logprobs": 2}),
    ),
    ("context too long chat", "POST", CHAT_PATH, FUNDED, _json_body({**CHAT, "max_tokens": 10**6})),
    (
        "context too long text",
        "POST",
        TEXT_PATH,
        FUNDED,
        _json_body({**TEXT, "prompt": "word " * 5000, "max_tokens": 1}),
    ),
    (
        "idempotency key too long",
        "POST",
        CHAT_PATH,
        FUNDED,
        {"content": json.dumps(CHAT).encode(), "headers": {**JSON, "Idempotency-Key": "k" * 129}},
    ),
    (
        "idempotency key too long and bad body",
        "POST",
        CHAT_PATH,
        FUNDED,
        {
            "content": json.dumps({**CHAT, "max_tokens": "x"}).encode(),
            "headers": {**JSON, "Idempotency-Key": "k" * 129},
        },
    ),
    (
        "idempotency key 128",
        "POST",
        TEXT_PATH,
        FUNDED,
        {"content": json.dumps(TEXT).encode(), "headers": {**JSON, "Idempotency-Key": "k" * 128}},
    ),
    (
        "idempotent replay",
        "POST",
        TEXT_PATH,
        FUNDED,
        {"content": json.dumps(TEXT).encode(), "headers": {**JSON, "Idempotency-Key": "k" * 128}},
    ),
    (
        "idempotent first stream",
        "POST",
        CHAT_PATH,
        FUNDED,
        {
            "content": json.dumps({**CHAT, "stream": True}).encode(),
            "headers": {**JSON, "Idempotency-Key": "streamed-once"},
        },
    ),
    (
        "idempotent conflict",
        "POST",
        CHAT_PATH,
        FUNDED,
        {
            "content": json.dumps({**CHAT, "stream": True}).encode(),
            "headers": {**JSON, "Idempotency-Key": "streamed-once"},
        },
    ),
    ("no key", "POST", CHAT_PATH, None, _json_body(CHAT)),
    ("no key bad body", "POST", TEXT_PATH, None, _json_body({"model": 5})),
    ("bad key", "POST", CHAT_PATH, "rp-wrong-key-000000000000", _json_body(CHAT)),
    (
        "bad scheme",
        "POST",
        TEXT_PATH,
        None,
        {**_json_body(TEXT), "headers": {**JSON, "Authorization": "Basic abc"}},
    ),
    ("insufficient balance", "POST", CHAT_PATH, POOR, _json_body(CHAT)),
    ("insufficient balance stream", "POST", TEXT_PATH, POOR, _json_body({**TEXT, "stream": True})),
    (
        "no capacity",
        "POST",
        CHAT_PATH,
        FUNDED,
        _json_body({**CHAT, "rigpool": {"regions": ["nowhere"]}}),
    ),
    (
        "no capacity stream",
        "POST",
        TEXT_PATH,
        FUNDED,
        _json_body({**TEXT, "stream": True, "rigpool": {"regions": ["nowhere"]}}),
    ),
    ("rate limited", "POST", CHAT_PATH, LIMITED, _json_body(CHAT)),
    ("GET", "GET", CHAT_PATH, FUNDED, {}),
    ("HEAD", "HEAD", TEXT_PATH, FUNDED, {}),
    ("OPTIONS", "OPTIONS", CHAT_PATH, FUNDED, {}),
    ("PUT", "PUT", TEXT_PATH, FUNDED, _json_body(TEXT)),
    ("trailing slash", "POST", CHAT_PATH + "/", FUNDED, _json_body(CHAT)),
    ("models", "GET", "/v1/models", FUNDED, {}),
]

_ID = re.compile(r"\b(chatcmpl|cmpl)-[A-Za-z0-9_-]+")
_VOLATILE = {"created", "system_fingerprint"}


def _normal(value: Any) -> Any:
    """A body with what differs between two servers by design (ids, clocks, agents) masked."""
    if isinstance(value, dict):
        return {k: "<v>" if k in _VOLATILE else _normal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_normal(v) for v in value]
    if isinstance(value, str):
        return _ID.sub(r"\1-<id>", value)
    return value


def _events(text: str) -> list[Any]:
    assert text.endswith("\n\n"), text[-80:]
    events = []
    for block in text.split("\n\n")[:-1]:
        assert block.startswith("data: "), block
        data = block.removeprefix("data: ")
        events.append(data if data == "[DONE]" else _normal(json.loads(data)))
    return events


def _seen(
    client: httpx.Client, method: str, path: str, key: str | None, kw: dict[str, Any]
) -> dict[str, Any]:
    headers = {**_bearer(key), **kw.get("headers", {})}
    response = client.request(method, path, content=kw.get("content"), headers=headers)
    kind = response.headers.get("content-type", "")
    body: Any
    if not response.content:
        body = b""
    elif kind.startswith("text/event-stream"):
        body = _events(response.text)
    elif kind.startswith("application/json"):
        body = _normal(response.json())
    else:
        body = response.content
    return {
        "status": response.status_code,
        "headers": {h: response.headers.get(h) for h in HEADERS},
        "request id": bool(response.headers.get("x-request-id")),
        "body": body,
    }


def _exhaust(server: ServerThread, key: str) -> None:
    """Spend the key's whole request bucket with the coordinator's own limiter."""
    ports = server.app.state.gateway
    found = ports.keys.authenticate(key)
    assert found is not None
    now = time.monotonic()  # one instant: the bucket ends at exactly 0, a full 60 s short
    with pytest.raises(RateLimited):
        for _ in range(2000):
            ports.limiter.admit(found[0], now=now)


def _stack(server: ServerThread) -> list[Any]:
    app: Any = server.app.middleware_stack
    layers = []
    while app is not None and not hasattr(app, "routes"):
        layers.append(app)
        app = getattr(app, "app", None)
    return layers


class _HandedOn:
    """Between the lean layer and the rest of FastAPI's stack: notes what reaches FastAPI."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.count = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            self.count += 1
        await self.app(scope, receive, send)


#: the cases the lean path hands to FastAPI (not its two routes, or a body it does not take)
HANDED_ON = {
    "malformed json",
    "malformed json no key",
    "json array",
    "json string",
    "empty body",
    "no content type",
    "text/plain",
    "vnd+json",
    "GET",
    "HEAD",
    "OPTIONS",
    "PUT",
    "trailing slash",
    "models",
}


def test_lean_and_fastapi_routes_answer_the_same(pair: tuple[ServerThread, ServerThread]) -> None:
    lean, plain = pair
    # The lean path is in the lean coordinator's stack only; note what it hands on.
    assert not any(isinstance(layer, LeanRoutes) for layer in _stack(plain))
    (layer,) = [layer for layer in _stack(lean) if isinstance(layer, LeanRoutes)]
    handed = layer.app = _HandedOn(layer.app)
    handed_on: set[str] = set()
    answers: dict[str, list[dict[str, Any]]] = {}
    for server in pair:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            answers[server.url] = []
            for name, method, path, key, kw in CASES:
                if name == "rate limited":
                    _exhaust(server, LIMITED)
                before = handed.count
                answers[server.url].append(_seen(client, method, path, key, kw))
                if server is lean and handed.count > before:
                    handed_on.add(name)
    assert handed_on == HANDED_ON
    expected = {
        "chat": 200,
        "chat stream": 200,
        "text stream": 200,
        "malformed json": 400,
        "wrong type": 400,
        "missing model": 400,
        "unknown model": 404,
        "lone surrogate content": 400,
        "lone surrogate stop": 400,
        "too many messages": 400,
        "top_logprobs without logprobs": 400,
        "context too long chat": 400,
        "idempotency key too long": 400,
        "idempotent conflict": 409,
        "no key": 401,
        "bad key": 401,
        "insufficient balance": 429,
        "no capacity": 503,
        "no capacity stream": 503,
        "rate limited": 429,
        "GET": 405,
    }
    for (name, *_), mine, theirs in zip(CASES, answers[lean.url], answers[plain.url], strict=True):
        assert mine == theirs, name
        if name in expected:
            assert mine["status"] == expected[name], (name, mine)
    by_name = {case[0]: answer for case, answer in zip(CASES, answers[lean.url], strict=True)}
    assert by_name["idempotent replay"]["headers"]["idempotent-replayed"] == "true"
    assert by_name["idempotent replay"]["body"] == by_name["idempotency key 128"]["body"]
    assert int(by_name["rate limited"]["headers"]["retry-after"]) >= 1
    assert by_name["chat stream"]["headers"]["cache-control"] == "no-cache"
    assert by_name["chat stream"]["request id"] and by_name["chat"]["request id"]
    assert (
        "header.idempotency-key" in by_name["idempotency key too long"]["body"]["error"]["message"]
    )
