"""Fuzzing the agents' WebSocket: arbitrary frames after a valid hello never hurt the coordinator.

Each example is a fresh agent (a new identity and a real signed hello, `netsupport.RawAgent`)
that then sends a few generated frames, raw (not sealed) or sealed with its session key, so both
the outer and the inner decoder see them: random text, random JSON, and near-valid protocol
frames with out-of-range or mistyped fields (batches of such frames too). After each example
the coordinator must still answer /healthz; after all of them no rogue session may be left
behind and a well-behaved agent must still serve a request end to end.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netsupport import API_KEY, AgentThread, RawAgent, ServerThread, make_settings, wait_for
from rigpool.agent.backends.emulated import EmulatedBackend
from rigpool.coordinator.keys import create_key
from rigpool.devnet.localnet import TOY_MODEL_NAME
from rigpool.protocol.messages import Capabilities, ModelOffer

CAPS = Capabilities(
    backend="emulated", emulated=True, models=[ModelOffer(name=TOY_MODEL_NAME, context_length=2048)]
)
FRAME_TYPES = [
    "hello", "heartbeat", "token", "done", "error", "batch", "sealed", "generate", "attest_data",
    "", "x",
]  # fmt: skip

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)

#: near-valid stream frames, what a `batch` carries (1.5)
near_valid_stream = st.fixed_dictionaries(
    {"type": st.sampled_from(["token", "done", "error", "batch", "heartbeat"])},
    optional={
        "request_id": st.text(max_size=20) | json_values,
        "index": st.integers(min_value=-2, max_value=2**70) | json_values,
        "text": st.text(max_size=50) | json_values,
        "finish_reason": st.sampled_from(["stop", "length", "eos"]),
        "message": st.text(max_size=50),
    },
)

#: near-valid frames: a known type and plausible field names with arbitrary values.
near_valid = st.fixed_dictionaries(
    {"type": st.sampled_from(FRAME_TYPES)},
    optional={
        "request_id": st.text(max_size=200) | json_values,
        "index": st.integers(min_value=-(2**70), max_value=2**70) | json_values,
        "text": st.text(max_size=5000) | json_values,
        "logprob": st.floats() | json_values,
        "finish_reason": st.sampled_from(["stop", "length", "eos"]) | json_values,
        "completion_tokens_claimed": st.integers() | json_values,
        "message": st.text(max_size=3000),
        "retryable": json_values,
        "active": st.integers() | json_values,
        "draining": json_values,
        "seq": st.integers() | json_values,
        "mac": st.text(max_size=40),
        "body": st.text(max_size=200),
        "challenge_id": st.text(max_size=80) | json_values,
        "round": st.sampled_from(["reply", "answer", "x"]) | json_values,
        "part": st.integers() | json_values,
        "parts": st.integers() | json_values,
        "data": st.text(max_size=300) | json_values,
        "frames": st.lists(near_valid_stream, max_size=6) | json_values,
    },
)

frame_text = st.one_of(
    st.text(max_size=300),
    json_values.map(json.dumps),
    near_valid.map(lambda d: json.dumps(d, allow_nan=True)),
)

#: (sealed?, text) pairs: sealed frames pass the MAC and reach the inner decoder.
frames = st.lists(st.tuples(st.booleans(), frame_text), min_size=1, max_size=5)


@pytest.fixture(scope="module")
def ws_server(tmp_path_factory: pytest.TempPathFactory, toy_model: Path) -> Iterator[ServerThread]:
    tmp = tmp_path_factory.mktemp("wsfuzz")
    config = make_settings(tmp, [toy_model], first_token_timeout_s=3.0)
    with ServerThread(config) as server:
        create_key(server.db, key=API_KEY)
        yield server


def _send_all(agent: RawAgent, batch: list[tuple[bool, str]]) -> None:
    for sealed, text in batch:
        agent.send_raw(agent.sealer.seal(text) if sealed else text)


@pytest.mark.slow
def test_arbitrary_frames_after_hello_leave_the_coordinator_healthy(
    ws_server: ServerThread,
) -> None:
    baseline = ws_server.agents_online()

    @given(batch=frames)
    @settings(
        max_examples=60,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    def fuzz(batch: list[tuple[bool, str]]) -> None:
        # Execute: a valid agent says hello, then sends the generated frames.
        agent = RawAgent(ws_server.url, CAPS)
        try:
            # The coordinator may close the socket mid-batch (too many bad frames): fine.
            with contextlib.suppress(Exception):
                _send_all(agent, batch)
        finally:
            agent.close()
        # Assert: the coordinator still answers.
        health: dict[str, Any] = httpx.get(ws_server.url + "/healthz", timeout=5).json()
        assert health["ok"]

    fuzz()

    # Assert: every rogue session was cleaned up, and the network still serves real work.
    wait_for(lambda: ws_server.agents_online() == baseline, what="rogue sessions to be dropped")
    good = AgentThread(ws_server.url, EmulatedBackend("L4", TOY_MODEL_NAME, time_scale=0.0))
    good.start()
    try:
        wait_for(lambda: ws_server.agents_online() == baseline + 1, what="good agent")
        response = httpx.post(
            ws_server.url + "/v1/completions",
            headers={"Authorization": f"Bearer {API_KEY}"},
            json={"model": TOY_MODEL_NAME, "prompt": "still alive?", "max_tokens": 4},
            timeout=30,
        )
        assert response.status_code == 200, response.text
        assert response.json()["usage"]["completion_tokens"] == 4
    finally:
        good.stop()


def test_oversized_frame_closes_only_that_session(ws_server: ServerThread) -> None:
    agent = RawAgent(ws_server.url, CAPS)
    with contextlib.suppress(Exception):
        agent.send_raw("x" * (2 << 20))
    agent.close()
    assert httpx.get(ws_server.url + "/healthz", timeout=5).json()["ok"]
    wait_for(lambda: ws_server.agents_online() == 0, what="oversized session dropped")
