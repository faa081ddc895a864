"""The torch half of verification: one teacher-forced pass, and a reference decoding loop.

Kept apart from `verification` (pure decisions) so that the coordinator, the ledger and the
evidence checker can import the verdict logic without torch; only a validator that actually runs
the claimed model, and the agent, import this module.

The decoding loop mirrors `agent/backends/transformers_backend.py` (same temperature and top-p
rule, same "logprob of the distribution the token was drawn from" convention) and adds what the
trust layer needs from a provider: the final hidden state of every step, fed to a
`ToplocCommitter`. The lead wires the same two lines into the backend's loop.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rigpool.trust.toploc import ToplocCommitter, commit_hidden_states
from rigpool.trust.verification import TOPK_MEMBERSHIP, ForcedPass, Sampling


def resolve_dtype(name: str) -> Any:
    """Torch dtype for "float32" / "bfloat16" / "float16" (aliases fp32, bf16, fp16)."""
    import torch

    aliases = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
    dtype = getattr(torch, aliases.get(name, name), None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"unknown dtype {name!r}")
    return dtype


def load_model(path: str | Path, dtype: str = "float32", device: str = "cpu") -> Any:
    """Load a Hugging Face causal LM for validation, in eval mode."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        loader: Any = AutoModelForCausalLM
        model = loader.from_pretrained(str(path), dtype=resolve_dtype(dtype))
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()
    return model.to(device).eval()


def sampling_logprobs(logits: Any, sampling: Sampling) -> Any:
    """log-probabilities of the distribution a token is drawn from (the backend's convention).

    Greedy: the raw model distribution. Sampling: ``log_softmax(logits / T)`` with the tokens
    outside the top-p nucleus set to -inf. Works on ``[..., vocab]``.
    """
    import torch

    logits = logits.float()
    if sampling.temperature <= 0:
        return torch.log_softmax(logits, dim=-1)
    scaled = logits / sampling.temperature
    if sampling.top_p < 1.0:
        sorted_logits, order = torch.sort(scaled, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        mass_before = torch.cumsum(probs, dim=-1) - probs
        drop = mass_before >= sampling.top_p
        drop[..., 0] = False
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        scaled = torch.full_like(scaled, float("-inf")).scatter(-1, order, sorted_logits)
    return torch.log_softmax(scaled, dim=-1)


def teacher_force(
    model: Any, prompt_ids: Sequence[int], output_ids: Sequence[int], sampling: Sampling
) -> ForcedPass:
    """Run prompt + output through `model` once and measure every output token.

    Position ``len(prompt) - 1 + t`` is the one whose logits chose output token t, so one
    forward pass over ``prompt + output[:-1]`` yields everything: per-token logprobs under the
    sampling distribution and the raw model, ranks, margins, the entropy and variance of the
    sampling distribution (for the token-statistics test) and the final hidden states (for
    TOPLOC).
    """
    import torch

    if not prompt_ids:
        raise ValueError("empty prompt")
    n = len(output_ids)
    if n == 0:
        return ForcedPass.empty(getattr(model.config, "hidden_size", 0))
    device = next(model.parameters()).device
    ids = torch.tensor([list(prompt_ids) + list(output_ids[:-1])], device=device)
    with torch.inference_mode():
        out = model(input_ids=ids, output_hidden_states=True, use_cache=False)
        start = len(prompt_ids) - 1
        logits = out.logits[0, start : start + n].float()
        hidden = out.hidden_states[-1][0, start : start + n].float()
        tokens = torch.tensor(list(output_ids), device=device)
        raw = torch.log_softmax(logits, dim=-1)
        lp_model = raw.gather(-1, tokens[:, None])[:, 0]
        tok_logit = logits.gather(-1, tokens[:, None])[:, 0]
        rank = (logits > tok_logit[:, None]).sum(-1)
        margin = logits.max(-1).values - tok_logit
        samp = sampling_logprobs(logits, sampling)
        lp_sampled = samp.gather(-1, tokens[:, None])[:, 0]
        p = samp.exp()
        finite = torch.where(torch.isfinite(samp), samp, torch.zeros_like(samp))
        entropy = -(p * finite).sum(-1)
        second = (p * finite * finite).sum(-1)
        var = (second - entropy * entropy).clamp_min(0.0)
        k = min(TOPK_MEMBERSHIP, p.shape[-1])
        tail = (1.0 - p.topk(k, dim=-1).values.sum(-1)).clamp_min(0.0)
    return ForcedPass(
        logprob_model=lp_model.cpu().numpy().astype(np.float64),
        logprob_sampled=lp_sampled.cpu().numpy().astype(np.float64),
        rank=rank.cpu().numpy().astype(np.int64),
        margin=margin.cpu().numpy().astype(np.float64),
        entropy=entropy.cpu().numpy().astype(np.float64),
        nll_var=var.cpu().numpy().astype(np.float64),
        tail_mass=tail.cpu().numpy().astype(np.float64),
        hidden=hidden.cpu().numpy().astype(np.float32),
    )


@dataclass
class Generation:
    """What a provider returns for one request (tokens, reported logprobs, commitments)."""

    prompt_ids: list[int]
    output_ids: list[int]
    logprobs: list[float]
    commitments: list[bytes] = field(default_factory=list)
    seconds: float = 0.0


def generate(
    model: Any,
    prompt_ids: Sequence[int],
    sampling: Sampling,
    *,
    eos_ids: Collection[int] = (),
    commit: bool = True,
) -> Generation:
    """Decode with a KV cache like the transformers backend, with TOPLOC commitments."""
    import time

    import torch

    device = next(model.parameters()).device
    generator: Any = None
    if sampling.temperature > 0:
        generator = torch.Generator(device=device)
        generator.manual_seed(sampling.seed if sampling.seed is not None else 0)
    # The KV-cache argument was renamed (past_key_values -> cache) in recent transformers.
    cache_kwarg = (
        "cache" if "cache" in inspect.signature(model.forward).parameters else ("past_key_values")
    )
    committer = ToplocCommitter()
    out_ids: list[int] = []
    logprobs: list[float] = []
    t0 = time.perf_counter()
    with torch.inference_mode():
        input_ids = torch.tensor([list(prompt_ids)], device=device)
        past: Any = None
        for _ in range(sampling.max_tokens):
            kwargs = {cache_kwarg: past}
            out = model(input_ids=input_ids, use_cache=True, output_hidden_states=commit, **kwargs)
            past = out.get("cache", None)
            if past is None:
                past = out.get("past_key_values", None)
            logits = out.logits[0, -1].float()
            lps = sampling_logprobs(logits, sampling)
            if sampling.temperature <= 0:
                token = int(torch.argmax(logits))
            else:
                token = int(torch.multinomial(lps.exp(), 1, generator=generator))
            if commit:
                committer.add(out.hidden_states[-1][0, -1])
            out_ids.append(token)
            lp = float(lps[token])
            logprobs.append(lp if math.isfinite(lp) else -1e9)
            if token in eos_ids:
                break
            input_ids = torch.tensor([[token]], device=device)
    return Generation(
        prompt_ids=list(prompt_ids),
        output_ids=out_ids,
        logprobs=logprobs,
        commitments=committer.finish() if commit else [],
        seconds=time.perf_counter() - t0,
    )


def prefill_commitments(
    model: Any, prompt_ids: Sequence[int], output_ids: Sequence[int], sampling: Sampling
) -> tuple[list[float], list[bytes]]:
    """Logprobs and commitments for tokens made elsewhere (what a prefill cheater computes)."""
    forced = teacher_force(model, prompt_ids, output_ids, sampling)
    lps = [float(x) if math.isfinite(x) else -1e9 for x in forced.logprob_sampled]
    return lps, commit_hidden_states(forced.hidden)
