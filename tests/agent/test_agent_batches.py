"""Protocol 1.5 on the wire: agents batch their token frames, and 1.4 peers still interoperate.

* a real daemon batches a fast stream for a 1.5 coordinator, sends a slow stream token by
  token (nothing waits for a window), and never batches for a 1.4 coordinator;
* a live coordinator takes batches that mix requests, catches gaps and repeats across
  batches exactly as within one, and still serves an agent that says hello as 1.4;
* `Hub.stream_batches` hands a request its frames a batch at a time, ends at done/error and
  cancels on the agent when left early.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import AsyncIterator

import base58
import httpx
import pytest
from websockets.sync.server import ServerConnection, serve

from netsupport import API_KEY, AgentThread, RawAgent, ServerThread, wait_for
from rigpool.agent.backends.base import Finish, GenerationRequest, TokenChunk
from rigpool.agent.backends.emulated import EmulatedBackend
from rigpool.coordinator.hub import AgentSession, Hub
from rigpool.devnet.localnet import TOY_MODEL_NAME
from rigpool.protocol.channel import Opener, coordinator_session_key, new_ephemeral
from rigpool.protocol.messages import (
    MAX_FRAME_BYTES,
    Batch,
    Cancel,
    Capabilities,
    Done,
    Error,
    Generate,
    Hello,
    ModelOffer,
    Sampling,
    Token,
    Welcome,
    decode_agent_frame,
    decode_coordinator_frame,
    encode,
    encode_batch,
    encode_token,
)

CAPS = Capabilities(
    backend="emulated", emulated=True, models=[ModelOffer(name=TOY_MODEL_NAME, context_length=2048)]
)

# ---------------------------------------------------------------------------------------------
# The daemon's side: what a real agent puts on the wire for coordinators of either version.


class RecordingCoordinator:
    """The coordinator's half of the agent protocol at a chosen version, on a real WebSocket.

    It checks the agent's signed hello, answers `welcome` with its version and a session key,
    sends one `generate`, and records every sealed message the agent sends (opened and
    decoded, heartbeats left out) until the request's `done` or `error`.
    """

    def __init__(self, version: str, max_tokens: int):
        self.version = version
        self.max_tokens = max_tokens
        self.messages: list[Token | Done | Error | Batch] = []
        self.arrived: list[float] = []  # when each recorded message arrived
        self.largest = 0  # bytes of the largest message received
        self.finished = threading.Event()
        self.server = serve(self._handle, "127.0.0.1", 0)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.socket.getsockname()[1]}"

    def _handle(self, ws: ServerConnection) -> None:
        hello = decode_agent_frame(ws.recv(timeout=10))
        assert isinstance(hello, Hello)
        private, public = new_ephemeral()
        opener = Opener(
            coordinator_session_key(private, base58.b58decode(hello.agent_id), hello.nonce)
        )
        welcome = Welcome(
            agent_id=hello.agent_id,
            protocol_version=self.version,
            heartbeat_interval_s=30,
            session_pubkey=public.hex(),
        )
        ws.send(encode(welcome))
        sampling = Sampling(max_tokens=self.max_tokens)
        ws.send(
            encode(Generate(request_id="r.1", model=TOY_MODEL_NAME, prompt="hi", sampling=sampling))
        )
        while not self.finished.is_set():
            raw = ws.recv(timeout=20)
            self.largest = max(self.largest, len(raw.encode() if isinstance(raw, str) else raw))
            sealed = decode_agent_frame(raw)
            msg = decode_agent_frame(opener.open(sealed))  # type: ignore[arg-type]
            if not isinstance(msg, Token | Done | Error | Batch):
                continue
            self.messages.append(msg)
            self.arrived.append(time.monotonic())
            last = msg.frames[-1] if isinstance(msg, Batch) else msg
            if isinstance(last, Done | Error):
                self.finished.set()

    def frames(self) -> list[Token | Done | Error]:
        out: list[Token | Done | Error] = []
        for msg in self.messages:
            out.extend(msg.frames if isinstance(msg, Batch) else [msg])
        return out

    def close(self) -> None:
        self.server.shutdown()


def _serve_one(
    version: str,
    max_tokens: int,
    time_scale: float,
    backend: EmulatedBackend | None = None,
    flush_window_s: float | None = None,
) -> RecordingCoordinator:
    coordinator = RecordingCoordinator(version, max_tokens)
    backend = backend or EmulatedBackend("H100 SXM", TOY_MODEL_NAME, time_scale=time_scale)
    agent = AgentThread(coordinator.url, backend)
    if flush_window_s is not None:
        agent.agent.flush_window_s = flush_window_s
    agent.start()
    try:
        assert coordinator.finished.wait(30), "the agent did not finish the request"
    finally:
        agent.stop()
        coordinator.close()
    return coordinator


def _assert_complete_stream(frames: list[Token | Done | Error], tokens: int) -> None:
    assert [f.index for f in frames if isinstance(f, Token)] == list(range(tokens))
    assert isinstance(frames[-1], Done) and frames[-1].completion_tokens_claimed == tokens
    assert all(f.request_id == "r.1" for f in frames)


def test_a_fast_stream_travels_in_batches_to_a_1_5_coordinator():
    recorder = _serve_one("1.5", max_tokens=64, time_scale=0.0)
    _assert_complete_stream(recorder.frames(), 64)
    assert any(isinstance(m, Batch) for m in recorder.messages)
    # The first token goes out at once; the rest and the done share a message or a few.
    assert isinstance(recorder.messages[0], Token)
    assert len(recorder.messages) <= 8


def test_a_1_4_coordinator_gets_one_frame_per_message():
    recorder = _serve_one("1.4", max_tokens=64, time_scale=0.0)
    _assert_complete_stream(recorder.frames(), 64)
    assert not any(isinstance(m, Batch) for m in recorder.messages)
    assert len(recorder.messages) == 65


class WideTokens(EmulatedBackend):
    """An emulated GPU whose every token is 4,000 four-byte characters (16 KB of UTF-8)."""

    async def generate(self, request: GenerationRequest) -> AsyncIterator[TokenChunk | Finish]:
        for _ in range(request.sampling.max_tokens):
            yield TokenChunk("\U0001f600" * 4000)
        yield Finish("length", request.sampling.max_tokens)


def test_batches_of_wide_tokens_stay_under_the_frame_limit_in_bytes():
    # 200 tokens of 16 KB (3.2 MB in all, produced at once) and a window so long that only the
    # size cap cuts batches: they are cut by UTF-8 bytes, so none reaches the 1 MiB limit that
    # both ends enforce on a message's bytes (the recording server would close the connection
    # on a larger one).
    backend = WideTokens("H100 SXM", TOY_MODEL_NAME, time_scale=0.0)
    recorder = _serve_one(
        "1.5", max_tokens=200, time_scale=0.0, backend=backend, flush_window_s=30.0
    )
    _assert_complete_stream(recorder.frames(), 200)
    assert any(isinstance(m, Batch) and len(m.frames) > 1 for m in recorder.messages)
    assert recorder.largest <= MAX_FRAME_BYTES
    assert recorder.largest > MAX_FRAME_BYTES // 4  # and they are batches, not single tokens


def test_a_slow_stream_is_not_held_back():
    # ~15 ms per token (an emulated H100 at 1.7x its modelled time): far apart from the 2 ms
    # window, so nearly every token is its own message, sent as soon as it is made.
    probe = EmulatedBackend("H100 SXM", TOY_MODEL_NAME, time_scale=1.0)
    scale = 0.015 / probe.timing(10, 1)[1]
    recorder = _serve_one("1.5", max_tokens=20, time_scale=scale)
    _assert_complete_stream(recorder.frames(), 20)
    singles = sum(isinstance(m, Token) for m in recorder.messages)
    assert singles >= 16, [type(m).__name__ for m in recorder.messages]
    gaps = [b - a for a, b in zip(recorder.arrived, recorder.arrived[1:], strict=False)]
    assert sorted(gaps)[len(gaps) // 2] > 0.008  # tokens arrive at the backend's pace


# ---------------------------------------------------------------------------------------------
# The coordinator's side: batches through a live coordinator.


class BatchingAgent:
    """A hand-driven 1.5 agent: answers each `generate` it receives with scripted batches.

    `script(request_id)` returns the batches (lists of frames) to send for that request; with
    `together` > 1 it waits for that many requests and sends their batches interleaved, frame
    lists of all requests merged into one batch per step.
    """

    def __init__(self, server: ServerThread, script, together: int = 1, version: str | None = None):
        self.raw = RawAgent(server.url, CAPS, protocol_version=version)
        self.script, self.together = script, together
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        waiting: list[str] = []
        try:
            while True:
                frame = json.loads(self.raw.ws.recv())
                if frame["type"] != "generate":
                    continue
                waiting.append(frame["request_id"])
                if len(waiting) < self.together:
                    continue
                scripts = [self.script(rid) for rid in waiting]
                waiting = []
                for step in range(max(len(s) for s in scripts)):
                    merged = [f for s in scripts if step < len(s) for f in s[step]]
                    self.send_batch(merged)
        except Exception:
            return

    def send_batch(self, frames: list[Token | Done | Error]) -> None:
        texts = [encode_token(f) if isinstance(f, Token) else encode(f) for f in frames]
        self.raw.send_raw(self.raw.sealer.seal(encode_batch(texts)))

    def close(self) -> None:
        self.raw.close()


def _complete(server: ServerThread, prompt: str = "hi", max_tokens: int = 3) -> httpx.Response:
    return httpx.post(
        server.url + "/v1/completions",
        headers={"Authorization": f"Bearer {API_KEY}"},
        json={"model": TOY_MODEL_NAME, "prompt": prompt, "max_tokens": max_tokens},
        timeout=60,
    )


def _tokens(rid: str, indices: list[int]) -> list[Token | Done | Error]:
    return [Token(request_id=rid, index=i, text=f" t{i}") for i in indices]


def test_one_batch_serves_several_requests_each_in_order(coordinator):
    def script(rid: str) -> list[list[Token | Done | Error]]:
        return [
            _tokens(rid, [0]),
            [*_tokens(rid, [1, 2]), Done(request_id=rid, finish_reason="length")],
        ]

    agent = BatchingAgent(coordinator, script, together=2)
    try:
        wait_for(lambda: coordinator.agents_online() == 1)
        results: list[httpx.Response] = []
        threads = [
            threading.Thread(target=lambda p=p: results.append(_complete(coordinator, prompt=p)))
            for p in ("first", "second")
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert [r.status_code for r in results] == [200, 200], [r.text for r in results]
        assert [r.json()["choices"][0]["text"] for r in results] == [" t0 t1 t2"] * 2
    finally:
        agent.close()


@pytest.mark.parametrize(
    ("second", "ok"),
    [([2], True), ([3], False), ([1, 2], False)],
    ids=["contiguous", "gap", "repeat"],
)
def test_gaps_and_repeats_across_batches_are_caught(coordinator, second, ok):
    def script(rid: str) -> list[list[Token | Done | Error]]:
        return [_tokens(rid, [0, 1]), [*_tokens(rid, second), Done(request_id=rid)]]

    agent = BatchingAgent(coordinator, script)
    try:
        wait_for(lambda: coordinator.agents_online() == 1)
        response = _complete(coordinator)
        if ok:
            assert response.status_code == 200, response.text
            assert response.json()["choices"][0]["text"] == " t0 t1 t2"
        else:
            assert response.status_code in (502, 503), response.text
            assert "retry" in response.json()["error"]["message"]
    finally:
        agent.close()


def test_an_agent_that_says_1_4_still_serves_frame_by_frame(coordinator):
    raw = RawAgent(coordinator.url, CAPS, protocol_version="1.4")

    def serve() -> None:
        with contextlib.suppress(Exception):
            while True:
                frame = json.loads(raw.ws.recv())
                if frame["type"] == "generate":
                    rid = frame["request_id"]
                    for i in range(3):
                        raw.send(Token(request_id=rid, index=i, text=f" o{i}"))
                    raw.send(Done(request_id=rid, finish_reason="length"))

    threading.Thread(target=serve, daemon=True).start()
    try:
        wait_for(lambda: coordinator.agents_online() == 1)
        response = _complete(coordinator)
        assert response.status_code == 200, response.text
        assert response.json()["choices"][0]["text"] == " o0 o1 o2"
    finally:
        raw.close()


# ---------------------------------------------------------------------------------------------
# Hub.stream_batches, in-process: the session's sender is an agent that answers through the
# hub's own delivery path (what the agent link calls for every batch it receives).


def _hub_with_agent(batches: list[list[Token | Done | Error]]) -> tuple[Hub, AgentSession, list]:
    hub = Hub()
    sent: list = []

    async def send_text(text: str) -> None:
        frame = decode_coordinator_frame(text)
        sent.append(frame)
        if isinstance(frame, Generate):
            loop = asyncio.get_running_loop()
            for step, batch in enumerate(batches):
                loop.call_later(0.005 * (step + 1), hub.deliver_many, session, batch)

    async def close() -> None:
        return None

    session = AgentSession(agent_id="a" * 32, capabilities=CAPS, send_text=send_text, close=close)
    hub.add(session)
    return hub, session, sent


def test_stream_batches_yields_what_arrived_together_and_stops_at_done():
    rid = "req.1"
    t = _tokens(rid, [0, 1, 2, 3])
    done = Done(request_id=rid, finish_reason="length")
    batches = [t[:2], [t[2], Token(request_id="other.1", index=0, text="x"), done, t[3]]]

    async def scenario() -> tuple[list, list, list]:
        hub, session, sent = _hub_with_agent(batches)
        request = Generate(request_id=rid, model="m", prompt="p")
        got = [batch async for batch in hub.stream_batches(session, request)]
        flat_hub, flat_session, _ = _hub_with_agent(batches)
        flat = [f async for f in flat_hub.stream(flat_session, request)]
        assert session.streams == {} and flat_session.streams == {}
        return got, flat, sent

    got, flat, sent = asyncio.run(scenario())
    assert got == [t[:2], [t[2], done]]  # the other request's frame and the late token dropped
    assert flat == [*t[:3], done]
    assert not any(isinstance(f, Cancel) for f in sent)  # it finished: nothing to cancel


def test_leaving_stream_batches_early_cancels_on_the_agent():
    rid = "req.2"
    batches = [_tokens(rid, [0, 1]), _tokens(rid, [2])]

    async def scenario() -> list:
        hub, session, sent = _hub_with_agent(batches)
        stream = hub.stream_batches(session, Generate(request_id=rid, model="m", prompt="p"))
        assert await anext(stream) == batches[0]
        await stream.aclose()
        assert session.streams == {}
        return sent

    sent = asyncio.run(scenario())
    assert [type(f) for f in sent] == [Generate, Cancel]


def test_a_session_that_goes_away_ends_its_streams_with_a_retryable_error():
    rid = "req.3"

    async def scenario() -> list:
        hub, session, _ = _hub_with_agent([_tokens(rid, [0])])
        stream = hub.stream_batches(session, Generate(request_id=rid, model="m", prompt="p"))
        first = await anext(stream)
        hub.remove(session, "agent disconnected")
        rest = [batch async for batch in stream]
        return [first, *rest]

    got = asyncio.run(scenario())
    assert got[0] == _tokens(rid, [0])
    assert len(got) == 2 and isinstance(got[1][0], Error) and got[1][0].retryable


# ---------------------------------------------------------------------------------------------
# The agent link's heartbeat deadline (one deadline moved forward, not a timer per message).


def test_a_silent_agent_is_dropped_and_a_talking_one_is_kept(coordinator):
    timeout_s = coordinator.state.settings.heartbeat_timeout_s  # 3 s in tests
    talking = RawAgent(coordinator.url, CAPS)  # heartbeats every 0.5 s from a thread
    silent = RawAgent(coordinator.url, CAPS)
    silent._closed.set()  # stops its heartbeat thread: nothing more comes from it
    try:
        wait_for(lambda: coordinator.agents_online() == 2)
        quiet_since = time.monotonic()
        wait_for(lambda: coordinator.agents_online() == 1, timeout_s=3 * timeout_s)
        waited = time.monotonic() - quiet_since
        assert timeout_s - 0.5 <= waited <= timeout_s + 1.0 + 1.0, waited
        assert talking.identity.agent_id in coordinator.state.hub.sessions
        time.sleep(timeout_s)  # well past one timeout since the talking agent joined
        assert talking.identity.agent_id in coordinator.state.hub.sessions
    finally:
        talking.close()
        silent.close()
