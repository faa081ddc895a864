"""Which cards can serve a model, how fast, and at what price per token.

Pure functions over the catalog, the memory-fit and the performance model; the `rigpool fit`
command only renders what these return, and the scheduler may reuse them. Prices are per GPU-hour
(marketplace first, else cloud on-demand) divided by the tokens the card produces in an hour
while serving `SERVING_BATCH` streams (or as many as fit), because a provider is paid per token
while it pays per hour.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from rigpool.hardware.catalog import GpuSpec, gpu_catalog
from rigpool.hardware.memory import (
    QUANT_ORDER,
    best_quant_that_fits,
    max_concurrency,
    memory_fit,
    quant_format,
)
from rigpool.hardware.models import ModelArch
from rigpool.hardware.perf import estimate, pipeline_tpot_s

SERVING_BATCH = 16
TTFT_PROMPT_TOKENS = 512
HOP_RTT_S = 0.020  # one WAN round trip between pipeline stages, per token
MAX_PIPELINE_SPANS = 16
# Multi-card plans stop at 4-bit: below it quality drops faster than price does.
PLAN_QUANTS = QUANT_ORDER[: QUANT_ORDER.index("int4") + 1]


@dataclass(frozen=True)
class Option:
    """One way to serve the model: `n_gpus` x `gpu` at `quant`.

    Attributes:
        kind: "single", "tensor" (N cards in one host) or "pipeline" (layer spans on N providers).
        decode_tps: Tokens per second one stream sees at batch 1.
        ttft_s: Time to first token for a 512-token prompt.
        serving_batch: Streams assumed when pricing.
        usd_per_hour: Price of all the cards, None if the catalog has none.
        usd_per_m_tokens: Price per million output tokens at `serving_batch`, None if no price.

    """

    kind: Literal["single", "tensor", "pipeline"]
    gpu: str
    n_gpus: int
    quant: str
    memory_gb_per_gpu: float
    decode_tps: float
    ttft_s: float
    serving_batch: int
    throughput_tps: float
    usd_per_hour: float | None
    usd_per_m_tokens: float | None


def _price_per_m(usd_per_hour: float | None, tokens_per_s: float) -> float | None:
    if usd_per_hour is None or tokens_per_s <= 0:
        return None
    return usd_per_hour / (tokens_per_s * 3600.0) * 1e6


def _option(
    model: ModelArch,
    gpu: GpuSpec,
    quant: str,
    context: int,
    kind: Literal["single", "tensor", "pipeline"] = "single",
    n_gpus: int = 1,
) -> Option:
    batch = max(1, min(SERVING_BATCH, max_concurrency(model, gpu, quant, context, n_gpus=n_gpus)))
    split: Literal["tensor", "layer"] = "tensor" if kind == "tensor" else "layer"
    one = estimate(gpu, model, quant, 1, context=context, n_gpus=n_gpus, split=split)
    many = estimate(gpu, model, quant, batch, context=context, n_gpus=n_gpus, split=split)
    tpot1, tpot_b = one.tpot_s, many.tpot_s
    ttft = one.ttft_s(TTFT_PROMPT_TOKENS)
    if kind == "pipeline":
        hops = n_gpus - 1
        tpot1 = pipeline_tpot_s(tpot1, hops, HOP_RTT_S)
        tpot_b = pipeline_tpot_s(tpot_b, hops, HOP_RTT_S)
        ttft += hops * HOP_RTT_S
    price = gpu.usd_per_hour * n_gpus if gpu.usd_per_hour is not None else None
    throughput = batch / tpot_b
    return Option(
        kind=kind,
        gpu=gpu.name,
        n_gpus=n_gpus,
        quant=quant,
        memory_gb_per_gpu=memory_fit(model, gpu, quant, context, n_gpus=n_gpus).total_gb,
        decode_tps=1.0 / tpot1,
        ttft_s=ttft,
        serving_batch=batch,
        throughput_tps=throughput,
        usd_per_hour=price,
        usd_per_m_tokens=_price_per_m(price, throughput),
    )


def _sort_key(o: Option) -> tuple[bool, float, float]:
    return (o.usd_per_m_tokens is None, o.usd_per_m_tokens or 0.0, -o.decode_tps)


def single_gpu_options(
    model: ModelArch, context: int = 4096, quant: str | None = None
) -> list[Option]:
    """Every catalog GPU that holds the model alone, cheapest per token first.

    With `quant` given only that format is tried; otherwise each card gets the highest-precision
    format that fits it.
    """
    out = []
    for gpu in gpu_catalog().values():
        if quant is not None:
            q: str | None = quant_format(quant).name
            if not memory_fit(model, gpu, q or "", context).fits:
                continue
        else:
            q = best_quant_that_fits(model, gpu, context)
        if q is not None:
            out.append(_option(model, gpu, q, context))
    return sorted(out, key=_sort_key)


def multi_gpu_options(
    model: ModelArch, context: int = 4096, quant: str | None = None
) -> list[Option]:
    """Priced multi-card plans, cheapest per token first.

    Tensor parallel: 2, 4 or 8 identical cards in one host (the count must divide the KV heads,
    since each card takes whole heads). Pipeline: the fewest identical cards on different
    providers whose layer spans hold the model, paying `HOP_RTT_S` per hop per token. Each
    plan uses the highest-precision format down to 4-bit that fits.
    """
    quants = (quant_format(quant).name,) if quant is not None else PLAN_QUANTS
    out = []
    for gpu in gpu_catalog().values():
        if gpu.usd_per_hour is None:
            continue
        for n in (2, 4, 8):
            if model.n_kv_heads % n:
                continue
            q = next((q for q in quants if memory_fit(model, gpu, q, context, n_gpus=n).fits), None)
            if q is not None:
                out.append(_option(model, gpu, q, context, "tensor", n))
                break
        for n in range(2, min(MAX_PIPELINE_SPANS, model.n_layers) + 1):
            q = next((q for q in quants if memory_fit(model, gpu, q, context, n_gpus=n).fits), None)
            if q is not None:
                out.append(_option(model, gpu, q, context, "pipeline", n))
                break
    return sorted(out, key=_sort_key)


def why_no_single_gpu(model: ModelArch, context: int = 4096, quant: str | None = None) -> str:
    """One sentence saying how far the model is from fitting the largest catalog card."""
    largest = max(gpu_catalog().values(), key=lambda g: g.vram_gb)
    q = quant_format(quant).name if quant is not None else QUANT_ORDER[-1]
    need = memory_fit(model, largest, q, context).total_gb
    need16 = memory_fit(model, largest, "fp16", context).total_gb
    usable = memory_fit(model, largest, q, context).usable_gb
    cards = int(-(-need // usable)) + 1 if usable > 0 else 0
    return (
        f"{model.name} at context {context} needs {need:.1f} GB at {q} ({need16:.1f} GB at "
        f"fp16); the largest card, {largest.name}, offers {usable:.1f} GB usable; "
        f"try a shorter context, a smaller format, or {max(cards, 2)} cards"
    )
