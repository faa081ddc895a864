"""Memory-fit: whether a model, at a quantization and context, fits on a card.

Placement's first question. The answer is a sum the user can check (`FitResult.explain`):

    weights  = params x bits_per_weight / 8       (embeddings kept at 16 bits where the format does)
    kv_cache = 2 x layers x kv_heads x head_dim x kv_bytes x context x sequences
    overhead = 0.5 GB + 5 % of (weights + kv_cache)
    usable   = vram x (1 - 5 %)

Assumptions, stated once here:
- Overhead: about 0.5 GB is the CUDA context plus cuBLAS workspaces that any CUDA process
  holds; 5 % of the payload covers activation/compute buffers, the logits buffer and allocator
  fragmentation. llama.cpp and vLLM both land in this range for the catalog models.
- Reserve: 5 % of the card stays free (a display, other processes, and the headroom vLLM's
  default `gpu_memory_utilization=0.9` keeps is comparable). For the CPU stand-in, its RAM.
- Bits per weight are the real sizes of the formats *including* block scales, measured from
  published files (see `QUANTS`); GB below are 1e9 bytes, card capacities are binary (GiB).
"""

from __future__ import annotations

from dataclasses import dataclass

from rigpool.core.errors import BadRequest
from rigpool.hardware.catalog import GpuSpec
from rigpool.hardware.models import ModelArch

RUNTIME_FIXED_GB = 0.5
RUNTIME_FRACTION = 0.05
RESERVE_FRACTION = 0.05
_GB = 1e9


@dataclass(frozen=True)
class QuantFormat:
    """A weight format and what it costs per parameter.

    Attributes:
        name: Canonical lowercase id ("q4_k_m").
        bits_per_weight: Average storage per weight including block scales and zero points.
        embedding_bits: Bits of the embedding and output matrices when the format leaves them
            unquantized (AWQ/GPTQ/int8 checkpoints keep them in 16 bits); None = same as body.
        source: Where the bits-per-weight figure comes from.

    """

    name: str
    bits_per_weight: float
    embedding_bits: float | None
    source: str


_GGUF_SIZES = (
    "TheBloke/Llama-2-7B-GGUF file sizes (Q4_K_M 4,081,004,224 B, Q5_K_M 4,783,156,928 B, "
    "Q8_0 7,161,089,728 B over 6.738e9 params)"
)
_KQUANT_PR = "llama.cpp k-quants PR #1684 table (7B sizes) / ggml block layout"

QUANTS: dict[str, QuantFormat] = {
    q.name: q
    for q in (
        QuantFormat("fp32", 32.0, None, "4 bytes per weight"),
        QuantFormat("fp16", 16.0, None, "2 bytes per weight"),
        QuantFormat("bf16", 16.0, None, "2 bytes per weight"),
        QuantFormat("fp8", 8.0, 16.0, "1 byte per weight; per-tensor scales; lm_head/embed 16-bit"),
        QuantFormat("int8", 8.0, 16.0, "1 byte per weight; per-channel scales negligible"),
        QuantFormat("q8_0", 8.5, None, f"ggml block of 32: 32 B + fp16 scale; {_GGUF_SIZES}"),
        QuantFormat(
            "q6_k", 6.5625, None, f"ggml Q6_K super-block 210 B / 256 weights; {_KQUANT_PR}"
        ),
        QuantFormat("q5_k_m", 5.68, None, _GGUF_SIZES),
        QuantFormat("q4_k_m", 4.85, None, _GGUF_SIZES),
        QuantFormat("q4_0", 4.55, None, "ggml block of 32: 16 B + fp16 scale = 4.5; output Q6_K"),
        QuantFormat("int4", 4.25, 16.0, "4-bit, group 128, fp16 scale + zero (AWQ/GPTQ)"),
        QuantFormat("awq", 4.25, 16.0, "4-bit, group 128, fp16 scale + zero"),
        QuantFormat("gptq", 4.25, 16.0, "4-bit, group 128, fp16 scale + zero"),
        QuantFormat("q3_k_m", 3.91, None, _KQUANT_PR),
        QuantFormat("q2_k", 3.35, None, _KQUANT_PR),
    )
}

_QUANT_ALIASES = {
    "f32": "fp32",
    "float32": "fp32",
    "f16": "fp16",
    "float16": "fp16",
    "half": "fp16",
    "bfloat16": "bf16",
    "e4m3": "fp8",
    "q8": "q8_0",
    "q6": "q6_k",
    "q5": "q5_k_m",
    "q5_k": "q5_k_m",
    "q4": "q4_k_m",
    "q4_k": "q4_k_m",
    "q3": "q3_k_m",
    "q3_k": "q3_k_m",
    "q2": "q2_k",
}

# Highest precision first; `best_quant_that_fits` returns the first that fits. The one-byte
# formats come before the GGUF ladder because they keep quality closest to 16-bit.
QUANT_ORDER: tuple[str, ...] = (
    "fp16",
    "q8_0",
    "q6_k",
    "q5_k_m",
    "q4_k_m",
    "int4",
    "q3_k_m",
    "q2_k",
)


def quant_format(name: str) -> QuantFormat:
    """Look a weight format up by name, case-insensitively ("Q4_K_M", "f16", "int4").

    Raises:
        BadRequest: unknown format; the message lists the known ones.

    """
    key = name.strip().lower().replace("-", "_")
    key = _QUANT_ALIASES.get(key, key)
    if key not in QUANTS:
        raise BadRequest(
            f"unknown quantization {name!r}; known: {', '.join(QUANTS)}", param="quant"
        )
    return QUANTS[key]


def weights_bytes(model: ModelArch, quant: str, *, active_only: bool = False) -> float:
    """Bytes of weights in format `quant` (all parameters, or those used per token)."""
    fmt = quant_format(quant)
    params = model.n_active_params if active_only else model.n_params
    if fmt.embedding_bits is None:
        return params * fmt.bits_per_weight / 8.0
    embed_params = 2.0 * model.vocab_size * model.hidden_size
    embed_params = min(embed_params, params)
    body = params - embed_params
    # Only the output row per token is read from the embedding table, but the output matrix is
    # read whole; counting both at 16 bits is the conservative choice for memory.
    return body * fmt.bits_per_weight / 8.0 + embed_params * fmt.embedding_bits / 8.0


def kv_cache_bytes(
    model: ModelArch, context: int, concurrency: int = 1, kv_dtype_bytes: float = 2.0
) -> float:
    """Bytes of KV cache: 2 (K and V) x layers x kv_heads x head_dim x bytes x tokens."""
    per_token = 2.0 * model.n_layers * model.n_kv_heads * model.head_dim * kv_dtype_bytes
    return per_token * context * concurrency


def usable_bytes(gpu: GpuSpec) -> float:
    """What a model may occupy on `gpu`: its capacity less the reserve."""
    return gpu.vram_bytes * (1.0 - RESERVE_FRACTION)


@dataclass(frozen=True)
class FitResult:
    """The memory arithmetic for one (model, GPU, quant, context, concurrency); sizes in GB."""

    model: str
    gpu: str
    quant: str
    context: int
    concurrency: int
    bits_per_weight: float
    weights_gb: float
    kv_cache_gb: float
    overhead_gb: float
    total_gb: float
    vram_gb: float
    usable_gb: float
    fits: bool

    @property
    def headroom_gb(self) -> float:
        """Usable memory left after the model (negative when it does not fit)."""
        return self.usable_gb - self.total_gb

    def explain(self) -> str:
        """The arithmetic, one line per term, so a user can check the verdict by hand."""
        verdict = "fits" if self.fits else "does NOT fit"
        return "\n".join(
            [
                f"{self.model} on {self.gpu} at {self.quant}, context {self.context} x "
                f"{self.concurrency} sequence(s): {verdict}",
                f"  weights   {self.weights_gb:8.2f} GB  (params x {self.bits_per_weight:g} bits"
                " / 8)",
                f"  kv cache  {self.kv_cache_gb:8.2f} GB  (2 x layers x kv_heads x head_dim x "
                f"bytes x {self.context} tokens x {self.concurrency})",
                f"  overhead  {self.overhead_gb:8.2f} GB  ({RUNTIME_FIXED_GB} GB runtime + "
                f"{RUNTIME_FRACTION:.0%} of weights and kv)",
                f"  total     {self.total_gb:8.2f} GB",
                f"  usable    {self.usable_gb:8.2f} GB  ({self.vram_gb:g} GiB card less "
                f"{RESERVE_FRACTION:.0%} reserve)",
                f"  headroom  {self.headroom_gb:8.2f} GB",
            ]
        )


def memory_fit(
    model: ModelArch,
    gpu: GpuSpec,
    quant: str = "fp16",
    context: int = 4096,
    concurrency: int = 1,
    kv_dtype_bytes: float = 2,
    *,
    n_gpus: int = 1,
) -> FitResult:
    """Whether `model` fits on `gpu` (or on each of `n_gpus` identical cards sharing it).

    With `n_gpus` > 1 weights and KV cache are split evenly (tensor parallel or an even layer
    split) and each card pays its own runtime overhead; the result is per card.

    Raises:
        BadRequest: unknown quant, or non-positive context, concurrency or n_gpus.

    """
    if context <= 0 or concurrency <= 0 or n_gpus <= 0:
        raise BadRequest("context, concurrency and n_gpus must be positive", param="context")
    fmt = quant_format(quant)
    weights = weights_bytes(model, fmt.name) / n_gpus
    kv = kv_cache_bytes(model, context, concurrency, kv_dtype_bytes) / n_gpus
    overhead = RUNTIME_FIXED_GB * _GB + RUNTIME_FRACTION * (weights + kv)
    total = weights + kv + overhead
    usable = usable_bytes(gpu)
    return FitResult(
        model=model.name,
        gpu=gpu.name if n_gpus == 1 else f"{n_gpus}x {gpu.name}",
        quant=fmt.name,
        context=context,
        concurrency=concurrency,
        bits_per_weight=fmt.bits_per_weight,
        weights_gb=weights / _GB,
        kv_cache_gb=kv / _GB,
        overhead_gb=overhead / _GB,
        total_gb=total / _GB,
        vram_gb=gpu.vram_gb,
        usable_gb=usable / _GB,
        fits=total <= usable,
    )


def best_quant_that_fits(
    model: ModelArch, gpu: GpuSpec, context: int = 4096, *, n_gpus: int = 1
) -> str | None:
    """The highest-precision format in `QUANT_ORDER` that fits, or None if even q2_k does not.

    Precision is what a provider should give up last, so the first format that fits wins.
    """
    for quant in QUANT_ORDER:
        if memory_fit(model, gpu, quant, context, n_gpus=n_gpus).fits:
            return quant
    return None


def max_concurrency(
    model: ModelArch,
    gpu: GpuSpec,
    quant: str,
    context: int,
    *,
    limit: int = 256,
    n_gpus: int = 1,
) -> int:
    """The most sequences of `context` tokens that fit beside the weights (0 if none, max `limit`).

    Serving throughput and hence price per token depend on how many requests share a card.
    """
    if not memory_fit(model, gpu, quant, context, 1, n_gpus=n_gpus).fits:
        return 0
    lo, hi = 1, limit
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if memory_fit(model, gpu, quant, context, mid, n_gpus=n_gpus).fits:
            lo = mid
        else:
            hi = mid - 1
    return lo
