"""The simulator against the live system: `bench/tail.py`'s network, simulated.

`bench/tail.py` runs a live coordinator and 20 emulated agents on loopback (cards cycled RTX
3060 8GB, RTX 3090, RTX 4090, L4, A100 80GB, H100 SXM; each timed by `hardware.perf` for
Llama-3.1-8B at the best precision that fits, at the batch of requests in flight; at most 8
requests per agent), 12 output tokens per request from a short prompt, a closed loop of 16
clients, and — except in "ideal" — stragglers: 10 % of the agents (`random.Random(0)`'s
choice, as `devnet.swarm`) run 20 % of their requests 10x slower.

Here the same fleet and requests run through `sim.engine` with the same policies. The
engine is open-loop, so the closed loop is approximated by Poisson arrivals at the live run's
measured throughput (by Little's law that keeps about the same number of requests in flight).
Everything happens in one region with no network delay: loopback. The live figures also hold
what the simulator does not model — HTTP, the coordinator's and agents' Python event loops,
a WebSocket message per token, on a shared 2-core machine — so the simulator is expected to be
faster; `compare` reports the error per configuration, raw and with one constant per-request
overhead fitted on the "ideal" configuration's p50 (then checked on the other four).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np

from rigpool.hardware.catalog import find_gpu
from rigpool.hardware.memory import best_quant_that_fits
from rigpool.hardware.models import find_model
from rigpool.hardware.perf import estimate
from rigpool.scheduler.fleet import FleetIndex
from rigpool.sim.engine import OK, run_policy
from rigpool.sim.fleet import HostPerf, SimFleet
from rigpool.sim.inputs import Workload, load_regions
from rigpool.sim.policies import Policy, make_policy

GPUS = ("RTX 3060 8GB", "RTX 3090", "RTX 4090", "L4", "A100 80GB", "H100 SXM")
MODEL = "llama-3.1-8b"
AGENTS = 20
MAX_CONCURRENCY = 8
PROMPT_TOKENS = 6  # "Tail latency matters because" in the toy model's tokenizer, about
OUTPUT_TOKENS = 12
STRAGGLER_SHARE = 0.1
STRAGGLE_PROB = 0.2
STRAGGLE_FACTOR = 10.0
WARMUP = AGENTS * 3

#: live configuration -> (simulator policy, hedge share, stragglers on)
CONFIGS: dict[str, tuple[str, float, bool]] = {
    "ideal": ("rigpool", 0.05, False),
    "round-robin": ("round-robin", 0.0, True),
    "least-loaded": ("least-loaded", 0.0, True),
    "rigpool": ("rigpool", 0.0, True),
    "rigpool+hedge": ("rigpool", 0.05, True),
}


def live_fleet(stragglers: bool) -> tuple[SimFleet, np.ndarray]:
    """The 20 emulated agents as a simulated fleet, and each agent's straggle probability."""
    arch = find_model(MODEL)
    region = load_regions().index("us-east")
    perf: list[HostPerf] = []
    gpus: list[str] = []
    for i in range(AGENTS):
        spec = find_gpu(GPUS[i % len(GPUS)])
        quant = best_quant_that_fits(arch, spec, context=2048)
        assert quant is not None
        ests = [estimate(spec, arch, quant, batch=b) for b in range(1, MAX_CONCURRENCY + 1)]
        perf.append(
            HostPerf(
                quant, MAX_CONCURRENCY, (0.0, *(e.tpot_s for e in ests)), ests[0].prefill_s, 1.0
            )
        )
        gpus.append(spec.name)
    chosen = set(random.Random(0).sample(range(AGENTS), round(AGENTS * STRAGGLER_SHARE)))
    p = np.asarray([STRAGGLE_PROB if (stragglers and i in chosen) else 0.0 for i in range(AGENTS)])
    z = np.zeros(AGENTS)
    fleet = SimFleet(
        agent_ids=[f"live-{i:02d}" for i in range(AGENTS)],
        gpu=gpus,
        n_gpus=[1] * AGENTS,
        region=np.full(AGENTS, region),
        consumer=np.zeros(AGENTS, dtype=bool),
        usd_per_hour=z,
        price_mtok=np.full(AGENTS, 1.0),
        last_mile_s=z,
        slow=np.ones(AGENTS),
        perf=perf,
        online0=np.ones(AGENTS, dtype=bool),
        events_t=np.zeros(0),
        events_host=np.zeros(0, dtype=np.int64),
        events_kind=np.zeros(0, dtype=np.int64),
    )
    return fleet, p


def live_workload(rate_rps: float, requests: int, seed: int) -> Workload:
    """Poisson arrivals at `rate_rps`; every request the same size; stragglers 10x."""
    rng = np.random.default_rng([seed, 8])
    n = requests + WARMUP
    t = np.cumsum(rng.exponential(1.0 / rate_rps, size=n))
    region = load_regions().index("us-east")
    return Workload(
        t=t - t[0],
        prompt=np.full(n, PROMPT_TOKENS),
        output=np.full(n, OUTPUT_TOKENS),
        user_region=np.full(n, region),
        access_rtt_s=np.zeros(n),
        jitter=np.ones(n),
        straggle_u=rng.random((n, 4)),
        straggle_x=np.full((n, 4), STRAGGLE_FACTOR),
        rate_factor=1.0,
        trace_rate=rate_rps,
    )


def simulate_config(
    name: str, rate_rps: float, requests: int = 4000, seed: int = 7
) -> dict[str, float]:
    """Simulated p50/p99/p99.9 end-to-end latency (ms) of live configuration `name`."""
    policy, hedge_share, stragglers = CONFIGS[name]
    fleet, straggle_p = live_fleet(stragglers)
    wl = live_workload(rate_rps, requests, seed)
    regions = load_regions()

    def make(index: FleetIndex, ids: list[str]) -> Policy:
        return make_policy(
            policy,
            index,
            MODEL,
            ids,
            seed,
            hedge_share=hedge_share,
            min_reputation=0.5,
            price_weight=0.5,
        )

    duration = float(wl.t[-1]) + 1e-6
    res = run_policy(
        name,
        make,
        fleet,
        wl,
        model=MODEL,
        region_names=regions.names,
        duration_s=duration,
        drain_limit_s=600.0,
        wan_s=np.zeros_like(regions.rtt_s),
        gateway_region=None,
        same_region_s=0.0,
        straggle_p=straggle_p,
        detect_s=5.0,
        restart_s=120.0,
        samples=1,
    )
    e2e = res.e2e[WARMUP:][res.status[WARMUP:] == OK]
    return {
        "p50_ms": float(np.quantile(e2e, 0.5)) * 1000,
        "p99_ms": float(np.quantile(e2e, 0.99)) * 1000,
        "p999_ms": float(np.quantile(e2e, 0.999)) * 1000,
        "completed": float(len(e2e)),
        "hedge_share": res.hedges / len(wl),
    }


def compare(tail_json: Path, requests: int = 4000, seed: int = 7) -> dict[str, Any]:
    """Simulate every configuration of `bench/results/tail.json` at its measured throughput.

    Returns, per configuration: live and simulated p50/p99 (ms) and the relative errors
    (sim - live) / live; plus the live run's size.
    """
    live = json.loads(tail_json.read_text())
    m = live["metrics"]
    rows: dict[str, Any] = {}
    for name in CONFIGS:
        if f"{name}.p50_ms" not in m:
            continue
        rate = float(m[f"{name}.requests_per_s"])
        sim = simulate_config(name, rate, requests, seed)
        row: dict[str, float] = {"rate_rps": rate}
        for q in ("p50", "p99"):
            lv = float(m[f"{name}.{q}_ms"])
            row[f"live_{q}_ms"] = lv
            row[f"sim_{q}_ms"] = sim[f"{q}_ms"]
            row[f"{q}_error"] = (sim[f"{q}_ms"] - lv) / lv
        row["sim_hedge_share"] = sim["hedge_share"]
        rows[name] = row
    # One constant, fitted on "ideal" alone: the live stack's own per-request time (HTTP, the
    # coordinator, a WebSocket message per token), the gap between live and simulated p50
    # without stragglers. The other configurations are then an out-of-sample check.
    overhead = (
        rows["ideal"]["live_p50_ms"] - rows["ideal"]["sim_p50_ms"] if "ideal" in rows else 0.0
    )
    for row in rows.values():
        for q in ("p50", "p99"):
            row[f"sim_{q}_ms_plus_overhead"] = row[f"sim_{q}_ms"] + overhead
            row[f"{q}_error_plus_overhead"] = (
                row[f"sim_{q}_ms_plus_overhead"] - row[f"live_{q}_ms"]
            ) / row[f"live_{q}_ms"]
    return {
        "configs": rows,
        "live_overhead_ms_fitted_on_ideal_p50": overhead,
        "live_requests_per_config": live["setup"].get("requests"),
        "sim_requests_per_config": requests,
        "method": "open-loop Poisson arrivals at the live run's measured throughput (the "
        "simulator has no closed loop); loopback: no network delay; the live figures include "
        "HTTP, coordinator and WebSocket per-token overheads the simulator does not model",
    }
