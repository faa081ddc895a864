"""Routing policies the simulator compares, all over the same `FleetIndex`.

* `RandomPolicy`, `RoundRobinPolicy`, `LeastLoadedPolicy`: naive baselines. They see which
  agents are online (the fleet index) and, for least-loaded, requests in flight; nothing about
  speed, region, price or reputation. Before a first token they retry a failed request on
  another agent (any gateway does); they neither hedge nor fail over mid-stream.
* `RigpoolPolicy`: the live scheduler — `Router.route` (power of two choices on peak-EWMA TTFT x
  outstanding x price^w, with a minimum reputation), users' continent first and the whole fleet
  as the fallback, plus `HedgePolicy` (adaptive p95 hedge delay, 5 % budget, retries) and
  failover mid-stream.

The engine tells a policy about dispatches, first tokens, ends, joins and leaves; the policy
returns an agent index or -1.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from rigpool.scheduler.fleet import FleetIndex, IndexedSet
from rigpool.scheduler.hedging import HedgePolicy
from rigpool.scheduler.routing import Constraints, NoCandidate, Router

MAX_ATTEMPTS = 3


class Policy:
    """Base: the interface the engine calls (naive policies override `pick` only)."""

    name = "policy"
    hedging = False
    failover = False

    def __init__(self, fleet: FleetIndex, model: str, index_of: dict[str, int], seed: int):
        self.fleet = fleet
        self.model = model
        self.index_of = index_of
        self.rng = random.Random(seed)
        self.outstanding: dict[int, int] = {}

    def pick(self, continent: str, exclude: Sequence[int]) -> int:
        raise NotImplementedError

    def may_retry(self, attempts: int) -> bool:
        return attempts < MAX_ATTEMPTS

    def on_dispatch(self, agent: int, agent_id: str) -> None:
        return None

    def on_first_token(self, agent: int, agent_id: str, ttft_s: float, now: float) -> None:
        return None

    def on_end(self, agent: int, agent_id: str, ok: bool, now: float) -> None:
        return None

    def on_join(self, agent: int, agent_id: str) -> None:
        return None

    def on_leave(self, agent: int, agent_id: str) -> None:
        return None

    def _items(self) -> list[str]:
        return self.fleet.serving(self.model).items


class RandomPolicy(Policy):
    name = "random"

    def pick(self, continent: str, exclude: Sequence[int]) -> int:
        items = self._items()
        if not items:
            return -1
        rnd = self.rng.random
        for _ in range(8):
            a = self.index_of[items[int(rnd() * len(items))]]
            if a not in exclude:
                return a
        return -1


class RoundRobinPolicy(Policy):
    name = "round-robin"

    def __init__(self, fleet: FleetIndex, model: str, index_of: dict[str, int], seed: int):
        super().__init__(fleet, model, index_of, seed)
        self.pos = 0

    def pick(self, continent: str, exclude: Sequence[int]) -> int:
        items = self._items()
        if not items:
            return -1
        for _ in range(min(8, len(items))):
            self.pos += 1
            a = self.index_of[items[self.pos % len(items)]]
            if a not in exclude:
                return a
        return -1


class LeastLoadedPolicy(Policy):
    """Fewest requests in flight wins (ties at random); O(levels) per pick.

    Online agents are kept in one `IndexedSet` per in-flight count, so the least loaded is
    found without a scan of the fleet.
    """

    name = "least-loaded"

    def __init__(self, fleet: FleetIndex, model: str, index_of: dict[str, int], seed: int):
        super().__init__(fleet, model, index_of, seed)
        self.levels: list[IndexedSet] = [IndexedSet()]
        self.level: dict[str, int] = {}

    def _move(self, agent_id: str, delta: int) -> None:
        lvl = self.level.get(agent_id)
        if lvl is None:
            return
        self.levels[lvl].discard(agent_id)
        lvl = max(0, lvl + delta)
        while lvl >= len(self.levels):
            self.levels.append(IndexedSet())
        self.levels[lvl].add(agent_id)
        self.level[agent_id] = lvl

    def pick(self, continent: str, exclude: Sequence[int]) -> int:
        for bucket in self.levels:
            if not len(bucket):
                continue
            for _ in range(4):
                a = self.index_of[bucket.choice(self.rng)]
                if a not in exclude:
                    return a
        return -1

    def on_dispatch(self, agent: int, agent_id: str) -> None:
        self.outstanding[agent] = self.outstanding.get(agent, 0) + 1
        self._move(agent_id, +1)

    def on_end(self, agent: int, agent_id: str, ok: bool, now: float) -> None:
        self.outstanding[agent] = max(0, self.outstanding.get(agent, 0) - 1)
        self._move(agent_id, -1)

    def on_join(self, agent: int, agent_id: str) -> None:
        lvl = self.outstanding.get(agent, 0)
        while lvl >= len(self.levels):
            self.levels.append(IndexedSet())
        self.levels[lvl].add(agent_id)
        self.level[agent_id] = lvl

    def on_leave(self, agent: int, agent_id: str) -> None:
        lvl = self.level.pop(agent_id, None)
        if lvl is not None:
            self.levels[lvl].discard(agent_id)


class RigpoolPolicy(Policy):
    """The live router and hedge policy (see the module docstring)."""

    name = "rigpool"
    hedging = True
    failover = True

    def __init__(
        self,
        fleet: FleetIndex,
        model: str,
        index_of: dict[str, int],
        seed: int,
        *,
        hedge_share: float = 0.05,
        min_reputation: float = 0.5,
        price_weight: float = 0.5,
        regional: bool = True,
    ):
        super().__init__(fleet, model, index_of, seed)
        self.router = Router(seed=seed, price_weight=price_weight)
        self.hedge = HedgePolicy(share=hedge_share, max_attempts=MAX_ATTEMPTS)
        self.min_reputation = min_reputation
        self.regional = regional
        self._local: dict[str, Constraints] = {}
        self._anywhere = Constraints(min_reputation=min_reputation)
        self.fallbacks = 0

    def pick(self, continent: str, exclude: Sequence[int]) -> int:
        ids = {self.fleet_ids[a] for a in exclude} if exclude else frozenset()
        route = None
        if self.regional:
            c = self._local.get(continent)
            if c is None:
                c = self._local[continent] = Constraints.of(
                    continent, min_reputation=self.min_reputation
                )
            route = self.router.route(self.fleet, self.model, c, ids)
            if isinstance(route, NoCandidate):
                self.fallbacks += 1
                route = None
        if route is None:
            route = self.router.route(self.fleet, self.model, self._anywhere, ids)
        if isinstance(route, NoCandidate):
            route = self.router.route(self.fleet, self.model, None, ids)
        if isinstance(route, NoCandidate):
            return -1
        return self.index_of[route.agent_id]

    fleet_ids: list[str] = []

    def may_retry(self, attempts: int) -> bool:
        return self.hedge.may_retry(attempts)

    def on_dispatch(self, agent: int, agent_id: str) -> None:
        self.router.on_dispatch(agent_id)

    def on_first_token(self, agent: int, agent_id: str, ttft_s: float, now: float) -> None:
        self.router.on_first_token(agent_id, ttft_s, now)
        self.hedge.observe_ttft(agent_id, ttft_s, now)

    def on_end(self, agent: int, agent_id: str, ok: bool, now: float) -> None:
        self.router.on_end(agent_id, ok=ok, now=now)


def make_policy(
    name: str,
    fleet: FleetIndex,
    model: str,
    agent_ids: list[str],
    seed: int,
    **kwargs: float,
) -> Policy:
    """The policy called `name` ("centralized" uses least-loaded inside its cluster)."""
    index_of = {a: i for i, a in enumerate(agent_ids)}
    if name == "random":
        return RandomPolicy(fleet, model, index_of, seed)
    if name == "round-robin":
        return RoundRobinPolicy(fleet, model, index_of, seed)
    if name in ("least-loaded", "centralized"):
        return LeastLoadedPolicy(fleet, model, index_of, seed)
    if name == "rigpool":
        p = RigpoolPolicy(
            fleet,
            model,
            index_of,
            seed,
            hedge_share=kwargs.get("hedge_share", 0.05),
            min_reputation=kwargs.get("min_reputation", 0.5),
            price_weight=kwargs.get("price_weight", 0.5),
        )
        p.fleet_ids = agent_ids
        return p
    raise ValueError(f"unknown policy {name!r}")
