"""HedgePolicy: delays follow each agent's p95, the budget caps hedges, retries are bounded."""

from __future__ import annotations

import random

import pytest

from rigpool.scheduler.hedging import HedgePolicy, StreamingQuantile, p95


def test_hedges_never_exceed_their_share_of_requests() -> None:
    # Prepare: a policy that would hedge every request if the budget allowed
    policy = HedgePolicy(share=0.05, burst=10)
    rng = random.Random(0)
    for n in range(1, 20_001):
        # Execute
        policy.on_request(float(n))
        for _ in range(rng.randint(0, 3)):  # bursts of hedge attempts
            policy.try_take_hedge(float(n))
        # Assert: at every prefix, hedges <= floor(share x requests)
        assert policy.hedges <= int(0.05 * n + 1e-9)
    assert policy.hedges == 1000  # and the whole budget is usable
    assert policy.hedge_ratio == pytest.approx(0.05)


def test_budget_refills_from_requests_only() -> None:
    policy = HedgePolicy(share=0.5, burst=1)
    assert not policy.try_take_hedge(0.0)
    policy.on_request(0.0)
    assert not policy.try_take_hedge(0.0)
    policy.on_request(0.0)
    assert policy.try_take_hedge(0.0)
    assert not policy.try_take_hedge(0.0)


@pytest.mark.parametrize("scale", [0.05, 0.4, 2.0])
def test_hedge_delay_follows_the_observed_p95(scale: float) -> None:
    # Prepare: lognormal TTFTs, the shape of real time-to-first-token tails
    rng = random.Random(1)
    policy = HedgePolicy(max_delay_s=100.0, min_delay_s=0.001)
    samples = [scale * rng.lognormvariate(0.0, 0.5) for _ in range(5000)]
    # Execute
    for i, x in enumerate(samples):
        policy.observe_ttft("a", x, float(i))
    # Assert: within 15 % of the empirical p95
    assert policy.hedge_delay_s("a") == pytest.approx(p95(samples), rel=0.15)


def test_hedge_delay_tracks_an_agent_that_slows_down() -> None:
    rng = random.Random(2)
    policy = HedgePolicy()
    for i in range(2000):
        policy.observe_ttft("a", 0.1 * rng.lognormvariate(0, 0.3), float(i))
    before = policy.hedge_delay_s("a")
    for i in range(2000):
        policy.observe_ttft("a", 0.5 * rng.lognormvariate(0, 0.3), float(2000 + i))
    after = policy.hedge_delay_s("a")
    assert after > 3 * before


def test_new_agents_get_the_default_then_the_fleet_p95() -> None:
    policy = HedgePolicy(default_delay_s=1.5)
    assert policy.hedge_delay_s("new") == 1.5
    for i in range(200):
        policy.observe_ttft(f"other{i % 20}", 0.2, float(i))
    assert policy.hedge_delay_s("new") == pytest.approx(0.2, rel=0.05)


def test_delay_is_clamped() -> None:
    policy = HedgePolicy(min_delay_s=0.05, max_delay_s=2.0)
    for i in range(50):
        policy.observe_ttft("fast", 0.001, float(i))
        policy.observe_ttft("stuck", 60.0, float(i))
    assert policy.hedge_delay_s("fast") == 0.05
    assert policy.hedge_delay_s("stuck") == 2.0


def test_retries_only_before_tokens_and_within_attempts() -> None:
    policy = HedgePolicy(max_attempts=3)
    assert policy.may_retry(1)
    assert policy.may_retry(2)
    assert not policy.may_retry(3)
    assert not policy.may_retry(1, retryable=False)
    assert not policy.may_retry(1, tokens_sent=4)


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        HedgePolicy(share=1.5)
    with pytest.raises(ValueError):
        StreamingQuantile(1.0)
