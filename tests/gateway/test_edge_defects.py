"""Edge defects found by probing the gateway (issue 12, item 4), against a real coordinator.

Bad text (lone UTF-16 surrogates) is refused by validation before anything is routed or
recorded; an oversized chunked body is a 413 like an oversized Content-Length one; a body that
arrives too slowly is a 408 and the connection is closed; query-string values never reach the
access log.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from netsupport import API_KEY, AgentThread, ServerThread, make_settings, wait_for
from rigpool.agent.backends.emulated import EmulatedBackend
from rigpool.coordinator.access_log import RedactQueryValues
from rigpool.coordinator.keys import create_key
from rigpool.coordinator.tables import RequestRecord
from rigpool.devnet.localnet import TOY_MODEL_NAME
from rigpool.gateway.common_schemas import has_lone_surrogate

LIMIT = 4096
READ_TIMEOUT_S = 1.0
CHAT: dict[str, Any] = {
    "model": TOY_MODEL_NAME,
    "messages": [{"role": "user", "content": "hi"}],
    "max_tokens": 3,
}
COMPLETION: dict[str, Any] = {"model": TOY_MODEL_NAME, "prompt": "abc", "max_tokens": 3}
HIGH, LOW = "\ud800", "\udfff"  # each alone is not Unicode text; together (reversed) neither


@pytest.fixture
def served(tmp_path: Path, toy_model: Path) -> Iterator[ServerThread]:
    settings = make_settings(
        tmp_path, [toy_model], max_body_bytes=LIMIT, body_read_timeout_s=READ_TIMEOUT_S
    )
    with ServerThread(settings) as server:
        create_key(server.db, key=API_KEY)
        backend = EmulatedBackend(
            "RTX 4090", TOY_MODEL_NAME, time_scale=0.05, tokenizer_dir=toy_model
        )
        agent = AgentThread(server.url, backend).start()
        wait_for(lambda: server.agents_online() == 1, what="agent online")
        yield server
        agent.stop()


def post_json(
    server: ServerThread, path: str, body: dict[str, Any], headers: dict[str, str] | None = None
) -> httpx.Response:
    # json.dumps escapes a lone surrogate as \udXXX (httpx's own encoder would refuse it).
    return httpx.post(
        server.url + path,
        content=json.dumps(body).encode(),
        headers={
            "Authorization": f"Bearer {API_KEY}",
            "Content-Type": "application/json",
            **(headers or {}),
        },
        timeout=30,
    )


def provider_view(server: ServerThread) -> dict[str, tuple[float, int, int, int, int]]:
    """Each agent's reputation and service counts: what a client's bad input must not touch."""
    state = server.state
    view = {}
    for agent_id in state.hub.sessions:
        record = state.service.record(agent_id)
        counts = (record.requests, record.drops, record.ttft_misses, record.checks)
        view[agent_id] = (round(state.reputation(agent_id), 9), *counts)
    return view


def request_rows(server: ServerThread) -> list[tuple[str, str]]:
    with server.db() as session:
        rows = session.execute(select(RequestRecord.idempotency_key, RequestRecord.status))
        return [(key, status) for key, status in rows]


# --- 1. lone surrogates ------------------------------------------------------------------------

BAD_TEXT = [
    ("/v1/chat/completions", {**CHAT, "messages": [{"role": "user", "content": HIGH}]},
     "messages[0].content"),
    ("/v1/chat/completions",
     {**CHAT, "messages": [{"role": "system", "content": "be brief"},
                           {"role": "user", "content": f"a{LOW}b"}]},
     "messages[1].content"),
    ("/v1/chat/completions",
     {**CHAT, "messages": [{"role": "user", "content": [{"type": "text", "text": "ok"},
                                                        {"type": "text", "text": HIGH}]}]},
     "messages[0].content[1].text"),
    ("/v1/chat/completions",
     {**CHAT, "messages": [{"role": "user", "content": "hi", "name": HIGH}]},
     "messages[0].name"),
    ("/v1/chat/completions", {**CHAT, "stop": HIGH}, "stop"),
    ("/v1/chat/completions", {**CHAT, "stop": ["x", LOW + HIGH]}, "stop[1]"),
    ("/v1/chat/completions", {**CHAT, "rigpool": {"regions": ["eu", HIGH]}},
     "rigpool.regions[1]"),
    ("/v1/chat/completions", {**CHAT, "model": TOY_MODEL_NAME + HIGH}, "model"),
    ("/v1/chat/completions", {**CHAT, "user": LOW}, "user"),
    ("/v1/completions", {**COMPLETION, "prompt": "abc" + HIGH}, "prompt"),
    ("/v1/completions", {**COMPLETION, "prompt": [LOW]}, "prompt[0]"),
    ("/v1/completions", {**COMPLETION, "stop": [HIGH]}, "stop[0]"),
    ("/v1/completions", {**COMPLETION, "rigpool": {"regions": [LOW]}}, "rigpool.regions[0]"),
]  # fmt: skip


@pytest.mark.parametrize(("path", "body", "param"), BAD_TEXT)
def test_lone_surrogate_is_a_400_before_anything_is_routed_or_recorded(
    served: ServerThread, path: str, body: dict[str, Any], param: str
) -> None:
    before = provider_view(served)
    key = {"Idempotency-Key": "edge-key-1"}
    for _ in range(3):  # repeated: a failure counted against providers would show
        bad = post_json(served, path, body, key)
        assert bad.status_code == 400, bad.text
        error = bad.json()["error"]
        assert error["type"] == "invalid_request_error"
        assert error["param"] == param
        assert "surrogate" in error["message"]
    assert request_rows(served) == []
    assert provider_view(served) == before

    # The same Idempotency-Key is free: a good request under it is served, not replayed.
    good = post_json(served, path, COMPLETION if "prompt" in body else CHAT, key)
    assert good.status_code == 200, good.text
    assert good.headers.get("idempotent-replayed") is None
    assert request_rows(served) == [("edge-key-1", "ok")]
    assert [view[1:3] for view in provider_view(served).values()] == [(1, 0)]  # served, no drop


def test_a_surrogate_pair_is_real_text_and_is_served(served: ServerThread) -> None:
    # "\ud83d\ude00" in JSON is one character (U+1F600): valid, so it must pass validation.
    body = {**CHAT, "messages": [{"role": "user", "content": "\U0001f600"}], "stop": ["\u00e9"]}
    raw = json.dumps(body)
    assert "\\ud83d\\ude00" in raw
    response = post_json(served, "/v1/chat/completions", body)
    assert response.status_code == 200, response.text


def test_has_lone_surrogate() -> None:
    assert has_lone_surrogate(HIGH) and has_lone_surrogate("ab" + LOW)
    assert has_lone_surrogate(LOW + HIGH)  # reversed halves are two lone surrogates
    assert not has_lone_surrogate("plain ascii") and not has_lone_surrogate("\u00e9\U0001f600")


# --- 2. oversized chunked body -------------------------------------------------------------------


def chunks(total: int, size: int = 1024) -> Iterator[bytes]:
    # A JSON-looking body that never ends within the limit; httpx sends it chunked.
    yield b'{"model": "x", "prompt": "'
    for _ in range(total // size):
        yield b"a" * size
    yield b'"}'


def test_oversized_chunked_body_is_413_like_content_length(served: ServerThread) -> None:
    auth = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    chunked = httpx.post(
        served.url + "/v1/completions", content=chunks(3 * LIMIT), headers=auth, timeout=30
    )
    assert chunked.request.headers.get("transfer-encoding") == "chunked"
    assert "content-length" not in chunked.request.headers
    sized = httpx.post(
        served.url + "/v1/completions", content=b"".join(chunks(3 * LIMIT)), headers=auth
    )
    assert "content-length" in sized.request.headers
    for response in (chunked, sized):
        assert response.status_code == 413, response.text
        assert response.json() == {
            "error": {
                "message": f"request body exceeds {LIMIT} bytes",
                "type": "invalid_request_error",
                "param": None,
                "code": None,
            }
        }
    assert request_rows(served) == []


def test_chunked_body_within_the_limit_is_served(served: ServerThread) -> None:
    body = json.dumps(COMPLETION).encode()
    response = httpx.post(
        served.url + "/v1/completions",
        content=iter([body[:10], body[10:]]),
        headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"},
        timeout=30,
    )
    assert response.request.headers.get("transfer-encoding") == "chunked"
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] > 0


# --- 3. body read timeout ----------------------------------------------------------------------


def dribble(server: ServerThread, head: bytes, body: bytes, every_s: float) -> tuple[bytes, float]:
    """Send the head, then the body one byte every `every_s`; return what came back and when.

    Stops dribbling once the server answers, then reads until the server closes the connection
    (a reset counts: a byte sent just after the server closed is answered with one) or 10 s.
    """
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    start = time.monotonic()
    received = b""
    try:
        sock.sendall(head)
        sock.settimeout(every_s)
        for byte in body:
            try:
                received += sock.recv(65536)
            except TimeoutError:
                pass
            except ConnectionResetError:
                return received, time.monotonic() - start
            if received:
                break
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                break
        sock.settimeout(10)
        while time.monotonic() - start < 10:
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                break
            if not data:
                break
            received += data
        return received, time.monotonic() - start
    finally:
        sock.close()


def head(transfer: str, length: int) -> bytes:
    framing = "Transfer-Encoding: chunked" if transfer == "chunked" else f"Content-Length: {length}"
    return (
        "POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {API_KEY}\r\nContent-Type: application/json\r\n"
        f"{framing}\r\n\r\n"
    ).encode()


@pytest.mark.parametrize("transfer", ["content-length", "chunked"])
def test_slow_body_is_408_and_the_connection_closes(served: ServerThread, transfer: str) -> None:
    body = json.dumps(COMPLETION).encode()
    if transfer == "chunked":  # one chunk per byte: each arrives as its own body message
        payload = b"".join(b"1\r\n" + bytes([b]) + b"\r\n" for b in body) + b"0\r\n\r\n"
    else:
        payload = body
    answer, elapsed = dribble(served, head(transfer, len(body)), payload, every_s=0.2)
    # Answered at the deadline (not after the whole 5+ s the body would take), then closed:
    # dribble() only returns that early when the server closed the connection.
    assert elapsed < READ_TIMEOUT_S + 3, elapsed
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.startswith(b"HTTP/1.1 408"), answer
    headers, _, payload_back = rest.partition(b"\r\n\r\n")
    assert b"connection: close" in headers.lower()
    assert json.loads(payload_back)["error"] == {
        "message": f"request body not received within {READ_TIMEOUT_S:g} s",
        "type": "invalid_request_error",
        "param": None,
        "code": "request_timeout",
    }
    assert request_rows(served) == []


def test_headers_then_silence_is_408(served: ServerThread) -> None:
    sock = socket.create_connection(("127.0.0.1", served.port), timeout=10)
    try:
        start = time.monotonic()
        sock.sendall(head("content-length", 100))
        answer = b""
        while data := sock.recv(65536):
            answer += data
        assert answer.startswith(b"HTTP/1.1 408"), answer
        assert time.monotonic() - start < READ_TIMEOUT_S + 3
    finally:
        sock.close()


def test_a_prompt_body_within_the_deadline_is_served(served: ServerThread) -> None:
    # A body split in two packets, both well within the deadline: served as usual.
    body = json.dumps(COMPLETION).encode()
    with socket.create_connection(("127.0.0.1", served.port), timeout=10) as sock:
        sock.sendall(head("content-length", len(body)) + body[:5])
        time.sleep(0.2)
        sock.sendall(body[5:])
        reply = sock.recv(65536)
    assert reply.startswith(b"HTTP/1.1 200"), reply


def test_body_read_timeout_is_a_setting(tmp_path: Path) -> None:
    from rigpool.coordinator.settings import Settings

    assert Settings().body_read_timeout_s == 30.0
    with pytest.raises(ValueError):
        make_settings(tmp_path, [], body_read_timeout_s=0)


# --- 4. credentials in the query string and the access log -------------------------------------


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def logged(tmp_path: Path, toy_model: Path) -> Iterator[tuple[ServerThread, Collect]]:
    settings = make_settings(tmp_path, [toy_model])
    collect = Collect()
    access = logging.getLogger("uvicorn.access")
    with ServerThread(settings, log_level="info") as server:
        create_key(server.db, key=API_KEY)
        access.addHandler(collect)
        try:
            yield server, collect
        finally:
            access.removeHandler(collect)


def test_query_string_values_never_reach_the_access_log(
    logged: tuple[ServerThread, Collect],
) -> None:
    server, collect = logged
    secret = "sk-live-0123456789abcdef"
    queries = [
        f"api_key={secret}",
        f"key={secret}&limit=3",
        f"token={secret}",
        f"access_token={secret}",
        f"Authorization=Bearer%20{secret}",
        f"api%5Fkey={secret}",  # percent-encoded names defeat any list of names
        secret,  # a bare value, no name at all
    ]
    for query in queries:
        response = httpx.get(f"{server.url}/v1/models?{query}", timeout=30)
        assert response.status_code == 401  # the key in the query is not a credential here
    wait_for(lambda: len(collect.lines) >= len(queries), timeout_s=10, what="access log lines")
    assert not [line for line in collect.lines if secret in line]
    models = [line for line in collect.lines if "/v1/models" in line]
    assert len(models) == len(queries)
    assert any("/v1/models?api_key=[redacted]" in line for line in models)
    assert any("/v1/models?key=[redacted]&limit=[redacted]" in line for line in models)
    assert any('"GET /v1/models?[redacted] HTTP/1.1" 401' in line for line in models)


def uvicorn_access_record(path: str) -> logging.LogRecord:
    # The exact shape uvicorn's h11/httptools protocols log (see uvicorn.protocols.http).
    return logging.LogRecord(
        "uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5555", "GET", path, "1.1", 200), None,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("path", "logged_path"),
    [
        ("/v1/models", "/v1/models"),
        ("/v1/models?", "/v1/models?"),
        ("/v1/models?a=1&b=&c", "/v1/models?a=[redacted]&b=[redacted]&[redacted]"),
        ("/x?token=abc;d=2", "/x?token=[redacted]"),
        ("/x?t=a=b", "/x?t=[redacted]"),
    ],
)
def test_redaction_of_an_access_record(path: str, logged_path: str) -> None:
    record = uvicorn_access_record(path)
    assert RedactQueryValues().filter(record)
    assert record.getMessage() == f'127.0.0.1:5555 - "GET {logged_path} HTTP/1.1" 200'


def test_websocket_handshake_lines_are_redacted_too() -> None:
    # uvicorn logs WebSocket handshakes on "uvicorn.error" with the path in the second arg.
    record = logging.LogRecord(
        "uvicorn.error", logging.INFO, __file__, 1, '%s - "WebSocket %s" [accepted]',
        ("127.0.0.1:5555", "/agent/v1/connect?token=abc"), None,
    )  # fmt: skip
    assert RedactQueryValues().filter(record)
    assert "abc" not in record.getMessage()
    assert "/agent/v1/connect?token=[redacted]" in record.getMessage()
