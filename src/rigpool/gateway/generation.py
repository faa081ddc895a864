"""Running one generation for the gateway: admit, route, dispatch, retry, meter, record.

Retry rule: a request may move to another agent as long as nothing has reached the client yet
(before the first token). After that, a failure ends the stream with a retryable error; the
failover issue continues such streams on another replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from rigpool.coordinator.state import CoordinatorState
from rigpool.coordinator.tables import Model, RequestRecord
from rigpool.core.errors import BackendError, BadRequest, ContextTooLong, NoCapacity, NotFound
from rigpool.gateway.tokenization import ModelTokenizer, load_tokenizer
from rigpool.protocol.messages import Done, Error, Generate, Sampling, Token
from rigpool.scheduler.routing import Candidate

log = logging.getLogger(__name__)

#: chat requests without max_tokens get this many at most (OpenAI: "until the context ends";
#: a shared network needs a bound, and the client can always ask for more).
DEFAULT_CHAT_MAX_TOKENS = 256


class IdempotentReplay(Exception):
    """The idempotency key was used before; carries the stored response or a conflict."""

    def __init__(self, response: dict[str, Any] | None):
        super().__init__("idempotent replay")
        self.response = response


@dataclass
class Job:
    """One admitted request."""

    request_id: str
    api_key_id: int
    idempotency_key: str
    endpoint: str
    model: Model
    tokenizer: ModelTokenizer
    prompt: str
    messages: list[dict[str, str]] | None
    sampling: Sampling
    stream: bool
    prompt_tokens: int
    include_usage: bool = False
    created: float = field(default_factory=time.time)
    provider_id: str | None = None
    attempts: int = 0
    ttft_s: float | None = None
    texts: list[str] = field(default_factory=list)
    tokens: list[Token] = field(default_factory=list)
    finish_reason: str = "stop"
    claimed_tokens: int | None = None

    @property
    def output(self) -> str:
        return "".join(self.texts)

    def completion_tokens(self) -> int:
        """Metered by the gateway from the text the client received.

        Re-encoding text can give more tokens than were generated (BPE is not canonical for
        odd token sequences, e.g. from an untrained model); the client never pays for more
        than the max_tokens it asked for.
        """
        return min(self.tokenizer.count(self.output), self.sampling.max_tokens)


def resolve_model(state: CoordinatorState, name: str) -> tuple[Model, ModelTokenizer]:
    model = state.model(name)
    if model is None:
        known = ", ".join(sorted(state.model_names())) or "none registered"
        raise NotFound(
            f"The model '{name}' does not exist or you do not have access to it. "
            f"Available: {known}.",
            param="model",
            code="model_not_found",
        )
    return model, load_tokenizer(model.path)


def check_context(model: Model, prompt_tokens: int, max_tokens: int) -> None:
    total = prompt_tokens + max_tokens
    if total > model.context_length:
        raise ContextTooLong(
            f"This model's maximum context length is {model.context_length} tokens. However, "
            f"you requested {total} tokens ({prompt_tokens} in the prompt, {max_tokens} in the "
            f"completion). Please reduce the prompt or max_tokens.",
            param="max_tokens" if prompt_tokens < model.context_length else "messages",
        )


def _utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def admit(state: CoordinatorState, job: Job) -> None:
    """Record the request; a reused idempotency key replays the first answer instead."""
    try:
        with state.db.begin() as session:
            session.add(
                RequestRecord(
                    id=job.request_id,
                    api_key_id=job.api_key_id,
                    idempotency_key=job.idempotency_key,
                    endpoint=job.endpoint,
                    model=job.model.name,
                    stream=job.stream,
                    prompt_tokens=job.prompt_tokens,
                    created=_utcnow(),
                )
            )
    except IntegrityError:
        with state.db() as session:
            prior = session.scalar(
                select(RequestRecord).where(
                    RequestRecord.api_key_id == job.api_key_id,
                    RequestRecord.idempotency_key == job.idempotency_key,
                )
            )
        raise IdempotentReplay(prior.response if prior is not None else None) from None


def finish_record(
    state: CoordinatorState, job: Job, *, error: str | None, response: dict[str, Any] | None
) -> None:
    now = time.time()
    values: dict[str, Any] = {
        "status": "error" if error else "ok",
        "provider_id": job.provider_id,
        "attempts": job.attempts,
        "completion_tokens": job.completion_tokens(),
        "completion_tokens_claimed": job.claimed_tokens,
        "ttft_ms": job.ttft_s * 1000 if job.ttft_s is not None else None,
        "latency_ms": (now - job.created) * 1000,
        "error": error,
        "response": response,
        "finished": _utcnow(),
    }
    if error:
        # A failed request frees its idempotency key, so the client may retry with it.
        values["idempotency_key"] = f"{job.idempotency_key}:failed:{job.request_id}"[:128]
    with state.db.begin() as session:
        session.execute(
            update(RequestRecord).where(RequestRecord.id == job.request_id).values(**values)
        )


def new_request_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def _candidates(state: CoordinatorState, model: str) -> list[Candidate]:
    out = []
    for session in state.hub.serving(model):
        offer = next((m for m in session.capabilities.models if m.name == model), None)
        out.append(
            Candidate(
                agent_id=session.agent_id,
                region=session.capabilities.region,
                price_out_per_mtok=offer.price_out_per_mtok if offer else 0.0,
                max_concurrency=session.capabilities.max_concurrency,
            )
        )
    return out


async def generate(state: CoordinatorState, job: Job) -> AsyncGenerator[Token, None]:
    """Yield the job's tokens in order; raise a RigpoolError when it cannot complete.

    Tries up to `max_attempts` agents while no token has been yielded, each bounded by the
    first-token and inter-token timeouts and by the request deadline: the caller never hangs.
    """
    settings = state.settings
    deadline = job.created + settings.request_timeout_s
    excluded: set[str] = set()
    last_error = ""
    while True:
        candidates = _candidates(state, job.model.name)
        choice = state.router.choose(candidates, exclude=excluded)
        if choice is None:
            if job.attempts:
                raise NoCapacity(
                    f"The request failed on {job.attempts} provider(s) (last: {last_error}) and no "
                    f"other provider serves '{job.model.name}'; retry later.",
                )
            if not candidates:
                raise NoCapacity(
                    f"No provider is serving model '{job.model.name}' right now; try again later.",
                )
            raise NoCapacity(
                f"All {len(excluded)} provider(s) tried for '{job.model.name}' failed "
                f"(last: {last_error}); try again.",
            )
        session = state.hub.sessions.get(choice.agent_id)
        if session is None:
            excluded.add(choice.agent_id)
            continue
        job.attempts += 1
        job.provider_id = session.agent_id
        request = Generate(
            request_id=f"{job.request_id}.{job.attempts}",
            model=job.model.name,
            prompt=job.prompt,
            messages=job.messages,
            sampling=job.sampling,
            deadline=deadline,
        )
        state.router.on_dispatch(session.agent_id)
        sent_start = time.monotonic()
        ok = False
        frames = state.hub.stream(session, request)
        try:
            expected_index = 0
            while True:
                remaining = deadline - time.time()
                if remaining <= 0:
                    raise TimeoutError("the request deadline passed")
                timeout = (
                    settings.first_token_timeout_s
                    if expected_index == 0
                    else settings.inter_token_timeout_s
                )
                frame = await asyncio.wait_for(anext(frames), min(timeout, remaining))
                if isinstance(frame, Token):
                    if frame.index != expected_index:
                        raise BackendError(
                            f"agent sent token {frame.index}, expected {expected_index}"
                        )
                    if expected_index == 0:
                        job.ttft_s = time.time() - job.created
                        state.router.on_first_token(
                            session.agent_id, time.monotonic() - sent_start, time.monotonic()
                        )
                    expected_index += 1
                    job.texts.append(frame.text)
                    job.tokens.append(frame)
                    yield frame
                elif isinstance(frame, Done):
                    job.finish_reason = frame.finish_reason
                    job.claimed_tokens = frame.completion_tokens_claimed
                    ok = True
                    return
                elif isinstance(frame, Error):
                    raise BackendError(frame.message, retryable=frame.retryable)
        except (BackendError, TimeoutError, ConnectionError, StopAsyncIteration) as exc:
            last_error = _describe(exc)
            log.warning(
                "request %s failed on agent %s: %s", job.request_id, session.agent_id, last_error
            )
            retryable = not isinstance(exc, BackendError) or exc.retryable
            if not retryable:
                raise BadRequest(f"the provider refused the request: {last_error}") from None
            if job.texts:
                raise BackendError(
                    f"the provider failed mid-stream ({last_error}); retry the request"
                ) from None
            if job.attempts >= settings.max_attempts or time.time() >= deadline:
                raise NoCapacity(
                    f"the request failed on {job.attempts} provider(s) "
                    f"(last: {last_error}); retry later"
                ) from None
            excluded.add(session.agent_id)
        finally:
            state.router.on_end(session.agent_id, ok=ok, now=time.monotonic())
            with contextlib.suppress(Exception):
                await frames.aclose()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "no token within the timeout"
    if isinstance(exc, StopAsyncIteration):
        return "stream ended without done"
    return str(exc) or type(exc).__name__
