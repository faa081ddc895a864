"""Trust benchmark: detection and false-positive rates, verification cost, commitment size.

What it runs (all on CPU, real torch models from `trust.simulate`):
- honest providers in fp32, bf16 and fp16 (half greedy, half temperature-1 requests) against a
  fp32 validator: the distribution of every check's value (the calibration behind
  `verification.Tolerances`) and the per-request false-positive rate;
- cheats (a) smaller model, another model, (b) 4-bit and 8-bit weights, (c) random text,
  cheap-generation-then-prefill: per-request detection rates, then requests until detection
  under the adaptive check rate (`sampling`), by Monte Carlo over the measured outcomes;
- (d) inflated metering, (e) a CPU claiming an A100 (attestation), (g) one lying validator;
- cost: teacher-forced validation time / generation time, TOPLOC bytes per 32 tokens.

Usage: .venv/bin/python bench/trust.py [--quick] [--out PATH]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from rigpool.devnet.toymodel import default_cache_root, ensure_toy_model
from rigpool.hardware.catalog import find_gpu
from rigpool.trust.attestation import make_probe, refuse_timeout, size_challenge, verify_attestation
from rigpool.trust.attestation_agent import ChallengeRun, ChallengeTimeout
from rigpool.trust.metering import MeterReading, compare
from rigpool.trust.reputation import yuma_consensus
from rigpool.trust.sampling import (
    SamplingPolicy,
    SpooferBelief,
    check_rate,
    failures_required,
    false_slash_probability,
)
from rigpool.trust.simulate import (
    CLAIMED_MODEL,
    build_test_models,
    make_provider,
    random_prompts,
)
from rigpool.trust.toploc import CHUNK_TOKENS, commit_chunk
from rigpool.trust.torchops import load_model
from rigpool.trust.verification import (
    ProviderClaim,
    Sampling,
    TokenStats,
    Tolerances,
    Validator,
    aggregate_token_test,
)

ROOT = Path(__file__).resolve().parents[1]
MODEL = CLAIMED_MODEL
HONEST = ["float32", "bfloat16", "float16"]
CHEATS = ["smaller", "other", "quantized4", "quantized8", "random_text", "prefill_cheat"]


def run_provider(kind, models, validator, n, dtype="float32", max_tokens=48, seed=0):
    provider = make_provider(kind, models, dtype=dtype)
    out = []
    prompts = random_prompts(n, 1024, seed=1000 + seed)
    for i, prompt in enumerate(prompts):
        temp = 0.0 if i % 2 == 0 else 1.0
        s = Sampling(temperature=temp, max_tokens=max_tokens, seed=seed * 10_000 + i)
        gen = provider(prompt, s)
        claim = ProviderClaim(
            MODEL,
            tuple(prompt),
            tuple(gen.output_ids),
            s,
            tuple(gen.logprobs),
            tuple(gen.commitments),
        )
        t0 = time.perf_counter()
        result = validator.check(claim)
        out.append(
            {
                "greedy": temp == 0.0,
                "result": result,
                "gen_s": gen.seconds,
                "val_s": time.perf_counter() - t0,
                "tokens": len(gen.output_ids),
            }
        )
    return out


def check_values(rows, name):
    return [c.value for r in rows for c in r["result"].checks if c.name == name]


def requests_to_detection(rows, policy, trials=2000, horizon=2000, rng=None):
    """Monte Carlo: a new provider cheating on every request, checked at the adaptive rate.

    A checked request fails per its measured outcome (resampled); sampled requests also feed
    the aggregate token test, which fails once its |z| passes the limit.
    """
    rng = rng or np.random.default_rng(0)
    fails = np.array([not r["result"].passed for r in rows])
    stats = [r["result"].token_stats for r in rows]
    found = []
    for _ in range(trials):
        belief = SpooferBelief.new(policy)
        agg = TokenStats()
        n_checked = 0
        hit = None
        for req in range(1, horizon + 1):
            if rng.random() >= check_rate(belief, policy):
                continue
            i = int(rng.integers(len(rows)))
            n_checked += 1
            agg = agg.combine(stats[i])
            failed = bool(fails[i]) or not aggregate_token_test([agg]).passed
            belief = belief.update(not failed, policy)
            if failed:
                hit = req
                break
        found.append(hit if hit is not None else math.inf)
    arr = np.array(found, dtype=float)
    finite = arr[np.isfinite(arr)]
    return {
        "detected_within_200": float(np.mean(arr <= 200)),
        "mean_requests": float(finite.mean()) if finite.size else math.inf,
        "p95_requests": float(np.percentile(arr, 95)) if finite.size == arr.size else math.inf,
    }


def attestation_bench():
    slow = dataclasses.replace(find_gpu("RTX 3060"), fp16_tflops=1e-4, mem_bandwidth_gbs=0.02)
    small = dict(
        matrix_size=128,
        chunk_bytes=512,
        rows=8,
        max_buffer_bytes=2 << 20,
        products=400,
        allowance_s=0.05,
    )
    out = {}
    for label, gpu in (("honest_slow_gpu", slow), ("cpu_claiming_a100", find_gpu("A100 80GB"))):
        ch = size_challenge(gpu, seed=1, **small)
        run = ChallengeRun(ch, device="cpu")
        t0 = time.perf_counter()
        try:
            resp = run.respond()
        except ChallengeTimeout:
            res = refuse_timeout(ch, time.perf_counter() - t0)
        else:
            reply_s = time.perf_counter() - t0
            probe = make_probe(ch, np.random.default_rng(0))
            t1 = time.perf_counter()
            ans = run.answer(probe)
            res = verify_attestation(ch, resp, reply_s, probe, ans, time.perf_counter() - t1)
        out[label] = {
            "status": res.status,
            "reply_s": res.reply_s,
            "limit_s": res.limit_s,
            "reasons": list(res.reasons),
        }
    h100 = size_challenge(find_gpu("H100 SXM"), seed=1)
    a100 = size_challenge(find_gpu("A100 80GB"), seed=1)
    out["sizing"] = {
        name: {
            "products": c.products,
            "matrix_size": c.matrix_size,
            "buffer_gib": c.buffer_bytes / 2**30,
            "expected_s": c.expected_s,
            "limit_s": c.limit_s,
            "probe_limit_s": c.probe_limit_s,
        }
        for name, c in (("H100 SXM", h100), ("A100 80GB", a100))
    }
    return out


def lying_validator_bench(trials=500):
    rng = np.random.default_rng(0)
    worst = 0.0
    for _ in range(trials):
        n = int(rng.integers(3, 8))
        base = rng.uniform(0.2, 0.95)
        honest = {
            f"v{i}": float(np.clip(base + 0.03 * rng.standard_normal(), 0, 1)) for i in range(n)
        }
        stakes = {v: float(rng.uniform(1, 10)) for v in honest}
        stakes["liar"] = 0.99 * sum(stakes.values())  # just under half the total stake
        spread = max(honest.values()) - min(honest.values())
        without = yuma_consensus({v: {"p": s} for v, s in honest.items()}, stakes).scores["p"]
        for lie in (0.0, 1.0):
            scores = {v: {"p": s} for v, s in honest.items()} | {"liar": {"p": lie}}
            with_liar = yuma_consensus(scores, stakes).scores["p"]
            worst = max(worst, abs(with_liar - without) / max(spread, 1e-9))
    return {"max_shift_over_honest_spread": worst, "trials": trials, "liar_stake_share": 0.497}


def finite(obj):
    """JSON without Infinity/NaN (strict parsers reject them): those become null."""
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "trust.json")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    n_honest = 8 if args.quick else 200
    n_cheat = 4 if args.quick else 24
    console = Console()
    t_start = time.perf_counter()
    models = build_test_models(default_cache_root() / "trust-models-v1", ensure_toy_model())
    validator = Validator(load_model(models.claimed), MODEL)
    tol = Tolerances()
    policy = SamplingPolicy()

    honest = {
        dt: run_provider("honest", models, validator, n_honest, dt, seed=k)
        for k, dt in enumerate(HONEST)
    }
    cheats = {
        kind: run_provider(kind, models, validator, n_cheat, seed=50 + k)
        for k, kind in enumerate(CHEATS)
    }

    calib = {}
    for dt, rows in honest.items():
        calib[dt] = {}
        for name in (
            "logprob_mean_abs",
            "logprob_bad_tokens",
            "toploc_exponent",
            "toploc_mantissa_mean",
            "toploc_mantissa_median",
            "greedy_argmax",
            "token_statistics_z",
        ):
            vals = check_values(rows, name)
            if vals:
                a = np.abs(np.array(vals))
                calib[dt][name] = {
                    "mean": float(a.mean()),
                    "p99": float(np.percentile(a, 99)),
                    "max": float(a.max()),
                }
    cheat_values = {
        kind: {
            name: float(np.mean(np.abs(check_values(rows, name))))
            for name in (
                "logprob_mean_abs",
                "toploc_exponent",
                "toploc_mantissa_mean",
                "greedy_argmax",
                "token_statistics_z",
            )
            if check_values(rows, name)
        }
        for kind, rows in cheats.items()
    }

    all_honest = [r for rows in honest.values() for r in rows]
    fp_requests = sum(not r["result"].passed for r in all_honest)
    fp_rate = fp_requests / len(all_honest)
    fp_bound = max(fp_rate, 3.0 / len(all_honest))  # rule of three when none failed
    honest_agg = aggregate_token_test(
        [r["result"].token_stats for r in all_honest if not r["greedy"]]
    )
    k_fail = failures_required(fp_bound, int(10_000 * policy.cap), target=1e-6)
    p_false_slash = false_slash_probability(fp_bound, int(10_000 * policy.cap), k_fail)

    # The prefill cheat on sampled requests alone: only the aggregated token test can see it.
    cheats["prefill_cheat_sampled_only"] = [r for r in cheats["prefill_cheat"] if not r["greedy"]]
    detection = {}
    for kind, rows in cheats.items():

        def share(flags):
            return float(np.mean(flags)) if flags else float("nan")

        per_req = {
            "greedy": share([not r["result"].passed for r in rows if r["greedy"]]),
            "sampled": share([not r["result"].passed for r in rows if not r["greedy"]]),
        }
        detection[kind] = {
            "per_request": per_req,
            **requests_to_detection(rows, policy, trials=300 if args.quick else 2000),
        }

    gen_s = sum(r["gen_s"] for r in honest["float32"])
    val_s = sum(r["val_s"] for r in honest["float32"])
    ratio = val_s / gen_s
    commit_bytes = len(commit_chunk(np.random.default_rng(0).standard_normal((32, 4096))))

    meter = [
        MeterReading(f"r{i}", "liar", MODEL, 10, 30 + i % 5, 10, 20 + i % 5) for i in range(100)
    ]
    meter_caught = float(np.mean([compare(m) is not None for m in meter]))
    honest_meter = [MeterReading(f"h{i}", "h", MODEL, 10, 21, 10, 20) for i in range(100)]
    meter_fp = float(np.mean([compare(m) is not None for m in honest_meter]))

    attestation = attestation_bench()
    liar = lying_validator_bench(100 if args.quick else 500)

    metrics = {
        "honest_requests": len(all_honest),
        "honest_false_positive_rate": fp_rate,
        "honest_false_positive_upper_bound": fp_bound,
        "honest_aggregate_token_z": honest_agg.value,
        "failures_required_before_slash": k_fail,
        "false_slash_probability_10k_requests": p_false_slash,
        "calibration": calib,
        "cheat_check_values": cheat_values,
        "detection": detection,
        "metering_inflation_detection": meter_caught,
        "metering_false_positive_rate": meter_fp,
        "attestation": attestation,
        "lying_validator": liar,
        "validation_over_generation_time": ratio,
        "overhead_at_floor_rate": ratio * policy.floor,
        "overhead_at_cap_rate": ratio * policy.cap,
        "toploc_bytes_per_32_tokens": commit_bytes,
        "mean_output_tokens": float(np.mean([r["tokens"] for r in all_honest])),
        "wall_s": time.perf_counter() - t_start,
    }
    cheats_ae = [
        "smaller",
        "other",
        "quantized4",
        "random_text",
        "prefill_cheat",
        "prefill_cheat_sampled_only",
    ]
    goals = {
        "cheats_detected_within_200_requests": {
            "target": ">= 0.99",
            "value": min(detection[k]["detected_within_200"] for k in cheats_ae),
        },
        "checking_overhead_share_of_compute_at_cap": {
            "target": "< 0.05",
            "value": ratio * policy.cap,
        },
        "honest_false_slash_probability_10k": {"target": "< 1e-6", "value": p_false_slash},
        "lying_validator_shift_over_honest_spread": {
            "target": "<= 1",
            "value": round(liar["max_shift_over_honest_spread"], 6),
        },
    }
    setup = {
        "quick": args.quick,
        "device": "cpu",
        "torch_threads": 1,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "model": "trust.simulate test model: 2-layer Llama, hidden 64, vocab 1024, "
        "peaked random weights (logit scale 24, attention scale 4)",
        "validator_dtype": "float32",
        "max_tokens": 48,
        "tolerances": dataclasses.asdict(tol),
        "sampling_policy": dataclasses.asdict(policy),
        "toploc": {"chunk_tokens": CHUNK_TOKENS, "topk": 128, "prime": 65521},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(finite({"metrics": metrics, "goals": goals, "setup": setup}), indent=2) + "\n"
    )

    table = Table(
        title="Adversarial suite (per-request detection; requests until detection "
        "under the adaptive check rate)"
    )
    for col in ("provider", "greedy det.", "sampled det.", "det. <=200 req", "mean req", "p95 req"):
        table.add_column(col)
    for kind, d in detection.items():
        table.add_row(
            kind,
            f"{d['per_request']['greedy']:.0%}",
            f"{d['per_request']['sampled']:.0%}",
            f"{d['detected_within_200']:.1%}",
            f"{d['mean_requests']:.1f}",
            f"{d['p95_requests']:.0f}",
        )
    table.add_row("metering inflation", "-", "-", f"{meter_caught:.0%}", "1", "1")
    table.add_row(
        "CPU claiming A100", "-", "-", attestation["cpu_claiming_a100"]["status"], "-", "-"
    )
    console.print(table)
    cal = Table(title="Honest providers vs fp32 validator (max |value| over requests)")
    for col in ("dtype", "logprob mean", "toploc exp", "toploc mant mean", "|z| max", "FP"):
        cal.add_column(col)
    for dt, rows in honest.items():
        c = calib[dt]
        fp = np.mean([not r["result"].passed for r in rows])
        cal.add_row(
            dt,
            f"{c['logprob_mean_abs']['max']:.4f}",
            f"{c['toploc_exponent']['max']:.0f}",
            f"{c['toploc_mantissa_mean']['max']:.2f}",
            f"{c.get('token_statistics_z', {}).get('max', 0):.2f}",
            f"{fp:.1%}",
        )
    cal.add_row(
        "limit",
        f"{tol.logprob_mean_abs}",
        f"{tol.toploc_exp_mismatch}",
        f"{tol.toploc_mant_mean}",
        f"{tol.token_z}",
        "",
    )
    console.print(cal)
    g = Table(title="Goals")
    for col in ("goal", "target", "value"):
        g.add_column(col)
    for name, v in goals.items():
        g.add_row(name, str(v["target"]), f"{v['value']:.3g}")
    console.print(g)
    console.print(
        f"validation / generation time: {ratio:.3f}; TOPLOC {commit_bytes} B / 32 tokens; "
        f"wall {metrics['wall_s']:.0f} s -> {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
