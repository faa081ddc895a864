"""The HTTP half shared by the OpenAI endpoints: streamed (SSE) and plain responses.

Each endpoint supplies a `Formatter` for its wire shape; admission, idempotency, the wait for the
first token, metering and recording are the same for both and live here once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Coroutine
from functools import partial
from typing import Any, Protocol

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from rigpool.coordinator.state import CoordinatorState
from rigpool.core.errors import RigpoolError
from rigpool.gateway.errors import error_body, error_response, rigpool_error_response
from rigpool.gateway.generation import (
    CLIENT_GONE,
    IdempotentReplay,
    Job,
    admit,
    collect_receipt,
    finish_record,
    generate,
    open_hold,
)
from rigpool.gateway.provider_claims import live_claim
from rigpool.protocol.messages import Token

log = logging.getLogger(__name__)


class Formatter(Protocol):
    def start_chunk(self, job: Job) -> dict[str, Any] | None: ...
    def token_chunk(self, job: Job, token: Token) -> dict[str, Any]: ...
    def finish_chunk(self, job: Job) -> dict[str, Any]: ...
    def response(self, job: Job, usage: dict[str, int]) -> dict[str, Any]: ...


def usage_of(job: Job) -> dict[str, int]:
    completion = job.completion_tokens()
    return {
        "prompt_tokens": job.prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": job.prompt_tokens + completion,
    }


def _sse(payload: dict[str, Any] | str) -> str:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n"


async def serve(
    state: CoordinatorState, job: Job, formatter: Formatter, request: Request
) -> Response:
    try:
        await asyncio.to_thread(admit, state, job)
    except IdempotentReplay as replay:
        if replay.response is None:
            return error_response(
                409,
                "A request with this Idempotency-Key is still running or its result was streamed; "
                "use a new key.",
                code="idempotency_conflict",
            )
        return JSONResponse(replay.response, headers={"Idempotent-Replayed": "true"})
    try:
        await asyncio.to_thread(open_hold, state, job)
    except RigpoolError as exc:
        await asyncio.to_thread(finish_record, state, job, error=exc.message, response=None)
        return rigpool_error_response(exc)
    if job.stream:
        return await _serve_stream(state, job, formatter)
    return await _serve_plain(state, job, formatter)


async def _serve_plain(state: CoordinatorState, job: Job, formatter: Formatter) -> Response:
    try:
        async for _token in generate(state, job):
            pass
    except RigpoolError as exc:
        await asyncio.to_thread(finish_record, state, job, error=exc.message, response=None)
        return rigpool_error_response(exc)
    except asyncio.CancelledError:
        await asyncio.to_thread(finish_record, state, job, error=CLIENT_GONE, response=None)
        raise
    body = formatter.response(job, usage_of(job))
    await asyncio.to_thread(finish_record, state, job, error=None, response=body)
    _background_receipt(state, job)
    _maybe_verify(state, job)
    return JSONResponse(body, headers={"X-Request-Id": job.request_id})


async def _serve_stream(state: CoordinatorState, job: Job, formatter: Formatter) -> Response:
    tokens = generate(state, job)
    # Wait for the first token before sending headers: until then a failure is still an HTTP
    # status (503, 400 ...) that any client handles, instead of an error inside a 200 stream.
    try:
        first = await anext(tokens)
    except StopAsyncIteration:
        first = None
    except RigpoolError as exc:
        await asyncio.to_thread(finish_record, state, job, error=exc.message, response=None)
        return rigpool_error_response(exc)

    async def body() -> AsyncIterator[str]:
        error: str | None = None
        delivered = False
        try:
            start = formatter.start_chunk(job)
            if start is not None:
                yield _sse(start)
            if first is not None:
                yield _sse(formatter.token_chunk(job, first))
                async for token in tokens:
                    yield _sse(formatter.token_chunk(job, token))
            yield _sse(formatter.finish_chunk(job))
            # Every token is out: from here on the request is complete and billable, even if
            # the client hangs up before reading the closing lines.
            delivered = True
            if job.include_usage:
                yield _sse(_usage_chunk(formatter, job))
            yield _sse("[DONE]")
        except RigpoolError as exc:
            error = exc.message
            yield _sse(error_body(exc.message, exc.error_type, exc.param, exc.code))
        except (asyncio.CancelledError, GeneratorExit):
            if not delivered:
                error = CLIENT_GONE
            raise
        finally:
            # The request's scope may be cancelled (client gone): finish in a task of its own,
            # so the escrow is always settled and the row always written.
            _spawn(_finish_stream(state, job, tokens, error))

    return StreamingResponse(
        body(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Request-Id": job.request_id},
    )


_background: set[asyncio.Task[None]] = set()


def _spawn(coro: Coroutine[Any, Any, None]) -> None:
    task = asyncio.get_running_loop().create_task(coro)
    _background.add(task)  # keep a reference until it is done
    task.add_done_callback(_background.discard)


async def _finish_stream(
    state: CoordinatorState, job: Job, tokens: AsyncGenerator[Token, None], error: str | None
) -> None:
    with contextlib.suppress(Exception):
        await tokens.aclose()
    await asyncio.to_thread(finish_record, state, job, error=error, response=None)
    if error is None:
        _background_receipt(state, job)
        _maybe_verify(state, job)


def _background_receipt(state: CoordinatorState, job: Job) -> None:
    if job.charged:
        _spawn(collect_receipt(state, job))


def _maybe_verify(state: CoordinatorState, job: Job) -> None:
    """Offer a served request to the verifier, which samples it by the provider's check rate.

    The claim itself is built on the verifier's thread, and only if the request is sampled.
    """
    if state.verifier is None or job.provider_id is None:
        return
    session = state.hub.sessions.get(job.provider_id)
    backend = session.capabilities.backend if session is not None else ""
    state.verifier.consider(
        job.provider_id,
        partial(live_claim, job, backend),
        metering_evidence=job.consumer if job.metering_evidence else None,
    )


def _usage_chunk(formatter: Formatter, job: Job) -> dict[str, Any]:
    chunk = formatter.finish_chunk(job)
    chunk["choices"] = []
    chunk["usage"] = usage_of(job)
    return chunk


def now_s() -> int:
    return int(time.time())
