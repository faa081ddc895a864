"""The HTTP half shared by the OpenAI endpoints: admission, then a streamed (SSE) or plain answer.

One request, top to bottom (`serve`):
1. the endpoint has built an immutable `RequestSpec` (validated, rendered, counted);
2. **admit**: the `requests` row (idempotency) and the escrow hold, before anything is routed;
3. **dispatch** (`gateway/dispatch.py`): route, hedge, fail over, stream tokens into the
   `Outcome`;
4. **finish** (`gateway/finish.py`): escrow, row, metering, receipt, verifier - whatever ended
   the request (success, failure, the client hanging up).
Each endpoint supplies a `Formatter` for its wire shape.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from rigpool.core.errors import NotFound, RigpoolError
from rigpool.gateway.auth import Caller
from rigpool.gateway.common_schemas import SamplingFields
from rigpool.gateway.dispatch import Dispatcher
from rigpool.gateway.errors import error_body, error_response, rigpool_error_response
from rigpool.gateway.finish import finish, spawn
from rigpool.gateway.ports import GatewayPorts
from rigpool.gateway.request import (
    CLIENT_GONE,
    Ending,
    IdempotentReplay,
    ModelInfo,
    Outcome,
    RequestSpec,
    new_request_id,
)
from rigpool.protocol.messages import Sampling, Token

#: stands for a token's text in a formatter's `token_template` (JSON-escaped as "\u0000")
TEXT = "\x00"


class Formatter(Protocol):
    def start_chunk(self, spec: RequestSpec, out: Outcome) -> dict[str, Any] | None: ...
    def token_chunk(self, spec: RequestSpec, out: Outcome, token: Token) -> dict[str, Any]: ...
    def token_template(self, spec: RequestSpec, out: Outcome) -> dict[str, Any] | None:
        """`token_chunk` with `TEXT` for the token's text, when nothing else varies per token.

        None (logprobs asked for) makes every token go through `token_chunk`.
        """
        ...

    def finish_chunk(self, spec: RequestSpec, out: Outcome) -> dict[str, Any]: ...
    def response(self, spec: RequestSpec, out: Outcome) -> dict[str, Any]: ...


#: the error recorded for a request that a bug ended (its answer is a 500)
INTERNAL_ERROR = "internal error"


def ports_of(request: Request) -> GatewayPorts:
    ports: GatewayPorts = request.app.state.gateway
    return ports


def resolve_model(ports: GatewayPorts, name: str) -> tuple[ModelInfo, Any]:
    """The registered model and its tokenizer, or a 404 naming the models there are."""
    model = ports.catalog.model(name)
    if model is None:
        known = ", ".join(sorted(ports.catalog.names())) or "none registered"
        raise NotFound(
            f"The model '{name}' does not exist or you do not have access to it. "
            f"Available: {known}.",
            param="model",
            code="model_not_found",
        )
    return model, ports.catalog.tokenizer(model)


def new_spec(
    body: SamplingFields,
    *,
    endpoint: str,
    caller: Caller,
    idempotency_key: str | None,
    model: ModelInfo,
    tokenizer: Any,
    prompt: str,
    messages: list[dict[str, str]] | None,
    prompt_tokens: int,
    max_tokens: int,
    logprobs: bool,
    top_logprobs: int,
) -> RequestSpec:
    """A spec from the fields chat and completions share; each endpoint supplies the rest."""
    request_id = new_request_id("chatcmpl" if endpoint == "chat" else "cmpl")
    return RequestSpec(
        request_id=request_id,
        api_key_id=caller.key_id,
        consumer=caller.consumer,
        idempotency_key=idempotency_key or request_id,
        endpoint=endpoint,
        model=model,
        tokenizer=tokenizer,
        prompt=prompt,
        messages=None if messages is None else tuple(messages),
        sampling=Sampling(
            max_tokens=max_tokens,
            temperature=body.temperature,
            top_p=body.top_p,
            seed=body.seed,
            stop=body.stop_list(),
            logprobs=logprobs,
            top_logprobs=top_logprobs,
        ),
        stream=body.stream,
        prompt_tokens=prompt_tokens,
        include_usage=body.include_usage(),
        constraints=body.constraints(),
    )


def _json(payload: dict[str, Any]) -> str:
    try:
        return orjson.dumps(payload).decode()
    except TypeError:  # text orjson refuses (a lone surrogate from an agent): escape it
        return json.dumps(payload, separators=(",", ":"))


def _sse(payload: dict[str, Any] | str) -> str:
    return f"data: {payload if isinstance(payload, str) else _json(payload)}\n\n"


class _Events:
    """A stream's token events, rendered fast.

    The chunk's JSON is rendered once per serving provider and each token's text spliced in,
    instead of building and encoding a dict per token.
    """

    def __init__(self, formatter: Formatter, spec: RequestSpec, out: Outcome) -> None:
        self.formatter, self.spec, self.out = formatter, spec, out
        self._for: str | None = None
        self._parts: tuple[str, str] | None = None

    def _template(self) -> tuple[str, str] | None:
        if self._parts is None or self._for != self.out.provider_id:
            self._for = self.out.provider_id
            chunk = self.formatter.token_template(self.spec, self.out)
            self._parts = None
            if chunk is not None:
                head, marker, tail = _sse(chunk).partition('"\\u0000"')
                self._parts = (head, tail) if marker else None
        return self._parts

    def render(self, batch: list[Token]) -> str:
        parts = self._template()
        if parts is None:
            return "".join(_sse(self.formatter.token_chunk(self.spec, self.out, t)) for t in batch)
        head, tail = parts
        return "".join(f"{head}{_json_text(token.text)}{tail}" for token in batch)


def _json_text(text: str) -> str:
    try:
        return orjson.dumps(text).decode()
    except TypeError:
        return json.dumps(text)


async def _admit(ports: GatewayPorts, spec: RequestSpec) -> Any:
    """The request's row and its escrow hold: both durable before anything is routed.

    Both are queued at once, so they usually share one group commit (one writer round trip,
    not two). A reused idempotency key is rare: then the hold just taken is released.
    """
    if ports.escrow is None:
        await ports.store.admit(spec)
        return None
    results: tuple[Any, Any] = await asyncio.gather(
        ports.store.admit(spec), ports.escrow.hold(spec), return_exceptions=True
    )
    admitted, hold = results
    if isinstance(admitted, BaseException):
        if not isinstance(hold, BaseException):
            released = ports.escrow.settle(spec, Outcome(), hold, billable=0)
            if released is not None:
                await released
        raise admitted
    if isinstance(hold, BaseException):
        raise hold
    return hold


@dataclass
class _Running:
    """One admitted request between dispatch and `finish`: what every ending needs."""

    ports: GatewayPorts
    spec: RequestSpec
    out: Outcome
    hold: Any
    tokens: AsyncGenerator[list[Token], None]

    async def end(
        self, ending: Ending, error: str | None = None, response: dict[str, Any] | None = None
    ) -> None:
        await finish(
            self.ports, self.spec, self.out, self.hold, ending, error=error, response=response
        )

    def end_in_background(self, ending: Ending, error: str | None) -> None:
        """Finish in a task of its own, the stream closed first.

        The caller's scope may be being cancelled (client gone), and the escrow must still be
        settled and the row written.
        """
        spawn(self._close_then_end(ending, error))

    async def _close_then_end(self, ending: Ending, error: str | None) -> None:
        with contextlib.suppress(Exception):
            await self.tokens.aclose()
        await self.end(ending, error)


async def serve(
    ports: GatewayPorts, spec: RequestSpec, formatter: Formatter, request: Request
) -> Response:
    out = Outcome()
    try:
        hold = await _admit(ports, spec)
    except IdempotentReplay as replay:
        if replay.response is None:
            return error_response(
                409,
                "A request with this Idempotency-Key is still running or its result was streamed; "
                "use a new key.",
                code="idempotency_conflict",
            )
        return JSONResponse(replay.response, headers={"Idempotent-Replayed": "true"})
    except RigpoolError as exc:  # no balance for the hold: the row exists, close it
        await finish(ports, spec, out, None, Ending.FAILED, error=exc.message)
        return rigpool_error_response(exc)
    tokens = Dispatcher(ports.routing, ports.agents, ports.limits, spec, out).run()
    running = _Running(ports, spec, out, hold, tokens)
    if spec.stream:
        return await _serve_stream(running, formatter)
    return await _serve_plain(running, formatter, request)


async def _drain(tokens: AsyncGenerator[list[Token], None]) -> None:
    async for _batch in tokens:
        pass


async def _client_gone(request: Request) -> None:
    """Returns when the client disconnects (the body has been read: only that can arrive)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _serve_plain(run: _Running, formatter: Formatter, request: Request) -> Response:
    # Watch the connection while the answer is generated: a client that hangs up stops the
    # generation at once (and, having received nothing, pays nothing).
    generation = asyncio.ensure_future(_drain(run.tokens))
    watcher = asyncio.ensure_future(_client_gone(request))
    try:
        await asyncio.wait({generation, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        generation.cancel()
        watcher.cancel()
        await _stop(generation)
        run.end_in_background(Ending.CLIENT_GONE, CLIENT_GONE)
        raise
    watcher.cancel()
    if not generation.done():
        generation.cancel()
        await _stop(generation)
        with contextlib.suppress(Exception):
            await run.tokens.aclose()
        await run.end(Ending.CLIENT_GONE, CLIENT_GONE)
        return Response(status_code=499)  # nobody reads it; logged as the client's hang-up
    try:
        generation.result()
    except RigpoolError as exc:
        await run.end(Ending.FAILED, exc.message)
        return rigpool_error_response(exc)
    except Exception:  # a bug: still release the hold and close the row, then the 500
        await run.end(Ending.FAILED, INTERNAL_ERROR)
        raise
    body = formatter.response(run.spec, run.out)
    await run.end(Ending.OK, response=body)
    return JSONResponse(body, headers={"X-Request-Id": run.spec.request_id})


async def _stop(generation: asyncio.Future[None]) -> None:
    with contextlib.suppress(BaseException):
        await generation


async def _serve_stream(run: _Running, formatter: Formatter) -> Response:
    spec, out = run.spec, run.out
    # Wait for the first token before sending headers: until then a failure is still an HTTP
    # status (503, 400 ...) that any client handles, instead of an error inside a 200 stream.
    try:
        first = await anext(run.tokens)
    except StopAsyncIteration:
        first = None
    except RigpoolError as exc:
        await run.end(Ending.FAILED, exc.message)
        return rigpool_error_response(exc)
    except asyncio.CancelledError:
        run.end_in_background(Ending.CLIENT_GONE, CLIENT_GONE)
        raise
    except Exception:  # a bug: still release the hold and close the row, then the 500
        await run.end(Ending.FAILED, INTERNAL_ERROR)
        raise

    async def body() -> AsyncIterator[str]:
        ending: Ending = Ending.CLIENT_GONE
        error: str | None = CLIENT_GONE
        try:
            start = formatter.start_chunk(spec, out)
            if start is not None:
                yield _sse(start)
            if first is not None:
                # One write per batch of tokens that arrived together, not one per token.
                events = _Events(formatter, spec, out)
                yield events.render(first)
                async for batch in run.tokens:
                    yield events.render(batch)
            # Every token is out: from here on the request is complete and billable, even if
            # the client hangs up before reading the closing lines.
            ending, error = Ending.OK, None
            yield _sse(formatter.finish_chunk(spec, out))
            if spec.include_usage:
                yield _sse(_usage_chunk(formatter, spec, out))
            yield _sse("[DONE]")
        except RigpoolError as exc:
            ending, error = Ending.FAILED, exc.message
            yield _sse(error_body(exc.message, exc.error_type, exc.param, exc.code))
        except Exception:
            ending, error = Ending.FAILED, INTERNAL_ERROR
            raise
        finally:
            run.end_in_background(ending, error)

    return StreamingResponse(
        body(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Request-Id": spec.request_id},
    )


def _usage_chunk(formatter: Formatter, spec: RequestSpec, out: Outcome) -> dict[str, Any]:
    chunk = formatter.finish_chunk(spec, out)
    chunk["choices"] = []
    chunk["usage"] = out.usage(spec)
    return chunk
