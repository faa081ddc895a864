"""A connection must finish its request line and headers in time (coordinator/http_protocol.py)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from netsupport import API_KEY, AgentThread, ServerThread, make_settings, wait_for
from rigpool.agent.backends.emulated import EmulatedBackend
from rigpool.coordinator.keys import create_key
from rigpool.devnet.localnet import TOY_MODEL_NAME

DEADLINE_S = 1.0


@pytest.fixture
def served(tmp_path: Path, toy_model: Path) -> Iterator[tuple[ServerThread, AgentThread]]:
    settings = make_settings(tmp_path, [toy_model], header_read_timeout_s=DEADLINE_S)
    with ServerThread(settings) as server:
        create_key(server.db, key=API_KEY)
        backend = EmulatedBackend(
            "RTX 4090", TOY_MODEL_NAME, time_scale=0.05, tokenizer_dir=toy_model
        )
        agent = AgentThread(server.url, backend).start()
        wait_for(lambda: server.agents_online() == 1, what="agent online")
        yield server, agent
        agent.stop()


def read_until_closed(sock: socket.socket, start: float) -> tuple[bytes, float]:
    answer = b""
    while time.monotonic() - start < 10:
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            break
        if not data:
            break
        answer += data
    return answer, time.monotonic() - start


def test_a_silent_connection_is_closed_at_the_deadline(served):
    server, _agent = served
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        answer, elapsed = read_until_closed(sock, time.monotonic())
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert DEADLINE_S * 0.8 < elapsed < DEADLINE_S + 2


def test_headers_dribbled_a_byte_at_a_time_are_cut_off(served):
    server, _agent = served
    request = (
        f"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {API_KEY}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        start = time.monotonic()
        sock.settimeout(0.2)
        answer = b""
        for byte in request:  # 5+ s at this pace: the deadline must come first
            try:
                sock.sendall(bytes([byte]))
                answer += sock.recv(65536)
            except (TimeoutError, BlockingIOError):
                continue
            except OSError:
                break
            if answer:
                break
        sock.settimeout(10)
        rest, elapsed = read_until_closed(sock, start)
    assert (answer + rest).startswith(b"HTTP/1.1 408"), answer + rest
    assert elapsed < DEADLINE_S + 2


def test_normal_requests_kept_alive_connections_and_agents_are_unaffected(served):
    server, _agent = served
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {API_KEY}"}) as c:
        assert c.get("/v1/models").status_code == 200
        time.sleep(DEADLINE_S * 2)  # longer than the deadline, idle between requests
        assert c.get("/v1/models").status_code == 200
        # The agent's WebSocket outlived the deadline and still serves.
        reply = c.post(
            "/v1/completions", json={"model": TOY_MODEL_NAME, "prompt": "hi", "max_tokens": 3}
        )
    assert reply.status_code == 200, reply.text
    assert server.agents_online() == 1
