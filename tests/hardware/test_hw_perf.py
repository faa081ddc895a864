"""Performance model against published llama.cpp and vLLM measurements.

Tolerances (relative error): each fitted point within 45 %, each held-out point within 55 %,
median over each set within 20 %. Rows marked `reference` (llama.cpp prefill on datacenter cards,
Dec 2023 multi-GPU rows of unknown split mode) are reported but not bounded; see docs/hardware.md.
"""

import pytest

from rigpool.hardware.catalog import cpu_spec, find_gpu
from rigpool.hardware.memory import best_quant_that_fits
from rigpool.hardware.models import find_model
from rigpool.hardware.perf import (
    EFF,
    calibration_report,
    calibration_summary,
    estimate,
    fit_efficiency,
    pipeline_tpot_s,
)


def test_stored_constants_are_the_fit() -> None:
    fitted = fit_efficiency()
    assert fitted.memory == pytest.approx(EFF.memory, rel=0.02)
    assert fitted.compute == pytest.approx(EFF.compute, rel=0.02)
    assert fitted.gguf_compute == pytest.approx(EFF.gguf_compute, rel=0.02)
    assert fitted.layer_overhead_s == pytest.approx(EFF.layer_overhead_s, rel=0.05)


@pytest.mark.parametrize(
    "point", [p for p in calibration_report() if p.use == "fit"], ids=lambda p: p.id
)
def test_fitted_points_within_tolerance(point) -> None:  # type: ignore[no-untyped-def]
    assert abs(point.rel_error) < 0.45


@pytest.mark.parametrize(
    "point", [p for p in calibration_report() if p.use == "holdout"], ids=lambda p: p.id
)
def test_held_out_points_within_tolerance(point) -> None:  # type: ignore[no-untyped-def]
    assert abs(point.rel_error) < 0.55


def test_summary_medians() -> None:
    summary = calibration_summary()
    assert summary["fit_n"] >= 6 and summary["holdout_n"] >= 4
    assert summary["fit_median_abs_error"] < 0.20
    assert summary["holdout_median_abs_error"] < 0.20


def test_vllm_h100_llama3_8b_close_to_published() -> None:
    est = estimate(find_gpu("H100"), find_model("llama-3-8b"), "bf16", batch=6, context=300)
    assert est.tpot_s == pytest.approx(0.0075, rel=0.25)
    assert est.prefill_s(137, n_seqs=10) == pytest.approx(0.063, rel=0.25)


def test_decode_memory_bound_then_compute_bound() -> None:
    gpu, model = find_gpu("A100 80GB"), find_model("llama-3.1-8b")
    small = estimate(gpu, model, "fp16", batch=1)
    large = estimate(gpu, model, "fp16", batch=512, context=256)
    assert small.decode_bound == "memory" and large.decode_bound == "compute"
    assert large.decode_tokens_per_s_total > 10 * small.decode_tokens_per_s_total
    assert large.tpot_s > small.tpot_s


def test_ttft_grows_with_prompt_and_quant_speeds_decode() -> None:
    est = estimate(find_gpu("RTX 4090"), find_model("llama-3.1-8b"), "q4_k_m")
    assert est.ttft_s(2048) > est.ttft_s(512) > est.ttft_s(16) > 0
    fp16 = estimate(find_gpu("RTX 4090"), find_model("llama-3.1-8b"), "fp16")
    assert est.tpot_s < fp16.tpot_s


def test_moe_reads_only_active_experts_at_batch_one() -> None:
    gpu = find_gpu("H100")
    mixtral = estimate(gpu, find_model("mixtral-8x7b"), "fp16")
    dense13 = estimate(gpu, find_model("llama-2-13b"), "fp16")
    assert mixtral.tpot_s == pytest.approx(dense13.tpot_s, rel=0.25)


def test_tensor_parallel_speeds_up_and_layer_split_does_not() -> None:
    gpu, model = find_gpu("RTX 4090"), find_model("llama-3-70b")
    one_layer = estimate(gpu, model, "q4_k_m", n_gpus=2, split="layer")
    tensor = estimate(gpu, model, "q4_k_m", n_gpus=2, split="tensor")
    assert tensor.tpot_s < one_layer.tpot_s
    assert pipeline_tpot_s(one_layer.tpot_s, hops=1) == pytest.approx(one_layer.tpot_s + 0.02)


def test_emulated_backend_contract_on_cpu() -> None:
    # The emulated backend calls exactly these; a CPU agent must get finite, slow timings.
    gpu = cpu_spec()
    model = find_model("phi-3-mini")
    quant = best_quant_that_fits(model, gpu, 2048)
    assert quant is not None
    est = estimate(gpu, model, quant, 1)
    assert 0.05 < est.tpot_s < 2.0
    assert est.ttft_s(128) > 0.1
