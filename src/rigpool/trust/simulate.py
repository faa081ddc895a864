"""Honest and cheating providers on real (tiny) models, for the adversarial suite and the bench.

Why not the plain toy model: `devnet.toymodel` builds a Llama with initialiser-scale weights, whose
next-token distributions are almost uniform (entropy ~ log 1024), so neither logprob differences
nor token statistics mean anything. Training one for long enough is too slow for a test on two
shared cores, so `build_test_model` takes the toy model's tokenizer and architecture and rescales
seeded random weights the way training shapes a real LM: sharper attention (query/key scaled up)
and a final-norm gain that gives logits of real-LM magnitude. The result has peaked,
context-dependent distributions (mean entropy around 2-3 nats, see the bench), so dtype noise,
smaller models, quantisation and other samplers show up in the same measures they do on real
models.

Providers (each returns a `torchops.Generation`: tokens, reported logprobs, commitments):

* `honest` - the claimed model in any dtype (fp32 / bf16 / fp16);
* `smaller` - a truncated copy of the claimed model (fewer layers) claiming to be it;
* `other` - another model (other seed) claiming to be the claimed one;
* `quantized` - the claimed model with weights rounded to 4 (or 8) bits, claiming full precision;
* `prefill_cheat` - generates with a cheap model, then prefills the claimed model to make
  logprobs and commitments consistent;
* `random_text` - returns random tokens with made-up logprobs.
"""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rigpool.trust.torchops import Generation, generate, load_model, prefill_commitments
from rigpool.trust.verification import Sampling

#: the name every simulated provider claims to serve
CLAIMED_MODEL = "rigpool-trust-claimed"

_LOCK = threading.Lock()
_WEIGHT_FILES = ("model.safetensors", "config.json", "generation_config.json")


def build_test_model(
    path: Path,
    base: Path,
    *,
    seed: int = 0,
    n_layers: int = 2,
    attn_scale: float = 4.0,
    logit_scale: float = 24.0,
) -> Path:
    """Write a peaked random Llama (tokenizer and shape of `base`, the toy model) to `path`."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    for item in Path(base).iterdir():
        if (
            item.is_file()
            and item.name not in _WEIGHT_FILES
            and not item.name.startswith("rigpool-")
        ):
            shutil.copy2(item, path / item.name)
    config = AutoConfig.from_pretrained(str(base))
    config.num_hidden_layers = n_layers
    # Untied output matrix: with tied embeddings a random model just predicts its last token.
    config.tie_word_embeddings = False
    with _LOCK, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(attn_scale)
            layer.self_attn.k_proj.weight.mul_(attn_scale)
        model.model.norm.weight.fill_(logit_scale)
    model.eval()
    model.save_pretrained(str(path))
    (path / "rigpool-trust-model.json").write_text(
        json.dumps(
            {
                "seed": seed,
                "n_layers": n_layers,
                "attn_scale": attn_scale,
                "logit_scale": logit_scale,
            }
        )
        + "\n"
    )
    return path


def truncate_model(source: Path, path: Path, n_layers: int) -> Path:
    """Copy `source` keeping only its first `n_layers` blocks (a cheaper look-alike)."""
    model = load_model(source)
    model.model.layers = model.model.layers[:n_layers]
    model.config.num_hidden_layers = n_layers
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = model.config.layer_types[:n_layers]
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    for item in Path(source).iterdir():
        if item.is_file() and item.name not in _WEIGHT_FILES:
            shutil.copy2(item, path / item.name)
    model.save_pretrained(str(path))
    return path


def quantize_weights_(model: Any, bits: int) -> Any:
    """Round every linear weight in the blocks to `bits`-bit symmetric per-output-channel integers.

    Round-to-nearest with one scale per row, the baseline that GPTQ/AWQ improve on; embeddings
    and norms stay in full precision, as in common 4-bit formats.
    """
    import torch

    levels = 2 ** (bits - 1) - 1
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and ".layers." in f".{name}":
                w = module.weight
                scale = w.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / levels
                w.copy_((w / scale).round().clamp(-levels, levels) * scale)
    return model


@dataclass
class ModelSet:
    """The model folders an adversarial run needs; `claimed` is what every provider claims."""

    claimed: Path
    smaller: Path
    other: Path
    eos_ids: tuple[int, ...] = (1,)


def build_test_models(root: Path, base: Path) -> ModelSet:
    """Build (or reuse) the claimed model, its truncated look-alike and another-seed model."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        return _build_test_models(Path(root), base)
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _build_test_models(root: Path, base: Path) -> ModelSet:
    claimed = root / "claimed"
    smaller = root / "smaller"
    other = root / "other"
    if not (claimed / "model.safetensors").exists():
        build_test_model(claimed, base, seed=0, n_layers=2)
    if not (smaller / "model.safetensors").exists():
        truncate_model(claimed, smaller, 1)
    if not (other / "model.safetensors").exists():
        build_test_model(other, base, seed=1, n_layers=2)
    return ModelSet(claimed, smaller, other)


Provider = Callable[[list[int], Sampling], Generation]


def make_provider(kind: str, models: ModelSet, *, dtype: str = "float32") -> Provider:
    """A provider of the given kind (see the module docstring) serving `models.claimed`."""
    eos = models.eos_ids
    if kind == "honest":
        model = load_model(models.claimed, dtype)
        return lambda prompt, s: generate(model, prompt, s, eos_ids=eos)
    if kind in ("smaller", "other"):
        model = load_model(models.smaller if kind == "smaller" else models.other, dtype)
        return lambda prompt, s: generate(model, prompt, s, eos_ids=eos)
    if kind.startswith("quantized"):
        bits = int(kind.removeprefix("quantized") or 4)
        model = quantize_weights_(load_model(models.claimed, dtype), bits)
        return lambda prompt, s: generate(model, prompt, s, eos_ids=eos)
    if kind == "prefill_cheat":
        cheap = load_model(models.smaller, dtype)
        real = load_model(models.claimed, dtype)

        def cheat(prompt: list[int], s: Sampling) -> Generation:
            gen = generate(cheap, prompt, s, eos_ids=eos, commit=False)
            lps, commits = prefill_commitments(real, prompt, gen.output_ids, s)
            return Generation(prompt, gen.output_ids, lps, commits, gen.seconds)

        return cheat
    if kind == "random_text":
        real = load_model(models.claimed, dtype)
        vocab = int(real.config.vocab_size)

        def random_text(prompt: list[int], s: Sampling) -> Generation:
            rng = np.random.default_rng(s.seed)
            out = [int(t) for t in rng.integers(8, vocab, s.max_tokens)]
            lps, commits = prefill_commitments(real, prompt, out, s)
            return Generation(prompt, out, lps, commits)

        return random_text
    raise ValueError(f"unknown provider kind {kind!r}")


def random_prompts(
    n: int, vocab: int, seed: int = 0, length: tuple[int, int] = (8, 48)
) -> list[list[int]]:
    """`n` prompts of random ordinary tokens (ids >= 8 skip the special tokens)."""
    rng = np.random.default_rng(seed)
    return [[int(t) for t in rng.integers(8, vocab, int(rng.integers(*length)))] for _ in range(n)]
