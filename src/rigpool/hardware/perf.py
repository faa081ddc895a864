"""Roofline performance model: how fast a GPU serves a model, from four published numbers.

Why a model and not a benchmark table: rigpool must time GPUs nobody measured (every consumer
card in the catalog), for the emulated backend, the simulator, attestation deadlines and prices.
LLM inference has two phases with different bottlenecks, so each gets its roofline:

- Prefill (the prompt) multiplies every prompt token through the weights at once, so it is
  compute-bound: ``flops = 2 x active_params x n + 2 x layers x attn_width x n^2`` (the second
  term is causal attention), at ``fp16_tflops x EFF.compute`` (x ``EFF.gguf_compute`` for
  block-quantized GGUF weights, which are dequantized on the fly). It can never beat reading
  the weights once.
- Decode (each new token) must read all weights used per step plus each sequence's KV cache,
  so at small batch it is memory-bound: ``bytes / (bandwidth x EFF.memory)``; its compute,
  ``batch x (2 x active_params + 4 x layers x attn_width x context)``, takes over at large batch.
  A step costs the larger of the two.
- Both pay ``EFF.layer_overhead_s`` per layer per forward pass: kernel launches and
  synchronisation, which is why small models never reach the bandwidth bound.

The four efficiency constants are fitted (least squares on log error, Nelder-Mead) to published
llama.cpp and vLLM measurements in `hardware/data/perf_calibration.csv`; rows marked `holdout`
are left out of the fit and reported separately by `calibration_report()`.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import cache
from importlib import resources
from typing import Literal

from rigpool.core.errors import BadRequest
from rigpool.hardware.catalog import GpuSpec, find_gpu
from rigpool.hardware.memory import quant_format, weights_bytes
from rigpool.hardware.models import ModelArch, find_model

Split = Literal["tensor", "layer"]

# Block-quantized GGUF formats: their matmuls dequantize weights in the kernel.
_GGUF_BLOCK = frozenset({"q8_0", "q6_k", "q5_k_m", "q4_k_m", "q4_0", "q3_k_m", "q2_k"})

# Tensor parallelism all-reduces twice per layer per forward pass; on one host over PCIe/NVLink
# with NCCL a small all-reduce costs tens of microseconds. Assumption, not fitted.
ALLREDUCE_S = 25e-6


@dataclass(frozen=True)
class Efficiency:
    """Fractions of the spec-sheet peaks that real engines reach, plus a fixed per-layer cost.

    Attributes:
        memory: Achieved / peak memory bandwidth during decode.
        compute: Achieved / peak dense FP16 tensor throughput during prefill (16-bit weights).
        gguf_compute: Extra factor on `compute` for block-quantized GGUF weights.
        layer_overhead_s: Seconds per layer per forward pass not explained by either roofline.

    """

    memory: float
    compute: float
    gguf_compute: float
    layer_overhead_s: float


# Fitted by `fit_efficiency()` on the `fit` rows of perf_calibration.csv;
# tests/hardware/test_perf.py checks that a re-fit reproduces these values.
EFF = Efficiency(memory=1.0, compute=0.4246, gguf_compute=0.7809, layer_overhead_s=1.361e-04)


@dataclass(frozen=True)
class PerfEstimate:
    """Predicted speed of one model on one GPU (or N identical GPUs) at a batch size.

    Attributes:
        gpu, model, quant, batch, n_gpus, split, context: What was estimated.
        prefill_tokens_per_s: Prompt tokens per second for a 512-token prompt.
        decode_tokens_per_s_per_stream: Tokens per second each of `batch` streams sees.
        decode_tokens_per_s_total: Throughput of the card: batch x per-stream speed.
        decode_bound: Which roofline limits decode at this batch: "memory" or "compute".

    """

    gpu: str
    model: str
    quant: str
    batch: int
    n_gpus: int
    split: Split
    context: int
    prefill_tokens_per_s: float
    decode_tokens_per_s_per_stream: float
    decode_tokens_per_s_total: float
    decode_bound: Literal["memory", "compute"]
    # Terms kept so that `ttft_s` can price any prompt length.
    _flops_per_token: float
    _attn_flops_per_token2: float
    _flops_per_s: float
    _weights_read_s: float
    _pass_overhead_s: float

    def prefill_s(self, prompt_tokens: int, n_seqs: int = 1) -> float:
        """Seconds to prefill `n_seqs` prompts of `prompt_tokens` each in one batch."""
        if prompt_tokens <= 0:
            return self._pass_overhead_s
        n = prompt_tokens * n_seqs
        flops = self._flops_per_token * n + self._attn_flops_per_token2 * prompt_tokens**2 * n_seqs
        return max(flops / self._flops_per_s, self._weights_read_s) + self._pass_overhead_s

    def ttft_s(self, prompt_tokens: int) -> float:
        """Time to first token for one prompt: its prefill (which also yields the first token)."""
        return self.prefill_s(prompt_tokens)

    @property
    def tpot_s(self) -> float:
        """Time per output token after the first, per stream, at this batch and context."""
        return 1.0 / self.decode_tokens_per_s_per_stream


def _moe_weight_fraction(model: ModelArch, batch: int) -> float:
    """Share of the expert weights one decode step reads when `batch` tokens pick experts.

    With E experts and top-k routing a token misses an expert with probability 1 - k/E, so a
    batch of b independent tokens touches 1 - (1 - k/E)^b of them: batch 1 reads only the
    active experts, a large batch reads nearly all.
    """
    if not model.is_moe:
        return 1.0
    k_over_e = model.experts_per_token / model.n_experts
    return 1.0 - (1.0 - k_over_e) ** batch


def _decode_weight_bytes(model: ModelArch, quant: str, batch: int) -> float:
    """Weight bytes one decode step reads.

    The input embedding table is not read whole (each token looks up one row), so it is left
    out; the output matrix is read whole. For mixtures of experts only the experts that the
    batch's tokens are routed to are read.
    """
    embed = model.vocab_size * model.hidden_size * quant_format(quant).bits_per_weight / 8.0
    total = weights_bytes(model, quant) - embed
    if not model.is_moe:
        return total
    active = weights_bytes(model, quant, active_only=True) - embed
    k_over_e = model.experts_per_token / model.n_experts
    experts_all = (total - active) / (1.0 - k_over_e)  # all expert weights
    shared = total - experts_all
    return shared + experts_all * _moe_weight_fraction(model, batch)


def estimate(
    gpu: GpuSpec,
    model: ModelArch,
    quant: str = "fp16",
    batch: int = 1,
    *,
    context: int = 1024,
    n_gpus: int = 1,
    split: Split = "tensor",
    kv_dtype_bytes: float = 2.0,
    eff: Efficiency | None = None,
) -> PerfEstimate:
    """Predict prefill and decode speed of `model` at `quant` on `gpu`.

    Args:
        gpu: The card (or `cpu_spec()`).
        model: The architecture.
        quant: Weight format (see `memory.QUANTS`).
        batch: Sequences decoded together.
        context: Mean tokens in each sequence's KV cache while decoding.
        n_gpus: Identical cards on one host serving one replica.
        split: "tensor" (each layer split across cards: bytes and flops divide by n, plus two
            all-reduces per layer) or "layer" (llama.cpp's default: cards run their layers in
            turn, so memory adds up but speed is that of one card).
        kv_dtype_bytes: Bytes per KV-cache value.
        eff: Efficiency constants (default: the fitted `EFF`).

    Raises:
        BadRequest: non-positive batch, context or n_gpus, or an unknown quant.

    """
    if batch <= 0 or context < 0 or n_gpus <= 0:
        raise BadRequest("batch and n_gpus must be positive, context non-negative", param="batch")
    e = eff or EFF
    fmt = quant_format(quant)
    attn_width = model.n_heads * model.head_dim
    parallel = n_gpus if split == "tensor" else 1
    sync_s = 2 * ALLREDUCE_S if (split == "tensor" and n_gpus > 1) else 0.0
    pass_overhead = model.n_layers * (e.layer_overhead_s + sync_s)

    compute_eff = e.compute * (e.gguf_compute if fmt.name in _GGUF_BLOCK else 1.0)
    flops_per_s = gpu.fp16_tflops * 1e12 * compute_eff * parallel
    bytes_per_s = gpu.mem_bandwidth_gbs * 1e9 * e.memory * parallel
    flops_per_token = 2.0 * model.n_active_params
    attn_per_token2 = 2.0 * model.n_layers * attn_width  # causal: half of 4 x L x d x n^2
    weights_read_s = weights_bytes(model, fmt.name) / bytes_per_s

    kv_per_token = 2.0 * model.n_layers * model.n_kv_heads * model.head_dim * kv_dtype_bytes
    step_bytes = _decode_weight_bytes(model, fmt.name, batch) + batch * kv_per_token * context
    step_flops = batch * (flops_per_token + 4.0 * model.n_layers * attn_width * context)
    mem_s = step_bytes / bytes_per_s
    compute_s = step_flops / flops_per_s
    step_s = max(mem_s, compute_s) + pass_overhead

    partial = PerfEstimate(
        gpu=gpu.name,
        model=model.name,
        quant=fmt.name,
        batch=batch,
        n_gpus=n_gpus,
        split=split,
        context=context,
        prefill_tokens_per_s=0.0,
        decode_tokens_per_s_per_stream=1.0 / step_s,
        decode_tokens_per_s_total=batch / step_s,
        decode_bound="memory" if mem_s >= compute_s else "compute",
        _flops_per_token=flops_per_token,
        _attn_flops_per_token2=attn_per_token2,
        _flops_per_s=flops_per_s,
        _weights_read_s=weights_read_s,
        _pass_overhead_s=pass_overhead,
    )
    return replace(partial, prefill_tokens_per_s=512 / partial.prefill_s(512))


def pipeline_tpot_s(span_tpot_s: float, hops: int, hop_rtt_s: float = 0.020) -> float:
    """Per-token time of a model split into layer spans on different providers.

    Each span computes its share of layers in turn (together as long as one card with all the
    layers, `span_tpot_s`), and every hop between providers adds one network round trip per
    token, since activations go forward and the sampled token comes back (default 20 ms, a
    same-region WAN round trip).
    """
    return span_tpot_s + hops * hop_rtt_s


# --- calibration -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Measurement:
    """One published speed and the conditions it was measured under."""

    id: str
    use: Literal["fit", "holdout", "reference"]
    engine: str
    gpu: str
    n_gpus: int
    split: Split
    model: str
    quant: str
    metric: Literal["decode_tps", "prefill_tps", "ttft_s", "tpot_s"]
    value: float
    batch: int
    prompt_tokens: int
    n_seqs: int
    context: int
    source: str


@cache
def calibration_data() -> tuple[Measurement, ...]:
    """The published measurements in `hardware/data/perf_calibration.csv`."""
    text = (
        resources.files("rigpool.hardware").joinpath("data/perf_calibration.csv").read_text("utf-8")
    )
    out = []
    for row in csv.DictReader(io.StringIO(text)):
        split: Split = "tensor" if row["split"] == "tensor" else "layer"
        metric, use = row["metric"], row["use"]
        if use not in ("fit", "holdout", "reference"):
            raise ValueError(f"unknown use {use!r} in calibration row {row['id']}")
        if metric not in ("decode_tps", "prefill_tps", "ttft_s", "tpot_s"):
            raise ValueError(f"unknown metric {metric!r} in calibration row {row['id']}")
        out.append(
            Measurement(
                id=row["id"],
                use=use,  # type: ignore[arg-type]
                engine=row["engine"],
                gpu=row["gpu"],
                n_gpus=int(row["n_gpus"]),
                split=split,
                model=row["model"],
                quant=row["quant"],
                metric=metric,  # type: ignore[arg-type]
                value=float(row["value"]),
                batch=int(row["batch"]),
                prompt_tokens=int(row["prompt_tokens"]),
                n_seqs=int(row["n_seqs"]),
                context=int(row["context"]),
                source=row["source"],
            )
        )
    return tuple(out)


def predict(m: Measurement, eff: Efficiency | None = None) -> float:
    """What the model predicts for measurement `m`, in the measurement's own unit."""
    est = estimate(
        find_gpu(m.gpu),
        find_model(m.model),
        m.quant,
        m.batch,
        context=m.context,
        n_gpus=m.n_gpus,
        split=m.split,
        eff=eff,
    )
    if m.metric == "decode_tps":
        return est.decode_tokens_per_s_per_stream
    if m.metric == "tpot_s":
        return est.tpot_s
    if m.metric == "ttft_s":
        return est.prefill_s(m.prompt_tokens, m.n_seqs)
    return m.prompt_tokens / est.prefill_s(m.prompt_tokens, m.n_seqs)


def _nelder_mead(
    f: Callable[[list[float]], float], x0: Sequence[float], step: float = 0.3, iters: int = 2000
) -> list[float]:
    """Minimise `f` from `x0` with the Nelder-Mead simplex (deterministic, derivative-free)."""
    n = len(x0)
    simplex = [list(x0)] + [
        [x + (step if i == j else 0.0) for j, x in enumerate(x0)] for i in range(n)
    ]
    values = [f(p) for p in simplex]
    for _ in range(iters):
        order = sorted(range(n + 1), key=values.__getitem__)
        simplex = [simplex[i] for i in order]
        values = [values[i] for i in order]
        if values[-1] - values[0] < 1e-12:
            break
        centroid = [sum(p[j] for p in simplex[:-1]) / n for j in range(n)]
        worst = simplex[-1]

        def toward(
            t: float, centroid: list[float] = centroid, worst: list[float] = worst
        ) -> list[float]:
            return [c + t * (w - c) for c, w in zip(centroid, worst, strict=True)]

        reflected = toward(-1.0)
        fr = f(reflected)
        if fr < values[0]:
            expanded = toward(-2.0)
            fe = f(expanded)
            simplex[-1], values[-1] = (expanded, fe) if fe < fr else (reflected, fr)
        elif fr < values[-2]:
            simplex[-1], values[-1] = reflected, fr
        else:
            contracted = toward(0.5)
            fc = f(contracted)
            if fc < values[-1]:
                simplex[-1], values[-1] = contracted, fc
            else:
                best = simplex[0]
                simplex = [best] + [
                    [b + 0.5 * (x - b) for b, x in zip(best, p, strict=True)] for p in simplex[1:]
                ]
                values = [values[0]] + [f(p) for p in simplex[1:]]
    return simplex[min(range(n + 1), key=values.__getitem__)]


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def _from_params(x: Sequence[float]) -> Efficiency:
    """Unconstrained optimiser coordinates -> constants (fractions in (0, 1), overhead > 0)."""
    return Efficiency(
        memory=_sigmoid(x[0]),
        compute=_sigmoid(x[1]),
        gguf_compute=_sigmoid(x[2]),
        layer_overhead_s=math.exp(x[3]),
    )


def fit_efficiency(measurements: Sequence[Measurement] | None = None) -> Efficiency:
    """Fit the four efficiency constants to the `fit` rows by least squares on log(pred/meas).

    Log error treats over- and under-prediction alike and lets a 5 tok/s and a 9000 tok/s
    measurement weigh the same. Efficiencies are optimised through a logistic map so they stay
    physical fractions (an engine cannot beat the spec-sheet peak), the overhead as a log.
    """
    rows = [m for m in (measurements or calibration_data()) if m.use == "fit"]

    def loss(x: list[float]) -> float:
        e = _from_params(x)
        return sum(math.log(predict(m, e) / m.value) ** 2 for m in rows)

    x0 = [_logit(0.8), _logit(0.4), _logit(0.8), math.log(1e-4)]
    best = _nelder_mead(loss, x0)
    best = _nelder_mead(loss, best, step=0.05)  # restart: Nelder-Mead can stall on a ridge
    e = _from_params(best)
    return Efficiency(
        memory=round(e.memory, 4),
        compute=round(e.compute, 4),
        gguf_compute=round(e.gguf_compute, 4),
        layer_overhead_s=float(f"{e.layer_overhead_s:.4g}"),
    )


@dataclass(frozen=True)
class CalibrationPoint:
    """Predicted versus measured for one published figure."""

    id: str
    use: str  # "fit", "holdout" (not used in the fit) or "reference" (reported, not fitted)
    engine: str
    gpu: str
    model: str
    quant: str
    metric: str
    measured: float
    predicted: float
    rel_error: float  # (predicted - measured) / measured
    source: str


def calibration_report(eff: Efficiency | None = None) -> list[CalibrationPoint]:
    """Every calibration measurement with the model's prediction and relative error."""
    out = []
    for m in calibration_data():
        p = predict(m, eff)
        out.append(
            CalibrationPoint(
                id=m.id,
                use=m.use,
                engine=m.engine,
                gpu=m.gpu if m.n_gpus == 1 else f"{m.n_gpus}x {m.gpu}",
                model=m.model,
                quant=m.quant,
                metric=m.metric,
                measured=m.value,
                predicted=p,
                rel_error=(p - m.value) / m.value,
                source=m.source,
            )
        )
    return out


def calibration_summary(eff: Efficiency | None = None) -> dict[str, float]:
    """Median and worst absolute relative error for the fit, holdout and reference rows."""
    report = calibration_report(eff)
    out: dict[str, float] = {}
    for label in ("fit", "holdout", "reference"):
        errs = [abs(p.rel_error) for p in report if p.use == label]
        out[f"{label}_n"] = float(len(errs))
        out[f"{label}_median_abs_error"] = statistics.median(errs) if errs else math.nan
        out[f"{label}_max_abs_error"] = max(errs) if errs else math.nan
    return out
