"""Model architectures: the handful of shapes that decide memory and speed.

Memory-fit needs the parameter count (weights) and the attention shape (KV cache); the
performance model needs the parameters read per token (active parameters, for mixtures of
experts) and the layer count. Nothing else about a model matters to placement, so a `ModelArch`
holds only that, either from the built-in catalog (values from each model's Hugging Face
`config.json`; parameter counts from the safetensors metadata shown on the model page) or parsed
from a user's `config.json` by `arch_from_hf_config`.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from rigpool.core.errors import BadRequest, NotFound


@dataclass(frozen=True)
class ModelArch:
    """The shape of a decoder-only transformer, as far as placement cares.

    Attributes:
        name: Catalog id, e.g. "llama-3.1-8b".
        n_layers: Transformer blocks; each adds a KV-cache slice and per-layer overhead.
        hidden_size: Model width.
        n_heads: Query heads.
        n_kv_heads: Key/value heads (fewer than `n_heads` under grouped-query attention,
            which is what shrinks the KV cache of Llama 3 and Mistral eightfold).
        head_dim: Width of one head.
        vocab_size: Tokens in the vocabulary (embedding and output matrix rows).
        n_params: Total parameters: what must sit in memory.
        n_active_params: Parameters used per token: what a decode step reads and multiplies.
            Equal to `n_params` except for mixtures of experts.
        intermediate_size: MLP width (per expert for mixtures of experts).
        max_context: Longest context the model supports.
        n_experts: Experts per MoE layer (0 for dense models).
        experts_per_token: Experts each token is routed to (0 for dense models).
        hf_repo: The Hugging Face repository the figures come from.
        aliases: Other names accepted by `find_model`.

    """

    name: str
    n_layers: int
    hidden_size: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    vocab_size: int
    n_params: float
    n_active_params: float
    intermediate_size: int
    max_context: int
    n_experts: int = 0
    experts_per_token: int = 0
    hf_repo: str = ""
    aliases: tuple[str, ...] = ()

    @property
    def kv_bytes_per_token(self) -> float:
        """KV-cache bytes per token of context at 2 bytes per value (K and V, every layer)."""
        return 2.0 * self.n_layers * self.n_kv_heads * self.head_dim * 2.0

    @property
    def is_moe(self) -> bool:
        return self.n_experts > 0


def _m(
    name: str,
    hf_repo: str,
    *,
    layers: int,
    hidden: int,
    heads: int,
    kv: int,
    vocab: int,
    inter: int,
    ctx: int,
    params: float,
    active: float | None = None,
    head_dim: int | None = None,
    experts: int = 0,
    top_k: int = 0,
    aliases: tuple[str, ...] = (),
) -> ModelArch:
    return ModelArch(
        name=name,
        n_layers=layers,
        hidden_size=hidden,
        n_heads=heads,
        n_kv_heads=kv,
        head_dim=head_dim if head_dim is not None else hidden // heads,
        vocab_size=vocab,
        n_params=params,
        n_active_params=active if active is not None else params,
        intermediate_size=inter,
        max_context=ctx,
        n_experts=experts,
        experts_per_token=top_k,
        hf_repo=hf_repo,
        aliases=aliases,
    )


# Shapes from each repository's config.json; `params` from the safetensors parameter count shown
# on the model page (and reproduced by `estimate_params`, see tests/hardware/test_models.py).
_CATALOG: tuple[ModelArch, ...] = (
    _m("llama-2-7b", "meta-llama/Llama-2-7b-hf", layers=32, hidden=4096, heads=32, kv=32,
       vocab=32000, inter=11008, ctx=4096, params=6.738e9,
       aliases=("llama2-7b", "llama-2-7b-chat")),
    _m("llama-2-13b", "meta-llama/Llama-2-13b-hf", layers=40, hidden=5120, heads=40, kv=40,
       vocab=32000, inter=13824, ctx=4096, params=13.016e9, aliases=("llama2-13b",)),
    _m("llama-2-70b", "meta-llama/Llama-2-70b-hf", layers=80, hidden=8192, heads=64, kv=8,
       vocab=32000, inter=28672, ctx=4096, params=68.977e9, aliases=("llama2-70b",)),
    _m("llama-3-8b", "meta-llama/Meta-Llama-3-8B", layers=32, hidden=4096, heads=32, kv=8,
       vocab=128256, inter=14336, ctx=8192, params=8.030e9,
       aliases=("llama3-8b", "meta-llama-3-8b", "meta-llama-3-8b-instruct")),
    _m("llama-3-70b", "meta-llama/Meta-Llama-3-70B", layers=80, hidden=8192, heads=64, kv=8,
       vocab=128256, inter=28672, ctx=8192, params=70.554e9, aliases=("llama3-70b",)),
    _m("llama-3.1-8b", "meta-llama/Llama-3.1-8B", layers=32, hidden=4096, heads=32, kv=8,
       vocab=128256, inter=14336, ctx=131072, params=8.030e9,
       aliases=("llama3.1-8b", "meta-llama-3.1-8b", "llama-3.1-8b-instruct")),
    _m("llama-3.1-70b", "meta-llama/Llama-3.1-70B", layers=80, hidden=8192, heads=64, kv=8,
       vocab=128256, inter=28672, ctx=131072, params=70.554e9,
       aliases=("llama3.1-70b", "llama-3.3-70b", "llama-3.1-70b-instruct")),
    _m("mistral-7b", "mistralai/Mistral-7B-v0.1", layers=32, hidden=4096, heads=32, kv=8,
       vocab=32000, inter=14336, ctx=32768, params=7.242e9,
       aliases=("mistral-7b-v0.1", "mistral-7b-instruct")),
    _m("mixtral-8x7b", "mistralai/Mixtral-8x7B-v0.1", layers=32, hidden=4096, heads=32, kv=8,
       vocab=32000, inter=14336, ctx=32768, params=46.703e9, active=12.879e9, experts=8,
       top_k=2, aliases=("mixtral", "mixtral-8x7b-instruct")),
    _m("qwen2.5-7b", "Qwen/Qwen2.5-7B", layers=28, hidden=3584, heads=28, kv=4, vocab=152064,
       inter=18944, ctx=131072, params=7.616e9, aliases=("qwen-2.5-7b", "qwen2.5-7b-instruct")),
    _m("qwen2.5-14b", "Qwen/Qwen2.5-14B", layers=48, hidden=5120, heads=40, kv=8, vocab=152064,
       inter=13824, ctx=131072, params=14.770e9, aliases=("qwen-2.5-14b",)),
    _m("qwen2.5-32b", "Qwen/Qwen2.5-32B", layers=64, hidden=5120, heads=40, kv=8, vocab=152064,
       inter=27648, ctx=131072, params=32.764e9, aliases=("qwen-2.5-32b",)),
    _m("qwen2.5-72b", "Qwen/Qwen2.5-72B", layers=80, hidden=8192, heads=64, kv=8, vocab=152064,
       inter=29568, ctx=131072, params=72.706e9, aliases=("qwen-2.5-72b",)),
    _m("phi-3-mini", "microsoft/Phi-3-mini-4k-instruct", layers=32, hidden=3072, heads=32, kv=32,
       vocab=32064, inter=8192, ctx=4096, params=3.821e9, aliases=("phi3-mini", "phi-3-mini-4k")),
    _m("phi-3-medium", "microsoft/Phi-3-medium-4k-instruct", layers=40, hidden=5120, heads=40,
       kv=10, vocab=32064, inter=17920, ctx=4096, params=13.960e9,
       aliases=("phi3-medium", "phi-3-medium-4k")),
    _m("gemma-2-9b", "google/gemma-2-9b", layers=42, hidden=3584, heads=16, kv=8, head_dim=256,
       vocab=256000, inter=14336, ctx=8192, params=9.242e9, aliases=("gemma2-9b",)),
    _m("gemma-2-27b", "google/gemma-2-27b", layers=46, hidden=4608, heads=32, kv=16, head_dim=128,
       vocab=256000, inter=36864, ctx=8192, params=27.227e9, aliases=("gemma2-27b",)),
)  # fmt: skip


@cache
def model_catalog() -> dict[str, ModelArch]:
    """All built-in models keyed by id."""
    return {m.name: m for m in _CATALOG}


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9.]", "", name.lower().rsplit("/", 1)[-1].replace("_", "-"))


def find_model(name: str) -> ModelArch:
    """Look a model up by id or alias ("llama-3.1-8b", "Meta-Llama-3-8B-Instruct", "mixtral").

    A Hugging Face repo id is accepted too: only the part after the last "/" is compared.

    Raises:
        NotFound: no such model; the message lists close matches.

    """
    key = _key(name)
    for model in _CATALOG:
        if key in {_key(n) for n in (model.name, *model.aliases)}:
            return model
    ids = [m.name for m in _CATALOG]
    close = difflib.get_close_matches(name.lower(), ids, n=5, cutoff=0.5)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise NotFound(f"unknown model {name!r}{hint}", param="model")


def estimate_params(
    *,
    n_layers: int,
    hidden_size: int,
    n_heads: int,
    n_kv_heads: int,
    head_dim: int,
    vocab_size: int,
    intermediate_size: int,
    n_experts: int = 0,
    experts_per_token: int = 0,
    tie_word_embeddings: bool = False,
    attention_bias: bool = False,
) -> tuple[float, float]:
    """Total and active parameters of a Llama-style decoder from its shapes.

    Counts Q/K/V/O projections (plus biases where the family has them, as Qwen2 does), a gated
    MLP (three matrices; one per expert and a router for mixtures of experts), two norms per
    block, the final norm, the embedding and, unless tied, the output matrix. This reproduces the
    published counts of the catalog models within 1 %, which is why configs without a
    parameter count can still be placed.
    """
    q_width = n_heads * head_dim
    kv_width = n_kv_heads * head_dim
    attn = hidden_size * q_width + 2 * hidden_size * kv_width + q_width * hidden_size
    if attention_bias:
        attn += q_width + 2 * kv_width
    mlp_one = 3 * hidden_size * intermediate_size
    norms = 2 * hidden_size
    embed = vocab_size * hidden_size * (1 if tie_word_embeddings else 2) + hidden_size
    if n_experts > 0:
        router = hidden_size * n_experts
        total = n_layers * (attn + n_experts * mlp_one + router + norms) + embed
        active = n_layers * (attn + experts_per_token * mlp_one + router + norms) + embed
        return float(total), float(active)
    total = n_layers * (attn + mlp_one + norms) + embed
    return float(total), float(total)


_REQUIRED = ("num_hidden_layers", "hidden_size", "num_attention_heads", "vocab_size")


def arch_from_hf_config(config: Mapping[str, Any], name: str) -> ModelArch:
    """Build a `ModelArch` from a Hugging Face `config.json` (already parsed).

    Reads the keys shared by the llama, mistral, qwen2, gemma2, phi3 and mixtral families;
    a multimodal config's `text_config` is used when present. Parameter counts are estimated
    from the shapes (`estimate_params`), since config.json does not carry them.

    Raises:
        BadRequest: required fields are missing or not positive integers; the message names them.

    """
    cfg: dict[str, Any] = dict(config)
    if isinstance(cfg.get("text_config"), Mapping):
        cfg = {**cfg, **cfg["text_config"]}
    missing = [k for k in _REQUIRED if k not in cfg]
    if "intermediate_size" not in cfg and "ffn_dim" not in cfg:
        missing.append("intermediate_size")
    if missing:
        raise BadRequest(
            f"config.json of {name!r} lacks required field(s): {', '.join(missing)}",
            param="config",
        )

    def as_int(key: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise BadRequest(
                f"config.json of {name!r}: {key} must be a positive integer, got {value!r}",
                param="config",
            )
        return value

    layers = as_int("num_hidden_layers", cfg["num_hidden_layers"])
    hidden = as_int("hidden_size", cfg["hidden_size"])
    heads = as_int("num_attention_heads", cfg["num_attention_heads"])
    kv_raw = cfg.get("num_key_value_heads")
    kv = as_int("num_key_value_heads", kv_raw) if kv_raw is not None else heads
    hd_raw = cfg.get("head_dim")
    head_dim = as_int("head_dim", hd_raw) if hd_raw is not None else hidden // heads
    vocab = as_int("vocab_size", cfg["vocab_size"])
    inter_key = "intermediate_size" if "intermediate_size" in cfg else "ffn_dim"
    inter = as_int(inter_key, cfg[inter_key])
    ctx_raw = cfg.get("max_position_embeddings", cfg.get("seq_length", 4096))
    ctx = as_int("max_position_embeddings", ctx_raw)
    experts = int(cfg.get("num_local_experts") or 0)
    top_k = int(cfg.get("num_experts_per_tok") or 0) if experts else 0
    model_type = str(cfg.get("model_type", ""))
    attention_bias = bool(cfg.get("attention_bias", model_type == "qwen2"))
    total, active = estimate_params(
        n_layers=layers,
        hidden_size=hidden,
        n_heads=heads,
        n_kv_heads=kv,
        head_dim=head_dim,
        vocab_size=vocab,
        intermediate_size=inter,
        n_experts=experts,
        experts_per_token=top_k,
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        attention_bias=attention_bias,
    )
    return ModelArch(
        name=name,
        n_layers=layers,
        hidden_size=hidden,
        n_heads=heads,
        n_kv_heads=kv,
        head_dim=head_dim,
        vocab_size=vocab,
        n_params=total,
        n_active_params=active,
        intermediate_size=inter,
        max_context=ctx,
        n_experts=experts,
        experts_per_token=top_k,
    )


def load_model_arch(name_or_path: str) -> ModelArch:
    """Resolve a catalog name, or a folder (or file) holding a Hugging Face config.json.

    Raises:
        NotFound: neither a catalog model nor a readable config.json.
        BadRequest: the config.json is not valid JSON or lacks required fields.

    """
    path = Path(name_or_path)
    config_path = path / "config.json" if path.is_dir() else path
    if config_path.is_file():
        try:
            config = json.loads(config_path.read_text("utf-8"))
        except json.JSONDecodeError as exc:
            raise BadRequest(f"{config_path} is not valid JSON: {exc}", param="model") from exc
        if not isinstance(config, dict):
            raise BadRequest(f"{config_path} must hold a JSON object", param="model")
        label = path.name if path.is_dir() else path.parent.name
        return arch_from_hf_config(config, label or str(path))
    return find_model(name_or_path)
