"""Routing: which live agent serves the next request.

Pure (no I/O, no clock of its own): the gateway and the simulator call the same code and pass
the time in. Policy, after the design note "Request path":

* candidates are the agents that serve the model and satisfy the request's constraints;
* two of them are drawn at random and the one with the lower latency score wins
  (power of two choices: nearly the balance of "least loaded" without a herd on one agent);
* the score is peak-EWMA time to first token x (outstanding requests + 1), the Finagle /
  Linkerd load metric: a slow or busy agent looks expensive at once and recovers gradually.

Two entry points share the statistics:

* `Router.choose(candidates, exclude)`: the caller hands a list of `Candidate`s (small fleets,
  tests); latency score only.
* `Router.route(fleet, model, constraints, exclude)`: candidates come from a `FleetIndex`
  without scanning it. Region buckets are selected from the index, agents are sampled uniformly
  from them, and price / reputation / exclusion are checked on the sampled agents only (with an
  exact scan as the fallback when constraints reject most samples). The cost adds price as a
  weight:

      cost = peak_ewma_ttft x (outstanding + 1) x max(price, PRICE_FLOOR) ** price_weight

  `price_weight` is an elasticity: at 0.5 an agent 4x cheaper wins against one with up to 2x
  its latency-load score; the ratio between two agents does not depend on the price unit.
  When nothing qualifies, `route` returns a `NoCandidate` saying which constraint emptied the
  pool, for the gateway's 503.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

from rigpool.core.errors import NoCapacity
from rigpool.scheduler.fleet import AgentRecord, FleetIndex, IndexedSet, region_matches

# Prices below this (USD per million output tokens) count as this in the cost: a free agent
# must not get an infinitely better score.
PRICE_FLOOR = 0.01
# Samples drawn before `route` gives up on sampling and scans the selected buckets.
MAX_DRAWS = 16
# Weight of one first token in the fleet-wide TTFT estimate that unmeasured agents start from.
FLEET_PRIOR_WEIGHT = 0.02


@dataclass
class PeakEwma:
    """An exponentially weighted moving average that jumps to peaks at once and decays after.

    `tau_s` is the decay time constant: a sample older than a few tau has almost no weight.
    """

    tau_s: float = 10.0
    value: float = 0.0
    stamp: float = 0.0
    initialised: bool = False

    def observe(self, sample: float, now: float) -> None:
        if not self.initialised:
            self.value, self.stamp, self.initialised = sample, now, True
            return
        if sample > self.value:
            self.value = sample
        else:
            w = math.exp(-max(0.0, now - self.stamp) / self.tau_s)
            self.value = self.value * w + sample * (1 - w)
        self.stamp = now


@dataclass
class AgentStats:
    """What the router remembers about one agent."""

    agent_id: str
    outstanding: int = 0
    ttft: PeakEwma = field(default_factory=PeakEwma)
    failures: int = 0
    completed: int = 0

    def score(self, default_ttft_s: float) -> float:
        ttft = self.ttft.value if self.ttft.initialised else default_ttft_s
        return max(ttft, 1e-4) * (self.outstanding + 1)


@dataclass(frozen=True)
class Candidate:
    """An agent eligible for a request, as the caller sees it right now."""

    agent_id: str
    region: str = "local"
    price_out_per_mtok: float = 0.0
    max_concurrency: int = 1_000_000


@dataclass(frozen=True)
class Constraints:
    """What a request demands of the agent that serves it.

    Attributes:
        regions: Allowed regions, each a region id or a prefix ("eu" admits "eu-west");
            None = anywhere. Data residency ("EU only") is `Constraints(regions={"eu"})`.
        max_price_per_mtok: Highest acceptable price per million output tokens; None = any.
        min_reputation: Lowest acceptable reputation score in [0, 1].

    """

    regions: frozenset[str] | None = None
    max_price_per_mtok: float | None = None
    min_reputation: float = 0.0

    @classmethod
    def of(
        cls,
        regions: Iterable[str] | str | None = None,
        max_price_per_mtok: float | None = None,
        min_reputation: float = 0.0,
    ) -> Constraints:
        """Build constraints from loose input: one region string or any iterable of them."""
        if isinstance(regions, str):
            regions = [regions]
        return cls(
            frozenset(r.strip().lower() for r in regions) if regions is not None else None,
            max_price_per_mtok,
            min_reputation,
        )

    def admits(self, record: AgentRecord, model: str) -> bool:
        """Whether `record` satisfies every constraint for `model` (the brute-force check)."""
        if self.regions is not None and not region_matches(record.region, self.regions):
            return False
        if self.max_price_per_mtok is not None and record.price_for(model) > (
            self.max_price_per_mtok
        ):
            return False
        return record.reputation >= self.min_reputation


class Route(NamedTuple):
    """The agent chosen for a request, and its cost when chosen (a tuple: cheap to build)."""

    agent_id: str
    record: AgentRecord
    cost: float


NoCandidateReason = Literal["model", "unhealthy", "region", "price", "reputation", "excluded"]


@dataclass(frozen=True)
class NoCandidate:
    """Why no agent qualifies: `reason` names the constraint that emptied the pool."""

    model: str
    reason: NoCandidateReason
    message: str

    def to_error(self) -> NoCapacity:
        """The 503 the gateway answers with (code `no_capacity`, message as here)."""
        return NoCapacity(self.message, param="model")


class Router:
    """Power-of-two-choices on peak-EWMA latency; tracks per-agent statistics.

    The caller reports every dispatch, first token and end, so the scores follow reality.
    """

    def __init__(
        self,
        *,
        seed: int | None = None,
        default_ttft_s: float = 0.5,
        price_weight: float = 0.5,
    ):
        if price_weight < 0:
            raise ValueError("price_weight must be non-negative")
        self._rng = random.Random(seed)
        self._stats: dict[str, AgentStats] = {}
        self.default_ttft_s = default_ttft_s
        #: the fleet's typical time to first token (EWMA over every agent's first tokens): what
        #: an agent that has not served yet is assumed to need. A fixed pessimistic default let a
        #: late joiner starve on an idle fleet: it lost every pairing with a measured agent, so
        #: it never got the request that would have measured it (nor a verification check).
        self._fleet_ttft = default_ttft_s
        self._fleet_seen = False
        self.price_weight = price_weight
        self._list_cache: dict[
            tuple[str, frozenset[str] | None], tuple[FleetIndex, int, list[list[str]]]
        ] = {}
        self._bucket_cache: dict[
            tuple[str, frozenset[str]], tuple[int, int, list[IndexedSet], list[str]]
        ] = {}

    def stats(self, agent_id: str) -> AgentStats:
        stats = self._stats.get(agent_id)
        if stats is None:
            stats = self._stats[agent_id] = AgentStats(agent_id)
        return stats

    def forget(self, agent_id: str) -> None:
        self._stats.pop(agent_id, None)

    def choose(
        self, candidates: Sequence[Candidate], exclude: Iterable[str] = ()
    ) -> Candidate | None:
        """Pick one candidate (None when nobody is eligible)."""
        excluded = set(exclude)
        pool = [c for c in candidates if c.agent_id not in excluded]
        # Prefer agents with a free slot; if all are full, queue on the best one anyway.
        free = [c for c in pool if self.stats(c.agent_id).outstanding < c.max_concurrency]
        pool = free or pool
        if not pool:
            return None
        if len(pool) == 1:
            return pool[0]
        a, b = self._rng.sample(pool, 2)
        sa = self.stats(a.agent_id).score(self._fleet_ttft)
        sb = self.stats(b.agent_id).score(self._fleet_ttft)
        return a if sa <= sb else b

    def cost(self, record: AgentRecord, model: str) -> float:
        """The routing cost of `record` for `model` (lower is better); see the module docstring.

        Outstanding requests are the larger of the router's own count and the agent's last
        heartbeat: the first is current, the second also covers requests from other
        coordinator replicas.
        """
        stats = self._stats.get(record.agent_id)
        if stats is None:
            ttft, outstanding = self._fleet_ttft, record.outstanding
        else:
            ttft = stats.ttft.value if stats.ttft.initialised else self._fleet_ttft
            outstanding = stats.outstanding
            if record.outstanding > outstanding:
                outstanding = record.outstanding
        cost = (ttft if ttft > 1e-4 else 1e-4) * (outstanding + 1)
        if self.price_weight:
            price = record.model_prices.get(model, record.price_out_per_mtok)
            cost *= (price if price > PRICE_FLOOR else PRICE_FLOOR) ** self.price_weight
        return cost

    def _outstanding(self, record: AgentRecord) -> int:
        stats = self._stats.get(record.agent_id)
        return record.outstanding if stats is None else max(stats.outstanding, record.outstanding)

    def _buckets(
        self, fleet: FleetIndex, model: str, regions: frozenset[str] | None
    ) -> tuple[list[IndexedSet], list[str]]:
        """The (model, region) buckets a request may draw from, and their regions."""
        if regions is None:
            bucket = fleet.serving(model)
            return ([bucket] if len(bucket) else []), []
        key = (model, regions)
        hit = self._bucket_cache.get(key)
        if hit is not None and hit[0] == id(fleet) and hit[1] == fleet.version:
            return hit[2], hit[3]
        names = sorted(r for r in fleet.regions_of(model) if region_matches(r, regions))
        buckets = [fleet.serving_in(model, r) for r in names]
        if len(self._bucket_cache) > 4096:
            self._bucket_cache.clear()
        self._bucket_cache[key] = (id(fleet), fleet.version, buckets, names)
        return buckets, names

    def route(
        self,
        fleet: FleetIndex,
        model: str,
        constraints: Constraints | None = None,
        exclude: Iterable[str] = (),
    ) -> Route | NoCandidate:
        """Choose the agent for one request of `model`, or say why none qualifies.

        Power of two choices over the agents that serve `model` healthy and meet
        `constraints`, minus `exclude` (agents already tried or hedged to): two are drawn at
        random and the lower `cost` wins. Agents with a free slot (outstanding below their
        max concurrency) are preferred; if all are full the request queues on the cheaper.

        Expected O(regions) when most agents in the selected regions meet the price and
        reputation bounds; an exact scan of the selected buckets otherwise.
        """
        c = constraints or _NO_CONSTRAINTS
        if isinstance(exclude, (set, frozenset)):
            excluded: set[str] | frozenset[str] = exclude
        else:
            excluded = set(exclude) if exclude else _EMPTY
        # Hot path: cached bucket lists, plain lists and locals (once per request at scale).
        key = (model, c.regions)
        hit = self._list_cache.get(key)
        if hit is not None and hit[0] is fleet and hit[1] == fleet.version:
            lists = hit[2]
        else:
            buckets, _ = self._buckets(fleet, model, c.regions)
            lists = [bkt.items for bkt in buckets]
            if len(self._list_cache) > 4096:
                self._list_cache.clear()
            self._list_cache[key] = (fleet, fleet.version, lists)
        total = sum(map(len, lists))
        if not total:
            return self._why_none(fleet, model, c, excluded)
        random_ = self._rng.random
        stats_get = self._stats.get
        get = fleet.get
        max_price, min_rep = c.max_price_per_mtok, c.min_reputation
        free: list[AgentRecord] = []
        full: list[AgentRecord] = []
        seen: set[str] = set()
        only = lists[0] if len(lists) == 1 else None
        for _ in range(MAX_DRAWS):
            pick = int(random_() * total)
            if only is not None:
                agent_id = only[pick]
            else:
                for lst in lists:
                    if pick < len(lst):
                        agent_id = lst[pick]
                        break
                    pick -= len(lst)
            if agent_id in seen or agent_id in excluded:
                continue
            seen.add(agent_id)
            record = get(agent_id)
            if record is None:  # pragma: no cover - the index and records change together
                continue
            if max_price is not None and record.price_for(model) > max_price:
                continue
            if record.reputation < min_rep:
                continue
            stats = stats_get(agent_id)
            outstanding = record.outstanding
            if stats is not None and stats.outstanding > outstanding:
                outstanding = stats.outstanding
            if outstanding < record.max_concurrency:
                free.append(record)
                if len(free) == 2:
                    break
            else:
                full.append(record)
        if len(free) + len(full) < 2:
            return self._scan(fleet, model, c, excluded, self._buckets(fleet, model, c.regions)[0])
        pair = free if len(free) == 2 else (free or full[:2])
        return self._pick(pair, model)

    def _pick(self, pool: Sequence[AgentRecord], model: str) -> Route:
        if len(pool) == 1:
            return Route(pool[0].agent_id, pool[0], self.cost(pool[0], model))
        a, b = pool[0], pool[1]
        ca, cb = self.cost(a, model), self.cost(b, model)
        return Route(a.agent_id, a, ca) if ca <= cb else Route(b.agent_id, b, cb)

    def _scan(
        self,
        fleet: FleetIndex,
        model: str,
        c: Constraints,
        excluded: Iterable[str],
        buckets: Sequence[IndexedSet],
    ) -> Route | NoCandidate:
        """Exact path: every agent of the selected buckets, filtered, then P2C among them."""
        excluded_set = set(excluded)
        eligible: list[AgentRecord] = []
        for bucket in buckets:
            for agent_id in bucket:
                record = fleet.get(agent_id)
                if record is None or agent_id in excluded_set:
                    continue
                if c.max_price_per_mtok is not None and (
                    record.price_for(model) > c.max_price_per_mtok
                ):
                    continue
                if record.reputation < c.min_reputation:
                    continue
                eligible.append(record)
        if not eligible:
            return self._why_none(fleet, model, c, excluded_set)
        free = [r for r in eligible if self._outstanding(r) < r.max_concurrency]
        pool = free or eligible
        if len(pool) <= 2:
            return self._pick(pool, model)
        return self._pick(self._rng.sample(pool, 2), model)

    def _why_none(
        self, fleet: FleetIndex, model: str, c: Constraints, excluded: Iterable[str]
    ) -> NoCandidate:
        """Walk the constraints in order and report the first one that leaves nobody."""
        if not len(fleet.serving(model)):
            sick = fleet.unhealthy_count(model)
            if sick:
                return NoCandidate(
                    model,
                    "unhealthy",
                    f"model '{model}' is loaded on {sick} agent(s) but none is healthy right "
                    "now; try again shortly",
                )
            return NoCandidate(model, "model", f"no agent serves model '{model}' right now")
        where = ""
        if c.regions is not None:
            wanted = ", ".join(sorted(c.regions))
            where = f" in region {wanted}"
            buckets, _ = self._buckets(fleet, model, c.regions)
            if not buckets:
                served = ", ".join(sorted(fleet.regions_of(model)))
                return NoCandidate(
                    model,
                    "region",
                    f"no agent in region {wanted} serves model '{model}' (it is served in: "
                    f"{served})",
                )
        else:
            buckets = [fleet.serving(model)]
        records = [r for b in buckets for a in b if (r := fleet.get(a)) is not None]
        if c.max_price_per_mtok is not None:
            cheapest = min(r.price_for(model) for r in records)
            records = [r for r in records if r.price_for(model) <= c.max_price_per_mtok]
            if not records:
                return NoCandidate(
                    model,
                    "price",
                    f"no agent{where} serves model '{model}' at or below "
                    f"{c.max_price_per_mtok:g} per million output tokens (cheapest: "
                    f"{cheapest:g})",
                )
        best = max(r.reputation for r in records)
        records = [r for r in records if r.reputation >= c.min_reputation]
        if not records:
            return NoCandidate(
                model,
                "reputation",
                f"no agent{where} serving model '{model}' within the price limit has "
                f"reputation >= {c.min_reputation:g} (best: {best:g})",
            )
        return NoCandidate(
            model,
            "excluded",
            f"all {len(records)} eligible agent(s){where} for model '{model}' were already tried",
        )

    def on_dispatch(self, agent_id: str) -> None:
        self.stats(agent_id).outstanding += 1

    def on_first_token(self, agent_id: str, ttft_s: float, now: float) -> None:
        self.stats(agent_id).ttft.observe(ttft_s, now)
        if self._fleet_seen:
            self._fleet_ttft += FLEET_PRIOR_WEIGHT * (ttft_s - self._fleet_ttft)
        else:
            self._fleet_ttft, self._fleet_seen = ttft_s, True

    @property
    def unmeasured_ttft_s(self) -> float:
        """What an agent without a first token yet is assumed to need (the fleet's typical)."""
        return self._fleet_ttft

    def on_end(self, agent_id: str, *, ok: bool, now: float, penalty_s: float = 5.0) -> None:
        """Close a dispatch. A failure counts as a very slow first token so traffic moves away."""
        stats = self.stats(agent_id)
        stats.outstanding = max(0, stats.outstanding - 1)
        if ok:
            stats.completed += 1
        else:
            stats.failures += 1
            stats.ttft.observe(penalty_s, now)


_NO_CONSTRAINTS = Constraints()
_EMPTY: frozenset[str] = frozenset()
