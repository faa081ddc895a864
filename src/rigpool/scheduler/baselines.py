"""Naive routing policies, kept for comparison.

The tail benchmark and the simulator measure rigpool's router against them on identical
inputs. Pure, like the rest of scheduler/.
"""

from __future__ import annotations

import random
from collections.abc import Iterable

from rigpool.scheduler.fleet import AgentRecord, FleetIndex


class RoundRobin:
    """Each request to the next agent in turn, whatever its speed or load."""

    def __init__(self) -> None:
        self._next: dict[str, int] = {}

    def pick(self, fleet: FleetIndex, model: str, exclude: Iterable[str] = ()) -> str | None:
        excluded = set(exclude)
        agents = [a for a in fleet.serving(model).items if a not in excluded]
        if not agents:
            return None
        agents.sort()  # a stable ring, independent of join order
        i = self._next.get(model, 0)
        self._next[model] = i + 1
        return agents[i % len(agents)]


class LeastLoaded:
    """The agent with the fewest requests in flight (ties broken at random)."""

    def __init__(self, seed: int | None = None) -> None:
        self._rng = random.Random(seed)

    def pick(
        self,
        fleet: FleetIndex,
        model: str,
        outstanding: dict[str, int],
        exclude: Iterable[str] = (),
    ) -> str | None:
        excluded = set(exclude)
        records: list[AgentRecord] = [
            r
            for a in fleet.serving(model).items
            if a not in excluded and (r := fleet.get(a)) is not None
        ]
        if not records:
            return None
        best = min(outstanding.get(r.agent_id, 0) for r in records)
        return self._rng.choice(
            [r.agent_id for r in records if outstanding.get(r.agent_id, 0) == best]
        )


class RandomChoice:
    """Uniformly random among the agents serving the model."""

    def __init__(self, seed: int | None = None) -> None:
        self._rng = random.Random(seed)

    def pick(self, fleet: FleetIndex, model: str, exclude: Iterable[str] = ()) -> str | None:
        excluded = set(exclude)
        agents = [a for a in fleet.serving(model).items if a not in excluded]
        return self._rng.choice(agents) if agents else None
