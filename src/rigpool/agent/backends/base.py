"""The backend seam: one small interface that every way of producing tokens implements.

An agent holds exactly one backend. The daemon only ever calls `models()`, `generate()` and
`close()`, so a new engine (vLLM in-process, llama.cpp bindings, ...) is one new class here.
Implementations: `transformers` (real PyTorch model), `openai-proxy` (a local OpenAI-compatible
server) and `emulated` (a named catalog GPU whose timing comes from the performance model).
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from dataclasses import dataclass, field


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens. temperature == 0 means greedy decoding."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    logprobs: bool = False
    top_logprobs: int = 0


@dataclass(frozen=True)
class GenerationRequest:
    """One generation as the agent sees it.

    `prompt` is the full text to continue (for chat the gateway has already applied the model's
    chat template, so every backend sees exactly the tokens the gateway counted). `messages`
    carries the original chat messages for backends that template themselves (openai-proxy).
    """

    request_id: str
    model: str
    prompt: str
    sampling: SamplingParams = field(default_factory=SamplingParams)
    messages: tuple[dict[str, str], ...] | None = None


@dataclass(frozen=True)
class TokenChunk:
    """One generated token (or a few, for proxies that stream text pieces)."""

    text: str
    token_id: int | None = None
    logprob: float | None = None
    top_logprobs: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class Finish:
    """The end of a generation: why it stopped and how many tokens the backend says it made.

    The optional fields are verification data (docs/trust.md): a validator re-runs the claimed
    model over `prompt_ids` + `output_ids` in one teacher-forced pass and re-checks `logprobs`
    and the TOPLOC `commitments` against its own numbers, so a provider cannot swap in a smaller,
    quantized or other model unnoticed. Backends that cannot see token ids or hidden states (a
    proxy, an emulated GPU) leave them None.
    """

    finish_reason: str  # "stop" | "length"
    completion_tokens: int
    #: the token ids the backend fed the model
    prompt_ids: tuple[int, ...] | None = None
    #: every sampled token id, the final EOS included
    output_ids: tuple[int, ...] | None = None
    #: log p(token) under the distribution it was drawn from (temperature and top-p applied;
    #: greedy: the raw log_softmax); -1e9 where it was -inf
    logprobs: tuple[float, ...] | None = None
    #: TOPLOC commitments, one per 32 output tokens (`trust.toploc.ToplocCommitter.finish()`)
    commitments: tuple[bytes, ...] | None = None


@dataclass(frozen=True)
class ServedModel:
    """A model a backend can serve now."""

    name: str
    context_length: int


class Backend(abc.ABC):
    """Produces tokens for an agent."""

    #: the backend's name on the wire: "transformers", "openai-proxy" or "emulated"
    kind: str = "abstract"
    #: True when the tokens do not come from real GPU work on this machine's claimed hardware
    emulated: bool = False

    @abc.abstractmethod
    def models(self) -> list[ServedModel]:
        """The models this backend serves."""

    @abc.abstractmethod
    def generate(self, request: GenerationRequest) -> AsyncIterator[TokenChunk | Finish]:
        """Stream chunks, then exactly one `Finish`; raise `BackendError` on failure.

        Cancellation is the caller closing the iterator (or cancelling its task): implementations
        must stop work promptly when that happens.
        """

    async def close(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Release resources (threads, HTTP clients, GPU memory)."""
