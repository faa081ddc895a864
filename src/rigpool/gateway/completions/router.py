"""`POST /v1/completions`: OpenAI (legacy) text completions, streamed or not."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import Response

from rigpool.gateway.auth import Caller, require_api_key
from rigpool.gateway.completions.schemas import CompletionRequest
from rigpool.gateway.request import Outcome, RequestSpec, check_context
from rigpool.gateway.serving import TEXT, new_spec, ports_of, resolve_model, serve
from rigpool.protocol.messages import Token

router = APIRouter()


class CompletionFormatter:
    def __init__(self) -> None:
        self._offset = 0  # characters streamed so far (legacy logprobs' text_offset)

    def _chunk(
        self, spec: RequestSpec, out: Outcome, text: str, logprobs: Any, finish: str | None
    ) -> dict[str, Any]:
        return {
            "id": spec.request_id,
            "object": "text_completion",
            "created": int(spec.created),
            "model": spec.model.name,
            # Deviation: the fingerprint names the provider that served the request.
            "system_fingerprint": out.provider_id,
            "choices": [{"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish}],
        }

    def start_chunk(self, spec: RequestSpec, out: Outcome) -> dict[str, Any] | None:
        return None

    def token_chunk(self, spec: RequestSpec, out: Outcome, token: Token) -> dict[str, Any]:
        # Tokens are formatted in order, so the text offset is a running sum.
        offset, self._offset = self._offset, self._offset + len(token.text)
        logprobs = _logprobs([token], offset=offset) if spec.sampling.logprobs else None
        return self._chunk(spec, out, token.text, logprobs, None)

    def token_template(self, spec: RequestSpec, out: Outcome) -> dict[str, Any] | None:
        return None if spec.sampling.logprobs else self._chunk(spec, out, TEXT, None, None)

    def finish_chunk(self, spec: RequestSpec, out: Outcome) -> dict[str, Any]:
        return self._chunk(spec, out, "", None, out.finish_reason)

    def response(self, spec: RequestSpec, out: Outcome) -> dict[str, Any]:
        logprobs = _logprobs(out.tokens, 0) if spec.sampling.logprobs else None
        body = self._chunk(spec, out, out.output, logprobs, out.finish_reason)
        body["usage"] = out.usage(spec)
        return body


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
    ports = ports_of(request)
    model, tokenizer = resolve_model(ports, body.model)
    prompt = body.prompt_text()
    prompt_tokens = tokenizer.count(prompt)
    check_context(model, prompt_tokens, body.max_tokens, prompt_param="prompt")
    spec = new_spec(
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
    return await serve(ports, spec, CompletionFormatter(), request)
