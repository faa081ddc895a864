"""How often to check each provider, and how much stake makes cheating a losing bet.

Check rate: each provider's probability of cheating on a request, q, gets a Beta(a, b) belief.
New providers start suspicious (prior mean ``a0 / (a0 + b0)`` = 0.2 by default). A failed check
adds 1 to a; a passed check adds the check's detection power d to b (a pass is weaker evidence
of honesty than a fail is of cheating, because a cheat passes with probability 1 - d). The
rate is

    rate = clip(k x E[q], floor, cap),   E[q] = a / (a + b)

so a new provider is checked at the cap, an established one decays to the floor in a few
hundred passes, and one failure sends it back up. Nobody drops below the floor.

Stake: a rational provider cheats only if it expects to gain. Cheating on every request earns
`gain_per_request` each time until it is caught; each cheated request is caught with
probability ``rate x d``, so it expects ``1 / (rate x d)`` requests before detection, and loses
the slash ``S``. Deterrence holds when

    gain_per_request / (floor x d) < S / m          (m = safety margin >= 1)

so the stake required is ``S = m x gain_per_request / (floor x d)``, computed at the floor rate
(the rate a patient cheater gets once trusted). `required_stake` returns it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class SamplingPolicy:
    """Parameters of the check rate (docs/trust.md explains each)."""

    prior_a: float = 1.0  # prior pseudo-count of cheats
    prior_b: float = 4.0  # prior pseudo-count of honest requests: new agents start at E[q] = 0.2
    suspicious_prior_a: float = 3.0  # e.g. failed attestation, new wallet, flagged region
    gain: float = 5.0  # rate = gain x E[q] ...
    floor: float = 0.02  # ... never below 2% ...
    cap: float = 0.5  # ... and never above 50% of requests
    detection_power: float = 0.9  # probability one check of a cheated request fails


@dataclass(frozen=True)
class SpooferBelief:
    """Beta(a, b) belief about a provider's per-request cheating probability."""

    a: float
    b: float

    @property
    def mean(self) -> float:
        return self.a / (self.a + self.b)

    @classmethod
    def new(
        cls, policy: SamplingPolicy | None = None, *, suspicious: bool = False
    ) -> SpooferBelief:
        p = policy or SamplingPolicy()
        return cls(p.suspicious_prior_a if suspicious else p.prior_a, p.prior_b)

    def update(self, passed: bool, policy: SamplingPolicy | None = None) -> SpooferBelief:
        """The belief after one check."""
        p = policy or SamplingPolicy()
        if passed:
            return SpooferBelief(self.a, self.b + p.detection_power)
        return SpooferBelief(self.a + 1.0, self.b)


def check_rate(belief: SpooferBelief, policy: SamplingPolicy | None = None) -> float:
    """Share of this provider's requests to verify."""
    p = policy or SamplingPolicy()
    return min(p.cap, max(p.floor, p.gain * belief.mean))


def should_check(belief: SpooferBelief, u: float, policy: SamplingPolicy | None = None) -> bool:
    """Decide one request with a uniform draw `u` in [0, 1) (from the coordinator's RNG)."""
    return u < check_rate(belief, policy)


def required_stake(
    gain_per_request: float,
    policy: SamplingPolicy | None = None,
    *,
    margin: float = 2.0,
    rate: float | None = None,
) -> float:
    """Stake that makes cheating unprofitable: ``margin x gain / (rate x detection_power)``.

    Args:
        gain_per_request: What a provider saves by cheating on one request (e.g. the price of
            the request times the share of compute a cheaper model or 4-bit weights save).
        policy: Check-rate parameters; the floor rate is used unless `rate` is given.
        margin: Safety factor over break-even.
        rate: Check rate to assume instead of the floor.

    """
    p = policy or SamplingPolicy()
    r = p.floor if rate is None else rate
    return margin * gain_per_request / (r * p.detection_power)


def expected_requests_to_detection(rate: float, detection_power: float) -> float:
    """Mean requests until a provider that cheats on every request is caught (geometric)."""
    return 1.0 / (rate * detection_power)


def binomial_tail(n: int, k: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p), computed in log space."""
    if k <= 0:
        return 1.0
    if p <= 0.0:
        return 0.0
    total = 0.0
    for i in range(k, n + 1):
        log_term = (
            math.lgamma(n + 1)
            - math.lgamma(i + 1)
            - math.lgamma(n - i + 1)
            + i * math.log(p)
            + (n - i) * math.log1p(-p)
        )
        total += math.exp(log_term)
    return min(1.0, total)


def false_slash_probability(fp_rate: float, checks: int, failures_required: int) -> float:
    """Chance that an honest provider collects `failures_required` false failures.

    Over `checks` checks, each failing falsely with probability `fp_rate`.
    """
    return binomial_tail(checks, failures_required, fp_rate)


def failures_required(fp_rate: float, checks: int, target: float = 1e-9) -> int:
    """Fewest independent failures to require before slashing.

    Chosen so that an honest provider whose checks fail falsely with probability `fp_rate` is
    slashed with probability below `target` over `checks` checks.
    """
    k = 1
    while k <= checks and false_slash_probability(fp_rate, checks, k) > target:
        k += 1
    return k
