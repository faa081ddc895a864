"""Hedging and retries: the tail-control half of routing, pure and clocked by the caller.

The design note's step 3: if the first token has not arrived within an adaptive delay, a copy
of the request goes to a second agent and the first to answer wins. Three decisions live here:

* **When to hedge** — `hedge_delay_s(agent_id)`: about the agent's own p95 time to first token,
  so that only the slowest ~5 % of its requests are hedged. The p95 is tracked per agent by a
  `StreamingQuantile` (exact over the first samples, then a stochastic-approximation update
  that is O(1) in time and memory and follows drift). An agent with too few samples gets the
  fleet-wide p95, and before any sample at all `default_delay_s`. The result is clamped to
  [`min_delay_s`, `max_delay_s`].
* **Whether a hedge is affordable** — `try_take_hedge(now)`: a token bucket fed by requests.
  Each request (`on_request`) adds `share` tokens (default 0.05), a hedge spends one, and the
  bucket holds at most `burst`. Starting empty, after n requests at most
  ``floor(share x n)`` hedges have been allowed: hedges can never exceed their share of the
  load, whatever the failure pattern, and a storm of slow agents cannot double the load.
* **Whether to retry a failure** — `may_retry(attempts, retryable=..., tokens_sent=...)`:
  another agent is tried (the router's `exclude` keeps failed ones out) while no token has
  reached the client, the error is retryable, and fewer than `max_attempts` were made. After
  tokens were sent, continuing is failover (the gateway's job), not a retry.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


class StreamingQuantile:
    """A running estimate of one quantile of a stream, in O(1) memory after warm-up.

    The first `warmup` samples are kept and the estimate is their empirical quantile (exact
    while little is known). After that each sample x moves the estimate q by

        q += step x (quantile - 1[x <= q]),   step = rate x scale

    (Robbins-Monro for the pinball loss): at equilibrium P(x <= q) = quantile. `scale` is an
    exponentially weighted mean absolute deviation of the samples from q, so the step follows
    the spread of the data whatever its unit, and `rate` sets how fast old samples are
    forgotten (about 1 / rate samples).
    """

    __slots__ = ("_warm", "count", "quantile", "rate", "scale", "value", "warmup")

    def __init__(self, quantile: float = 0.95, *, warmup: int = 20, rate: float = 0.05):
        if not 0.0 < quantile < 1.0:
            raise ValueError("quantile must lie in (0, 1)")
        self.quantile = quantile
        self.warmup = warmup
        self.rate = rate
        self.count = 0
        self.value = 0.0
        self.scale = 0.0
        self._warm: list[float] | None = []

    def observe(self, x: float) -> None:
        self.count += 1
        warm = self._warm
        if warm is not None:
            warm.append(x)
            warm.sort()
            self.value = warm[min(len(warm) - 1, int(self.quantile * len(warm)))]
            mean = sum(warm) / len(warm)
            self.scale = sum(abs(v - mean) for v in warm) / len(warm)
            if len(warm) >= self.warmup:
                self._warm = None
            return
        self.scale += self.rate * (abs(x - self.value) - self.scale)
        step = self.rate * max(self.scale, 1e-6)
        self.value += step * (self.quantile - (1.0 if x <= self.value else 0.0))


@dataclass
class HedgePolicy:
    """Hedge delays, the hedge budget and the retry rule (see the module docstring).

    Attributes:
        share: Largest fraction of requests that may be hedged (the bucket's fill per request).
        burst: Most hedge tokens the bucket holds (hedges allowed back to back after a lull).
        quantile: The TTFT quantile used as the delay (0.95: hedge the slowest 5 %).
        default_delay_s: Delay before anything is known about the agent or the fleet.
        min_delay_s: Floor: hedging faster than this only doubles the load.
        max_delay_s: Ceiling: even a slow agent is hedged after this.
        min_samples: Samples an agent needs before its own quantile is trusted.
        max_attempts: Agents tried per request (first try included) on failures.

    """

    share: float = 0.05
    burst: float = 10.0
    quantile: float = 0.95
    default_delay_s: float = 1.0
    min_delay_s: float = 0.02
    max_delay_s: float = 10.0
    min_samples: int = 10
    max_attempts: int = 3
    tokens: float = 0.0
    requests: int = 0
    hedges: int = 0
    last_hedge_at: float | None = None
    _per_agent: dict[str, StreamingQuantile] = field(default_factory=dict, repr=False)
    _fleet: StreamingQuantile | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not 0.0 <= self.share <= 1.0:
            raise ValueError("share must lie in [0, 1]")
        if self.burst < 1.0:
            raise ValueError("burst must be at least 1 hedge")
        if not 0.0 < self.min_delay_s <= self.max_delay_s:
            raise ValueError("need 0 < min_delay_s <= max_delay_s")
        self._fleet = StreamingQuantile(self.quantile, warmup=50, rate=0.01)

    # --- delays --------------------------------------------------------------------------

    def observe_ttft(self, agent_id: str, seconds: float, now: float) -> None:
        """Record a time to first token measured by the caller at time `now`."""
        del now  # the estimators count samples, not seconds; kept for a time-decay variant
        est = self._per_agent.get(agent_id)
        if est is None:
            est = self._per_agent[agent_id] = StreamingQuantile(self.quantile)
        est.observe(seconds)
        if self._fleet is not None:
            self._fleet.observe(seconds)

    def hedge_delay_s(self, agent_id: str) -> float:
        """Seconds to wait for `agent_id`'s first token before hedging."""
        est = self._per_agent.get(agent_id)
        fleet = self._fleet
        if est is not None and est.count >= self.min_samples:
            delay = est.value
        elif fleet is not None and fleet.count >= self.min_samples:
            delay = fleet.value
        else:
            delay = self.default_delay_s
        return min(self.max_delay_s, max(self.min_delay_s, delay))

    def forget(self, agent_id: str) -> None:
        """Drop an agent's estimate (it left the fleet)."""
        self._per_agent.pop(agent_id, None)

    # --- budget --------------------------------------------------------------------------

    def on_request(self, now: float) -> None:
        """Count one request (call once per client request, not per hedge or retry)."""
        del now
        self.requests += 1
        self.tokens = min(self.burst, self.tokens + self.share)

    def try_take_hedge(self, now: float) -> bool:
        """Spend one hedge from the budget if there is one; False means do not hedge."""
        if self.tokens < 1.0 - 1e-9:
            return False
        self.tokens -= 1.0
        self.hedges += 1
        self.last_hedge_at = now
        return True

    @property
    def hedge_ratio(self) -> float:
        """Hedges sent per request so far."""
        return self.hedges / self.requests if self.requests else 0.0

    # --- retries -------------------------------------------------------------------------

    def may_retry(self, attempts: int, *, retryable: bool = True, tokens_sent: int = 0) -> bool:
        """Whether a failed request may go to another agent after `attempts` tries.

        The caller then routes again with every failed agent in `exclude`.
        """
        return retryable and tokens_sent == 0 and attempts < self.max_attempts


def p95(samples: list[float]) -> float:
    """The empirical 95th percentile (nearest rank), for tests and benchmarks."""
    if not samples:
        return math.nan
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]
