"""The emulated backend: a named catalog GPU, timed by the performance model, on no GPU at all.

Why: load, chaos and routing tests need hundreds of "GPUs" of different classes on one CPU. The
timing of each token comes from `hardware.perf` — the same model the simulator uses — for the
GPU named and a reference architecture (`timing_model`, Llama-3.1-8B by default) at the highest
precision that fits that card, so an emulated RTX 3060 is as slow, relative to an emulated A100,
as the real cards would be. The text is deterministic filler drawn from a fixed word list, seeded
by the prompt and the request's seed, cut into the served model's tokens when its tokenizer is
at hand: it is not a model's output and is always reported as
emulated (`emulated=True` in the hello and in the fleet view).
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import random
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

from tokenizers import Tokenizer

from rigpool.agent.backends.base import (
    Backend,
    Finish,
    GenerationRequest,
    SamplingParams,
    ServedModel,
    TokenChunk,
)
from rigpool.core.errors import BackendError, BadRequest
from rigpool.hardware.catalog import GpuSpec, find_gpu
from rigpool.hardware.memory import best_quant_that_fits
from rigpool.hardware.models import find_model
from rigpool.hardware.perf import PerfEstimate, estimate

# fmt: off
FILLER_WORDS = (
    "the", "a", "rig", "pool", "of", "idle", "cards", "serves", "tokens", "to", "anyone", "who",
    "asks", "with", "fair", "price", "and", "an", "honest", "meter", "while", "network", "routes",
    "around", "slow", "machines", "hedges", "tail", "pays", "every", "provider", "for", "token",
    "it", "served", "on", "time", "under", "load", "across", "regions",
)
# fmt: on

#: bytes of prompt text per token when estimating prefill time (English BPE averages ~4).
BYTES_PER_TOKEN = 4

#: with no delay at all (time_scale 0) the token loop still yields to the event loop this often
YIELD_EVERY_TOKENS = 256


class EmulatedBackend(Backend):
    kind = "emulated"
    emulated = True

    def __init__(
        self,
        gpu: str,
        served_name: str,
        *,
        context_length: int = 2048,
        timing_model: str = "llama-3.1-8b",
        time_scale: float = 1.0,
        tokenizer_dir: Path | None = None,
        straggle_prob: float = 0.0,
        straggle_factor: float = 10.0,
        seed: int = 0,
    ):
        self.gpu: GpuSpec = find_gpu(gpu)
        self.arch = find_model(timing_model)
        quant = best_quant_that_fits(self.arch, self.gpu, context=min(context_length, 4096))
        if quant is None:
            raise BadRequest(
                f"{timing_model} fits on an emulated {self.gpu.name} "
                f"({self.gpu.vram_gb:.0f} GB) at no supported precision"
            )
        self.quant = quant
        self.served_name = served_name
        self.context_length = context_length
        self.time_scale = time_scale
        # Stragglers: with probability `straggle_prob` a request runs `straggle_factor` times
        # slower (thermal throttling, a game launched on the rig, a noisy neighbour ...).
        self.straggle_prob = straggle_prob
        self.straggle_factor = straggle_factor
        self._straggle_rng = random.Random(seed)
        self._active = 0
        # With the served model's tokenizer, each filler chunk is exactly one real token, so the
        # gateway's count matches max_tokens; without it, each word counts as one token.
        self._tokenizer: Tokenizer | None = None
        if tokenizer_dir is not None and (tokenizer_dir / "tokenizer.json").exists():
            self._tokenizer = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
        #: filler word -> its tokens' texts (the word list is small: each is cut once)
        self._pieces: dict[str, tuple[str, ...]] = {}
        #: batch size -> the performance model's estimate (it depends on nothing else here)
        self._perf: dict[int, PerfEstimate] = {}

    def models(self) -> list[ServedModel]:
        return [ServedModel(self.served_name, self.context_length)]

    def timing(self, prompt_tokens: int, batch: int) -> tuple[float, float]:
        """(time to first token, time per output token) in seconds at this batch size."""
        if self.time_scale == 0:
            return 0.0, 0.0
        batch = max(1, batch)
        perf = self._perf.get(batch)
        if perf is None:
            perf = estimate(self.gpu, self.arch, self.quant, batch=batch)
            if len(self._perf) < 4096:
                self._perf[batch] = perf
        return perf.ttft_s(prompt_tokens) * self.time_scale, perf.tpot_s * self.time_scale

    async def generate(self, request: GenerationRequest) -> AsyncIterator[TokenChunk | Finish]:
        if request.model != self.served_name:
            raise BackendError(f"model {request.model} is not served here", retryable=True)
        prompt_tokens = self._count(request.prompt)
        sampling = request.sampling
        digest = hashlib.sha256(f"{request.prompt}\x00{sampling.seed}".encode()).digest()
        rng = random.Random(int.from_bytes(digest[:8], "big"))
        slow = (
            self.straggle_factor
            if self.straggle_prob and self._straggle_rng.random() < self.straggle_prob
            else 1.0
        )
        self._active += 1
        try:
            ttft, _ = self.timing(prompt_tokens, self._active)
            await asyncio.sleep(ttft * slow)
            text = ""
            pieces = self._filler(rng)
            for produced in range(sampling.max_tokens):
                if produced:
                    _, tpot = self.timing(prompt_tokens + produced, self._active)
                    if tpot > 0 or produced % YIELD_EVERY_TOKENS == 0:
                        # No delay at all: tokens come as fast as the loop makes them, as from
                        # an engine's batch; only a long one lets other work in now and then.
                        await asyncio.sleep(tpot * slow)
                piece = next(pieces)
                text += piece
                hit = next((s for s in sampling.stop if s in text), None)
                if hit is not None:
                    keep = text.index(hit) - (len(text) - len(piece))
                    if keep > 0:
                        yield TokenChunk(piece[:keep], logprob=_filler_logprob(sampling))
                    yield Finish("stop", produced + (1 if keep > 0 else 0))
                    return
                yield TokenChunk(piece, logprob=_filler_logprob(sampling))
            yield Finish("length", sampling.max_tokens)
        finally:
            self._active -= 1

    def _count(self, text: str) -> int:
        if self._tokenizer is not None:
            return max(1, len(self._tokenizer.encode(text, add_special_tokens=False).ids))
        return max(1, len(text.encode()) // BYTES_PER_TOKEN)

    def _filler(self, rng: random.Random) -> Iterator[str]:
        """Endless filler, one token per item."""
        first = True
        while True:
            word = ("" if first else " ") + rng.choice(FILLER_WORDS)
            first = False
            if self._tokenizer is None:
                yield word
                continue
            pieces = self._pieces.get(word)
            if pieces is None:
                tokenizer = self._tokenizer
                pieces = tuple(
                    tokenizer.decode([token_id], skip_special_tokens=False)
                    for token_id in tokenizer.encode(word, add_special_tokens=False).ids
                )
                self._pieces[word] = pieces
            yield from pieces


def _filler_logprob(sampling: SamplingParams) -> float | None:
    """Filler is drawn uniformly from the word list: that is its honest log-probability."""
    return -math.log(len(FILLER_WORDS)) if sampling.logprobs else None
