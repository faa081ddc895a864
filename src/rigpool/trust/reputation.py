"""Reputation: one score in [0, 1] per provider, that no single validator can bend.

Per validator, `provider_score` combines what that validator observed of a provider:

* verification: passes / checks, Beta(1, 1)-smoothed so one early failure does not zero a new
  provider and zero checks means 0.5;
* service level: 1 - (TTFT misses + deadline misses + 2 x drops) / requests, smoothed the same
  way (a drop costs the consumer a retry, so it counts double);
* uptime: share of the time it promised to be online that it was connected.

as a weighted geometric mean, so a provider failing verification cannot buy its score back
with uptime.

Across validators, `yuma_consensus` follows Bittensor's Yuma consensus
(opentensor/subtensor, ``pallets/subtensor/src/epoch/run_epoch.rs``: ``weighted_median_col``
then ``col_clip``): per provider, the consensus is the highest score that validators holding at
least `kappa` of the stake gave *at least* - every score above it is clipped down to it.
Yuma only clips upwards because its weights compete for emission; a reputation can also be
sunk, so the lower side is clipped symmetrically (the lowest score that `kappa` of the stake gave
*at most*). The provider's score is the stake-weighted mean of the clipped scores.

Bound: with ``kappa = 0.5``, a set of validators holding less than half the stake cannot push
either clip edge outside the range of the other validators' scores, so the result stays within
[min, max] of the honest validators' scores: one liar moves a provider by at most the honest
validators' own spread. `validator_trust` (after Yuma's name) is one minus the mean distance
clipping moved a validator's scores; a persistently low value flags a lying validator.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class ProviderRecord:
    """What one validator (or the coordinator) observed of one provider over an epoch."""

    checks: int = 0
    checks_passed: int = 0
    requests: int = 0
    ttft_misses: int = 0
    deadline_misses: int = 0
    drops: int = 0
    online_s: float = 0.0
    promised_s: float = 0.0


@dataclass(frozen=True)
class ScoreWeights:
    verification: float = 0.6
    service: float = 0.25
    uptime: float = 0.15


def provider_score(rec: ProviderRecord, weights: ScoreWeights | None = None) -> float:
    """Combine verification, service level and uptime into one score in [0, 1]."""
    w = weights or ScoreWeights()
    verification = (rec.checks_passed + 1.0) / (rec.checks + 2.0)
    bad = rec.ttft_misses + rec.deadline_misses + 2 * rec.drops
    service = max(0.0, (rec.requests - bad + 1.0) / (rec.requests + 2.0))
    uptime = min(1.0, rec.online_s / rec.promised_s) if rec.promised_s > 0 else 0.5
    parts = [(verification, w.verification), (service, w.service), (uptime, w.uptime)]
    total = sum(wt for _, wt in parts)
    score = 1.0
    for value, wt in parts:
        score *= max(value, 1e-9) ** (wt / total)
    return min(1.0, max(0.0, score))


def _upper_consensus(values: list[tuple[float, float]], kappa: float) -> float:
    """Highest w such that validators with score >= w hold at least kappa of the stake."""
    acc = 0.0
    for v, s in sorted(values, key=lambda t: -t[0]):
        acc += s
        if acc >= kappa - 1e-12:
            return v
    return min(v for v, _ in values)


def _lower_consensus(values: list[tuple[float, float]], kappa: float) -> float:
    acc = 0.0
    for v, s in sorted(values, key=lambda t: t[0]):
        acc += s
        if acc >= kappa - 1e-12:
            return v
    return max(v for v, _ in values)


@dataclass(frozen=True)
class Consensus:
    """Result of one consensus round."""

    scores: dict[str, float]  # provider -> reputation in [0, 1]
    bounds: dict[str, tuple[float, float]]  # provider -> (lower, upper) clip edges
    validator_trust: dict[str, float]  # validator -> 1 - mean |clipped - given|


def yuma_consensus(
    scores: Mapping[str, Mapping[str, float]],
    stakes: Mapping[str, float],
    *,
    kappa: float = 0.5,
) -> Consensus:
    """Combine validators' scores (validator -> provider -> score) with stake-weighted clipping.

    Validators without stake are ignored. For each provider only the validators that scored it
    count, their stake renormalised to 1.
    """
    providers = sorted({p for row in scores.values() for p in row})
    out: dict[str, float] = {}
    bounds: dict[str, tuple[float, float]] = {}
    moved: dict[str, float] = {v: 0.0 for v in scores}
    count: dict[str, int] = {v: 0 for v in scores}
    for p in providers:
        raters = [
            (v, min(1.0, max(0.0, row[p])), stakes.get(v, 0.0))
            for v, row in scores.items()
            if p in row and stakes.get(v, 0.0) > 0
        ]
        if not raters:
            continue
        stake_sum = sum(s for _, _, s in raters)
        norm = [(x, s / stake_sum) for _, x, s in raters]
        hi = _upper_consensus(norm, kappa)
        lo = min(_lower_consensus(norm, kappa), hi)
        bounds[p] = (lo, hi)
        value = 0.0
        for v, x, s in raters:
            clipped = min(hi, max(lo, x))
            value += clipped * s / stake_sum
            moved[v] += abs(clipped - x)
            count[v] += 1
        out[p] = value
    trust = {v: 1.0 - (moved[v] / count[v] if count[v] else 0.0) for v in scores}
    return Consensus(out, bounds, trust)
