import numpy as np
import pytest

from rigpool.trust.reputation import ProviderRecord, provider_score, yuma_consensus


def test_scores_are_in_unit_interval_and_ordered():
    good = ProviderRecord(
        checks=50, checks_passed=50, requests=1000, ttft_misses=5, online_s=990, promised_s=1000
    )
    flaky = ProviderRecord(
        checks=50, checks_passed=50, requests=1000, drops=200, online_s=600, promised_s=1000
    )
    cheat = ProviderRecord(
        checks=50, checks_passed=30, requests=1000, online_s=1000, promised_s=1000
    )
    s_good, s_flaky, s_cheat = (provider_score(r) for r in (good, flaky, cheat))
    assert 0.0 <= s_cheat < s_good <= 1.0
    assert s_flaky < s_good
    assert provider_score(ProviderRecord()) == pytest.approx(0.5)


def test_yuma_upper_clip_matches_bittensor_weighted_median():
    # stakes 0.6 / 0.4: the highest score held by >= 50% of stake is 0.2
    c = yuma_consensus({"v1": {"p": 0.2}, "v2": {"p": 0.8}}, {"v1": 6, "v2": 4})
    assert c.bounds["p"] == (0.2, 0.2)
    assert c.scores["p"] == pytest.approx(0.2)


@pytest.mark.parametrize("lie", [0.0, 1.0])
def test_one_lying_validator_moves_an_honest_provider_by_at_most_the_honest_spread(lie):
    rng = np.random.default_rng(0)
    honest_scores = {f"v{i}": 0.9 + 0.02 * rng.standard_normal() for i in range(4)}
    stakes = {f"v{i}": 10.0 for i in range(4)} | {"liar": 30.0}  # 43% of the stake
    scores = {v: {"p": s} for v, s in honest_scores.items()} | {"liar": {"p": lie}}
    c = yuma_consensus(scores, stakes)
    without = yuma_consensus({v: {"p": s} for v, s in honest_scores.items()}, stakes)
    spread = max(honest_scores.values()) - min(honest_scores.values())
    assert min(honest_scores.values()) <= c.scores["p"] <= max(honest_scores.values())
    assert abs(c.scores["p"] - without.scores["p"]) <= spread
    # clipping moved the liar more than anyone, which flags it
    assert c.validator_trust["liar"] < min(c.validator_trust[v] for v in honest_scores)


def test_validators_without_stake_are_ignored():
    c = yuma_consensus({"v1": {"p": 0.9}, "ghost": {"p": 0.0}}, {"v1": 1.0})
    assert c.scores["p"] == pytest.approx(0.9)
