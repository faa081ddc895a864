import pytest

from rigpool.trust.sampling import (
    SamplingPolicy,
    SpooferBelief,
    check_rate,
    expected_requests_to_detection,
    failures_required,
    false_slash_probability,
    required_stake,
    should_check,
)


def test_new_agents_are_checked_at_the_cap_and_decay_to_the_floor():
    policy = SamplingPolicy()
    belief = SpooferBelief.new(policy)
    assert check_rate(belief, policy) == policy.cap
    for _ in range(2000):
        belief = belief.update(True, policy)
    assert check_rate(belief, policy) == policy.floor


def test_a_failure_raises_the_rate_again():
    belief = SpooferBelief.new()
    for _ in range(300):
        belief = belief.update(True)
    before = check_rate(belief)
    assert check_rate(belief.update(False)) > 1.5 * before


def test_suspicious_agents_start_with_a_higher_prior():
    assert SpooferBelief.new(suspicious=True).mean > SpooferBelief.new().mean


def test_should_check_follows_the_rate():
    belief = SpooferBelief.new()
    assert should_check(belief, 0.1) and not should_check(belief, 0.9)


def test_stake_satisfies_the_deterrence_condition():
    policy = SamplingPolicy(floor=0.02, detection_power=0.9)
    gain = 0.001  # what cheating on one request saves, in tokens of value
    stake = required_stake(gain, policy, margin=2.0)
    # expected gain before being caught < detection x slash (here: the whole stake)
    expected_gain = gain * expected_requests_to_detection(policy.floor, policy.detection_power)
    assert expected_gain < stake
    assert stake == pytest.approx(2.0 * gain / (0.02 * 0.9))


def test_false_slash_probability_and_required_failures():
    # one-in-a-thousand false positives per check, 10,000 checks
    k = failures_required(1e-3, 10_000, target=1e-9)
    assert false_slash_probability(1e-3, 10_000, k) <= 1e-9
    assert false_slash_probability(1e-3, 10_000, k - 1) > 1e-9
    assert false_slash_probability(0.0, 100, 1) == 0.0
