"""Placement: which hosts load which model, as whole replicas or as pipelines of layer spans.

Pure: hosts and demand in, a `Placement` out. The coordinator turns it into `load_model`
messages; the simulator and `bench/scheduler.py` call the same functions.

The problem (what both solvers optimise, lexicographically):

1. **meet demand** — minimise unmet requests/s, summed over models;
2. then **latency** — minimise the demand-weighted mean request latency, with traffic sent to
   the fastest replicas first (which is optimal for a given set of replicas);
3. then **price** — minimise the hourly price of the hosts that load something.

A unit of placement is a host (an agent): one replica per host, using all its GPUs (tensor
parallel when the card count divides the model's KV heads, else a layer split), or one span of
layers in a pipeline. Per replica, with the performance model of `rigpool.hardware.perf` at the
serving batch b (up to 16 sequences, as many as memory allows):

    latency   = prefill(prompt) + output_tokens x tpot(b)
    capacity  = utilization / (prefill(prompt) + output_tokens x tpot(b) / b)      [requests/s]

A model that fits no single host (or for which single hosts run out) gets pipelines,
Petals-style: host i holds n_i consecutive layers, and for a chain of k hosts

    tpot_chain    = sum_i n_i x tpot_i / L  +  sum of the k - 1 hop round trips
    prefill_chain = sum_i n_i x prefill_i / L  +  the same round trips

(`pipeline_tpot_s` with heterogeneous spans). Fewer hops matter most (a 20 ms hop is worth
dozens of layers), so the heuristic takes the hosts with the most layer capacity first, then
gives layers to the fastest hosts first, which minimises the compute sum for that set.

Solvers:

* `place_greedy` — for any size (371,000 GPUs in about a second): hosts are grouped into types
  (GPU, GPU count, region), each (type, model) is priced once, models are served largest first,
  each from its lowest-latency types (ties: lowest price per request/s), then pipelines.
* `place_exact` — `scipy.optimize.milp` over every single-host replica and every chain of up to
  `max_spans` hosts, solved in three lexicographic stages. For small instances only (the
  chain columns grow as hosts^max_spans); `compare` reports the greedy's gap against it.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cache
from typing import Literal

from rigpool.core.errors import BadRequest
from rigpool.hardware.catalog import GpuSpec, find_gpu
from rigpool.hardware.memory import (
    RUNTIME_FIXED_GB,
    RUNTIME_FRACTION,
    kv_cache_bytes,
    max_concurrency,
    memory_fit,
    quant_format,
    usable_bytes,
    weights_bytes,
)
from rigpool.hardware.models import ModelArch, find_model
from rigpool.hardware.perf import Split, estimate
from rigpool.hardware.plan import PLAN_QUANTS, SERVING_BATCH

SAME_REGION_RTT_S = 0.020  # as hardware.plan.HOP_RTT_S: one WAN round trip inside a region
CROSS_REGION_RTT_S = 0.100  # default between two regions absent from the matrix
PIPELINE_BATCH = 8  # sequences a pipeline keeps in flight (KV cache is reserved for them)
PIPELINE_QUANT = "q4_k_m"  # pooled consumer cards run GGUF; the published 70B splits use it
_GB = 1e9


# --- inputs ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Host:
    """One agent as placement sees it: `n_gpus` cards of one type in one region.

    Attributes:
        agent_id: The agent.
        gpu: Catalog GPU name (resolved with `find_gpu`; an unknown name raises `NotFound`).
        n_gpus: Cards in the host; a replica uses all of them.
        region: Hyphenated region id.
        usd_per_hour: What the host costs per hour; None = catalog price x n_gpus (0 if none).

    """

    agent_id: str
    gpu: str
    n_gpus: int = 1
    region: str = "local"
    usd_per_hour: float | None = None

    @classmethod
    def from_gpus(
        cls,
        agent_id: str,
        gpus: Sequence[str],
        region: str,
        usd_per_hour: float | None = None,
    ) -> Host:
        """A host from a list of card names; a mixed host counts as its smallest card x n."""
        if not gpus:
            raise BadRequest(f"agent {agent_id!r} has no GPU", param="gpus")
        specs = [find_gpu(g) for g in gpus]
        smallest = min(specs, key=lambda s: (s.vram_gb, s.mem_bandwidth_gbs))
        return cls(agent_id, smallest.name, len(specs), region, usd_per_hour)


@dataclass(frozen=True)
class ModelDemand:
    """Traffic for one model.

    Attributes:
        model: Model id as clients name it; its architecture is `arch` or `find_model(model)`.
        requests_per_s: Mean arrival rate.
        prompt_tokens, output_tokens: Mean request sizes.
        context: Tokens of KV cache reserved per sequence (memory provisioning).
        quant: Weight format; None = per host the highest precision down to 4-bit that fits
            (pipelines: `PIPELINE_QUANT`).
        arch: The architecture, for models not in the catalog (fine-tunes of a known base).

    """

    model: str
    requests_per_s: float
    prompt_tokens: int = 512
    output_tokens: int = 256
    context: int = 4096
    quant: str | None = None
    arch: ModelArch | None = None

    def architecture(self) -> ModelArch:
        return self.arch if self.arch is not None else find_model(self.model)


class RttMatrix:
    """Round-trip times between regions, in seconds; symmetric lookups with defaults."""

    def __init__(
        self,
        pairs: Mapping[tuple[str, str], float] | None = None,
        *,
        same_region_s: float = SAME_REGION_RTT_S,
        default_s: float = CROSS_REGION_RTT_S,
    ) -> None:
        self._pairs: dict[tuple[str, str], float] = {}
        for (a, b), rtt in (pairs or {}).items():
            self._pairs[(a, b)] = rtt
            self._pairs.setdefault((b, a), rtt)
        self.same_region_s = same_region_s
        self.default_s = default_s

    def rtt_s(self, a: str, b: str) -> float:
        if a == b:
            return self._pairs.get((a, a), self.same_region_s)
        return self._pairs.get((a, b), self.default_s)


# --- outputs -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Span:
    """Layers [first_layer, end_layer) of a model on one host."""

    agent_id: str
    region: str
    gpu: str
    n_gpus: int
    first_layer: int
    end_layer: int


@dataclass(frozen=True)
class Replica:
    """One serving copy of a model: a single host, or a pipeline of spans in chain order."""

    model: str
    quant: str
    kind: Literal["single", "pipeline"]
    spans: tuple[Span, ...]
    capacity_rps: float
    latency_s: float
    ttft_s: float
    tpot_s: float
    usd_per_hour: float

    @property
    def agents(self) -> tuple[str, ...]:
        return tuple(s.agent_id for s in self.spans)


@dataclass(frozen=True)
class PlacementScore:
    """The three objectives, in priority order, as `evaluate` computes them."""

    unmet_rps: float
    mean_latency_s: float
    usd_per_hour: float
    latency_rate: float  # sum over served traffic of latency x requests/s (what stage 2 minimises)


@dataclass
class Placement:
    """Replicas chosen by a solver, with their score."""

    replicas: list[Replica]
    score: PlacementScore
    unmet_rps: dict[str, float]
    solver: str
    seconds: float = 0.0
    stats: dict[str, float] = field(default_factory=dict)

    def by_model(self) -> dict[str, list[Replica]]:
        out: dict[str, list[Replica]] = {}
        for r in self.replicas:
            out.setdefault(r.model, []).append(r)
        return out


# --- per-replica arithmetic --------------------------------------------------------------------


def _decode_context(d: ModelDemand) -> int:
    return max(1, d.prompt_tokens + d.output_tokens // 2)


def _split(model: ModelArch, n_gpus: int) -> Split:
    return "tensor" if n_gpus > 1 and model.n_kv_heads % n_gpus == 0 else "layer"


@dataclass(frozen=True)
class _Perf:
    """A host type serving a model: what a replica (or span per layer) costs."""

    quant: str
    batch: int
    prefill_s: float
    tpot_s: float


@cache
def _single_perf(
    gpu: GpuSpec, n_gpus: int, model: ModelArch, quant: str | None, d_key: tuple[int, int, int]
) -> _Perf | None:
    prompt, output, context = d_key
    del output
    if gpu.segment == "cpu":
        return None
    quants = (quant_format(quant).name,) if quant is not None else PLAN_QUANTS
    q = next(
        (q for q in quants if memory_fit(model, gpu, q, context, n_gpus=n_gpus).fits),
        None,
    )
    if q is None:
        return None
    batch = min(SERVING_BATCH, max_concurrency(model, gpu, q, context, n_gpus=n_gpus))
    est = estimate(
        gpu, model, q, batch, context=d_key[0] + d_key[1] // 2, n_gpus=n_gpus,
        split=_split(model, n_gpus),
    )  # fmt: skip
    return _Perf(q, batch, est.prefill_s(prompt), est.tpot_s)


@cache
def _span_perf(
    gpu: GpuSpec, n_gpus: int, model: ModelArch, quant: str, d_key: tuple[int, int, int]
) -> tuple[int, float, float]:
    """(layer capacity, prefill seconds per layer, tpot seconds per layer) at PIPELINE_BATCH."""
    prompt, output, context = d_key
    if gpu.segment == "cpu":
        return 0, math.inf, math.inf
    per_layer = (
        weights_bytes(model, quant) + kv_cache_bytes(model, context, PIPELINE_BATCH)
    ) / model.n_layers
    room = n_gpus * (usable_bytes(gpu) - RUNTIME_FIXED_GB * _GB)
    layers = int(room / (per_layer * (1.0 + RUNTIME_FRACTION))) if room > 0 else 0
    layers = min(layers, model.n_layers)
    if layers <= 0:
        return 0, math.inf, math.inf
    est = estimate(
        gpu, model, quant, PIPELINE_BATCH, context=prompt + output // 2, n_gpus=n_gpus,
        split=_split(model, n_gpus),
    )  # fmt: skip
    return layers, est.prefill_s(prompt) / model.n_layers, est.tpot_s / model.n_layers


_MISSING = object()


def _d_key(d: ModelDemand) -> tuple[int, int, int]:
    return (d.prompt_tokens, d.output_tokens, d.context)


def _host_price(host: Host, spec: GpuSpec) -> float:
    if host.usd_per_hour is not None:
        return host.usd_per_hour
    return (spec.usd_per_hour or 0.0) * host.n_gpus


class _Ctx:
    """Resolved inputs shared by the solvers: specs, architectures, prices."""

    def __init__(
        self,
        hosts: Sequence[Host],
        demands: Sequence[ModelDemand],
        rtt: RttMatrix | None,
        utilization: float,
    ) -> None:
        if not 0.0 < utilization <= 1.0:
            raise BadRequest("utilization must lie in (0, 1]", param="utilization")
        names = {d.model for d in demands}
        if len(names) != len(demands):
            raise BadRequest("each model may appear once in the demand", param="demands")
        for d in demands:
            if d.requests_per_s < 0 or d.prompt_tokens < 0 or d.output_tokens <= 0:
                raise BadRequest(
                    f"demand for {d.model!r}: rate and prompt must be >= 0, output > 0",
                    param="demands",
                )
            if d.context > d.architecture().max_context:
                raise BadRequest(
                    f"context {d.context} for {d.model!r} exceeds its maximum "
                    f"{d.architecture().max_context}",
                    param="context",
                )
        self.demands = list(demands)
        self.archs = {d.model: d.architecture() for d in demands}
        spec_by_name: dict[str, GpuSpec] = {}
        self.specs: dict[str, GpuSpec] = {}
        self.prices: dict[str, float] = {}
        seen: set[str] = set()
        for h in hosts:
            if h.agent_id in seen:
                raise BadRequest(f"host {h.agent_id!r} listed twice", param="hosts")
            if h.n_gpus <= 0:
                raise BadRequest(f"host {h.agent_id!r} has no GPU", param="hosts")
            seen.add(h.agent_id)
            spec = spec_by_name.get(h.gpu)
            if spec is None:
                spec = spec_by_name[h.gpu] = find_gpu(h.gpu)
            self.specs[h.agent_id] = spec
            self.prices[h.agent_id] = _host_price(h, spec)
        self.hosts = list(hosts)
        self.rtt = rtt or RttMatrix()
        self.utilization = utilization
        self._perf: dict[tuple[str, int, str], _Perf | object | None] = {}
        self._templates: dict[tuple[TypeKey, str], Replica | object | None] = {}

    def single(self, host: Host, d: ModelDemand) -> Replica | None:
        spec = self.specs[host.agent_id]
        key = (spec.name, host.n_gpus, d.model)
        perf = self._perf.get(key, _MISSING)
        if perf is _MISSING:
            perf = self._perf[key] = _single_perf(
                spec, host.n_gpus, self.archs[d.model], d.quant, _d_key(d)
            )
        if perf is None:
            return None
        assert isinstance(perf, _Perf)
        model = self.archs[d.model]
        span = Span(host.agent_id, host.region, spec.name, host.n_gpus, 0, model.n_layers)
        return _replica(d, perf.quant, "single", (span,), perf.prefill_s, perf.tpot_s,
                        perf.batch, self.prices[host.agent_id], self.utilization)  # fmt: skip

    def type_single(self, key: TypeKey, host: Host, d: ModelDemand) -> Replica | None:
        """`single(host, d)` memoised per host type: a template for all hosts of `key`."""
        ck = (key, d.model)
        rep = self._templates.get(ck, _MISSING)
        if rep is _MISSING:
            rep = self._templates[ck] = self.single(host, d)
        return rep if isinstance(rep, Replica) else None

    def pipeline_quant(self, d: ModelDemand) -> str:
        return quant_format(d.quant).name if d.quant is not None else PIPELINE_QUANT

    def span(self, host: Host, d: ModelDemand) -> tuple[int, float, float]:
        return _span_perf(
            self.specs[host.agent_id],
            host.n_gpus,
            self.archs[d.model],
            self.pipeline_quant(d),
            _d_key(d),
        )

    def chain(self, hosts: Sequence[Host], d: ModelDemand) -> Replica | None:
        """The best pipeline over exactly these hosts (None if they cannot hold the model).

        Layers go to the fastest hosts first (each up to its capacity); the chain order is
        the one with the least total hop time (all orders of regions for up to 4 distinct
        regions, else grouped by region).
        """
        model = self.archs[d.model]
        info = [(h, *self.span(h, d)) for h in hosts]
        if sum(i[1] for i in info) < model.n_layers:
            return None
        left = model.n_layers
        layers: dict[str, int] = {}
        for h, cap, _, _tpot in sorted(info, key=lambda i: (i[3], i[0].agent_id)):
            take = min(cap, left)
            if take > 0:
                layers[h.agent_id] = take
                left -= take
        used = [i for i in info if i[0].agent_id in layers]
        if len(used) < 2:
            return None  # one host holds it all: that is a single replica, not a pipeline
        hop_s = self._best_order(used)
        order, hops = hop_s
        prefill = sum(layers[h.agent_id] * p for h, _, p, _ in used) + hops
        tpot = sum(layers[h.agent_id] * t for h, _, _, t in used) + hops
        spans = []
        first = 0
        for h in order:
            n = layers[h.agent_id]
            spec = self.specs[h.agent_id]
            spans.append(Span(h.agent_id, h.region, spec.name, h.n_gpus, first, first + n))
            first += n
        price = sum(self.prices[h.agent_id] for h in order)
        return _replica(d, self.pipeline_quant(d), "pipeline", tuple(spans), prefill, tpot,
                        PIPELINE_BATCH, price, self.utilization)  # fmt: skip

    def _best_order(
        self, used: Sequence[tuple[Host, int, float, float]]
    ) -> tuple[list[Host], float]:
        groups: dict[str, list[Host]] = {}
        for h, *_ in sorted(used, key=lambda i: i[0].agent_id):
            groups.setdefault(h.region, []).append(h)
        regions = sorted(groups)
        orders = itertools.permutations(regions) if len(regions) <= 4 else [tuple(regions)]
        best: tuple[list[Host], float] | None = None
        for perm in orders:
            chain = [h for r in perm for h in groups[r]]
            hops = sum(self.rtt.rtt_s(a.region, b.region) for a, b in itertools.pairwise(chain))
            if best is None or hops < best[1] - 1e-12:
                best = (chain, hops)
        assert best is not None
        return best


def _replica(
    d: ModelDemand,
    quant: str,
    kind: Literal["single", "pipeline"],
    spans: tuple[Span, ...],
    prefill_s: float,
    tpot_s: float,
    batch: int,
    price: float,
    utilization: float,
) -> Replica:
    latency = prefill_s + d.output_tokens * tpot_s
    busy = prefill_s + d.output_tokens * tpot_s / batch
    return Replica(
        model=d.model,
        quant=quant,
        kind=kind,
        spans=spans,
        capacity_rps=utilization / busy,
        latency_s=latency,
        ttft_s=prefill_s,
        tpot_s=tpot_s,
        usd_per_hour=price,
    )


# --- scoring -----------------------------------------------------------------------------------


def evaluate(demands: Sequence[ModelDemand], replicas: Iterable[Replica]) -> PlacementScore:
    """Score replicas against demand: traffic fills the fastest replicas of each model first."""
    return _evaluate_counted(demands, ((r, 1) for r in replicas))


def _evaluate_counted(
    demands: Sequence[ModelDemand], groups: Iterable[tuple[Replica, int]]
) -> PlacementScore:
    by_model: dict[str, list[tuple[Replica, int]]] = {}
    price = 0.0
    for r, n in groups:
        by_model.setdefault(r.model, []).append((r, n))
        price += r.usd_per_hour * n
    unmet = rate = served = 0.0
    for d in demands:
        left = d.requests_per_s
        for r, n in sorted(by_model.get(d.model, []), key=lambda g: g[0].latency_s):
            if left <= 0:
                break
            y = min(left, r.capacity_rps * n)
            rate += y * r.latency_s
            served += y
            left -= y
        unmet += max(0.0, left)
    mean = rate / served if served > 0 else 0.0
    return PlacementScore(unmet, mean, price, rate)


def _unmet_by_model(
    demands: Sequence[ModelDemand], replicas: Sequence[Replica]
) -> dict[str, float]:
    cap: dict[str, float] = {}
    for r in replicas:
        cap[r.model] = cap.get(r.model, 0.0) + r.capacity_rps
    return {
        d.model: max(0.0, d.requests_per_s - cap.get(d.model, 0.0))
        for d in demands
        if d.requests_per_s - cap.get(d.model, 0.0) > 1e-9
    }


# --- greedy ------------------------------------------------------------------------------------


def better(a: PlacementScore, b: PlacementScore, tol: float = 1e-9) -> bool:
    """Whether `a` beats `b` lexicographically: unmet demand, then latency, then price."""
    if abs(a.unmet_rps - b.unmet_rps) > tol * max(1.0, b.unmet_rps):
        return a.unmet_rps < b.unmet_rps
    if abs(a.latency_rate - b.latency_rate) > tol * max(1.0, b.latency_rate):
        return a.latency_rate < b.latency_rate
    return a.usd_per_hour < b.usd_per_hour - tol * max(1.0, b.usd_per_hour)


# (GPU, cards, price bucket): hosts with equal keys are interchangeable for the greedy.
TypeKey = tuple[str, int, int]
PRICE_BUCKET = 1.05  # prices within 5 % share a type; replicas keep their host's own price


def _price_bucket(price: float) -> int:
    return -1 if price <= 0 else round(math.log(price) / math.log(PRICE_BUCKET))


class _Pools:
    """Free hosts by type and region, and counts of them for fast what-if passes.

    A greedy pass only decrements counts (`counts()` gives a fresh copy), so several passes
    can be tried at O(types x models) each; `take` pops real hosts for the pass that is kept.
    The hosts still free in a list are its first `count` entries (cheapest last, popped first).
    """

    def __init__(self, ctx: _Ctx, hosts: Iterable[Host]) -> None:
        self.ctx = ctx
        self.lists: dict[TypeKey, dict[str, list[Host]]] = {}
        for h in hosts:
            spec = ctx.specs[h.agent_id]
            key = (spec.name, h.n_gpus, _price_bucket(ctx.prices[h.agent_id]))
            self.lists.setdefault(key, {}).setdefault(h.region, []).append(h)
        for by_region in self.lists.values():
            for lst in by_region.values():
                lst.sort(key=lambda h: (-ctx.prices[h.agent_id], h.agent_id))

    def counts(self) -> dict[TypeKey, dict[str, int]]:
        return {k: {r: len(v) for r, v in rs.items()} for k, rs in self.lists.items()}

    def sample(self, key: TypeKey) -> Host:
        return next(lst[-1] for lst in self.lists[key].values() if lst)

    def take(self, key: TypeKey, region: str) -> Host:
        return self.lists[key][region].pop()


@dataclass(frozen=True)
class _Group:
    """`count` identical replicas; `parts` says which (type, region, hosts) each one uses."""

    template: Replica
    count: int
    parts: tuple[tuple[TypeKey, str, int], ...]


Order = Literal["largest", "tightest", "efficient"]
Rule = Literal["latency", "scarce"]


def _model_order(
    ctx: _Ctx, pools: _Pools, counts: Mapping[TypeKey, Mapping[str, int]], order: Order
) -> list[ModelDemand]:
    demands = [d for d in ctx.demands if d.requests_per_s > 0]
    if order == "largest":
        # Largest models first: they can use the fewest host types, so they choose first.
        return sorted(demands, key=lambda d: (-weights_bytes(ctx.archs[d.model], "fp16"), d.model))
    # "tightest": least supply per unit of demand first. "efficient": most requests/s per
    # host first (unmet demand is counted in requests/s, so cheap-to-serve models win).
    supply: dict[str, float] = {}
    per_host: dict[str, float] = {}
    for d in demands:
        total = best = 0.0
        for key, by_region in counts.items():
            n = sum(by_region.values())
            rep = ctx.type_single(key, pools.sample(key), d) if n else None
            if rep is not None:
                total += rep.capacity_rps * n
                best = max(best, rep.capacity_rps)
        supply[d.model] = total / d.requests_per_s
        per_host[d.model] = best
    if order == "efficient":
        return sorted(demands, key=lambda d: (-per_host[d.model], d.model))
    return sorted(demands, key=lambda d: (supply[d.model], d.model))


def _greedy_once(
    ctx: _Ctx,
    pools: _Pools,
    order: Order,
    rule: Rule,
    max_spans: int,
    allow_pipelines: bool,
    left_by_model: Mapping[str, float] | None = None,
) -> list[_Group]:
    """One greedy pass on counts (default: all demand; else `left_by_model`)."""
    counts = pools.counts()
    demands = _model_order(ctx, pools, counts, order)
    # How many demanded models each host type could serve alone: a contested type is kept
    # for the models that need it when the rule is "scarce".
    contention: dict[TypeKey, int] = {}
    for key in counts:
        host = pools.sample(key)
        contention[key] = sum(1 for d in demands if ctx.type_single(key, host, d) is not None)
    groups: list[_Group] = []
    for d in demands:
        left = d.requests_per_s if left_by_model is None else left_by_model.get(d.model, 0.0)
        if left <= 1e-12:
            continue
        options: list[tuple[float, float, float, TypeKey, Replica]] = []
        for key, by_region in counts.items():
            if not any(by_region.values()):
                continue
            rep = ctx.type_single(key, pools.sample(key), d)
            if rep is not None:
                first = contention[key] if rule == "scarce" else 0.0
                options.append(
                    (first, rep.latency_s, rep.usd_per_hour / rep.capacity_rps, key, rep)
                )
        options.sort(key=lambda o: o[:4])
        for *_, key, rep in options:
            need = math.ceil(left / rep.capacity_rps - 1e-9)
            # Take from the regions with the most hosts left (keeps regions even).
            for region, n in sorted(counts[key].items(), key=lambda rn: (-rn[1], rn[0])):
                if need <= 0:
                    break
                k = min(n, need)
                if k <= 0:
                    continue
                counts[key][region] -= k
                need -= k
                left -= k * rep.capacity_rps
                groups.append(_Group(rep, k, ((key, region, 1),)))
            if left <= 1e-12:
                break
        if left > 1e-12 and allow_pipelines:
            _greedy_pipelines(ctx, pools, counts, d, left, max_spans, groups)
    return groups


def _materialize(ctx: _Ctx, pools: _Pools, groups: Iterable[_Group]) -> list[Replica]:
    """Turn counted groups into replicas on real hosts (popping them from `pools`)."""
    out: list[Replica] = []
    demand = {d.model: d for d in ctx.demands}
    for g in groups:
        t = g.template
        for _ in range(g.count):
            if t.kind == "single":
                ((key, region, _),) = g.parts
                h = pools.take(key, region)
                s0 = t.spans[0]
                span = Span(h.agent_id, h.region, s0.gpu, s0.n_gpus, s0.first_layer, s0.end_layer)
                out.append(replace(t, spans=(span,), usd_per_hour=ctx.prices[h.agent_id]))
            else:
                hosts = [pools.take(key, region) for key, region, n in g.parts for _ in range(n)]
                rep = ctx.chain(hosts, demand[t.model])
                assert rep is not None
                out.append(rep)
    return out


_VARIANTS: tuple[tuple[Order, Rule], ...] = (
    ("largest", "latency"),
    ("tightest", "latency"),
    ("efficient", "latency"),
    ("largest", "scarce"),
    ("tightest", "scarce"),
    ("efficient", "scarce"),
)


def _local_search(
    ctx: _Ctx, replicas: list[Replica], max_spans: int, allow_pipelines: bool, max_rounds: int = 30
) -> list[Replica]:
    """Ruin and recreate (small instances): remove one or two replicas, refill greedily.

    The freed hosts and every other free host are offered to the demand left uncovered, with
    each of the six greedy variants; the first refill that improves the score (`better`) is
    kept, until a round finds none.
    """
    current = list(replicas)
    score = evaluate(ctx.demands, current)
    for _ in range(max_rounds):
        improved = False
        n = len(current)
        removals = [(i,) for i in range(n)] + list(itertools.combinations(range(n), 2))
        for removed in removals:
            kept = [r for k, r in enumerate(current) if k not in removed]
            used = {a for r in kept for a in r.agents}
            free = [h for h in ctx.hosts if h.agent_id not in used]
            cap: dict[str, float] = {}
            for r in kept:
                cap[r.model] = cap.get(r.model, 0.0) + r.capacity_rps
            left = {d.model: d.requests_per_s - cap.get(d.model, 0.0) for d in ctx.demands}
            cands = [kept]
            for order, rule in _VARIANTS:
                pools = _Pools(ctx, free)
                groups = _greedy_once(ctx, pools, order, rule, max_spans, allow_pipelines, left)
                cands.append(kept + _materialize(ctx, pools, groups))
            for cand in cands:
                s = evaluate(ctx.demands, cand)
                if better(s, score):
                    current, score, improved = cand, s, True
                    break
            if improved:
                break
        if not improved:
            break
    return current


def place_greedy(
    hosts: Sequence[Host],
    demands: Sequence[ModelDemand],
    rtt: RttMatrix | None = None,
    *,
    utilization: float = 0.8,
    max_spans: int = 8,
    allow_pipelines: bool = True,
    local_search_hosts: int = 64,
) -> Placement:
    """Fast placement for fleets of any size (see the module docstring for the objective).

    Six greedy passes (models largest-first, tightest-supply-first or most-requests-per-host
    first; host types by latency or least-contested first), each serving every model from
    its chosen host types and then from pipelines. Passes work on counts of interchangeable
    hosts (same GPU, count and region, price within 5 %), so each costs O(types x models)
    whatever the fleet size; the best by `better` is turned into replicas. Fleets of at most
    `local_search_hosts` hosts then get a ruin-and-recreate local search.

    Raises:
        NotFound: an unknown model (demand) or GPU (host), with close matches.
        BadRequest: malformed demand or hosts, or a context longer than the model supports.

    """
    ctx = _Ctx(hosts, demands, rtt, utilization)
    pools = _Pools(ctx, ctx.hosts)
    best: tuple[PlacementScore, list[_Group]] | None = None
    for order, rule in _VARIANTS:
        groups = _greedy_once(ctx, pools, order, rule, max_spans, allow_pipelines)
        s = _evaluate_counted(ctx.demands, ((g.template, g.count) for g in groups))
        if best is None or better(s, best[0]):
            best = (s, groups)
    assert best is not None
    replicas = _materialize(ctx, pools, best[1])
    if len(ctx.hosts) <= local_search_hosts:
        replicas = _local_search(ctx, replicas, max_spans, allow_pipelines)
    score = evaluate(ctx.demands, replicas)
    return Placement(replicas, score, _unmet_by_model(ctx.demands, replicas), "greedy")


def _greedy_pipelines(
    ctx: _Ctx,
    pools: _Pools,
    counts: dict[TypeKey, dict[str, int]],
    d: ModelDemand,
    left: float,
    max_spans: int,
    groups: list[_Group],
) -> float:
    """Build chains inside one region at a time until demand is met or hosts run out.

    Each step finds, per region, the chain of the hosts with the most layer capacity, keeps
    the region whose chain has the lowest latency, and repeats that chain as many times as
    the demand needs and the counts allow.
    """
    model = ctx.archs[d.model]
    while left > 1e-12:
        best: tuple[float, Replica, list[tuple[TypeKey, str, int]]] | None = None
        regions = sorted({r for rs in counts.values() for r, n in rs.items() if n > 0})
        for region in regions:
            rows = []
            for key, rs in counts.items():
                n = rs.get(region, 0)
                if n > 0:
                    cap, _, tpot = ctx.span(pools.sample(key), d)
                    if cap > 0:
                        rows.append((cap, tpot, key, n))
            rows.sort(key=lambda r: (-r[0], r[1], r[2]))
            picked = _pick_chain(rows, model.n_layers, max_spans)
            if picked is None:
                continue
            hosts = []
            for key, k in picked:
                lst = pools.lists[key][region]
                avail = counts[key][region]
                hosts.extend(lst[avail - k : avail])
            rep = ctx.chain(hosts, d)
            if rep is not None and (best is None or rep.latency_s < best[0]):
                best = (rep.latency_s, rep, [(key, region, k) for key, k in picked])
        if best is None:
            break
        _, rep, parts = best
        times = min(counts[key][region] // k for key, region, k in parts)
        times = min(times, math.ceil(left / rep.capacity_rps - 1e-9))
        for key, region, k in parts:
            counts[key][region] -= times * k
        groups.append(_Group(rep, times, tuple(parts)))
        left -= times * rep.capacity_rps
    return left


def _pick_chain(
    rows: Sequence[tuple[int, float, TypeKey, int]], n_layers: int, max_spans: int
) -> list[tuple[TypeKey, int]] | None:
    """Take hosts with the most layer capacity first until they hold `n_layers`."""
    need = n_layers
    picked: list[tuple[TypeKey, int]] = []
    spans = 0
    for cap, _, key, avail in rows:
        n = min(avail, -(-need // cap), max_spans - spans)
        if n <= 0:
            break
        picked.append((key, n))
        spans += n
        need -= n * cap
        if need <= 0:
            return picked
    return None


# --- exact -------------------------------------------------------------------------------------


def _columns(ctx: _Ctx, max_spans: int, allow_pipelines: bool) -> list[Replica]:
    cols: list[Replica] = []
    for d in ctx.demands:
        for h in ctx.hosts:
            rep = ctx.single(h, d)
            if rep is not None:
                cols.append(rep)
        if not allow_pipelines:
            continue
        model = ctx.archs[d.model]
        caps = {h.agent_id: ctx.span(h, d)[0] for h in ctx.hosts}
        usable = [h for h in ctx.hosts if 0 < caps[h.agent_id] < model.n_layers]
        for k in range(2, max_spans + 1):
            for subset in itertools.combinations(usable, k):
                total = sum(caps[h.agent_id] for h in subset)
                # Only minimal sets: dropping any host must lose the model.
                if total < model.n_layers or any(
                    total - caps[h.agent_id] >= model.n_layers for h in subset
                ):
                    continue
                rep = ctx.chain(subset, d)
                if rep is not None:
                    cols.append(rep)
    return cols


def place_exact(
    hosts: Sequence[Host],
    demands: Sequence[ModelDemand],
    rtt: RttMatrix | None = None,
    *,
    utilization: float = 0.8,
    max_spans: int = 3,
    allow_pipelines: bool = True,
    time_limit_s: float = 60.0,
) -> Placement:
    """The optimum of the same problem by mixed-integer programming (small instances only).

    Variables: x_j in {0, 1} per candidate replica j (every single host, every minimal chain
    of up to `max_spans` hosts), traffic y_j >= 0, unmet u_m >= 0. Constraints:
    y_j <= capacity_j x_j; sum_j y_j + u_m = demand_m per model; each host in at most one
    chosen replica. Stages: min sum u; then min sum latency_j y_j; then min sum price_j x_j,
    each with the previous optimum as a bound. Needs scipy (`scipy.optimize.milp`, HiGHS).

    Pipelines are restricted to minimal host sets (no host could be dropped), as the greedy
    builds them; the greedy's replicas are therefore always among the candidates.
    """
    try:
        import numpy as np
        from scipy.optimize import Bounds, LinearConstraint, milp
        from scipy.sparse import lil_matrix
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise RuntimeError("place_exact needs scipy: pip install 'scipy>=1.11,<2'") from exc

    ctx = _Ctx(hosts, demands, rtt, utilization)
    cols = _columns(ctx, max_spans, allow_pipelines)
    n, m = len(cols), len(ctx.demands)
    nvar = 2 * n + m  # x (n), y (n), u (m)
    model_idx = {d.model: i for i, d in enumerate(ctx.demands)}
    host_idx = {h.agent_id: i for i, h in enumerate(ctx.hosts)}

    rows = n + m + len(ctx.hosts)
    a = lil_matrix((rows, nvar))
    lo = np.zeros(rows)
    hi = np.zeros(rows)
    for j, c in enumerate(cols):  # y_j - cap_j x_j <= 0
        a[j, n + j] = 1.0
        a[j, j] = -c.capacity_rps
        lo[j], hi[j] = -np.inf, 0.0
    for j, c in enumerate(cols):  # sum y + u = D
        a[n + model_idx[c.model], n + j] = 1.0
    for i, d in enumerate(ctx.demands):
        a[n + i, 2 * n + i] = 1.0
        lo[n + i] = hi[n + i] = d.requests_per_s
    for j, c in enumerate(cols):  # each host at most once
        for agent in c.agents:
            a[n + m + host_idx[agent], j] = 1.0
    for k in range(len(ctx.hosts)):
        lo[n + m + k], hi[n + m + k] = -np.inf, 1.0

    integrality = np.concatenate([np.ones(n), np.zeros(n + m)])
    bounds = Bounds(np.zeros(nvar), np.concatenate([np.ones(n), np.full(n + m, np.inf)]))
    base = LinearConstraint(a.tocsr(), lo, hi)

    c_unmet = np.concatenate([np.zeros(2 * n), np.ones(m)])
    c_lat = np.concatenate([np.zeros(n), [c.latency_s for c in cols], np.zeros(m)])
    c_price = np.concatenate([[c.usd_per_hour for c in cols], np.zeros(n + m)])

    constraints = [base]
    x = None
    options = {"time_limit": time_limit_s, "mip_rel_gap": 1e-9}
    for stage, objective in enumerate((c_unmet, c_lat, c_price)):
        res = milp(objective, constraints=constraints, integrality=integrality,
                   bounds=bounds, options=options)  # fmt: skip
        if res.x is None:
            # HiGHS's presolve occasionally reports a solve error on these small models;
            # the same model without presolve solves.
            res = milp(objective, constraints=constraints, integrality=integrality,
                       bounds=bounds, options={**options, "presolve": False})  # fmt: skip
        if res.x is None:
            if x is not None and stage > 0:
                break  # keep the previous stage's optimum (a numerically tight bound)
            raise RuntimeError(f"milp failed at stage {stage}: {res.message}")
        x = res.x
        best = float(objective @ x)
        bound = best * (1 + 1e-7) + 1e-6
        constraints = [*constraints, LinearConstraint(objective, -np.inf, bound)]
    assert x is not None
    chosen = [c for j, c in enumerate(cols) if x[j] > 0.5]
    score = evaluate(ctx.demands, chosen)
    return Placement(chosen, score, _unmet_by_model(ctx.demands, chosen), "milp",
                     stats={"columns": float(n)})  # fmt: skip


# --- quality check -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Gap:
    """How far the greedy is from the exact optimum on one instance (relative, >= 0 ideally).

    `unmet_rps` is the extra unmet demand (requests/s); `latency` and `price` are relative
    excesses, compared only where the higher objectives tie (else None).
    """

    unmet_rps: float
    latency: float | None
    price: float | None


def compare(greedy: PlacementScore, exact: PlacementScore, tol: float = 1e-6) -> Gap:
    """The greedy's gap against the exact score, objective by objective."""
    unmet = greedy.unmet_rps - exact.unmet_rps
    if unmet > tol:
        return Gap(unmet, None, None)
    lat = (greedy.latency_rate - exact.latency_rate) / max(exact.latency_rate, 1e-12)
    if lat > 1e-6:
        return Gap(max(unmet, 0.0), lat, None)
    price = (greedy.usd_per_hour - exact.usd_per_hour) / max(exact.usd_per_hour, 1e-12)
    return Gap(max(unmet, 0.0), max(lat, 0.0), price)


_SMALL_GPUS = ("RTX 3060", "RTX 3090", "RTX 4090", "RTX 4060 Ti 16GB", "A100 80GB", "L4",
               "RTX 3080 10GB", "H100 SXM")  # fmt: skip
_SMALL_MODELS = ("llama-3-8b", "mistral-7b", "qwen2.5-14b", "llama-3-70b", "phi-3-mini",
                 "qwen2.5-32b")  # fmt: skip


def random_small_instance(
    seed: int, n_hosts: int = 8, n_models: int = 3
) -> tuple[list[Host], list[ModelDemand], RttMatrix]:
    """A reproducible small instance for the greedy-vs-milp comparison.

    Hosts: 1-2 cards of a random type from a consumer-heavy list, in 1-2 regions. Demand:
    random models with rates drawn around what the fleet can carry, so that some instances
    are tight (demand is the binding objective) and some slack (latency and price decide).
    """
    rng = random.Random(seed)
    regions = ["eu-west", "us-east"][: rng.randint(1, 2)]
    hosts = [
        Host(f"h{i}", rng.choice(_SMALL_GPUS), rng.choice((1, 1, 1, 2)), rng.choice(regions))
        for i in range(n_hosts)
    ]
    models = rng.sample(_SMALL_MODELS, n_models)
    demands = [
        ModelDemand(
            name,
            requests_per_s=round(rng.uniform(0.1, 1.5), 2),
            prompt_tokens=rng.choice((256, 512, 1024)),
            output_tokens=rng.choice((128, 256)),
            context=2048,
        )
        for name in models
    ]
    rtt = RttMatrix({("eu-west", "us-east"): 0.080})
    return hosts, demands, rtt
