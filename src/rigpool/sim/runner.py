"""One experiment: build inputs once, run every policy on them, collect the figures.

`prepare` does all the input work (fleet, placement, workload) and the checks that must fail
before any simulation starts; `run_experiment` runs the policies and returns the report
dictionary that `report.write_report` saves with its plots and summary.
"""

from __future__ import annotations

import math
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from rigpool.hardware.catalog import find_gpu
from rigpool.hardware.memory import max_concurrency
from rigpool.hardware.models import find_model
from rigpool.hardware.perf import estimate
from rigpool.scheduler.fleet import FleetIndex
from rigpool.sim.config import SimConfig
from rigpool.sim.engine import REASONS, RunResult, run_policy
from rigpool.sim.fleet import SimFleet, Sizing, build_centralized, build_decentralized
from rigpool.sim.inputs import Regions, Trace, Workload, build_workload, load_gpu_mix, load_regions
from rigpool.sim.inputs import load_trace as _load_trace
from rigpool.sim.policies import Policy, make_policy

QUANTILES = {"p50": 0.50, "p90": 0.90, "p99": 0.99, "p99.9": 0.999}


@dataclass
class Prepared:
    """Everything the policies share: identical inputs for all of them."""

    cfg: SimConfig
    trace: Trace
    regions: Regions
    fleet: SimFleet
    central: SimFleet | None
    sizing: Sizing
    workload: Workload
    mean_prompt: int
    mean_output: int
    prepare_s: float


def prepare(cfg: SimConfig, trace: Trace | None = None) -> Prepared:
    """Build fleet, placement, centralized cluster and workload; raise on bad input first."""
    t0 = time.perf_counter()
    trace = trace or _load_trace(cfg.trace)
    find_model(cfg.model)
    find_gpu(cfg.central_gpu)
    regions = load_regions()
    regions.index(cfg.central_region)
    mean_prompt = round(float(trace.prompt.mean()))
    mean_output = max(1, round(float(trace.output.mean())))
    fleet, sizing = build_decentralized(cfg, load_gpu_mix(), regions, mean_prompt, mean_output)
    central = None
    if "centralized" in cfg.policies:
        central = build_centralized(cfg, regions, sizing.target_rps, mean_prompt, mean_output)
    wl = build_workload(cfg, trace, sizing.target_rps, regions.weights)
    return Prepared(cfg, trace, regions, fleet, central, sizing, wl, mean_prompt, mean_output,
                    time.perf_counter() - t0)  # fmt: skip


def _straggle_p(cfg: SimConfig, fleet: SimFleet) -> np.ndarray:
    return np.where(fleet.consumer, cfg.straggle_p, cfg.dc_straggle_p)


def run_one(
    prep: Prepared, name: str, progress: Callable[[float], None] | None = None
) -> RunResult:
    """Run policy `name` ("centralized" = least-loaded over the centralized cluster)."""
    cfg = prep.cfg
    central = name == "centralized"
    fleet = prep.central if central else prep.fleet
    assert fleet is not None

    def make(index: FleetIndex, ids: list[str]) -> Policy:
        return make_policy(
            name,
            index,
            cfg.model,
            ids,
            cfg.seed,
            hedge_share=cfg.hedge_share,
            min_reputation=cfg.min_reputation,
            price_weight=cfg.price_weight,
        )

    return run_policy(
        name,
        make,
        fleet,
        prep.workload,
        model=cfg.model,
        region_names=prep.regions.names,
        duration_s=cfg.duration_s,
        drain_limit_s=cfg.drain_limit_s,
        wan_s=prep.regions.rtt_s,
        gateway_region=prep.regions.index(cfg.central_region) if central else None,
        same_region_s=(cfg.datacenter_rtt_ms if central else cfg.same_region_ms) / 1000.0,
        straggle_p=_straggle_p(cfg, fleet)
        if not central
        else np.full(len(fleet), cfg.dc_straggle_p),
        detect_s=cfg.detect_s,
        restart_s=cfg.restart_s,
        samples=cfg.samples,
        progress=progress,
    )


def _pcts(x: np.ndarray) -> dict[str, float | None]:
    x = x[np.isfinite(x)]
    if not len(x):
        return {k: None for k in (*QUANTILES, "mean")}
    out: dict[str, float | None] = {k: float(np.quantile(x, q)) for k, q in QUANTILES.items()}
    out["mean"] = float(x.mean())
    return out


def policy_metrics(prep: Prepared, res: RunResult) -> dict[str, Any]:
    """Every figure of one policy's run."""
    cfg = prep.cfg
    central = res.policy == "centralized"
    fleet = prep.central if central else prep.fleet
    assert fleet is not None
    n = len(res.status)
    ok = res.status == 0
    good = (
        ok & (res.ttft <= cfg.slo_ttft_s) & ((res.tpot <= cfg.slo_tpot_s) | ~np.isfinite(res.tpot))
    )
    delivered = int(res.tokens.sum())
    hours = cfg.duration_s / 3600.0
    if central:
        supply_usd = float(fleet.usd_per_hour.sum()) * hours
    else:
        supply_usd = float((fleet.usd_per_hour * res.agent_online_s).sum()) / 3600.0
    paid_usd = float(res.agent_earned.sum())
    per_m = 1e6 / delivered if delivered else math.nan
    reasons = {REASONS[r]: int((res.reason == r).sum()) for r in range(1, len(REASONS))}
    online_h = res.agent_online_s / 3600.0
    active = online_h > 0
    earn_h = res.agent_earned[active] / online_h[active] if active.any() else np.zeros(0)
    rent_h = fleet.usd_per_hour[active]
    m: dict[str, Any] = {
        "requests": n,
        "completed": int(ok.sum()),
        "failed": int((~ok).sum()),
        "failed_by_reason": reasons,
        "ttft_s": _pcts(res.ttft[ok]),
        "tpot_s": _pcts(res.tpot[ok]),
        "e2e_s": _pcts(res.e2e[ok]),
        "goodput_share": float(good.sum() / n) if n else 0.0,
        "goodput_rps": float(good.sum() / cfg.duration_s),
        "output_tokens_delivered": delivered,
        "utilization_slots_mean": float(np.mean(res.util_slots)) if res.util_slots else 0.0,
        "utilization_busy_agents_mean": float(np.mean(res.util_busy)) if res.util_busy else 0.0,
        "online_agents_mean": float(np.mean(res.util_online)) if res.util_online else 0.0,
        "gpu_cost_usd": supply_usd,
        "gpu_cost_per_mtok_usd": supply_usd * per_m,
        "hedges": res.hedges,
        "hedge_share": res.hedges / n if n else 0.0,
        "retries": res.retries,
        "failovers": res.failovers,
        "regional_fallbacks": res.fallbacks,
        "events": res.events,
        "wall_s": res.wall_s,
        "requests_per_wall_s": n / res.wall_s if res.wall_s else None,
        "events_per_wall_s": res.events / res.wall_s if res.wall_s else None,
    }
    if not central:
        m["client_paid_usd"] = paid_usd
        m["client_cost_per_mtok_usd"] = paid_usd * per_m
        m["provider_earnings_per_hour_usd"] = (
            {
                "p10": float(np.quantile(earn_h, 0.1)),
                "p50": float(np.quantile(earn_h, 0.5)),
                "p90": float(np.quantile(earn_h, 0.9)),
                "mean": float(earn_h.mean()),
            }
            if len(earn_h)
            else None
        )
        m["providers_earning_at_least_market_rent"] = (
            float((earn_h >= rent_h).mean()) if len(earn_h) else None
        )
    return m


def central_batch_sensitivity(prep: Prepared) -> dict[str, float]:
    """Centralized cost if its replicas batched `central_batch_sensitivity` sequences, not 16."""
    cfg = prep.cfg
    spec = find_gpu(cfg.central_gpu)
    arch = find_model(cfg.model)
    assert prep.central is not None
    quant = prep.central.perf[0].quant
    ctx = prep.mean_prompt + prep.mean_output // 2
    b0 = prep.central.perf[0].max_batch
    b1 = min(
        cfg.central_batch_sensitivity, max_concurrency(arch, spec, quant, cfg.context, limit=512)
    )

    def busy(b: int) -> float:
        e = estimate(spec, arch, quant, b, context=ctx)
        return e.prefill_s(prep.mean_prompt) + prep.mean_output * e.tpot_s / b

    return {"batch": float(b1), "capacity_ratio": busy(b0) / busy(b1), "tpot_s": estimate(
        spec, arch, quant, b1, context=ctx).tpot_s}  # fmt: skip


def headline(metrics: dict[str, dict[str, Any]], sens: dict[str, float] | None) -> dict[str, Any]:
    """p99 and cost ratios of each decentralized policy against the centralized baseline."""
    c = metrics.get("centralized")
    if c is None:
        return {}
    out: dict[str, Any] = {}
    for name, m in metrics.items():
        if name == "centralized":
            continue
        row: dict[str, Any] = {}
        for key in ("ttft_s", "e2e_s", "tpot_s"):
            for q in ("p50", "p99"):
                a, b = m[key][q], c[key][q]
                row[f"{key[:-2]}_{q}_ratio"] = a / b if a is not None and b else None
        cc = c["gpu_cost_per_mtok_usd"]
        row["cost_ratio_client_price"] = m.get("client_cost_per_mtok_usd", math.nan) / cc
        row["cost_ratio_gpu_rent"] = m["gpu_cost_per_mtok_usd"] / cc
        if sens:
            row["cost_ratio_client_price_vs_central_batch"] = (
                row["cost_ratio_client_price"] * (sens["capacity_ratio"])
            )
        row["goodput_share"] = m["goodput_share"]
        row["central_goodput_share"] = c["goodput_share"]
        out[name] = row
    return out


def run_experiment(
    cfg: SimConfig,
    *,
    on_policy_start: Callable[[str], Callable[[float], None] | None] | None = None,
    prepared: Prepared | None = None,
) -> dict[str, Any]:
    """Run every configured policy on identical inputs; return the full report dictionary."""
    prep = prepared or prepare(cfg)
    results: dict[str, RunResult] = {}
    for name in cfg.policies:
        cb = on_policy_start(name) if on_policy_start else None
        results[name] = run_one(prep, name, cb)
    metrics = {name: policy_metrics(prep, r) for name, r in results.items()}
    return assemble_report(prep, results, metrics, len(prep.workload), prep.workload.rate_factor)


def assemble_report(
    prep: Prepared,
    results: dict[str, RunResult],
    metrics: dict[str, dict[str, Any]],
    requests: int,
    rate_factor: float,
) -> dict[str, Any]:
    """The report dictionary of a run (`requests`: all requests of the window, whole fleet)."""
    cfg = prep.cfg
    sens = central_batch_sensitivity(prep) if prep.central is not None else None
    fleet = prep.fleet
    gpu_counts: dict[str, int] = {}
    for gname, k in zip(fleet.gpu, fleet.n_gpus, strict=True):
        gpu_counts[gname] = gpu_counts.get(gname, 0) + k
    report: dict[str, Any] = {
        "config": cfg.as_dict(),
        "inputs": {
            "trace": {
                "name": prep.trace.name,
                "requests": len(prep.trace.t),
                "span_s": prep.trace.span_s,
                "rate_rps": prep.trace.rate,
                "mean_prompt_tokens": prep.mean_prompt,
                "mean_output_tokens": prep.mean_output,
            },
            "load": {
                "target_rps": prep.sizing.target_rps,
                "fleet_capacity_rps_at_util_1": prep.sizing.fleet_capacity_rps,
                "capable_hosts": prep.sizing.capable_hosts,
                "capable_gpus": prep.sizing.capable_gpus,
                "rate_factor_vs_trace": rate_factor,
                "requests": requests,
                "offered_rps": requests / cfg.duration_s,
            },
            "decentralized_fleet": {
                **fleet.info,
                "gpus_by_type_placed": dict(sorted(gpu_counts.items(), key=lambda kv: -kv[1])),
            },
            "centralized_fleet": prep.central.info if prep.central is not None else None,
            "central_batch_sensitivity": sens,
            "regions": {
                n: {"weight": float(w), "azure_region": az}
                for n, w, az in zip(
                    prep.regions.names, prep.regions.weights, prep.regions.azure, strict=True
                )
            },
            "sources": SOURCES,
        },
        "policies": metrics,
        "headline": headline(metrics, sens),
        "series": {
            name: {
                "util_t": r.util_t,
                "util_slots": r.util_slots,
                "util_busy": r.util_busy,
                "online": r.util_online,
            }
            for name, r in results.items()
        },
        "run": {
            "prepare_s": prep.prepare_s,
            "python": sys.version.split()[0],
            "machine": platform.machine(),
        },
    }
    report["_results"] = results  # for plots; dropped before JSON
    return report


SOURCES = {
    "traces": "Azure LLM inference 2023 (code, conv; Patel et al., Splitwise, ISCA 2024; "
    "CC BY 4.0); Mooncake FAST'25 conversation trace (Apache-2.0). Sizes and arrival times only.",
    "gpu_mix": "home PCs: Steam Hardware Survey 2026-04, desktop NVIDIA cards in the catalog; "
    "marketplace hosts: the 64 vast.ai offers (card and count).",
    "rtt": "Azure inter-region P95 RTT matrix (2026-07, CC BY 4.0), mean of both directions, "
    "between the ten regions' mapped Azure regions.",
    "gpu_timing": "rigpool.hardware.perf.estimate (roofline fitted to llama.cpp and vLLM "
    "measurements; see docs/hardware.md).",
    "prices": "catalog: vast.ai median per-GPU price (market), AWS/Azure/Lambda on-demand "
    "(cloud); home cards without a vast.ai price: consumer_usd_per_gbps_h x bandwidth.",
    "churn": "assumption: Weibull on/off periods (heavy-tailed sessions as measured in P2P "
    "systems, Stutzbach & Rejaie IMC 2006; volunteer-computing availability, Javadi et al. "
    "2009) with the medians in config.",
}
