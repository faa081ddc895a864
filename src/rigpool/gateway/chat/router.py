"""`POST /v1/chat/completions`: OpenAI chat completions, streamed or not."""

from __future__ import annotations

import math
from typing import Any

from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import Response

from rigpool.core.errors import BadRequest
from rigpool.gateway.auth import Caller, require_api_key
from rigpool.gateway.chat.schemas import ChatCompletionRequest
from rigpool.gateway.request import DEFAULT_CHAT_MAX_TOKENS, Outcome, RequestSpec, check_context
from rigpool.gateway.serving import TEXT, new_spec, ports_of, resolve_model, serve
from rigpool.protocol.messages import Token

router = APIRouter()


class ChatFormatter:
    def _chunk(
        self, spec: RequestSpec, out: Outcome, delta: dict[str, Any], finish: str | None
    ) -> dict[str, Any]:
        return {
            "id": spec.request_id,
            "object": "chat.completion.chunk",
            "created": int(spec.created),
            "model": spec.model.name,
            # Deviation: the fingerprint names the provider that served the request.
            "system_fingerprint": out.provider_id,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }

    def start_chunk(self, spec: RequestSpec, out: Outcome) -> dict[str, Any] | None:
        return self._chunk(spec, out, {"role": "assistant", "content": ""}, None)

    def token_chunk(self, spec: RequestSpec, out: Outcome, token: Token) -> dict[str, Any]:
        chunk = self._chunk(spec, out, {"content": token.text}, None)
        if spec.sampling.logprobs:
            chunk["choices"][0]["logprobs"] = {"content": [_logprob_entry(token)]}
        return chunk

    def token_template(self, spec: RequestSpec, out: Outcome) -> dict[str, Any] | None:
        return None if spec.sampling.logprobs else self._chunk(spec, out, {"content": TEXT}, None)

    def finish_chunk(self, spec: RequestSpec, out: Outcome) -> dict[str, Any]:
        return self._chunk(spec, out, {}, out.finish_reason)

    def response(self, spec: RequestSpec, out: Outcome) -> dict[str, Any]:
        logprobs = (
            {"content": [_logprob_entry(t) for t in out.tokens]} if spec.sampling.logprobs else None
        )
        return {
            "id": spec.request_id,
            "object": "chat.completion",
            "created": int(spec.created),
            "model": spec.model.name,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": out.output},
                    "logprobs": logprobs,
                    "finish_reason": out.finish_reason,
                }
            ],
            "usage": out.usage(spec),
            "system_fingerprint": out.provider_id,
        }


def _logprob_entry(token: Token) -> dict[str, Any]:
    def finite(value: float | None) -> float:
        return value if value is not None and math.isfinite(value) else -9999.0

    return {
        "token": token.text,
        "logprob": finite(token.logprob),
        "bytes": list(token.text.encode()),
        "top_logprobs": [
            {"token": t.text, "logprob": finite(t.logprob), "bytes": list(t.text.encode())}
            for t in token.top_logprobs
        ],
    }


@router.post("/v1/chat/completions", response_model=None)
async def chat_completions(
    body: ChatCompletionRequest,
    request: Request,
    caller: Caller = Depends(require_api_key),
    idempotency_key: str | None = Header(default=None, max_length=128),
) -> Response:
    ports = ports_of(request)
    if len(body.messages) > ports.limits.max_messages:
        raise BadRequest(
            f"at most {ports.limits.max_messages} messages per request", param="messages"
        )
    if body.top_logprobs and not body.logprobs:
        raise BadRequest("top_logprobs requires logprobs=true", param="top_logprobs")
    model, tokenizer = resolve_model(ports, body.model)
    messages = body.plain_messages()
    prompt = tokenizer.render_chat(messages)
    prompt_tokens = tokenizer.count(prompt)
    max_tokens = body.requested_max_tokens()
    if max_tokens is None:
        max_tokens = max(1, min(DEFAULT_CHAT_MAX_TOKENS, model.context_length - prompt_tokens))
    check_context(model, prompt_tokens, max_tokens)
    spec = new_spec(
        body,
        endpoint="chat",
        caller=caller,
        idempotency_key=idempotency_key,
        model=model,
        tokenizer=tokenizer,
        prompt=prompt,
        messages=messages,
        prompt_tokens=prompt_tokens,
        max_tokens=max_tokens,
        logprobs=body.logprobs,
        top_logprobs=body.top_logprobs or 0,
    )
    return await serve(ports, spec, ChatFormatter(), request)
