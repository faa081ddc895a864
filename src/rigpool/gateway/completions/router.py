"""`POST /v1/completions`: OpenAI (legacy) text completions, streamed or not."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import Response

from rigpool.coordinator.state import CoordinatorState
from rigpool.gateway.auth import Caller, require_api_key
from rigpool.gateway.completions.schemas import CompletionRequest
from rigpool.gateway.generation import Job, check_context, new_job, resolve_model
from rigpool.gateway.serving import serve
from rigpool.protocol.messages import Token

router = APIRouter()


class CompletionFormatter:
    def _chunk(self, job: Job, text: str, logprobs: Any, finish: str | None) -> dict[str, Any]:
        return {
            "id": job.request_id,
            "object": "text_completion",
            "created": int(job.created),
            "model": job.model.name,
            # Deviation: the fingerprint names the provider that served the request.
            "system_fingerprint": job.provider_id,
            "choices": [{"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish}],
        }

    def start_chunk(self, job: Job) -> dict[str, Any] | None:
        return None

    def token_chunk(self, job: Job, token: Token) -> dict[str, Any]:
        logprobs = (
            _logprobs([token], offset=len(job.output) - len(token.text)) if _wants(job) else None
        )
        return self._chunk(job, token.text, logprobs, None)

    def finish_chunk(self, job: Job) -> dict[str, Any]:
        return self._chunk(job, "", None, job.finish_reason)

    def response(self, job: Job, usage: dict[str, int]) -> dict[str, Any]:
        body = self._chunk(
            job, job.output, _logprobs(job.tokens, 0) if _wants(job) else None, job.finish_reason
        )
        body["usage"] = usage
        return body


def _wants(job: Job) -> bool:
    return job.sampling.logprobs


def _logprobs(tokens: list[Token], offset: int) -> dict[str, Any]:
    offsets, at = [], offset
    for token in tokens:
        offsets.append(at)
        at += len(token.text)
    return {
        "tokens": [t.text for t in tokens],
        "token_logprobs": [t.logprob for t in tokens],
        "top_logprobs": [{x.text: x.logprob for x in t.top_logprobs} for t in tokens],
        "text_offset": offsets,
    }


@router.post("/v1/completions", response_model=None)
async def completions(
    body: CompletionRequest,
    request: Request,
    caller: Caller = Depends(require_api_key),
    idempotency_key: str | None = Header(default=None, max_length=128),
) -> Response:
    state: CoordinatorState = request.app.state.coordinator
    model, tokenizer = resolve_model(state, body.model)
    prompt = body.prompt_text()
    prompt_tokens = tokenizer.count(prompt)
    check_context(model, prompt_tokens, body.max_tokens)
    job = new_job(
        body,
        endpoint="completions",
        caller=caller,
        idempotency_key=idempotency_key,
        model=model,
        tokenizer=tokenizer,
        prompt=prompt,
        messages=None,
        prompt_tokens=prompt_tokens,
        max_tokens=body.max_tokens,
        logprobs=body.logprobs is not None,
        top_logprobs=body.logprobs or 0,
    )
    return await serve(state, job, CompletionFormatter(), request)
