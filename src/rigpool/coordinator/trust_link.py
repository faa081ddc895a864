"""The coordinator's side of trust/: what it observes of each provider, and what it does with it.

Every request outcome feeds a per-provider service record (requests, failures, first tokens
later than the service level, time online); `trust.reputation.provider_score` turns it into a
score in [0, 1] that the router reads from the fleet index (`min_reputation` constraints, and
the router's cost). An agent's token claim that exceeds the gateway's own count is metering
evidence (`trust.metering`), stored as a self-contained record and counted as a failed check.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from rigpool.trust.reputation import ProviderRecord, provider_score


@dataclass
class _Observed:
    first_seen: float
    online_since: float | None
    online_s: float = 0.0
    requests: int = 0
    drops: int = 0
    ttft_misses: int = 0
    checks: int = 0
    checks_passed: int = 0
    #: bumped on every change, so a cached consensus knows when this record moved
    revision: int = 0


@dataclass
class ServiceBook:
    ttft_slo_s: float = 5.0
    _seen: dict[str, _Observed] = field(default_factory=dict)

    def _get(self, agent_id: str, now: float) -> _Observed:
        seen = self._seen.get(agent_id)
        if seen is None:
            seen = self._seen[agent_id] = _Observed(first_seen=now, online_since=now)
        return seen

    def joined(self, agent_id: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        seen = self._get(agent_id, now)
        seen.online_since = seen.online_since or now
        seen.revision += 1

    def left(self, agent_id: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        seen = self._seen.get(agent_id)
        if seen is not None and seen.online_since is not None:
            seen.online_s += now - seen.online_since
            seen.online_since = None
            seen.revision += 1

    def served(self, agent_id: str, *, ok: bool, ttft_s: float | None = None) -> None:
        seen = self._get(agent_id, time.monotonic())
        seen.requests += 1
        seen.revision += 1
        if not ok:
            seen.drops += 1
        elif ttft_s is not None and ttft_s > self.ttft_slo_s:
            seen.ttft_misses += 1

    def checked(self, agent_id: str, *, passed: bool) -> None:
        seen = self._get(agent_id, time.monotonic())
        seen.checks += 1
        seen.checks_passed += int(passed)
        seen.revision += 1

    def record(self, agent_id: str, now: float | None = None) -> ProviderRecord:
        now = time.monotonic() if now is None else now
        seen = self._get(agent_id, now)
        online = seen.online_s + (now - seen.online_since if seen.online_since else 0.0)
        return ProviderRecord(
            checks=seen.checks,
            checks_passed=seen.checks_passed,
            requests=seen.requests,
            ttft_misses=seen.ttft_misses,
            drops=seen.drops,
            online_s=online,
            promised_s=max(online, now - seen.first_seen),
        )

    def score(self, agent_id: str) -> float:
        if agent_id not in self._seen:  # the prior, without starting a record for a stranger
            return provider_score(ProviderRecord())
        return provider_score(self.record(agent_id))

    def __contains__(self, agent_id: object) -> bool:
        return agent_id in self._seen

    def __len__(self) -> int:
        return len(self._seen)

    def revision(self, agent_id: str) -> int | None:
        """A counter that moves whenever the agent's record does (None: never seen)."""
        seen = self._seen.get(agent_id)
        return None if seen is None else seen.revision
