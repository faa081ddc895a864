"""Scheduler benchmark: routing, heartbeats and placement over a 371,000-GPU fleet.

Fleet mix (why): a pooled network gets two kinds of supply.
- 80 % of GPUs are idle gaming PCs, one card each, drawn from the Steam Hardware Survey's
  April 2026 shares of desktop NVIDIA cards that the GPU catalog knows
  (data/steam_hw_survey_gpu_mix/);
- 20 % are marketplace hosts, drawn uniformly from the 64 vast.ai offers
  (data/cloud_gpu_prices/vast_gpu_offers.csv): multi-GPU rigs (up to 8 cards) and data-center
  cards (A100, H100, H200, L40S, V100), with their GPU counts.
Regions: ten, with weights that are an assumption (about the split of Steam users and of
vast.ai hosts by continent); RTTs between them from Azure's inter-region P95 matrix
(data/network_latency/). Models: the 17 catalog models plus fine-tunes sharing their
architectures, 50 in all, popularity Zipf(1.1); each agent loads one model (two for 10 %).

Usage: .venv/bin/python bench/scheduler.py [--quick] [--seed N] [--out PATH]
"""

from __future__ import annotations

import argparse
import csv
import gc
import json
import math
import platform
import random
import statistics
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from rigpool.hardware.catalog import find_gpu, gpu_catalog
from rigpool.hardware.memory import best_quant_that_fits
from rigpool.hardware.models import find_model, model_catalog
from rigpool.scheduler.fleet import AgentRecord, FleetIndex, region_matches
from rigpool.scheduler.placement import (
    Host,
    ModelDemand,
    RttMatrix,
    compare,
    evaluate,
    place_exact,
    place_greedy,
    random_small_instance,
)
from rigpool.scheduler.routing import Constraints, Route, Router

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"

REGIONS = {  # region id -> (weight, Azure region used for RTTs)
    "us-east": (0.16, "East US"),
    "us-west": (0.10, "West US 2"),
    "us-central": (0.06, "Central US"),
    "eu-west": (0.14, "West Europe"),
    "eu-central": (0.12, "Germany West Central"),
    "eu-north": (0.05, "Sweden Central"),
    "ap-northeast": (0.10, "Japan East"),
    "ap-southeast": (0.10, "Southeast Asia"),
    "ap-south": (0.07, "Central India"),
    "sa-east": (0.10, "Brazil South"),
}


def steam_mix() -> list[tuple[str, float]]:
    path = DATA / "steam_hw_survey_gpu_mix" / "steam_hw_survey_gpu_vram_2024-05_to_2026-04.csv"
    shares: dict[str, float] = {}
    with path.open() as f:
        for row in csv.DictReader(f):
            if row["date"] != "2026-04-01" or row["category"] != "Video Card Description":
                continue
            name = row["name"]
            if "NVIDIA" not in name or "Laptop" in name:
                continue
            try:
                spec = find_gpu(name)
            except Exception:
                continue
            shares[spec.name] = shares.get(spec.name, 0.0) + float(row["percentage"])
    total = sum(shares.values())
    return [(k, v / total) for k, v in sorted(shares.items())]


def vast_mix() -> list[tuple[str, int]]:
    out = []
    with (DATA / "cloud_gpu_prices" / "vast_gpu_offers.csv").open() as f:
        for row in csv.DictReader(f):
            try:
                spec = find_gpu(row["AcceleratorName"])
            except Exception:
                continue
            out.append((spec.name, int(float(row["AcceleratorCount"]))))
    return out


def rtt_matrix() -> RttMatrix:
    path = DATA / "network_latency" / "azure_region_rtt_p95_ms_2026-07.csv"
    with path.open() as f:
        rows = {r["Source"]: r for r in csv.DictReader(f)}
    pairs = {}
    for a, (_, az_a) in REGIONS.items():
        for b, (_, az_b) in REGIONS.items():
            if a != b and rows[az_a][az_b]:
                pairs[(a, b)] = float(rows[az_a][az_b]) / 1000.0
    return RttMatrix(pairs)


def model_names() -> list[str]:
    bases = list(model_catalog())
    names = list(bases)
    k = 0
    while len(names) < 50:
        names.append(f"{bases[k % len(bases)]}-ft{k // len(bases) + 1}")
        k += 1
    return names


def arch_of(name: str):
    base = name.split("-ft")[0]
    return find_model(base)


def build_fleet(n_gpus: int, rng: random.Random) -> tuple[list[AgentRecord], list[str]]:
    steam, vast = steam_mix(), vast_mix()
    steam_names = [n for n, _ in steam]
    steam_w = [w for _, w in steam]
    regions = list(REGIONS)
    region_w = [w for w, _ in REGIONS.values()]
    models = model_names()
    zipf = [1.0 / (i + 1) ** 1.1 for i in range(len(models))]
    catalog = gpu_catalog()
    records: list[AgentRecord] = []
    gpus = 0
    i = 0
    while gpus < n_gpus:
        if rng.random() < 0.8 * (1 / 1) / (0.8 + 0.2 * 3.0):  # ~80 % of GPUs from Steam hosts
            gpu, count = rng.choices(steam_names, steam_w)[0], 1
        else:
            gpu, count = rng.choice(vast)
        count = min(count, n_gpus - gpus)
        spec = catalog[gpu]
        vram = spec.vram_gb * count
        # Models it can hold: pick by popularity among those that fit (4-bit or better).
        loaded: list[str] = []
        for _ in range(2 if rng.random() < 0.1 else 1):
            for _try in range(6):
                m = rng.choices(models, zipf)[0]
                if m in loaded:
                    continue
                if best_quant_that_fits(arch_of(m), spec, 4096, n_gpus=count) is not None:
                    loaded.append(m)
                    break
        base_price = (spec.usd_per_hour or 0.3) * count
        records.append(
            AgentRecord(
                agent_id=f"agent-{i:06d}",
                gpus=(gpu,) * count,
                vram_gb=vram,
                region=rng.choices(regions, region_w)[0],
                models=frozenset(loaded),
                price_out_per_mtok=round(base_price * rng.uniform(0.5, 2.0), 3),
                reputation=round(rng.betavariate(8, 1.5), 3),
                max_concurrency=16 * count,
            )
        )
        gpus += count
        i += 1
    return records, models


def percentile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


def random_constraints(rng: random.Random) -> Constraints:
    r = rng.random()
    if r < 0.6:
        return Constraints()
    if r < 0.8:
        return Constraints.of("eu")
    if r < 0.9:
        return Constraints.of({"us-east", "us-west"}, min_reputation=0.7)
    return Constraints.of(None, max_price_per_mtok=1.0)


def naive_route(records: list[AgentRecord], model: str, c: Constraints, rng: random.Random):
    """Baseline: scan every agent, filter, then power of two choices on load."""
    pool = [
        r
        for r in records
        if model in r.models
        and r.healthy
        and (c.regions is None or region_matches(r.region, c.regions))
        and (c.max_price_per_mtok is None or r.price_for(model) <= c.max_price_per_mtok)
        and r.reputation >= c.min_reputation
    ]
    if len(pool) < 2:
        return pool[0] if pool else None
    a, b = rng.sample(pool, 2)
    return a if a.outstanding <= b.outstanding else b


def naive_placement(hosts: list[Host], demands: list[ModelDemand]):
    """Baseline: first fit in host order, models in demand order, no latency ordering."""
    from rigpool.scheduler.placement import _Ctx

    ctx = _Ctx(hosts, demands, None, 0.8)
    reps = []
    free = list(hosts)
    for d in demands:
        left = d.requests_per_s
        keep = []
        for h in free:
            if left <= 0:
                keep.append(h)
                continue
            rep = ctx.single(h, d)
            if rep is None:
                keep.append(h)
                continue
            reps.append(rep)
            left -= rep.capacity_rps
        free = keep
    return evaluate(demands, reps)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "scheduler.json"))
    args = ap.parse_args()
    rng = random.Random(args.seed)
    console = Console()
    n_gpus = 20_000 if args.quick else 371_000
    n_routes = 20_000 if args.quick else 200_000
    n_naive = 50 if args.quick else 100
    n_beats = 100_000 if args.quick else 1_000_000
    n_small = 8 if args.quick else 30

    t0 = time.perf_counter()
    records, models = build_fleet(n_gpus, rng)
    build_s = time.perf_counter() - t0
    console.print(f"fleet: {len(records):,} agents, {n_gpus:,} GPUs, built in {build_s:.1f} s")

    # --- joins ---
    fleet = FleetIndex()
    t0 = time.perf_counter()
    for r in records:
        fleet.join(r)
    join_s = time.perf_counter() - t0

    # --- routing ---
    router = Router(seed=args.seed)
    zipf = [1.0 / (i + 1) ** 1.1 for i in range(len(models))]
    reqs = [(rng.choices(models, zipf)[0], random_constraints(rng)) for _ in range(n_routes)]
    # A long-lived service with a 371k-agent heap freezes it after start-up so that the
    # cyclic GC does not rescan it on every gen-2 collection (gc.freeze, Python >= 3.7).
    gc.collect()
    gc.freeze()
    clock = time.perf_counter_ns
    rounds: list[list[float]] = []
    none = 0
    for _ in range(3):  # the machine is shared: report the median of three rounds
        lat: list[float] = [0.0] * len(reqs)
        for i, (model, c) in enumerate(reqs):
            t = clock()
            res = router.route(fleet, model, c)
            lat[i] = (clock() - t) / 1e3
            if isinstance(res, Route):
                router.on_dispatch(res.agent_id)
                router.on_end(res.agent_id, ok=True, now=0.0)
            else:
                none += 1
        rounds.append(lat)
    p99s = [percentile(r, 0.99) for r in rounds]
    lat = rounds[sorted(range(3), key=p99s.__getitem__)[1]]
    none //= 3
    naive_lat = []
    for model, c in reqs[:n_naive]:
        t = clock()
        naive_route(records, model, c, rng)
        naive_lat.append((clock() - t) / 1e3)

    # --- heartbeats ---
    ids = [r.agent_id for r in records]
    beats = [
        (rng.choice(ids), rng.randint(0, 16), rng.random(), rng.random() > 0.01)
        for _ in range(n_beats)
    ]
    t0 = time.perf_counter()
    for i, (agent_id, out, load, healthy) in enumerate(beats):
        fleet.heartbeat(agent_id, float(i), outstanding=out, load=load, healthy=healthy)
    beat_s = time.perf_counter() - t0
    plain = {r.agent_id: r for r in records}
    t0 = time.perf_counter()
    for agent_id, out, load, _ in beats:
        rec = plain[agent_id]
        rec.outstanding, rec.load = out, load
    plain_s = time.perf_counter() - t0

    # --- placement of 50 models over the whole fleet ---
    hosts = [Host(r.agent_id, r.gpus[0], len(r.gpus), r.region) for r in records]
    total_rps = n_gpus * 0.12  # sized so that the fleet is busy but can carry it
    demands = [
        ModelDemand(
            m,
            requests_per_s=round(total_rps * z / sum(zipf), 3),
            prompt_tokens=rng.choice((256, 512, 1024)),
            output_tokens=rng.choice((128, 256, 512)),
            context=4096,
            arch=arch_of(m),
        )
        for m, z in zip(models, zipf, strict=True)
    ]
    rtt = rtt_matrix()
    t0 = time.perf_counter()
    placement = place_greedy(hosts, demands, rtt)
    place_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    naive_score = naive_placement(hosts, demands)
    naive_place_s = time.perf_counter() - t0
    pipelines = sum(1 for r in placement.replicas if r.kind == "pipeline")

    # --- greedy vs exact on small instances ---
    unmet_gaps, lat_gaps, price_gaps, exact_s = [], [], [], []
    for seed in range(n_small):
        h, d, r = random_small_instance(seed)
        g = place_greedy(h, d, r, max_spans=3)
        t0 = time.perf_counter()
        e = place_exact(h, d, r, max_spans=3)
        exact_s.append(time.perf_counter() - t0)
        gap = compare(g.score, e.score)
        unmet_gaps.append(gap.unmet_rps / sum(x.requests_per_s for x in d))
        if gap.latency is not None:
            lat_gaps.append(gap.latency)
        if gap.price is not None:
            price_gaps.append(gap.price)

    metrics = {
        "agents": len(records),
        "gpus": n_gpus,
        "join_per_s": len(records) / join_s,
        "route_p50_us": percentile(lat, 0.50),
        "route_p99_us": percentile(lat, 0.99),
        "route_mean_us": statistics.fmean(lat),
        "route_p99_us_rounds": p99s,
        "route_no_candidate_share": none / n_routes,
        "naive_route_p50_us": percentile(naive_lat, 0.50),
        "naive_route_p99_us": percentile(naive_lat, 0.99),
        "heartbeats_per_s": n_beats / beat_s,
        "plain_dict_updates_per_s": n_beats / plain_s,
        "placement_s": place_s,
        "placement_replicas": len(placement.replicas),
        "placement_pipelines": pipelines,
        "placement_unmet_rps": placement.score.unmet_rps,
        "placement_demand_rps": sum(d.requests_per_s for d in demands),
        "placement_mean_latency_s": placement.score.mean_latency_s,
        "placement_usd_per_hour": placement.score.usd_per_hour,
        "naive_placement_s": naive_place_s,
        "naive_placement_unmet_rps": naive_score.unmet_rps,
        "naive_placement_mean_latency_s": naive_score.mean_latency_s,
        "naive_placement_usd_per_hour": naive_score.usd_per_hour,
        "milp_instances": n_small,
        "milp_unmet_gap_mean": statistics.fmean(unmet_gaps),
        "milp_unmet_gap_max": max(unmet_gaps),
        "milp_latency_gap_mean": statistics.fmean(lat_gaps) if lat_gaps else 0.0,
        "milp_latency_gap_max": max(lat_gaps) if lat_gaps else 0.0,
        "milp_latency_compared": len(lat_gaps),
        "milp_price_gap_mean": statistics.fmean(price_gaps) if price_gaps else 0.0,
        "milp_price_gap_max": max(price_gaps) if price_gaps else 0.0,
        "milp_solve_s_max": max(exact_s),
    }
    goals = {"route_p99_us": 50.0, "heartbeats_per_s": 100_000.0, "placement_s": 5.0}
    setup = {
        "quick": args.quick,
        "seed": args.seed,
        "python": sys.version.split()[0],
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "routes": n_routes,
        "naive_routes": n_naive,
        "heartbeats": n_beats,
        "models": len(models),
        "fleet_mix": "80% of GPUs: Steam survey 2026-04 desktop NVIDIA shares (1 card/host); "
        "20%: vast.ai offers (GPU type and count per host)",
        "regions": {k: v[0] for k, v in REGIONS.items()},
        "rtt": "Azure inter-region P95 (2026-07) between mapped regions; 20 ms within a region",
        "route_constraints": "60% none, 20% region 'eu', 10% us-east/us-west + reputation>=0.7, "
        "10% max price 1.0/Mtok",
        "placement_demand": f"{total_rps:.0f} req/s over 50 models, Zipf(1.1)",
        "small_instances": "8 hosts, 3 models, 1-2 regions (random_small_instance seeds 0..N-1)",
    }

    table = Table(title=f"rigpool scheduler benchmark ({'quick' if args.quick else 'full'})")
    for col in ("metric", "rigpool", "baseline", "goal", "ok"):
        table.add_column(col)

    def row(name: str, value: float, base: str, goal: float | None, higher: bool = False) -> None:
        ok = (
            ""
            if goal is None
            else ("yes" if (value >= goal if higher else value <= goal) else "NO")
        )
        table.add_row(name, f"{value:,.2f}", base, "" if goal is None else f"{goal:,.0f}", ok)

    row(
        "route p50 (µs)",
        metrics["route_p50_us"],
        f"{metrics['naive_route_p50_us']:,.0f} scan",
        None,
    )
    row("route p99 (µs)", metrics["route_p99_us"], f"{metrics['naive_route_p99_us']:,.0f} scan", 50)
    row("heartbeats / s", metrics["heartbeats_per_s"],
        f"{metrics['plain_dict_updates_per_s']:,.0f} plain dict", 100_000, higher=True)  # fmt: skip
    row("placement of 50 models (s)", place_s, f"{naive_place_s:.2f} first-fit", 5)
    row("placement unmet req/s", placement.score.unmet_rps,
        f"{naive_score.unmet_rps:,.1f} first-fit", None)  # fmt: skip
    row("placement mean latency (s)", placement.score.mean_latency_s,
        f"{naive_score.mean_latency_s:.2f} first-fit", None)  # fmt: skip
    row("placement $/h", placement.score.usd_per_hour,
        f"{naive_score.usd_per_hour:,.0f} first-fit", None)  # fmt: skip
    row("greedy vs milp: unmet gap mean (% demand)", 100 * metrics["milp_unmet_gap_mean"],
        f"max {100 * metrics['milp_unmet_gap_max']:.2f}%", None)  # fmt: skip
    row("greedy vs milp: latency gap mean (%)", 100 * metrics["milp_latency_gap_mean"],
        f"max {100 * metrics['milp_latency_gap_max']:.2f}%", None)  # fmt: skip
    row("greedy vs milp: price gap mean (%)", 100 * metrics["milp_price_gap_mean"],
        f"max {100 * metrics['milp_price_gap_max']:.2f}%", None)  # fmt: skip
    console.print(table)
    console.print(
        f"{len(placement.replicas):,} replicas ({pipelines} pipelines); "
        f"{metrics['route_no_candidate_share']:.2%} of routes had no candidate"
    )

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps({"metrics": metrics, "goals": goals, "setup": setup}, indent=2) + "\n"
    )
    console.print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
