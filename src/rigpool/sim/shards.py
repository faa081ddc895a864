"""Cell sharding: a big fleet simulated as k nearly independent cells, m of them sampled.

Why: one simulated hour of the Azure `conv` trace on 371,000 GPUs is about 490 million
requests; the engine handles thousands per wall second. A real network behaves as many cells
that barely interact: rigpool's router samples two candidates among the agents of the user's
continent, so a request never needs the whole fleet, only a large enough pool of similar
agents. So:

* the fleet's hosts (`fleet.sample_pool`, every per-host random draw included) are split into
  k shards with the same GPU, card-count, region and home/marketplace mix (`fleet.partition`,
  stratified);
* the superposed trace is split by copies: shard j gets the copies c with c mod k == j (about
  1/k of the load; `inputs.build_shard_workload`), with the same per-request draws the full
  stream would have;
* each shard is an ordinary run (placement for its load, churn, every policy; the centralized
  baseline is one cluster per shard sized for that shard's load); m shards drawn at random are
  simulated, in parallel processes;
* percentiles and shares come from the pooled per-request samples of the m shards; totals
  (requests, tokens, cost, earnings, hedges...) are the sample's times k / m.

The assumption: no request crosses from one cell to another. A shard's router picks among
~1/k of the agents, so balancing is slightly worse than in one global pool (fewer idle fast
agents to find in a burst, placement rounding per shard), which can only overestimate queueing
and tails a little; the centralized baseline is sharded the same way. `prepare_union` builds
the unsharded run on identical inputs (the union of all shards' hosts and requests) so that the
two can be compared: docs/simulator.md reports that validation.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, replace
from multiprocessing import get_all_start_methods, get_context
from typing import Any

import numpy as np

from rigpool.core.errors import BadRequest
from rigpool.hardware.catalog import find_gpu
from rigpool.hardware.models import find_model
from rigpool.sim.config import SimConfig
from rigpool.sim.engine import RunResult
from rigpool.sim.fleet import (
    HostPool,
    SimFleet,
    Sizing,
    build_centralized,
    fleet_from_pool,
    partition,
    sample_pool,
)
from rigpool.sim.inputs import (
    Trace,
    build_shard_workload,
    load_gpu_mix,
    load_regions,
    merge_workloads,
)
from rigpool.sim.inputs import load_trace as _load_trace
from rigpool.sim.runner import Prepared, assemble_report, policy_metrics, run_one

#: Fields of `policy_metrics` that grow with the fleet: multiplied by k / m.
EXTENSIVE = (
    "requests",
    "completed",
    "failed",
    "goodput_rps",
    "output_tokens_delivered",
    "gpu_cost_usd",
    "client_paid_usd",
    "hedges",
    "retries",
    "failovers",
    "regional_fallbacks",
    "events",
)

ASSUMPTION = (
    "cell sharding: the fleet is split into k shards with the same GPU, card-count, region and "
    "home/marketplace mix, each serving 1/k of the load (whole copies of the superposed trace); "
    "no request crosses shards. m shards are simulated; percentiles pool their requests, totals "
    "are scaled by k/m. A shard's router chooses among ~1/k of the agents, so balancing is "
    "slightly worse than one global pool would give (tails slightly overestimated); the "
    "centralized baseline is one cluster per shard, sized for its load."
)

_POOLS: dict[str, HostPool] = {}


def _pool(cfg: SimConfig, mean_prompt: int, mean_output: int) -> HostPool:
    d = cfg.as_dict()
    for k in ("policies", "samples", "extra"):
        d.pop(k, None)
    key = json.dumps([d, mean_prompt, mean_output], sort_keys=True, default=str)
    pool = _POOLS.get(key)
    if pool is None:
        _POOLS.clear()  # one fleet at a time
        pool = _POOLS[key] = sample_pool(
            cfg, load_gpu_mix(), load_regions(), mean_prompt, mean_output
        )
    return pool


def check_shards(cfg: SimConfig, shards: int, sample: int) -> None:
    """Refuse a shard plan that cannot work, before any work.

    Raises:
        BadRequest: k < 1, m outside 1..k, or a scaling other than "superpose" when k > 1.

    """
    if shards < 1:
        raise BadRequest("shards must be at least 1", param="shards")
    if not 1 <= sample <= shards:
        raise BadRequest(f"sample-shards must lie in 1..{shards}", param="sample_shards")
    if shards > 1 and cfg.scaling != "superpose":
        raise BadRequest("sharding needs --scaling superpose", param="scaling")


def _inputs(cfg: SimConfig, trace: Trace | None) -> tuple[Trace, int, int]:
    trace = trace or _load_trace(cfg.trace)
    find_model(cfg.model)
    find_gpu(cfg.central_gpu)
    load_regions().index(cfg.central_region)
    mean_prompt = round(float(trace.prompt.mean()))
    mean_output = max(1, round(float(trace.output.mean())))
    return trace, mean_prompt, mean_output


def prepare_shard(
    cfg: SimConfig, shards: int, shard: int, trace: Trace | None = None
) -> tuple[Prepared, Sizing]:
    """Shard `shard` of `shards` as an ordinary run's inputs; also the whole fleet's sizing.

    Raises:
        BadRequest: the shard gets fewer than two copies of the trace (too many shards for the
            load), or its hosts cannot hold the model.

    """
    t0 = time.perf_counter()
    trace, mean_prompt, mean_output = _inputs(cfg, trace)
    regions = load_regions()
    pool = _pool(cfg, mean_prompt, mean_output)
    full_capacity = float(pool.caps.sum())
    target = cfg.load * full_capacity
    copies = target / trace.rate
    if shards > 1 and copies / shards < 2.0:
        raise BadRequest(
            f"{shards} shards get {copies / shards:.1f} copies of the trace each (at least 2 "
            "are needed for a steady 1/k of the load); use fewer shards or a bigger fleet",
            param="shards",
        )
    members = partition(pool, shards, cfg.seed)[shard]
    fleet, sizing = fleet_from_pool(
        cfg, pool, members, target / shards, regions, mean_prompt, mean_output
    )
    central = None
    if "centralized" in cfg.policies:
        central = build_centralized(
            cfg,
            regions,
            target / shards,
            mean_prompt,
            mean_output,
            shard=shard if shards > 1 else None,
        )
    wl = build_shard_workload(cfg, trace, target, regions.weights, shards, shard)
    whole = Sizing(
        target,
        full_capacity,
        int((pool.caps > 0).sum()),
        int(sum(n for (_, n), c in zip(pool.hosts, pool.caps, strict=True) if c > 0)),
    )
    prep = Prepared(
        cfg,
        trace,
        regions,
        fleet,
        central,
        sizing,
        wl,
        mean_prompt,
        mean_output,
        time.perf_counter() - t0,
    )
    return prep, whole


def prepare_union(cfg: SimConfig, shards: int, trace: Trace | None = None) -> Prepared:
    """The unsharded run on the inputs of a k-shard run: every host, every shard's requests.

    One placement over the whole pool for the whole load, one centralized cluster for it, and
    the merged stream of the k shards' requests (the same arrival times and draws).
    """
    t0 = time.perf_counter()
    trace, mean_prompt, mean_output = _inputs(cfg, trace)
    regions = load_regions()
    pool = _pool(cfg, mean_prompt, mean_output)
    target = cfg.load * float(pool.caps.sum())
    fleet, sizing = fleet_from_pool(
        cfg, pool, np.arange(len(pool)), target, regions, mean_prompt, mean_output
    )
    central = None
    if "centralized" in cfg.policies:
        central = build_centralized(cfg, regions, target, mean_prompt, mean_output)
    wl = merge_workloads(
        [
            build_shard_workload(cfg, trace, target, regions.weights, shards, j)
            for j in range(shards)
        ]
    )
    return Prepared(
        cfg,
        trace,
        regions,
        fleet,
        central,
        sizing,
        wl,
        mean_prompt,
        mean_output,
        time.perf_counter() - t0,
    )


@dataclass
class ShardOutcome:
    """What a worker sends back: the shard's fleets (for money), results, sizes and times."""

    shard: int
    fleet: SimFleet
    central: SimFleet | None
    results: dict[str, RunResult]
    requests: int
    rate_factor: float
    prepare_s: float
    wall_s: float
    pid: int


def run_shard(cfg: SimConfig, shards: int, shard: int, trace: Trace | None = None) -> ShardOutcome:
    """Prepare and run shard `shard` under every configured policy (a worker's job)."""
    t0 = time.perf_counter()
    prep, _ = prepare_shard(cfg, shards, shard, trace)
    results = {name: run_one(prep, name) for name in cfg.policies}
    fleet = replace(prep.fleet, placement=None)
    central = replace(prep.central, placement=None) if prep.central is not None else None
    return ShardOutcome(
        shard,
        fleet,
        central,
        results,
        len(prep.workload),
        prep.workload.rate_factor,
        prep.prepare_s,
        time.perf_counter() - t0,
        os.getpid(),
    )


def sampled_shards(cfg: SimConfig, shards: int, sample: int) -> list[int]:
    """The m shards simulated: drawn at random (seeded), all of them when m == k."""
    if sample >= shards:
        return list(range(shards))
    rng = np.random.default_rng([cfg.seed, 6])
    return sorted(rng.choice(shards, size=sample, replace=False).tolist())


def concat_fleets(fleets: list[SimFleet]) -> SimFleet:
    """Several shards' fleets as one (agent order: shard by shard), info summed."""
    info: dict[str, object] = {}
    for f in fleets:
        for k, v in f.info.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                info.setdefault(k, v)
            else:
                info[k] = info.get(k, 0) + v  # type: ignore[operator]
    if "mean_availability" in info:
        info["mean_availability"] = float(np.mean([f.info["mean_availability"] for f in fleets]))
    if "usd_per_gpu_hour" in info:
        info["usd_per_gpu_hour"] = fleets[0].info["usd_per_gpu_hour"]
    if "capacity_rps_per_gpu_at_util_1" in info:
        info["capacity_rps_per_gpu_at_util_1"] = fleets[0].info["capacity_rps_per_gpu_at_util_1"]

    def cat(name: str) -> np.ndarray:
        return np.concatenate([getattr(f, name) for f in fleets])

    return SimFleet(
        agent_ids=[a for f in fleets for a in f.agent_ids],
        gpu=[g for f in fleets for g in f.gpu],
        n_gpus=[n for f in fleets for n in f.n_gpus],
        region=cat("region"),
        consumer=cat("consumer"),
        usd_per_hour=cat("usd_per_hour"),
        price_mtok=cat("price_mtok"),
        last_mile_s=cat("last_mile_s"),
        slow=cat("slow"),
        perf=[p for f in fleets for p in f.perf],
        online0=cat("online0"),
        events_t=np.zeros(0),
        events_host=np.zeros(0, dtype=np.int64),
        events_kind=np.zeros(0, dtype=np.int64),
        placement=None,
        info=info,
    )


def concat_results(parts: list[RunResult]) -> RunResult:
    """Several shards' results of one policy as one sample (utilization: mean over shards)."""

    def cat(name: str) -> np.ndarray:
        return np.concatenate([getattr(r, name) for r in parts])

    def mean_series(name: str) -> list[float]:
        rows = [getattr(r, name) for r in parts]
        n = min(len(x) for x in rows)
        return [float(np.mean([x[i] for x in rows])) for i in range(n)]

    first = parts[0]
    n_t = min(len(r.util_t) for r in parts)
    return RunResult(
        policy=first.policy,
        ttft=cat("ttft"),
        e2e=cat("e2e"),
        tpot=cat("tpot"),
        status=cat("status"),
        reason=cat("reason"),
        attempts=cat("attempts"),
        tokens=cat("tokens"),
        agent_tokens=cat("agent_tokens"),
        agent_earned=cat("agent_earned"),
        agent_online_s=cat("agent_online_s"),
        util_t=list(first.util_t[:n_t]),
        util_slots=mean_series("util_slots"),
        util_busy=mean_series("util_busy"),
        util_online=[int(sum(r.util_online[i] for r in parts)) for i in range(n_t)],
        events=sum(r.events for r in parts),
        wall_s=sum(r.wall_s for r in parts),
        hedges=sum(r.hedges for r in parts),
        retries=sum(r.retries for r in parts),
        failovers=sum(r.failovers for r in parts),
        fallbacks=sum(r.fallbacks for r in parts),
        sim_end_s=max(r.sim_end_s for r in parts),
    )


def _extrapolate(m: dict[str, Any], factor: float) -> dict[str, Any]:
    out = dict(m)
    out["sampled_requests"] = m["requests"]
    for key in EXTENSIVE:
        if key in out and out[key] is not None:
            v = out[key] * factor
            out[key] = round(v) if isinstance(m[key], int) else v
    out["failed_by_reason"] = {k: round(v * factor) for k, v in m["failed_by_reason"].items()}
    return out


def run_sharded(
    cfg: SimConfig,
    shards: int,
    sample: int,
    *,
    workers: int | None = None,
    trace: Trace | None = None,
    on_shard_done: Callable[[ShardOutcome], None] | None = None,
) -> dict[str, Any]:
    """Simulate `sample` of `shards` cells (parallel processes); return the combined report.

    The report has the shape of `run_experiment`'s: percentiles from the pooled sample, totals
    scaled by k / m, plus a "sharding" section (plan, assumption, per-shard times).
    """
    check_shards(cfg, shards, sample)
    t0 = time.perf_counter()
    ids = sampled_shards(cfg, shards, sample)
    # Fail on bad input here, before any worker starts (the first shard's inputs are cheap).
    prep0, whole = prepare_shard(cfg, shards, ids[0], trace)
    workers = max(1, min(workers if workers is not None else (os.cpu_count() or 1), len(ids)))
    outcomes: list[ShardOutcome] = []
    if workers == 1:
        for j in ids:
            o = run_shard(cfg, shards, j, trace)
            outcomes.append(o)
            if on_shard_done:
                on_shard_done(o)
    else:
        # fork (Linux): workers inherit the loaded modules and need no __main__ guard
        method = "fork" if "fork" in get_all_start_methods() else "spawn"
        with ProcessPoolExecutor(max_workers=workers, mp_context=get_context(method)) as ex:
            futs = [ex.submit(run_shard, cfg, shards, j, trace) for j in ids]
            for fut in as_completed(futs):
                o = fut.result()
                outcomes.append(o)
                if on_shard_done:
                    on_shard_done(o)
    outcomes.sort(key=lambda o: o.shard)
    fleet = concat_fleets([o.fleet for o in outcomes])
    centrals = [o.central for o in outcomes if o.central is not None]
    central = concat_fleets(centrals) if centrals else None
    prep = Prepared(
        cfg,
        prep0.trace,
        prep0.regions,
        fleet,
        central,
        whole,
        prep0.workload,
        prep0.mean_prompt,
        prep0.mean_output,
        sum(o.prepare_s for o in outcomes),
    )
    results = {name: concat_results([o.results[name] for o in outcomes]) for name in cfg.policies}
    factor = shards / len(ids)
    metrics = {
        name: _extrapolate(policy_metrics(prep, r), factor)
        if factor != 1
        else {**policy_metrics(prep, r), "sampled_requests": len(r.status)}
        for name, r in results.items()
    }
    sampled_requests = sum(o.requests for o in outcomes)
    report = assemble_report(
        prep, results, metrics, round(sampled_requests * factor), outcomes[0].rate_factor * shards
    )
    for key in ("decentralized_fleet", "centralized_fleet"):
        if report["inputs"][key] is not None:
            report["inputs"][key]["note"] = (
                f"the {len(ids)} simulated shard(s) of {shards}; whole fleet about "
                f"{factor:g}x these counts"
            )
    wall = time.perf_counter() - t0
    report["sharding"] = {
        "shards": shards,
        "sampled": ids,
        "extrapolation_factor": factor,
        "workers": workers,
        "assumption": ASSUMPTION,
        "sampled_requests": sampled_requests,
        "per_shard": [
            {
                "shard": o.shard,
                "requests": o.requests,
                "hosts": len(o.fleet),
                "gpus": int(sum(o.fleet.n_gpus)),
                "prepare_s": o.prepare_s,
                "wall_s": o.wall_s,
            }
            for o in outcomes
        ],
        "wall_s": wall,
    }
    report["run"]["wall_s"] = wall
    return report


def relative_error(a: float | None, b: float | None) -> float | None:
    """(a - b) / b, None where either is missing or b is zero."""
    if a is None or b is None or b == 0 or not math.isfinite(a) or not math.isfinite(b):
        return None
    return (a - b) / b
