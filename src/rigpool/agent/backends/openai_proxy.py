"""The `openai-proxy` backend: forward generations to a local OpenAI-compatible server.

Why: most people who already run a GPU serve models with vLLM, llama.cpp's server or Ollama. Rather
than re-implementing those engines, the agent can sit in front of one and translate: our
`GenerationRequest` becomes a streaming ``/v1/chat/completions`` (when the original chat messages
are known, so the server applies its own template) or ``/v1/completions`` (raw prompt) call, and
the server's server-sent events become `TokenChunk`s and one `Finish`.

Error mapping matters for the scheduler: a connection failure, timeout or 5xx is
`BackendError(retryable=True)` (another provider may well succeed), a 4xx is
`BackendError(retryable=False)` carrying the server's message (the request itself is the problem),
except 408/429 which are about this server's state and so retryable.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx

from rigpool.agent.backends.base import (
    Backend,
    Finish,
    GenerationRequest,
    ServedModel,
    TokenChunk,
)
from rigpool.core.errors import BackendError

_RETRYABLE_4XX = frozenset({408, 429})
_DEFAULT_TIMEOUT = httpx.Timeout(connect=5.0, read=300.0, write=30.0, pool=30.0)


def _error_message(status: int, body: bytes) -> str:
    """Best-effort extraction of the server's error text (OpenAI, FastAPI and plain bodies)."""
    text = body.decode("utf-8", errors="replace").strip()
    try:
        data = json.loads(text)
    except ValueError:
        return f"HTTP {status}: {text[:500]}" if text else f"HTTP {status}"
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict) and error.get("message"):
            return f"HTTP {status}: {error['message']}"
        if isinstance(error, str):
            return f"HTTP {status}: {error}"
        for key in ("message", "detail"):
            if data.get(key):
                return f"HTTP {status}: {data[key]}"
    return f"HTTP {status}: {text[:500]}"


def _normalize_finish(reason: Any) -> str:
    """Our `Finish` knows "stop" and "length"; every other ending (eos, abort, ...) is a stop."""
    return "length" if reason == "length" else "stop"


class OpenAIProxyBackend(Backend):
    """Serves one model of a local OpenAI-compatible HTTP server."""

    kind = "openai-proxy"
    emulated = False

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        context_length: int = 4096,
        served_name: str | None = None,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        """`base_url` is the server root; a trailing ``/v1`` is accepted and ignored.

        `model` is the server's name for the model; `served_name` (default `model`) is the name
        this agent advertises to the network.
        """
        base = base_url.rstrip("/")
        if base.endswith("/v1"):
            base = base[: -len("/v1")]
        self.base_url = base
        self.model = model
        self.context_length = context_length
        self.served_name = served_name or model
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._owns_client = client is None
        self._client = client if client is not None else httpx.AsyncClient(timeout=_DEFAULT_TIMEOUT)

    def models(self) -> list[ServedModel]:
        return [ServedModel(name=self.served_name, context_length=self.context_length)]

    async def probe(self) -> ServedModel:
        """Confirm via ``GET /v1/models`` that the server is up and serves `model`.

        vLLM reports ``max_model_len``; when present it replaces the configured context length.
        """
        try:
            response = await self._client.get(f"{self.base_url}/v1/models", headers=self._headers)
        except httpx.HTTPError as exc:
            raise BackendError(f"cannot reach {self.base_url}: {exc!r}", retryable=True) from exc
        if response.status_code >= 400:
            raise BackendError(
                _error_message(response.status_code, response.content),
                retryable=response.status_code >= 500,
            )
        try:
            entries = response.json().get("data") or []
        except (ValueError, AttributeError) as exc:
            raise BackendError("malformed /v1/models response", retryable=True) from exc
        for entry in entries:
            if isinstance(entry, dict) and entry.get("id") == self.model:
                max_len = entry.get("max_model_len")
                if isinstance(max_len, int) and max_len > 0:
                    self.context_length = max_len
                return self.models()[0]
        names = [e.get("id") for e in entries if isinstance(e, dict)]
        raise BackendError(
            f"model {self.model!r} not served by {self.base_url} (it has {names})",
            retryable=False,
        )

    def _body(self, request: GenerationRequest) -> tuple[str, dict[str, Any]]:
        s = request.sampling
        body: dict[str, Any] = {
            "model": self.model,
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": s.max_tokens,
            "temperature": s.temperature,
            "top_p": s.top_p,
        }
        if s.seed is not None:
            body["seed"] = s.seed
        if s.stop:
            body["stop"] = list(s.stop)
        if request.messages is not None:
            body["messages"] = [dict(m) for m in request.messages]
            if s.logprobs:
                body["logprobs"] = True
                if s.top_logprobs > 0:
                    body["top_logprobs"] = s.top_logprobs
            return "/v1/chat/completions", body
        body["prompt"] = request.prompt
        if s.logprobs:
            body["logprobs"] = max(0, s.top_logprobs)  # legacy API: an int, the top-k size
        return "/v1/completions", body

    async def generate(self, request: GenerationRequest) -> AsyncIterator[TokenChunk | Finish]:
        """Stream the server's content deltas as chunks, then one `Finish`.

        `Finish.completion_tokens` is the server's usage count when it sends one, else the number
        of content chunks. Closing the iterator closes the HTTP stream, which vLLM and llama.cpp
        treat as an abort, so the server stops generating too.
        """
        path, body = self._body(request)
        chat = request.messages is not None
        finish_reason: str | None = None
        usage_tokens: int | None = None
        chunks = 0
        try:
            async with self._client.stream(
                "POST", f"{self.base_url}{path}", json=body, headers=self._headers
            ) as response:
                if response.status_code >= 400:
                    status = response.status_code
                    raise BackendError(
                        _error_message(status, await response.aread()),
                        retryable=status >= 500 or status in _RETRYABLE_4XX,
                    )
                async for data in _sse_data(response):
                    if data == "[DONE]":
                        break
                    event = _parse_event(data)
                    usage = event.get("usage")
                    if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
                        usage_tokens = usage["completion_tokens"]
                    for choice in event.get("choices") or []:
                        for chunk in _choice_chunks(choice, chat):
                            chunks += 1
                            yield chunk
                        if choice.get("finish_reason"):
                            finish_reason = choice["finish_reason"]
        except httpx.HTTPError as exc:
            raise BackendError(
                f"openai-proxy request to {self.base_url} failed: {exc!r}", retryable=True
            ) from exc
        if finish_reason is None:
            raise BackendError("the server ended the stream without a finish_reason")
        completion = usage_tokens if usage_tokens is not None else chunks
        yield Finish(finish_reason=_normalize_finish(finish_reason), completion_tokens=completion)

    async def close(self) -> None:
        if self._owns_client:
            await self._client.aclose()


async def _sse_data(response: httpx.Response) -> AsyncIterator[str]:
    """The payloads of an event stream's ``data:`` lines (multi-line data joined by newlines)."""
    pending: list[str] = []
    async for line in response.aiter_lines():
        if line == "":
            if pending:
                yield "\n".join(pending)
                pending = []
            continue
        if line.startswith("data:"):
            value = line[len("data:") :]
            pending.append(value[1:] if value.startswith(" ") else value)
        # comments (":"), "event:", "id:" and "retry:" lines carry nothing we need
    if pending:
        yield "\n".join(pending)


def _parse_event(data: str) -> dict[str, Any]:
    try:
        event = json.loads(data)
    except ValueError as exc:
        raise BackendError(f"malformed event from the server: {data[:200]!r}") from exc
    if not isinstance(event, dict):
        raise BackendError(f"malformed event from the server: {data[:200]!r}")
    error = event.get("error")
    if error:  # vLLM and llama.cpp report mid-stream failures as an error event
        message = error.get("message") if isinstance(error, dict) else str(error)
        raise BackendError(f"server error during generation: {message}")
    return event


def _choice_chunks(choice: dict[str, Any], chat: bool) -> Iterator[TokenChunk]:
    """Turn one streamed choice into chunks, attaching logprobs when the server sent them."""
    if chat:
        delta = choice.get("delta") or {}
        text = delta.get("content") or ""
        entries = _chat_logprobs(choice.get("logprobs"))
    else:
        text = choice.get("text") or ""
        entries = _completion_logprobs(choice.get("logprobs"))
    if not text:
        return
    if len(entries) > 1 and "".join(token for token, _, _ in entries) == text:
        # several tokens in one delta whose texts add up: one chunk per token keeps logprobs exact
        for token, logprob, top in entries:
            yield TokenChunk(text=token, logprob=logprob, top_logprobs=top)
        return
    if len(entries) == 1:
        _, logprob, top = entries[0]
        yield TokenChunk(text=text, logprob=logprob, top_logprobs=top)
        return
    if entries:  # pieces do not line up with the text: report the joint probability of the piece
        values = [lp for _, lp, _ in entries if lp is not None]
        total = sum(values) if len(values) == len(entries) else None
        yield TokenChunk(text=text, logprob=total, top_logprobs=entries[0][2])
        return
    yield TokenChunk(text=text)


_Entry = tuple[str, float | None, tuple[tuple[str, float], ...]]


def _chat_logprobs(logprobs: Any) -> list[_Entry]:
    if not isinstance(logprobs, dict):
        return []
    entries: list[_Entry] = []
    for item in logprobs.get("content") or []:
        if not isinstance(item, dict):
            continue
        top = tuple(
            (str(t.get("token", "")), float(t["logprob"]))
            for t in item.get("top_logprobs") or []
            if isinstance(t, dict) and isinstance(t.get("logprob"), int | float)
        )
        value = item.get("logprob")
        logprob = float(value) if isinstance(value, int | float) else None
        entries.append((str(item.get("token", "")), logprob, top))
    return entries


def _completion_logprobs(logprobs: Any) -> list[_Entry]:
    if not isinstance(logprobs, dict):
        return []
    tokens = logprobs.get("tokens") or []
    values = logprobs.get("token_logprobs") or []
    tops = logprobs.get("top_logprobs") or []
    entries: list[_Entry] = []
    for index, token in enumerate(tokens):
        value = values[index] if index < len(values) else None
        logprob = float(value) if isinstance(value, int | float) else None
        top_map = tops[index] if index < len(tops) and isinstance(tops[index], dict) else {}
        top = tuple((str(k), float(v)) for k, v in top_map.items() if isinstance(v, int | float))
        entries.append((str(token), logprob, top))
    return entries
