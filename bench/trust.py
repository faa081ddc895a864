"""Trust benchmark: detection and false-positive rates, verification cost, commitment size.

What it runs (all on CPU, real torch models from `trust.simulate`):
- honest providers in fp32, bf16 and fp16 (half greedy, half temperature-1 requests) against a
  fp32 validator: the distribution of every check's value (the calibration behind
  `verification.Tolerances`) and the per-request false-positive rate;
- cheats (a) smaller model, another model, (b) 4-bit and 8-bit weights, (c) random text,
  cheap-generation-then-prefill: per-request detection rates, then requests until detection
  under the adaptive check rate (`sampling`), by Monte Carlo over the measured outcomes;
- (d) inflated metering, (e) a CPU claiming an A100 (attestation), (g) one lying validator;
- cost: teacher-forced validation time / generation time, TOPLOC bytes per 32 tokens;
- `--live`: the adversarial suite on a live network at the production check rates (floor 0.02,
  cap 0.5, 11 records to slash): a real billed coordinator, every kind a real agent process
  (`rigpool.devnet.adversaries`) with a bonded stake, traffic through the official openai
  client; per agent the requests until the first failed check and until the slash, stake
  slashed, expulsion, honest false positives, and the verification overhead.

Usage: .venv/bin/python bench/trust.py [--quick] [--live | --live-only] [--out PATH]
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import logging
import math
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from rigpool.devnet.adversaries import LETTERS, SLASHABLE
from rigpool.devnet.server_thread import CoordinatorThread
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
from rigpool.trust.validator import Validator
from rigpool.trust.verification import (
    ProviderClaim,
    Sampling,
    TokenStats,
    Tolerances,
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


def offline_bench(args, console):
    """The offline suite (in-process providers and validator); prints its tables."""
    import torch

    n_honest = args.honest_requests or (8 if args.quick else 200)
    n_cheat = 4 if args.quick else 24
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
        "honest_requests_measured_without_false_positive": {
            "target": ">= 10,000 (run with --honest-requests 3334)",
            "value": len(all_honest) if fp_requests == 0 else 0,
        },
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
        f"wall {metrics['wall_s']:.0f} s"
    )
    return {"metrics": metrics, "goals": goals, "setup": setup}


# --- live: the adversarial suite on a real network at the production check rates ------------

#: (kind, dtype) of every agent process, in start order
LIVE_AGENTS = (
    ("honest", "float32"),
    ("honest", "bfloat16"),
    ("honest", "float16"),
    ("smaller", "float32"),
    ("other", "float32"),
    ("quantized4", "float32"),
    ("random_text", "float32"),
    ("cached", "float32"),
    ("prefill_cheat", "float32"),
    ("inflate", "float32"),
    ("stall", "float32"),
    ("fake_a100", "float32"),
)
LIVE_API_KEY = "rp-bench-trust-live-0123456789abcdef"
LIVE_CONSUMER = "trust-bench-consumer"
LIVE_STAKE = 1_000_000
LIVE_MAX_TOKENS = 32
LIVE_TEXT = (
    "the network pools idle cards for inference and pays every provider per token while "
    "validators check a sample of answers against the claimed model and slash the stake of "
    "anyone caught serving something cheaper than what they promised"
)
DTYPE_SHORT = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


def live_prompts(n: int) -> list[str]:
    words = LIVE_TEXT.split()
    w = len(words)
    return [" ".join(words[(i * 7 + j * 3) % w] for j in range(6 + i % 7)) for i in range(n)]


class LiveAgent:
    """One `python -m rigpool.devnet.adversaries KIND` process with a bonded stake."""

    def __init__(self, kind: str, dtype: str, work: Path) -> None:
        from rigpool.protocol.signing import load_or_create_identity

        self.kind, self.dtype = kind, dtype
        self.label = kind if kind != "honest" else f"honest {DTYPE_SHORT.get(dtype, dtype)}"
        self.key = work / f"{kind}-{dtype}.json"
        self.identity, _ = load_or_create_identity(self.key)
        self.agent_id = self.identity.agent_id
        self.log_path = work / f"{kind}-{dtype}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.rc: int | None = None
        self.joined = False  # seen routable in the fleet index

    def start(self, url: str, models: Path) -> None:
        log = self.log_path.open("wb")
        try:
            self.proc = subprocess.Popen(
                [
                    sys.executable, "-m", "rigpool.devnet.adversaries", self.kind,
                    "--coordinator", url, "--models", str(models),
                    "--identity", str(self.key), "--dtype", self.dtype, "--threads", "1",
                ],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"},
            )  # fmt: skip
        finally:
            log.close()

    def exited(self) -> bool:
        if self.proc is not None and self.rc is None:
            self.rc = self.proc.poll()
        return self.rc is not None

    def refusal(self) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        found = re.findall(r"^REFUSED: (.*)$", text, re.MULTILINE)
        return found[-1].strip() if found else ""

    def log_tail(self, lines: int = 8) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def terminate(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()

    def reap(self, timeout_s: float = 15.0) -> None:
        if self.proc is None:
            return
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.exited()


def _live_settings(work: Path) -> Any:
    from rigpool.coordinator.settings import Settings

    return Settings.model_validate(
        {
            "database_url": f"sqlite:///{work / 'coordinator.db'}",
            "identity_path": work / "coordinator-keypair.json",
            "model_dirs": [],
            "billing": True,
            "verification": True,
            # production check rates and slashing (the Settings defaults, spelled out; the
            # records a slash needs are derived from the measured false-positive bound: 11)
            "check_rate_floor": 0.02,
            "check_rate_cap": 0.5,
            # the stall cheat is cut off after 3 s without a token (default 15 s)
            "first_token_timeout_s": 20.0,
            "inter_token_timeout_s": 3.0,
            "request_timeout_s": 60.0,
        }
    )


def _wait_for_agents(server: CoordinatorThread, agents: list[LiveAgent], deadline: float) -> None:
    """Until every agent is routable or has exited (fake_a100 may be refused at join)."""
    fleet = server.state.fleet
    while time.monotonic() < deadline:
        for a in agents:
            a.joined = a.joined or a.agent_id in fleet
        if all(a.joined or a.exited() for a in agents):
            return
        time.sleep(0.25)


def _send_traffic(
    url: str, n: int, concurrency: int, deadline: float, stop: threading.Event
) -> list[dict[str, Any] | None]:
    """`n` completions through the official openai client, `concurrency` threads at a time."""
    import openai

    client = openai.OpenAI(base_url=url + "/v1", api_key=LIVE_API_KEY, max_retries=1, timeout=90)
    prompts = live_prompts(n)
    counter = itertools.count()
    results: list[dict[str, Any] | None] = [None] * n

    def worker() -> None:
        while not stop.is_set() and time.monotonic() < deadline:
            i = next(counter)
            if i >= n:
                return
            t0 = time.perf_counter()
            try:
                client.completions.create(
                    model=CLAIMED_MODEL,
                    prompt=prompts[i],
                    max_tokens=LIVE_MAX_TOKENS,
                    temperature=0.0 if i % 2 == 0 else 1.0,
                    seed=i,
                )
                results[i] = {"ok": True, "s": time.perf_counter() - t0}
            except openai.OpenAIError as exc:
                results[i] = {"ok": False, "s": time.perf_counter() - t0, "error": str(exc)[:200]}

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        while t.is_alive():
            t.join(0.5)
    return results


def _trust_view(url: str) -> dict[str, Any]:
    import httpx

    return dict(httpx.get(url + "/v1/trust", timeout=10).json())


def _wait_checks_done(url: str, deadline: float) -> bool:
    """Until every check the verifier queued has finished (selected = checked + not checked)."""
    while time.monotonic() < deadline:
        view = _trust_view(url)["providers"]
        pending = sum(
            v["selected"] - v["skipped"] - v["unverifiable"] - v["checked"] for v in view.values()
        )
        if pending <= 0:
            return True
        time.sleep(0.5)
    return False


def _live_rows(server: CoordinatorThread, agents: list[LiveAgent]) -> tuple[list[dict], dict]:
    """Per agent: traffic, checks, evidence, slashes, from /v1/trust and the database."""
    import httpx
    from sqlalchemy import select

    from rigpool.coordinator.tables import Evidence, RequestRecord
    from rigpool.ledger import Ledger
    from rigpool.ledger.tables import Slash

    state = server.state
    trust = _trust_view(server.url)
    fleet = {p["id"]: p for p in httpx.get(server.url + "/v1/providers", timeout=10).json()["data"]}
    with state.db() as s:
        requests = list(s.scalars(select(RequestRecord)))
        evidence = list(s.scalars(select(Evidence).order_by(Evidence.id)))
    ledger = Ledger(state.db)
    with ledger.sessions() as s:
        slashes = list(s.scalars(select(Slash).order_by(Slash.id)))
    ok = [r for r in requests if r.status == "ok"]
    totals = {
        "requests_recorded": len(requests),
        "ok": len(ok),
        "errors": sum(r.status == "error" for r in requests),
        "failovers": sum(r.attempts > 1 for r in ok),
        "serving_s": sum((r.latency_ms or 0.0) for r in ok) / 1000,
        "validator_s": sum(v["validator_s"] for v in trust["providers"].values()),
    }
    rows = []
    for a in agents:
        served = sorted(
            (r for r in ok if r.provider_id == a.agent_id), key=lambda r: (r.created, r.id)
        )
        index = {r.id: k for k, r in enumerate(served, start=1)}
        ev = [e for e in evidence if e.provider == a.agent_id]
        ev_requests: list[str] = []
        for e in ev:  # distinct requests, in the order the evidence was recorded
            rid = e.request_id.rsplit(".", 1)[0] if "." in e.request_id else e.request_id
            if rid not in ev_requests:
                ev_requests.append(rid)
        first = index.get(ev_requests[0]) if ev_requests else None
        k = server.state.settings.slash_records()
        at_slash = index.get(ev_requests[k - 1]) if len(ev_requests) >= k else None
        mine = [sl for sl in slashes if sl.provider == a.agent_id]
        before_slash = sum(r.created <= mine[0].created for r in served) if mine else None
        v = trust["providers"].get(a.agent_id, {})
        p = fleet.get(a.agent_id, {})
        attested = state.attestations.get(a.agent_id)
        row = {
            "kind": a.kind,
            "label": a.label,
            "letter": LETTERS.get(a.kind, ""),
            "dtype": a.dtype,
            "agent_id": a.agent_id,
            "joined": a.joined,
            "refused": a.refusal() or None,
            "exit_code": a.rc,
            "attestation": attested.view() if attested is not None else None,
            "served": len(served),
            "errors": sum(r.status == "error" and r.provider_id == a.agent_id for r in requests),
            "checks": v.get("checked", 0),
            "checks_passed": v.get("passed", 0),
            "checks_failed": v.get("failed", 0),
            "evidence": len(ev),
            "evidence_kinds": sorted({e.kind for e in ev}),
            "requests_until_first_failed_check": first,
            "requests_until_slash": at_slash,
            "served_before_slash": before_slash,
            "stake_slashed": sum(sl.amount for sl in mine),
            "stake_left": ledger.balance("provider_stake", a.agent_id),
            "slash_reason": mine[0].reason if mine else None,
            "expelled": a.agent_id in state.banned,
            "check_rate_end": v.get("check_rate"),
            "validator_s": v.get("validator_s", 0.0),
            "last_failure": v.get("last_failure", ""),
            "reputation": p.get("reputation"),
            "provider_served": p.get("served"),
            "provider_failed": p.get("failed"),
        }
        rows.append(row)
    return rows, totals


def live_bench(n: int, concurrency: int, timeout_s: float, console: Console) -> dict[str, Any]:
    """The adversarial suite on a live network; every process is stopped before it returns."""
    from rigpool.coordinator.keys import create_key
    from rigpool.coordinator.models import register_model
    from rigpool.ledger import Ledger

    t_start = time.monotonic()
    hard_deadline = t_start + timeout_s
    models = build_test_models(default_cache_root() / "trust-models-v1", ensure_toy_model())
    work = Path(tempfile.mkdtemp(prefix="rigpool-trust-live-"))
    agents = [LiveAgent(kind, dtype, work) for kind, dtype in LIVE_AGENTS]
    stop = threading.Event()
    server: CoordinatorThread | None = None
    # The run stops by itself: past the timeout the main thread gets a Ctrl-C, and SIGTERM
    # acts like one, so the `finally` below always stops the agents and the coordinator.
    watchdog = threading.Timer(timeout_s, lambda: os.kill(os.getpid(), signal.SIGINT))
    watchdog.daemon = True
    old_term = signal.signal(signal.SIGTERM, signal.default_int_handler)
    # The in-process coordinator logs every failed check and slash: to a file, not the table.
    rigpool_log = logging.getLogger("rigpool")
    handler = logging.FileHandler(work / "coordinator.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    saved_log = (rigpool_log.propagate, rigpool_log.level)
    rigpool_log.addHandler(handler)
    rigpool_log.propagate = False
    rigpool_log.setLevel(logging.INFO)
    ok = False
    try:
        watchdog.start()
        settings = _live_settings(work)
        server = CoordinatorThread(settings, log_level="error").start()
        db = server.state.db
        register_model(db, models.claimed, name=CLAIMED_MODEL)
        server.state.refresh_models()
        create_key(db, key=LIVE_API_KEY, consumer=LIVE_CONSUMER)
        ledger = Ledger(db)
        ledger.credit_deposit(LIVE_CONSUMER, 10**12, "trust-bench-deposit".ljust(64, "0"))
        for a in agents:
            ledger.stake(a.agent_id, LIVE_STAKE, f"stake-{a.kind}-{a.dtype}".ljust(64, "0"))
        console.print(f"live: starting {len(agents)} agent processes ({work})")
        for a in agents:
            a.start(server.url, models.claimed.parent)
        _wait_for_agents(server, agents, min(hard_deadline - 60, time.monotonic() + 300))
        joined = [a.label for a in agents if a.agent_id in server.state.fleet]
        t_joined = time.monotonic()
        console.print(f"live: {len(joined)} agents routable after {t_joined - t_start:.0f} s")
        for a in agents:
            if a.exited() and a.kind != "fake_a100":
                console.print(f"[red]live: {a.label} exited ({a.rc}):[/red]\n{a.log_tail()}")
        results = _send_traffic(server.url, n, concurrency, hard_deadline - 90, stop)
        t_traffic = time.monotonic() - t_joined
        checks_done = _wait_checks_done(server.url, min(hard_deadline - 30, time.monotonic() + 120))
        time.sleep(1.0)  # a last slash's expulsion (on the event loop after its check)
        for a in agents:
            a.exited()
        rows, totals = _live_rows(server, agents)
        ok = True
    except KeyboardInterrupt:
        console.print("[red]live: interrupted (Ctrl-C, SIGTERM or the timeout); stopping[/red]")
        raise
    finally:
        stop.set()
        watchdog.cancel()
        for a in agents:
            a.terminate()
        for a in agents:
            a.reap()
        if server is not None:
            server.stop()
        signal.signal(signal.SIGTERM, old_term)
        rigpool_log.removeHandler(handler)
        handler.close()
        rigpool_log.propagate, rigpool_log.level = saved_log
        if ok:
            shutil.rmtree(work, ignore_errors=True)
        else:
            console.print(f"live: logs kept in {work}")

    sent = [r for r in results if r is not None]
    client_ok = [r for r in sent if r["ok"]]
    client_errors: dict[str, int] = {}
    for r in sent:
        if not r["ok"]:
            client_errors[r["error"][:80]] = client_errors.get(r["error"][:80], 0) + 1
    overhead = totals["validator_s"] / totals["serving_s"] if totals["serving_s"] else None
    by_kind = {r["kind"]: r for r in rows}
    honest = [r for r in rows if r["kind"] == "honest"]
    cheats_ad = [r for r in rows if r["kind"] in SLASHABLE]
    detected = [r["requests_until_first_failed_check"] for r in cheats_ad]
    worst = max(detected) if detected and all(d is not None for d in detected) else None
    fake = by_kind["fake_a100"]
    metrics = {
        "agents": rows,
        "requests_sent": len(sent),
        "requests_ok": len(client_ok),
        "client_errors": client_errors,
        "client_latency_p50_s": float(np.median([r["s"] for r in client_ok]))
        if client_ok
        else None,
        "client_latency_p99_s": (
            float(np.percentile([r["s"] for r in client_ok], 99)) if client_ok else None
        ),
        **totals,
        "verification_overhead_share": overhead,
        "checks_total": sum(r["checks"] for r in rows),
        "honest_checks": sum(r["checks"] for r in honest),
        "honest_false_positives": sum(r["checks_failed"] for r in honest),
        "honest_evidence": sum(r["evidence"] for r in honest),
        "checks_finished_before_report": checks_done,
        "traffic_s": t_traffic,
        "startup_s": t_joined - t_start,
        "wall_s": time.monotonic() - t_start,
    }
    goals = {
        "live_cheats_a_to_d_detected_within_200_requests": {
            "target": "each (a)-(d) cheat: first evidence within 200 of its requests",
            "value": worst,
            "undetected": [
                r["label"] for r in cheats_ad if r["requests_until_first_failed_check"] is None
            ],
            "pass": worst is not None and worst <= 200,
        },
        "live_cheats_a_to_d_slashed_and_expelled": {
            "target": "all",
            "value": f"{sum(r['stake_slashed'] > 0 and r['expelled'] for r in cheats_ad)}"
            f"/{len(cheats_ad)}",
            "pass": all(r["stake_slashed"] > 0 and r["expelled"] for r in cheats_ad),
        },
        "live_cpu_claiming_a100_refused_at_join": {
            "target": "(e) refused by attestation (exit 3, REFUSED)",
            "value": fake["refused"] or "not refused",
            "pass": bool(fake["refused"]),
        },
        "live_checking_overhead_share_of_compute": {
            "target": "< 0.05",
            "value": overhead,
            "pass": overhead is not None and overhead < 0.05,
        },
        "live_no_honest_agent_slashed": {
            "target": "0 honest agents slashed or expelled",
            "value": sum(r["stake_slashed"] > 0 or r["expelled"] for r in honest),
            "false_positive_checks": metrics["honest_false_positives"],
            "pass": not any(r["stake_slashed"] > 0 or r["expelled"] for r in honest),
        },
    }
    import torch

    setup = {
        "requests": n,
        "concurrency": concurrency,
        "max_tokens": LIVE_MAX_TOKENS,
        "traffic": "official openai client, completions; even requests greedy, odd "
        "temperature 1; seed = request index; prompts from a fixed word list",
        "agents": [{"kind": a.kind, "dtype": a.dtype, "label": a.label} for a in agents],
        "stake_per_agent": LIVE_STAKE,
        "coordinator": "in-process uvicorn thread, sqlite, billing on, verification fp32 "
        "validator in the coordinator; development-mode attestation sizes",
        "check_rate_floor": settings.check_rate_floor,
        "check_rate_cap": settings.check_rate_cap,
        "slash_min_records": settings.slash_records(),
        "token_test_window": settings.token_test_window,
        "routing_policy": settings.routing_policy,
        "hedging": settings.hedging,
        "first_token_timeout_s": settings.first_token_timeout_s,
        "inter_token_timeout_s": settings.inter_token_timeout_s,
        "request_timeout_s": settings.request_timeout_s,
        "attestation": {
            "matrix_size": settings.attest_matrix_size,
            "target_s": settings.attest_target_s,
            "max_buffer_mb": settings.attest_max_buffer_mb,
            "allowance_s": settings.attest_allowance_s,
        },
        "timeout_s": timeout_s,
        "torch_threads_per_process": 1,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "overhead_definition": "sum of validator_s (/v1/trust) / sum of latency_ms of ok "
        "requests (RequestRecord)",
        "detection_definition": "requests until first failed check / until slash: 1-based "
        "position, in the agent's own ok requests ordered by RequestRecord.created, of the "
        "request of its first / slash_min_records-th distinct evidence record",
    }
    _print_live(console, rows, metrics, goals, settings.slash_records())
    return {"metrics": metrics, "goals": goals, "setup": setup}


def _print_live(
    console: Console, rows: list[dict], metrics: dict, goals: dict, slash_records: int
) -> None:
    def opt(x: Any) -> str:
        return "-" if x is None else str(x)

    table = Table(
        title=f"Live adversarial network at production check rates (floor 0.02, cap 0.5, "
        f"{slash_records} records to slash): "
        f"{metrics['requests_ok']}/{metrics['requests_sent']} requests ok"
    )
    for col in (
        "agent", "served", "checks", "failed", "evidence", "1st fail @req", "slash @req",
        "stake slashed", "expelled", "rate", "note",
    ):  # fmt: skip
        table.add_column(col)
    for r in rows:
        label = f"({r['letter']}) {r['label']}" if r["letter"] else r["label"]
        if r["kind"] == "honest":
            note = f"false positives {r['checks_failed']}"
        elif r["kind"] == "fake_a100":
            att = r["attestation"] or {}
            note = r["refused"] or (
                f"not refused: attestation {att.get('status')}, reply {opt(att.get('reply_s'))} s"
                f" / limit {opt(att.get('limit_s'))} s"
            )
        elif r["kind"] == "stall":
            rep = r["reputation"]
            note = f"reputation {rep:.2f}" if rep is not None else "reputation -"
            note += f", failed attempts {opt(r['provider_failed'])}"
        else:
            note = r["slash_reason"] or ", ".join(r["evidence_kinds"])
        table.add_row(
            label,
            str(r["served"]),
            str(r["checks"]),
            str(r["checks_failed"]),
            str(r["evidence"]),
            opt(r["requests_until_first_failed_check"]),
            opt(r["requests_until_slash"]),
            f"{r['stake_slashed'] / LIVE_STAKE:.0%}" if r["stake_slashed"] else "0",
            "yes" if r["expelled"] else "no",
            opt(r["check_rate_end"]),
            note[:72],
        )
    if not console.is_terminal:
        console = Console(width=170)  # a log file gets the whole table
    console.print(table)
    over = metrics["verification_overhead_share"]
    console.print(
        f"verification overhead: validator {metrics['validator_s']:.2f} s / serving "
        f"{metrics['serving_s']:.1f} s = {over:.2%}"
        if over is not None
        else "overhead: -"
    )
    g = Table(title="Live goals")
    for col in ("goal", "target", "value", "pass"):
        g.add_column(col)
    for name, v in goals.items():
        value = v["value"]
        shown = f"{value:.3g}" if isinstance(value, float) else opt(value)
        g.add_row(name, str(v["target"]), shown, "PASS" if v["pass"] else "FAIL")
    console.print(g)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "trust.json")
    ap.add_argument(
        "--honest-requests",
        type=int,
        default=None,
        help="honest requests per dtype (default 200, 8 quick); 3334 measures 10,000 in all",
    )
    ap.add_argument("--live", action="store_true", help="add the live adversarial network")
    ap.add_argument("--live-only", action="store_true", help="run only the live part")
    ap.add_argument("--live-requests", type=int, default=None, help="default 600 (150 quick)")
    ap.add_argument("--live-concurrency", type=int, default=4)
    ap.add_argument("--live-timeout", type=float, default=900.0, help="seconds, whole live part")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    console = Console()
    if args.live_only:
        # Keep the offline results already there; only the live entries are replaced.
        try:
            result = json.loads(args.out.read_text())
        except (OSError, ValueError):
            result = {}
        for key in ("metrics", "goals", "setup"):
            result.setdefault(key, {})
    else:
        result = offline_bench(args, console)
    if args.live or args.live_only:
        n = args.live_requests or (150 if args.quick else 600)
        try:
            live = live_bench(n, args.live_concurrency, args.live_timeout, console)
        except KeyboardInterrupt:
            console.print("live part interrupted; nothing written")
            return 130
        result["metrics"]["live"] = live["metrics"]
        result["goals"] = {k: v for k, v in result["goals"].items() if not k.startswith("live_")}
        result["goals"].update(live["goals"])
        result["setup"]["live"] = live["setup"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(finite(result), indent=2) + "\n")
    console.print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
