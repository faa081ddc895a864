"""The simulated fleets: hosts sampled from the GPU mix, placed by the real placement code.

`build_decentralized` samples home PCs and marketplace hosts over the regions, sizes the load
from their serving capacity, runs `scheduler.placement.place_greedy` and returns the hosts it
chose with their timing tables (from `hardware.perf.estimate`) and churn timelines.
`build_centralized` sizes a homogeneous cluster in one region for the same load, with the same
placement code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cache

import numpy as np

from rigpool.core.errors import BadRequest
from rigpool.hardware.catalog import GpuSpec, find_gpu
from rigpool.hardware.memory import max_concurrency
from rigpool.hardware.models import ModelArch, find_model
from rigpool.hardware.perf import estimate
from rigpool.hardware.plan import SERVING_BATCH
from rigpool.scheduler.placement import Host, ModelDemand, Placement, RttMatrix, place_greedy
from rigpool.sim.config import SimConfig
from rigpool.sim.inputs import GpuMix, Regions

# Churn event kinds (timeline arrays).
OFF_GRACEFUL, OFF_ABRUPT, ON, CRASH = 0, 1, 2, 3


@dataclass(frozen=True)
class HostPerf:
    """How one host type serves the model: quant, batch limit, per-batch TPOT, prefill."""

    quant: str
    max_batch: int
    tpot_s: tuple[float, ...]  # index b = batch size (index 0 unused)
    prefill: object  # PerfEstimate.prefill_s bound method (prompt tokens -> seconds)
    capacity_rps: float  # placement's capacity at utilization 1


@dataclass
class SimFleet:
    """Hosts that serve the model, as arrays and per-host lists, plus their churn timeline."""

    agent_ids: list[str]
    gpu: list[str]
    n_gpus: list[int]
    region: np.ndarray
    consumer: np.ndarray
    usd_per_hour: np.ndarray
    price_mtok: np.ndarray
    last_mile_s: np.ndarray
    slow: np.ndarray
    perf: list[HostPerf]
    online0: np.ndarray
    events_t: np.ndarray
    events_host: np.ndarray
    events_kind: np.ndarray
    placement: Placement | None = None
    info: dict[str, object] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.agent_ids)

    @property
    def total_gpus(self) -> int:
        return int(sum(self.n_gpus))


def _split(model: ModelArch, n: int) -> str:
    return "tensor" if n > 1 and model.n_kv_heads % n == 0 else "layer"


def host_price(spec: GpuSpec, n: int, cfg: SimConfig) -> float:
    """USD per hour for a host: catalog market (else cloud) price, else the bandwidth rule."""
    per = spec.usd_per_hour
    if per is None:
        per = cfg.consumer_usd_per_gbps_h * spec.mem_bandwidth_gbs
    return per * n


@cache
def _type_capacity(gpu: str, n: int, model: str, prompt: int, output: int, context: int) -> float:
    """Placement's capacity (requests/s at utilization 1) of one host of this type; 0 if none."""
    rep = place_greedy(
        [Host("probe", gpu, n, "r", 1.0)],
        [ModelDemand(model, 1e9, prompt, output, context)],
        utilization=1.0,
        allow_pipelines=False,
        local_search_hosts=0,
    ).replicas
    return rep[0].capacity_rps if rep else 0.0


@cache
def host_perf(
    gpu: str, n: int, model: str, quant: str, context: int, decode_context: int, cap: float
) -> HostPerf:
    spec = find_gpu(gpu)
    arch = find_model(model)
    batch = max(1, min(SERVING_BATCH, max_concurrency(arch, spec, quant, context, n_gpus=n)))
    split = _split(arch, n)
    tpots = [0.0]
    first = None
    for b in range(1, batch + 1):
        est = estimate(spec, arch, quant, b, context=decode_context, n_gpus=n, split=split)  # type: ignore[arg-type]
        tpots.append(est.tpot_s)
        if first is None:
            first = est
    assert first is not None
    return HostPerf(quant, batch, tuple(tpots), first.prefill_s, cap)


def _weibull_scale(median: float, shape: float) -> float:
    return median / math.log(2.0) ** (1.0 / shape)


def churn_timeline(
    consumer: np.ndarray, cfg: SimConfig, horizon_s: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Initial online flags and sorted (time, host, kind) churn and crash events up to horizon.

    On and off periods are Weibull(`session_shape`) with the configured medians; a host that is
    online at time 0 has a residual session (length-biased draw x uniform), so the fleet starts
    in its stationary state. Crashes are Poisson with rate 1 / MTBF while the host lives.
    """
    n = len(consumer)
    k = cfg.session_shape
    on_scale = np.where(
        consumer,
        _weibull_scale(cfg.session_median_h * 3600, k),
        _weibull_scale(cfg.dc_session_median_h * 3600, k),
    )
    off_scale = _weibull_scale(cfg.offline_median_h * 3600, k)
    mean_on = on_scale * math.gamma(1 + 1 / k)
    mean_off = off_scale * math.gamma(1 + 1 / k)
    p_on = mean_on / (mean_on + mean_off)
    online0 = rng.random(n) < p_on
    # residual life of the current period (length-biased sample x uniform)
    cand = rng.weibull(k, size=(n, 8))
    w = cand / cand.sum(axis=1, keepdims=True)
    pick = (w.cumsum(axis=1) < rng.random((n, 1))).sum(axis=1).clip(0, 7)
    length = cand[np.arange(n), pick]
    resid = length * rng.random(n) * np.where(online0, on_scale, off_scale)
    ts: list[np.ndarray] = []
    hs: list[np.ndarray] = []
    ks: list[np.ndarray] = []
    t = resid.copy()
    state = online0.copy()  # state during the current period
    hosts = np.arange(n)
    while True:
        live = t < horizon_s
        if not live.any():
            break
        h = hosts[live]
        going_off = state[live]
        kinds = np.where(
            going_off,
            np.where(rng.random(len(h)) < cfg.graceful_share, OFF_GRACEFUL, OFF_ABRUPT),
            ON,
        )
        ts.append(t[live] + np.where(going_off, 0.0, cfg.rejoin_load_s))
        hs.append(h)
        ks.append(kinds)
        nxt = np.where(going_off, off_scale, on_scale[live]) * rng.weibull(k, size=len(h))
        t[live] = t[live] + nxt
        state[live] = ~going_off
    mtbf = np.where(consumer, cfg.crash_mtbf_h, cfg.dc_crash_mtbf_h) * 3600.0
    n_crash = rng.poisson(horizon_s / mtbf)
    crash_h = np.repeat(hosts, n_crash)
    ts.append(rng.uniform(0.0, horizon_s, size=len(crash_h)))
    hs.append(crash_h)
    ks.append(np.full(len(crash_h), CRASH))
    all_t = np.concatenate(ts) if ts else np.zeros(0)
    all_h = np.concatenate(hs) if hs else np.zeros(0, dtype=np.int64)
    all_k = np.concatenate(ks) if ks else np.zeros(0, dtype=np.int64)
    order = np.lexsort((all_h, all_t))
    return online0, all_t[order], all_h[order].astype(np.int64), all_k[order].astype(np.int64)


def mean_availability(cfg: SimConfig, consumer: bool) -> float:
    """Long-run share of time a host is online (on / (on + off))."""
    on = cfg.session_median_h if consumer else cfg.dc_session_median_h
    return on / (on + cfg.offline_median_h)  # same shape: means scale like medians


def rtt_matrix(regions: Regions) -> RttMatrix:
    pairs = {
        (a, b): float(regions.rtt_s[i, j])
        for i, a in enumerate(regions.names)
        for j, b in enumerate(regions.names)
        if i != j
    }
    return RttMatrix(pairs)


@dataclass(frozen=True)
class Sizing:
    """The load: requests/s offered and what it was derived from."""

    target_rps: float
    fleet_capacity_rps: float
    capable_hosts: int
    capable_gpus: int


def sample_hosts(
    cfg: SimConfig, mix: GpuMix, regions: Regions, rng: np.random.Generator
) -> tuple[list[tuple[str, int]], np.ndarray, np.ndarray]:
    """Hosts (gpu, n_gpus), their region index and whether each is a home PC."""
    mean_market = float(np.dot(mix.market_w, [n for _, n in mix.market]))
    s = cfg.consumer_share
    q = s * mean_market / (1 - s + s * mean_market) if s < 1 else 1.0
    hosts: list[tuple[str, int]] = []
    consumer: list[bool] = []
    gpus = 0
    while gpus < cfg.gpus:
        batch = max(64, int((cfg.gpus - gpus) / (q + (1 - q) * mean_market)) + 16)
        is_c = rng.random(batch) < q
        ci = rng.choice(len(mix.consumer), size=batch, p=mix.consumer_w)
        mi = rng.choice(len(mix.market), size=batch, p=mix.market_w)
        for j in range(batch):
            gpu, count = mix.consumer[ci[j]] if is_c[j] else mix.market[mi[j]]
            count = min(count, cfg.gpus - gpus)
            hosts.append((gpu, count))
            consumer.append(bool(is_c[j]))
            gpus += count
            if gpus >= cfg.gpus:
                break
    region = rng.choice(
        len(regions.names), size=len(hosts), p=regions.weights / regions.weights.sum()
    )
    return hosts, region, np.asarray(consumer)


@dataclass
class HostPool:
    """Every sampled host with its own random draws, before placement picks any.

    Per-host draws (last mile, persistent slowness, churn and crash timeline) are made here for
    the whole pool, so that a host is the same host whether it is simulated in the full fleet
    or in one shard of it (`partition`): the sharded and the unsharded runs see identical inputs.
    Churn events name pool indices.
    """

    hosts: list[tuple[str, int]]
    region: np.ndarray
    consumer: np.ndarray
    caps: np.ndarray
    prices: np.ndarray
    last_mile_s: np.ndarray
    slow: np.ndarray
    online0: np.ndarray
    events_t: np.ndarray
    events_host: np.ndarray
    events_kind: np.ndarray

    def __len__(self) -> int:
        return len(self.hosts)


def sample_pool(
    cfg: SimConfig, mix: GpuMix, regions: Regions, mean_prompt: int, mean_output: int
) -> HostPool:
    """Sample the fleet's hosts and draw every per-host random input (seeded by `cfg.seed`).

    Raises:
        BadRequest: no host of the fleet can hold the model (fleet too small or cards too small).

    """
    rng = np.random.default_rng([cfg.seed, 2])
    find_model(cfg.model)  # unknown model -> NotFound before any work
    hosts, region, consumer = sample_hosts(cfg, mix, regions, rng)
    types = sorted(set(hosts))
    cap_of = {
        t: _type_capacity(t[0], t[1], cfg.model, mean_prompt, mean_output, cfg.context)
        for t in types
    }
    price_of = {t: host_price(find_gpu(t[0]), t[1], cfg) for t in types}
    caps = np.asarray([cap_of[h] for h in hosts])
    if not (caps > 0).any():
        raise BadRequest(
            f"no host in a fleet of {cfg.gpus} GPU(s) can hold model {cfg.model!r} at 4-bit or "
            "better; use more GPUs or a smaller model",
            param="gpus",
        )
    prices = np.asarray([price_of[h] for h in hosts])
    n = len(hosts)
    last_mile = np.where(
        consumer,
        cfg.last_mile_median_ms / 1000.0 * np.exp(cfg.last_mile_sigma * rng.standard_normal(n)),
        0.0,
    )
    slow_u = rng.random(n)
    slow = np.where(
        consumer & (slow_u < cfg.slow_host_share),
        rng.uniform(cfg.slow_host_range[0], cfg.slow_host_range[1], size=n),
        1.0,
    )
    horizon = cfg.duration_s + cfg.drain_limit_s
    online0, ev_t, ev_h, ev_k = churn_timeline(consumer, cfg, horizon, rng)
    return HostPool(hosts, region, consumer, caps, prices, last_mile, slow, online0, ev_t, ev_h,
                    ev_k)  # fmt: skip


def partition(pool: HostPool, k: int, seed: int) -> list[np.ndarray]:
    """Split the pool's hosts into `k` shards with the same GPU, card-count, region and home mix.

    Stratified: hosts are grouped by (gpu, n_gpus, region, home), shuffled inside each group,
    and the groups, one after the other, are dealt round-robin to the shards, so every shard
    gets within one host of 1/k of every group (and of the fleet). Returns sorted pool indices.
    """
    if k <= 1:
        return [np.arange(len(pool))]
    rng = np.random.default_rng([seed, 5])
    key = [(g, c, int(r), bool(h)) for (g, c), r, h in
           zip(pool.hosts, pool.region, pool.consumer, strict=True)]  # fmt: skip
    groups: dict[tuple[str, int, int, bool], list[int]] = {}
    for i, kk in enumerate(key):
        groups.setdefault(kk, []).append(i)
    order = []
    for kk in sorted(groups):
        members = np.asarray(groups[kk])
        order.append(members[rng.permutation(len(members))])
    flat = np.concatenate(order)
    shard = (np.arange(len(flat)) + int(rng.integers(k))) % k
    return [np.sort(flat[shard == j]) for j in range(k)]


def fleet_from_pool(
    cfg: SimConfig,
    pool: HostPool,
    members: np.ndarray,
    target_rps: float,
    regions: Regions,
    mean_prompt: int,
    mean_output: int,
) -> tuple[SimFleet, Sizing]:
    """Place the model on the pool hosts `members` for `target_rps` with `place_greedy`.

    Raises:
        BadRequest: no member host can hold the model, or placement found no replica.

    """
    members = np.asarray(members, dtype=np.int64)
    caps_m = pool.caps[members]
    capable_m = members[caps_m > 0]
    if not len(capable_m):
        raise BadRequest(
            f"no host in a fleet of {cfg.gpus} GPU(s) can hold model {cfg.model!r} at 4-bit or "
            "better; use more GPUs or a smaller model",
            param="gpus",
        )
    hosts = pool.hosts
    avail_c = mean_availability(cfg, True)
    avail_d = mean_availability(cfg, False)
    avail = np.where(pool.consumer[capable_m], avail_c, avail_d)
    placement_hosts = [
        Host(f"agent-{i:06d}", hosts[i][0], hosts[i][1], regions.names[pool.region[i]],
             float(pool.prices[i]))
        for i in capable_m.tolist()
    ]  # fmt: skip
    mean_avail = float(np.average(avail, weights=pool.caps[capable_m]))
    demand = ModelDemand(cfg.model, target_rps / mean_avail, mean_prompt, mean_output, cfg.context)
    placement = place_greedy(
        placement_hosts,
        [demand],
        rtt_matrix(regions),
        utilization=cfg.placement_utilization,
        allow_pipelines=False,
    )
    if not placement.replicas:
        raise BadRequest(f"placement found no replica for {cfg.model!r}", param="gpus")
    quant = {int(r.spans[0].agent_id.split("-")[1]): r.quant for r in placement.replicas}
    chosen = sorted(quant)
    sel = np.asarray(chosen, dtype=np.int64)
    decode_ctx = mean_prompt + mean_output // 2
    perf = [
        host_perf(hosts[i][0], hosts[i][1], cfg.model, quant[i], cfg.context, decode_ctx,
                  float(pool.caps[i]))
        for i in chosen
    ]  # fmt: skip
    n = len(sel)
    cons = pool.consumer[sel]
    usd = pool.prices[sel]
    cap_util = np.asarray([p.capacity_rps for p in perf]) * cfg.placement_utilization
    price_mtok = usd / (cap_util * mean_output * 3600.0) * 1e6
    # this subset's churn: the pool's events of the chosen hosts, renumbered
    pos = np.full(len(pool), -1, dtype=np.int64)
    pos[sel] = np.arange(n)
    keep = pos[pool.events_host] >= 0
    gpus_placed = int(sum(hosts[i][1] for i in chosen))
    fleet = SimFleet(
        agent_ids=[f"agent-{i:06d}" for i in chosen],
        gpu=[hosts[i][0] for i in chosen],
        n_gpus=[hosts[i][1] for i in chosen],
        region=pool.region[sel],
        consumer=cons,
        usd_per_hour=usd,
        price_mtok=price_mtok,
        last_mile_s=pool.last_mile_s[sel],
        slow=pool.slow[sel],
        perf=perf,
        online0=pool.online0[sel],
        events_t=pool.events_t[keep],
        events_host=pos[pool.events_host[keep]],
        events_kind=pool.events_kind[keep],
        placement=placement,
        info={
            "hosts_sampled": len(members),
            "gpus_sampled": int(sum(hosts[i][1] for i in members.tolist())),
            "hosts_capable": len(capable_m),
            "hosts_placed": n,
            "gpus_placed": gpus_placed,
            "home_hosts_placed": int(cons.sum()),
            "placement_unmet_rps": placement.score.unmet_rps,
            "placement_demand_rps": demand.requests_per_s,
            "mean_availability": mean_avail,
            "slow_hosts": int((pool.slow[sel] > 1).sum()),
        },
    )
    sizing = Sizing(
        target_rps,
        float(caps_m.sum()),
        len(capable_m),
        int(sum(hosts[i][1] for i in capable_m.tolist())),
    )
    return fleet, sizing


def build_decentralized(
    cfg: SimConfig,
    mix: GpuMix,
    regions: Regions,
    mean_prompt: int,
    mean_output: int,
) -> tuple[SimFleet, Sizing]:
    """Sample the fleet, size the load, place the model with `place_greedy`, add churn.

    The load is `cfg.load` of the serving capacity of every host that can hold the model.

    Raises:
        BadRequest: no host of the fleet can hold the model (fleet too small or cards too small).

    """
    pool = sample_pool(cfg, mix, regions, mean_prompt, mean_output)
    target = cfg.load * float(pool.caps.sum())
    return fleet_from_pool(
        cfg, pool, np.arange(len(pool)), target, regions, mean_prompt, mean_output
    )


def build_centralized(
    cfg: SimConfig,
    regions: Regions,
    target_rps: float,
    mean_prompt: int,
    mean_output: int,
    *,
    shard: int | None = None,
) -> SimFleet:
    """A homogeneous cluster of `central_gpu` in `central_region`, placed for `target_rps`.

    The same `place_greedy` at the same `placement_utilization` sizes it: as many one-GPU
    replicas as the load needs. No churn; crashes at the data-center MTBF. `shard` j gives
    shard j's own crash draws (a sharded run sizes one cluster per shard, for its load).
    """
    rng = np.random.default_rng([cfg.seed, 3] if shard is None else [cfg.seed, 3, shard])
    spec = find_gpu(cfg.central_gpu)
    r = regions.index(cfg.central_region)
    cap = _type_capacity(spec.name, 1, cfg.model, mean_prompt, mean_output, cfg.context)
    if cap <= 0:
        raise BadRequest(f"{spec.name} cannot hold {cfg.model!r}", param="central_gpu")
    price = spec.cloud_usd_per_hour if cfg.central_price == "cloud" else spec.market_usd_per_hour
    price = float(price if price is not None else host_price(spec, 1, cfg))
    n_pool = math.ceil(target_rps / (cap * cfg.placement_utilization)) + 2
    hosts = [Host(f"dc-{i:05d}", spec.name, 1, cfg.central_region, price) for i in range(n_pool)]
    placement = place_greedy(
        hosts,
        [ModelDemand(cfg.model, target_rps, mean_prompt, mean_output, cfg.context)],
        utilization=cfg.placement_utilization,
        allow_pipelines=False,
        local_search_hosts=0,
    )
    reps = placement.replicas
    n = len(reps)
    decode_ctx = mean_prompt + mean_output // 2
    perf = [
        host_perf(spec.name, 1, cfg.model, rep.quant, cfg.context, decode_ctx, cap) for rep in reps
    ]
    horizon = cfg.duration_s + cfg.drain_limit_s
    cons = np.zeros(n, dtype=bool)
    n_crash = rng.poisson(horizon / (cfg.dc_crash_mtbf_h * 3600.0), size=n)
    crash_h = np.repeat(np.arange(n), n_crash)
    crash_t = rng.uniform(0.0, horizon, size=len(crash_h))
    order = np.argsort(crash_t, kind="stable")
    usd = np.full(n, price)
    return SimFleet(
        agent_ids=[rep.spans[0].agent_id for rep in reps],
        gpu=[spec.name] * n,
        n_gpus=[1] * n,
        region=np.full(n, r),
        consumer=cons,
        usd_per_hour=usd,
        price_mtok=usd / (cap * cfg.placement_utilization * mean_output * 3600.0) * 1e6,
        last_mile_s=np.zeros(n),
        slow=np.ones(n),
        perf=perf,
        online0=np.ones(n, dtype=bool),
        events_t=crash_t[order],
        events_host=crash_h[order].astype(np.int64),
        events_kind=np.full(len(crash_h), CRASH, dtype=np.int64),
        placement=placement,
        info={
            "gpu": spec.name,
            "region": cfg.central_region,
            "gpus": n,
            "usd_per_gpu_hour": price,
            "price_basis": cfg.central_price,
            "capacity_rps_per_gpu_at_util_1": cap,
            "placement_unmet_rps": placement.score.unmet_rps,
        },
    )
