"""`POST /v1/chat/completions`: OpenAI chat completions, streamed or not."""

from __future__ import annotations

import math
from typing import Any

from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import Response

from rigpool.coordinator.state import CoordinatorState
from rigpool.core.errors import BadRequest
from rigpool.gateway.auth import Caller, require_api_key
from rigpool.gateway.chat.schemas import ChatCompletionRequest
from rigpool.gateway.generation import (
    DEFAULT_CHAT_MAX_TOKENS,
    Job,
    check_context,
    new_job,
    resolve_model,
)
from rigpool.gateway.serving import serve
from rigpool.protocol.messages import Token

router = APIRouter()


class ChatFormatter:
    def _chunk(self, job: Job, delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
        return {
            "id": job.request_id,
            "object": "chat.completion.chunk",
            "created": int(job.created),
            "model": job.model.name,
            # Deviation: the fingerprint names the provider that served the request.
            "system_fingerprint": job.provider_id,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }

    def start_chunk(self, job: Job) -> dict[str, Any] | None:
        return self._chunk(job, {"role": "assistant", "content": ""}, None)

    def token_chunk(self, job: Job, token: Token) -> dict[str, Any]:
        chunk = self._chunk(job, {"content": token.text}, None)
        if job.sampling.logprobs:
            chunk["choices"][0]["logprobs"] = {"content": [_logprob_entry(token)]}
        return chunk

    def finish_chunk(self, job: Job) -> dict[str, Any]:
        return self._chunk(job, {}, job.finish_reason)

    def response(self, job: Job, usage: dict[str, int]) -> dict[str, Any]:
        logprobs = (
            {"content": [_logprob_entry(t) for t in job.tokens]} if job.sampling.logprobs else None
        )
        return {
            "id": job.request_id,
            "object": "chat.completion",
            "created": int(job.created),
            "model": job.model.name,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": job.output},
                    "logprobs": logprobs,
                    "finish_reason": job.finish_reason,
                }
            ],
            "usage": usage,
            "system_fingerprint": job.provider_id,
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
    state: CoordinatorState = request.app.state.coordinator
    if len(body.messages) > state.settings.max_messages:
        raise BadRequest(
            f"at most {state.settings.max_messages} messages per request", param="messages"
        )
    if body.top_logprobs and not body.logprobs:
        raise BadRequest("top_logprobs requires logprobs=true", param="top_logprobs")
    model, tokenizer = resolve_model(state, body.model)
    messages = body.plain_messages()
    prompt = tokenizer.render_chat(messages)
    prompt_tokens = tokenizer.count(prompt)
    max_tokens = body.requested_max_tokens()
    if max_tokens is None:
        max_tokens = max(1, min(DEFAULT_CHAT_MAX_TOKENS, model.context_length - prompt_tokens))
    check_context(model, prompt_tokens, max_tokens)
    job = new_job(
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
    return await serve(state, job, ChatFormatter(), request)
