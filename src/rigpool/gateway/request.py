"""One request, as data: what the client asked for (`RequestSpec`) and what happened (`Outcome`).

The spec is immutable: once the endpoint has validated, rendered and counted the request, nothing
downstream may change what was asked. The outcome is filled in by the dispatcher while tokens
arrive (which agent, how many attempts, the tokens themselves, the agent's `done`) and by the
`finish` step once (what was charged). Everything the end of a request needs is in these two
objects, so `finish` can be read top to bottom without reaching back into the coordinator.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from rigpool.core.errors import ContextTooLong
from rigpool.protocol.messages import Done, Sampling, Token
from rigpool.scheduler.routing import Constraints

#: chat requests without max_tokens get this many at most (OpenAI: "until the context ends";
#: a shared network needs a bound, and the client can always ask for more).
DEFAULT_CHAT_MAX_TOKENS = 256


class IdempotentReplay(Exception):
    """The idempotency key was used before; carries the stored response or a conflict."""

    def __init__(self, response: dict[str, Any] | None):
        super().__init__("idempotent replay")
        self.response = response


@dataclass(frozen=True)
class ModelInfo:
    """A registered model as the gateway sees it (not the database row)."""

    name: str
    path: str
    context_length: int
    #: unix time the model was registered
    created: float = 0.0


@dataclass(frozen=True)
class RequestSpec:
    """One admitted request: what the client asked for, validated, rendered and counted."""

    request_id: str
    api_key_id: int
    consumer: str
    idempotency_key: str
    endpoint: str  # "chat" | "completions"
    model: ModelInfo
    tokenizer: Any  # ModelTokenizer (count/encode); Any keeps this module free of tokenizers
    prompt: str
    messages: tuple[dict[str, str], ...] | None
    sampling: Sampling
    stream: bool
    prompt_tokens: int
    include_usage: bool = False
    constraints: Constraints = field(default_factory=Constraints)
    created: float = field(default_factory=time.time)


class Ending(Enum):
    """How a request ended, which decides who pays and what is recorded.

    The rule is one sentence: **the client pays for the tokens it received**, and the payment
    goes to the provider that was serving when the stream ended (docs/money.md).
    """

    #: every token delivered: billable
    OK = "ok"
    #: the client hung up; it pays for what it had received (a streamed client: the tokens sent
    #: so far; a non-streamed one: nothing, since it receives the answer only at the end)
    CLIENT_GONE = "cancelled"
    #: the network could not finish the answer; the client pays for what it received
    FAILED = "error"


#: the error recorded when the client hangs up
CLIENT_GONE = "client went away"


@dataclass
class Outcome:
    """What happened to one request, filled in as it runs (dispatcher) and ends (`finish`)."""

    provider_id: str | None = None
    attempts: int = 0
    ttft_s: float | None = None
    tokens: list[Token] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    finish_reason: str = "stop"
    #: the agents' token claims, summed over the attempts that streamed
    claimed_tokens: int | None = None
    #: the id the finishing attempt was sent under (the agent signs its statement for it)
    attempt_id: str | None = None
    #: the finishing agent's `done` frame (its token claim and verification data)
    done: Done | None = None
    #: tokens the finishing attempt continued from (0 unless a failover continued the stream)
    attempt_offset: int = 0
    # --- set by `finish` -------------------------------------------------------------------
    #: tokens the client is billed for (`billable_tokens`), fixed once the request has ended
    billed_tokens: int = 0
    charged: int = 0
    fee: int = 0
    #: the agent's token claim became metering evidence signed by the agent
    metering_evidence: bool = False
    #: whether the agent's signature covers its verification data (checked once, on demand)
    statement_ok: bool | None = None
    _metered: tuple[int, int] | None = None

    @property
    def output(self) -> str:
        return "".join(self.texts)

    def add(self, token: Token) -> None:
        self.tokens.append(token)
        self.texts.append(token.text)

    def completion_tokens(self, spec: RequestSpec) -> int:
        """Metered by the gateway from the text the client received (memoised per length).

        Re-encoding text can give more tokens than were generated (BPE is not canonical for
        odd token sequences, e.g. from an untrained model); the client never pays for more
        than the max_tokens it asked for.
        """
        if self._metered is None or self._metered[0] != len(self.tokens):
            count = min(spec.tokenizer.count(self.output), spec.sampling.max_tokens)
            self._metered = (len(self.tokens), count)
        return self._metered[1]

    def usage(self, spec: RequestSpec) -> dict[str, int]:
        completion = self.completion_tokens(spec)
        return {
            "prompt_tokens": spec.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": spec.prompt_tokens + completion,
        }


def new_request_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def check_context(
    model: ModelInfo, prompt_tokens: int, max_tokens: int, *, prompt_param: str = "messages"
) -> None:
    """A 400 naming the limit when prompt + max_tokens exceed the model's context."""
    total = prompt_tokens + max_tokens
    if total > model.context_length:
        raise ContextTooLong(
            f"This model's maximum context length is {model.context_length} tokens. However, "
            f"you requested {total} tokens ({prompt_tokens} in the prompt, {max_tokens} in the "
            f"completion). Please reduce the prompt or max_tokens.",
            param="max_tokens" if prompt_tokens < model.context_length else prompt_param,
        )
