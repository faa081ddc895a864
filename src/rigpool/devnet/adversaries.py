"""Cheating providers for the adversarial suite: real agent processes with real backends.

Every kind is a real `rigpool.agent.daemon.Agent` dialling a real coordinator, serving through a
real `TransformersBackend` (PyTorch, on this machine's CPU or GPU), and cheating the way an
operator who edited their agent would. The suite (`tests/trust/test_trust_adversaries.py`,
`bench/trust.py --live`) starts them as separate processes::

    python -m rigpool.devnet.adversaries KIND --coordinator URL --models ROOT --identity FILE

`ROOT` holds the trust test models (`trust.simulate.build_test_models`): `claimed` (what every
kind claims to serve, as `trust.simulate.CLAIMED_MODEL`), `smaller` and `other`.

Kinds (the issue's letters):

* `honest` - the claimed model (any `--dtype`): must never fail a check;
* `smaller` (a) - a 1-layer truncation of the claimed model; `other` (a) - another model;
* `quantized4` (b) - the claimed model with 4-bit round-to-nearest weights;
* `random_text` (c) - random tokens, with logprobs and commitments prefilled from the real model;
* `cached` (c) - replays its first answer for every later prompt;
* `prefill_cheat` (a/c) - generates with the cheap model, then prefills the claimed model so that
  logprobs and commitments are consistent (only the token statistics betray it);
* `inflate` (d) - honest tokens, three times the token count claimed;
* `fake_a100` (e) - honest serving on this CPU, but claims an A100 80GB in its capabilities;
* `stall` (f) - stalls after the first token on every other request.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np

from rigpool.agent.backends.base import (
    Backend,
    Finish,
    GenerationRequest,
    ServedModel,
    TokenChunk,
)
from rigpool.agent.backends.transformers_backend import TransformersBackend
from rigpool.protocol.messages import GpuInfo
from rigpool.trust.simulate import CLAIMED_MODEL, quantize_weights_
from rigpool.trust.verification import Sampling

KINDS = (
    "honest",
    "smaller",
    "other",
    "quantized4",
    "random_text",
    "cached",
    "prefill_cheat",
    "inflate",
    "fake_a100",
    "stall",
)
#: the issue's letter of each cheat: (a)-(d) must end in a slash through evidence, (e) in a
#: refusal at join, (f) in lost reputation
LETTERS = {
    "smaller": "a",
    "other": "a",
    "quantized4": "b",
    "random_text": "c",
    "cached": "c",
    "prefill_cheat": "a/c",
    "inflate": "d",
    "fake_a100": "e",
    "stall": "f",
}
#: the kinds that cheat on what they return or claim, and so must be slashed
SLASHABLE = tuple(k for k, letter in LETTERS.items() if letter[0] in "abcd")
#: the claim `fake_a100` makes (NVML's name and size of an A100 SXM4 80GB)
FAKE_GPU = GpuInfo(name="NVIDIA A100-SXM4-80GB", vram_mb=81920)

log = logging.getLogger(__name__)


class _Cheat(Backend):
    """A backend that serves through `inner` and rewrites what it returns."""

    kind = "transformers"
    emulated = False

    def __init__(self, inner: TransformersBackend) -> None:
        self.inner = inner
        self.served_name = inner.served_name

    def models(self) -> list[ServedModel]:
        return self.inner.models()

    def generate(self, request: GenerationRequest) -> AsyncIterator[TokenChunk | Finish]:
        return self.inner.generate(request)

    async def close(self) -> None:
        await self.inner.close()


def _claim_sampling(request: GenerationRequest) -> Sampling:
    s = request.sampling
    return Sampling(temperature=s.temperature, top_p=s.top_p, max_tokens=s.max_tokens, seed=s.seed)


class _Prefilled(_Cheat):
    """Tokens from somewhere cheap; logprobs and commitments from a prefill of the real model."""

    def __init__(self, inner: TransformersBackend, real: Any) -> None:
        super().__init__(inner)
        self.real = real

    def _prefill(
        self, request: GenerationRequest, prompt_ids: list[int], output_ids: list[int]
    ) -> tuple[tuple[float, ...], tuple[bytes, ...]]:
        from rigpool.trust.torchops import prefill_commitments

        lps, commits = prefill_commitments(
            self.real, prompt_ids, output_ids, _claim_sampling(request)
        )
        return tuple(lps), tuple(commits)


class PrefillCheat(_Prefilled):
    """(a/c) generate with the cheap model, then make logprobs and commitments consistent."""

    async def generate(self, request: GenerationRequest) -> AsyncIterator[TokenChunk | Finish]:
        async for item in self.inner.generate(request):
            if isinstance(item, Finish) and item.prompt_ids and item.output_ids is not None:
                lps, commits = await asyncio.to_thread(
                    self._prefill, request, list(item.prompt_ids), list(item.output_ids)
                )
                item = dataclasses.replace(item, logprobs=lps, commitments=commits)
            yield item


class RandomText(_Prefilled):
    """(c) random tokens, dressed up with the real model's logprobs and commitments."""

    async def generate(self, request: GenerationRequest) -> AsyncIterator[TokenChunk | Finish]:
        prompt_ids = self.inner._encode(request.prompt)
        rng = np.random.default_rng(request.sampling.seed)
        vocab = int(self.real.config.vocab_size)
        out = [int(t) for t in rng.integers(8, vocab, max(1, request.sampling.max_tokens))]
        for token in out:
            yield TokenChunk(text=self.inner._decode([token]), token_id=token)
        lps, commits = await asyncio.to_thread(self._prefill, request, prompt_ids, out)
        yield Finish(
            "length", len(out), tuple(prompt_ids), tuple(out), logprobs=lps, commitments=commits
        )


class Cached(_Cheat):
    """(c) answers every prompt with its first answer (tokens, logprobs and commitments)."""

    def __init__(self, inner: TransformersBackend) -> None:
        super().__init__(inner)
        self._cache: tuple[list[TokenChunk], Finish] | None = None

    async def generate(self, request: GenerationRequest) -> AsyncIterator[TokenChunk | Finish]:
        if self._cache is None:
            chunks: list[TokenChunk] = []
            async for item in self.inner.generate(request):
                if isinstance(item, Finish):
                    self._cache = (chunks, item)
                else:
                    chunks.append(item)
                yield item
            return
        chunks, finish = self._cache
        budget = request.sampling.max_tokens
        for chunk in chunks[:budget]:
            yield chunk
        n = min(len(chunks), budget)
        yield dataclasses.replace(
            finish,
            completion_tokens=n,
            prompt_ids=tuple(self.inner._encode(request.prompt)),
            output_ids=(finish.output_ids or ())[:n],
            logprobs=(finish.logprobs or ())[:n],
        )


class Inflate(_Cheat):
    """(d) honest tokens, three times the count claimed (in `done` and in its statement)."""

    async def generate(self, request: GenerationRequest) -> AsyncIterator[TokenChunk | Finish]:
        async for item in self.inner.generate(request):
            if isinstance(item, Finish):
                item = dataclasses.replace(item, completion_tokens=item.completion_tokens * 3)
            yield item


class Stall(_Cheat):
    """(f) on every other request, stops after the first token and never finishes."""

    def __init__(self, inner: TransformersBackend) -> None:
        super().__init__(inner)
        self._count = 0

    async def generate(self, request: GenerationRequest) -> AsyncIterator[TokenChunk | Finish]:
        self._count += 1
        stall = self._count % 2 == 0
        async for item in self.inner.generate(request):
            yield item
            if stall:
                await asyncio.Event().wait()  # until the coordinator gives up and cancels


def build_backend(kind: str, models: Path, dtype: str = "float32") -> Backend:
    """The backend of one adversary kind (see the module docstring)."""
    from rigpool.trust.torchops import load_model

    def serve(folder: str) -> TransformersBackend:
        return TransformersBackend(
            str(models / folder), device="cpu", dtype=dtype, served_name=CLAIMED_MODEL
        )

    if kind in ("honest", "fake_a100"):
        return serve("claimed")
    if kind in ("smaller", "other"):
        return serve(kind)
    if kind == "quantized4":
        backend = serve("claimed")
        quantize_weights_(backend._model, 4)
        return backend
    if kind == "prefill_cheat":
        return PrefillCheat(serve("smaller"), load_model(models / "claimed", dtype))
    if kind == "random_text":
        return RandomText(serve("claimed"), load_model(models / "claimed", dtype))
    if kind == "cached":
        return Cached(serve("claimed"))
    if kind == "inflate":
        return Inflate(serve("claimed"))
    if kind == "stall":
        return Stall(serve("claimed"))
    raise ValueError(f"unknown adversary kind {kind!r}; choose one of {', '.join(KINDS)}")


async def run_adversary(
    kind: str, coordinator: str, models: Path, identity_path: Path, dtype: str, price_out: float
) -> None:
    from rigpool.agent.daemon import Agent, AgentRefused
    from rigpool.agent.setup import ProvideOptions, capabilities_for
    from rigpool.protocol.signing import load_or_create_identity

    backend = build_backend(kind, models, dtype)
    identity, _ = load_or_create_identity(identity_path)
    caps, _note = capabilities_for(
        backend, ProvideOptions(backend="transformers", price_out=price_out, max_concurrency=2)
    )
    if kind == "fake_a100":
        caps = caps.model_copy(update={"gpus": [FAKE_GPU]})
    agent = Agent(coordinator, identity, backend, caps, on_status=lambda m: log.info("%s", m))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, agent.stop)
    try:
        await agent.run_forever()
    except AgentRefused as exc:
        print(f"REFUSED: {exc}", flush=True)
        raise SystemExit(3) from None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("--coordinator", required=True)
    parser.add_argument("--models", type=Path, required=True, help="trust test models folder")
    parser.add_argument("--identity", type=Path, required=True)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--price-out", type=float, default=0.10)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=f"[{args.kind}] %(levelname)s %(message)s")
    import torch

    torch.set_num_threads(args.threads)
    asyncio.run(
        run_adversary(
            args.kind, args.coordinator, args.models, args.identity, args.dtype, args.price_out
        )
    )


if __name__ == "__main__":
    main()
