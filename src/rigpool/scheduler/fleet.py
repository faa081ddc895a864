"""FleetIndex: the scheduler's live view of every agent, kept incrementally.

Pure (no I/O, no clock): the coordinator feeds it joins, heartbeats and departures as they
arrive, the simulator feeds it simulated ones, and both route through the same indexes.

Why indexes and not a scan: at 371,000 GPUs a request for one model must not look at every
agent. Three structures answer the routing questions in O(1) or O(regions):

* ``agent_id -> AgentRecord`` (the record itself);
* ``model -> IndexedSet`` of the healthy agents with the model loaded;
* ``(model, region) -> IndexedSet`` of the same, split by region, so that a data-residency
  constraint ("EU only") selects whole buckets instead of filtering agents one by one.

An `IndexedSet` is a list plus a position map: add, remove (swap with the last element) and a
uniform random pick are all O(1), which is what power-of-two-choices needs. Unhealthy agents are
taken out of the model indexes (they cannot be picked) and only counted, so that a refusal can
say "3 agents serve it but none is healthy".

Every update costs O(models the agent has loaded) dictionary operations, independent of the
fleet size.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from rigpool.core.errors import BadRequest, NotFound


class IndexedSet:
    """A set of strings with O(1) add, remove, membership and uniform random choice.

    `items` is the backing list, exposed read-only for hot loops (do not mutate it).
    """

    __slots__ = ("_items", "_pos")

    def __init__(self, items: Iterable[str] = ()) -> None:
        self._items: list[str] = []
        self._pos: dict[str, int] = {}
        for item in items:
            self.add(item)

    def add(self, item: str) -> None:
        if item not in self._pos:
            self._pos[item] = len(self._items)
            self._items.append(item)

    def discard(self, item: str) -> None:
        pos = self._pos.pop(item, None)
        if pos is None:
            return
        last = self._items.pop()
        if pos < len(self._items):
            self._items[pos] = last
            self._pos[last] = pos

    @property
    def items(self) -> list[str]:
        return self._items

    def choice(self, rng: random.Random) -> str:
        """A uniformly random member (the set must not be empty)."""
        items = self._items
        return items[int(rng.random() * len(items))]

    def __contains__(self, item: object) -> bool:
        return item in self._pos

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)


def region_matches(region: str, allowed: Iterable[str]) -> bool:
    """Whether `region` is one of `allowed`, where each entry is a region or a region prefix.

    Regions are hyphenated from general to specific ("eu-west", "us-east-2"), so the entry
    "eu" admits "eu-west" and "eu-central" but not "europa" or "useu": a prefix must end at a
    hyphen.
    """
    return any(region == entry or region.startswith(entry + "-") for entry in allowed)


@dataclass(slots=True)
class AgentRecord:
    """What the scheduler knows about one agent (one provider machine).

    Attributes:
        agent_id: The provider's public key.
        gpus: Canonical GPU names of its cards, one entry per card ("RTX 4090", "RTX 4090").
        vram_gb: Total GPU memory of the host.
        region: Hyphenated region id, general to specific ("eu-west", "us-east").
        models: Models loaded and ready to serve.
        price_out_per_mtok: Asking price per million output tokens (any model without its own).
        model_prices: Per-model asking prices, overriding `price_out_per_mtok`.
        reputation: Score in [0, 1] from trust/ (verification pass rate, SLA, uptime).
        healthy: False while the agent fails health checks or misses heartbeats.
        outstanding: Requests in flight, as the agent last reported.
        load: Utilisation in [0, 1] as the agent last reported.
        max_concurrency: Requests the agent accepts at once.
        last_seen: Time of the last join or heartbeat (the caller's clock, seconds).

    """

    agent_id: str
    gpus: tuple[str, ...]
    vram_gb: float
    region: str
    models: frozenset[str] = frozenset()
    price_out_per_mtok: float = 0.0
    model_prices: Mapping[str, float] = field(default_factory=dict)
    reputation: float = 1.0
    healthy: bool = True
    outstanding: int = 0
    load: float = 0.0
    max_concurrency: int = 1_000_000
    last_seen: float = 0.0

    def price_for(self, model: str) -> float:
        """The asking price per million output tokens for `model`."""
        return self.model_prices.get(model, self.price_out_per_mtok)


class FleetIndex:
    """Every known agent, indexed by model and by (model, region); updated in O(1) per model.

    Methods that change state: `join`, `heartbeat`, `set_models`, `set_health`, `leave`.
    Queries: `get`, `serving`, `serving_in`, `regions_of`, `expired`, iteration.
    """

    def __init__(self) -> None:
        self._agents: dict[str, AgentRecord] = {}
        self._by_model: dict[str, IndexedSet] = {}
        self._by_model_region: dict[tuple[str, str], IndexedSet] = {}
        self._regions_by_model: dict[str, dict[str, int]] = {}  # model -> region -> healthy count
        self._unhealthy_by_model: dict[str, int] = {}
        self._region_counts: dict[str, int] = {}
        # Bumped whenever a (model, region) bucket appears or disappears; routers cache
        # region resolution against it.
        self.version = 0

    # --- updates -------------------------------------------------------------------------

    def join(self, record: AgentRecord) -> None:
        """Add an agent, or replace it (a reconnect re-sends its full capabilities)."""
        if not record.agent_id:
            raise BadRequest("agent_id must not be empty", param="agent_id")
        if not 0.0 <= record.reputation <= 1.0:
            raise BadRequest(
                f"reputation must lie in [0, 1], got {record.reputation}", param="reputation"
            )
        record.region = record.region.strip().lower()
        if record.agent_id in self._agents:
            self.leave(record.agent_id)
        self._agents[record.agent_id] = record
        self._region_counts[record.region] = self._region_counts.get(record.region, 0) + 1
        self._index(record)

    def leave(self, agent_id: str) -> AgentRecord | None:
        """Remove an agent (departure or expiry); returns its last record, None if unknown."""
        record = self._agents.pop(agent_id, None)
        if record is None:
            return None
        self._unindex(record)
        left = self._region_counts[record.region] - 1
        if left:
            self._region_counts[record.region] = left
        else:
            del self._region_counts[record.region]
        return record

    def heartbeat(
        self,
        agent_id: str,
        now: float,
        *,
        outstanding: int | None = None,
        load: float | None = None,
        healthy: bool | None = None,
        reputation: float | None = None,
    ) -> None:
        """Record a heartbeat: load figures in place; a health change moves the agent in or out.

        Raises:
            NotFound: the agent never joined (or has left).

        """
        record = self._agents.get(agent_id)
        if record is None:
            raise NotFound(f"unknown agent {agent_id!r}: join before heartbeating", param="agent")
        record.last_seen = now
        if outstanding is not None:
            record.outstanding = outstanding
        if load is not None:
            record.load = load
        if reputation is not None:
            record.reputation = reputation
        if healthy is not None and healthy != record.healthy:
            self._unindex(record)
            record.healthy = healthy
            self._index(record)

    def set_health(self, agent_id: str, healthy: bool) -> None:
        """Mark an agent healthy or not without a heartbeat (e.g. a failed health probe)."""
        record = self._require(agent_id)
        if healthy != record.healthy:
            self._unindex(record)
            record.healthy = healthy
            self._index(record)

    def set_models(
        self, agent_id: str, models: Iterable[str], prices: Mapping[str, float] | None = None
    ) -> None:
        """Replace the set of models an agent serves (after a load or unload)."""
        record = self._require(agent_id)
        self._unindex(record)
        record.models = frozenset(models)
        if prices is not None:
            record.model_prices = dict(prices)
        self._index(record)

    def expired(self, now: float, timeout_s: float) -> list[str]:
        """Agents not heard from for more than `timeout_s` (the caller decides to `leave` them).

        A scan: call it every few seconds, not per request.
        """
        return [a for a, r in self._agents.items() if now - r.last_seen > timeout_s]

    # --- queries -------------------------------------------------------------------------

    def get(self, agent_id: str) -> AgentRecord | None:
        return self._agents.get(agent_id)

    def serving(self, model: str) -> IndexedSet:
        """Healthy agents that have `model` loaded (an empty set if none)."""
        return self._by_model.get(model) or IndexedSet()

    def serving_in(self, model: str, region: str) -> IndexedSet:
        """Healthy agents in exactly `region` that have `model` loaded."""
        return self._by_model_region.get((model, region)) or IndexedSet()

    def regions_of(self, model: str) -> Mapping[str, int]:
        """Region -> number of healthy agents serving `model` there."""
        return self._regions_by_model.get(model, {})

    def unhealthy_count(self, model: str) -> int:
        """Agents that have `model` loaded but are marked unhealthy."""
        return self._unhealthy_by_model.get(model, 0)

    def regions(self) -> Mapping[str, int]:
        """Region -> number of agents (healthy or not)."""
        return self._region_counts

    def models(self) -> list[str]:
        """Models served by at least one healthy agent."""
        return [m for m, s in self._by_model.items() if len(s)]

    def __len__(self) -> int:
        return len(self._agents)

    def __iter__(self) -> Iterator[AgentRecord]:
        return iter(self._agents.values())

    def __contains__(self, agent_id: object) -> bool:
        return agent_id in self._agents

    # --- internals -----------------------------------------------------------------------

    def _require(self, agent_id: str) -> AgentRecord:
        record = self._agents.get(agent_id)
        if record is None:
            raise NotFound(f"unknown agent {agent_id!r}", param="agent")
        return record

    def _index(self, record: AgentRecord) -> None:
        if not record.healthy:
            for model in record.models:
                self._unhealthy_by_model[model] = self._unhealthy_by_model.get(model, 0) + 1
            return
        agent_id, region = record.agent_id, record.region
        for model in record.models:
            bucket = self._by_model.get(model)
            if bucket is None:
                bucket = self._by_model[model] = IndexedSet()
            bucket.add(agent_id)
            key = (model, region)
            rbucket = self._by_model_region.get(key)
            if rbucket is None:
                rbucket = self._by_model_region[key] = IndexedSet()
                self.version += 1
            rbucket.add(agent_id)
            counts = self._regions_by_model.setdefault(model, {})
            counts[region] = counts.get(region, 0) + 1

    def _unindex(self, record: AgentRecord) -> None:
        if not record.healthy:
            for model in record.models:
                left = self._unhealthy_by_model[model] - 1
                if left:
                    self._unhealthy_by_model[model] = left
                else:
                    del self._unhealthy_by_model[model]
            return
        agent_id, region = record.agent_id, record.region
        for model in record.models:
            bucket = self._by_model[model]
            bucket.discard(agent_id)
            if not len(bucket):
                del self._by_model[model]
            key = (model, region)
            rbucket = self._by_model_region[key]
            rbucket.discard(agent_id)
            if not len(rbucket):
                del self._by_model_region[key]
                self.version += 1
            counts = self._regions_by_model[model]
            left = counts[region] - 1
            if left:
                counts[region] = left
            else:
                del counts[region]
                if not counts:
                    del self._regions_by_model[model]
