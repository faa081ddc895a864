"""The openai-proxy backend against a real (small, fake) OpenAI-compatible HTTP server."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from rigpool.agent.backends.base import Finish, GenerationRequest, SamplingParams, TokenChunk
from rigpool.agent.backends.openai_proxy import OpenAIProxyBackend
from rigpool.core.errors import BackendError

REPLY = ["Hello", " from", " the", " fake", " server", " 🙂"]


def _sse(obj: Any) -> bytes:
    return f"data: {json.dumps(obj)}\n\n".encode()


def make_app(seen: list[dict[str, Any]]) -> FastAPI:
    app = FastAPI()

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [{"id": "fake-7b", "object": "model", "max_model_len": 8192}],
        }

    async def stream(body: dict[str, Any], chat: bool) -> AsyncIterator[bytes]:
        limit = int(body.get("max_tokens", 16))
        pieces = REPLY[:limit]
        reason = "length" if limit < len(REPLY) else "stop"
        base = {"id": "x", "model": body["model"], "created": 0}
        if chat:
            yield _sse({**base, "choices": [{"index": 0, "delta": {"role": "assistant"}}]})
        if body["model"] == "midstream-error":
            yield _sse({"error": {"message": "engine died", "type": "server_error"}})
            return
        for i, piece in enumerate(pieces):
            lp = -0.5 - i
            if chat:
                choice: dict[str, Any] = {
                    "index": 0,
                    "delta": {"content": piece},
                    "finish_reason": None,
                }
                if body.get("logprobs"):
                    top = [{"token": piece, "logprob": lp}, {"token": "x", "logprob": lp - 1}]
                    choice["logprobs"] = {
                        "content": [
                            {
                                "token": piece,
                                "logprob": lp,
                                "top_logprobs": top[: body.get("top_logprobs", 0)],
                            }
                        ]
                    }
            else:
                choice = {"index": 0, "text": piece, "finish_reason": None}
                if body.get("logprobs") is not None:
                    choice["logprobs"] = {
                        "tokens": [piece],
                        "token_logprobs": [lp],
                        "top_logprobs": [{piece: lp}],
                    }
            yield _sse({**base, "choices": [choice]})
            if body["model"] == "slow":
                await asyncio.sleep(0.2)
        yield _sse(
            {**base, "choices": [{"index": 0, "delta": {}, "text": "", "finish_reason": reason}]}
        )
        if (body.get("stream_options") or {}).get("include_usage") and body["model"] != "no-usage":
            usage = {"prompt_tokens": 3, "completion_tokens": len(pieces) + 100, "total_tokens": 0}
            yield _sse({**base, "choices": [], "usage": usage})
        yield b"data: [DONE]\n\n"

    async def handle(request: Request, chat: bool) -> Any:
        body = await request.json()
        seen.append(
            {"path": request.url.path, "auth": request.headers.get("authorization"), **body}
        )
        if body["model"] == "missing":
            return JSONResponse(
                {
                    "error": {
                        "message": "The model `missing` does not exist.",
                        "type": "invalid_request_error",
                    }
                },
                status_code=404,
            )
        if body["model"] == "boom":
            return JSONResponse({"detail": "out of memory"}, status_code=500)
        return StreamingResponse(stream(body, chat), media_type="text/event-stream")

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        return await handle(request, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        return await handle(request, chat=False)

    return app


class Server:
    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        config = uvicorn.Config(
            make_app(self.seen), log_level="warning", lifespan="off", ws="none", access_log=False
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Server:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "fake server did not start"
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    with Server() as srv:
        yield srv


def _request(messages: bool = True, **sampling: Any) -> GenerationRequest:
    msgs = ({"role": "user", "content": "hi"},) if messages else None
    return GenerationRequest(
        request_id="r",
        model="served",
        prompt="<|user|>\nhi",
        sampling=SamplingParams(**sampling),
        messages=msgs,
    )


def collect(backend_args: dict[str, Any], request: GenerationRequest) -> list[Any]:
    async def main() -> list[Any]:
        backend = OpenAIProxyBackend(**backend_args)
        try:
            return [item async for item in backend.generate(request)]
        finally:
            await backend.close()

    return asyncio.run(main())


def test_chat_streaming_with_logprobs(server: Server) -> None:
    items = collect(
        {"base_url": server.url + "/v1/", "model": "fake-7b", "api_key": "sekrit"},
        _request(
            max_tokens=50, temperature=0.5, seed=7, stop=("END",), logprobs=True, top_logprobs=2
        ),
    )
    *chunks, finish = items
    assert [c.text for c in chunks] == REPLY
    assert all(isinstance(c, TokenChunk) for c in chunks)
    assert [c.logprob for c in chunks] == [-0.5 - i for i in range(len(REPLY))]
    assert chunks[0].top_logprobs == (("Hello", -0.5), ("x", -1.5))
    assert finish == Finish(
        finish_reason="stop", completion_tokens=len(REPLY) + 100
    )  # server usage
    body = server.seen[-1]
    assert body["path"] == "/v1/chat/completions"
    assert body["auth"] == "Bearer sekrit"
    assert body["messages"] == [{"role": "user", "content": "hi"}]
    assert body["stream"] is True
    assert body["model"] == "fake-7b"
    assert body["seed"] == 7
    assert body["stop"] == ["END"]
    assert body["logprobs"] is True and body["top_logprobs"] == 2
    assert "prompt" not in body


def test_completions_streaming_length_and_chunk_count(server: Server) -> None:
    items = collect(
        {"base_url": server.url, "model": "no-usage"},
        _request(messages=False, max_tokens=3, logprobs=True),
    )
    *chunks, finish = items
    assert "".join(c.text for c in chunks) == "Hello from the"
    assert [c.logprob for c in chunks] == [-0.5, -1.5, -2.5]
    assert finish == Finish(finish_reason="length", completion_tokens=3)  # no usage: chunk count
    body = server.seen[-1]
    assert body["path"] == "/v1/completions"
    assert body["prompt"] == "<|user|>\nhi"
    assert body["logprobs"] == 0
    assert body["auth"] is None
    assert "messages" not in body


def test_4xx_is_not_retryable_and_carries_message(server: Server) -> None:
    with pytest.raises(BackendError) as info:
        collect({"base_url": server.url, "model": "missing"}, _request())
    assert info.value.retryable is False
    assert "does not exist" in info.value.message
    assert "404" in info.value.message


def test_5xx_is_retryable(server: Server) -> None:
    with pytest.raises(BackendError) as info:
        collect({"base_url": server.url, "model": "boom"}, _request(messages=False))
    assert info.value.retryable is True
    assert "out of memory" in info.value.message


def test_midstream_error_event(server: Server) -> None:
    with pytest.raises(BackendError) as info:
        collect({"base_url": server.url, "model": "midstream-error"}, _request())
    assert "engine died" in info.value.message
    assert info.value.retryable is True


def test_connection_refused_is_retryable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # nobody listens on `port` now
    with pytest.raises(BackendError) as info:
        collect({"base_url": f"http://127.0.0.1:{port}", "model": "fake-7b"}, _request())
    assert info.value.retryable is True


def test_early_close_stops_streaming(server: Server) -> None:
    async def main() -> list[str]:
        backend = OpenAIProxyBackend(server.url, "slow")
        texts: list[str] = []
        agen = backend.generate(_request())
        async for item in agen:
            assert isinstance(item, TokenChunk)
            texts.append(item.text)
            break
        await agen.aclose()  # type: ignore[attr-defined]  # declared AsyncIterator
        await backend.close()
        return texts

    started = time.monotonic()
    assert asyncio.run(main()) == ["Hello"]
    assert time.monotonic() - started < 1.0  # did not wait for the whole slow stream


def test_probe_and_models(server: Server) -> None:
    async def main() -> None:
        backend = OpenAIProxyBackend(
            server.url, "fake-7b", served_name="pool/fake", context_length=2048
        )
        assert backend.models()[0].name == "pool/fake"
        served = await backend.probe()
        assert served.name == "pool/fake"
        assert served.context_length == 8192  # learned from max_model_len
        other = OpenAIProxyBackend(server.url, "nope")
        with pytest.raises(BackendError) as info:
            await other.probe()
        assert info.value.retryable is False
        await backend.close()
        await other.close()

    asyncio.run(main())
    backend = OpenAIProxyBackend(server.url, "x")
    assert backend.kind == "openai-proxy"
    assert backend.emulated is False
    asyncio.run(backend.close())
