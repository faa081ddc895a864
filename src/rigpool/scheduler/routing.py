"""Routing: which live agent serves the next request.

Pure (no I/O, no clock of its own): the gateway and the simulator call the same code and pass
the time in. Policy, after the design note "Request path":

* candidates are the agents that serve the model and satisfy the request's constraints;
* two of them are drawn at random and the one with the lower latency score wins
  (power of two choices: nearly the balance of "least loaded" without a herd on one agent);
* the score is peak-EWMA time to first token x (outstanding requests + 1), the Finagle /
  Linkerd load metric: a slow or busy agent looks expensive at once and recovers gradually.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field


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


class Router:
    """Power-of-two-choices on peak-EWMA latency; tracks per-agent statistics.

    The caller reports every dispatch, first token and end, so the scores follow reality.
    """

    def __init__(self, *, seed: int | None = None, default_ttft_s: float = 0.5):
        self._rng = random.Random(seed)
        self._stats: dict[str, AgentStats] = {}
        self.default_ttft_s = default_ttft_s

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
        sa = self.stats(a.agent_id).score(self.default_ttft_s)
        sb = self.stats(b.agent_id).score(self.default_ttft_s)
        return a if sa <= sb else b

    def on_dispatch(self, agent_id: str) -> None:
        self.stats(agent_id).outstanding += 1

    def on_first_token(self, agent_id: str, ttft_s: float, now: float) -> None:
        self.stats(agent_id).ttft.observe(ttft_s, now)

    def on_end(self, agent_id: str, *, ok: bool, now: float, penalty_s: float = 5.0) -> None:
        """Close a dispatch. A failure counts as a very slow first token so traffic moves away."""
        stats = self.stats(agent_id)
        stats.outstanding = max(0, stats.outstanding - 1)
        if ok:
            stats.completed += 1
        else:
            stats.failures += 1
            stats.ttft.observe(penalty_s, now)
