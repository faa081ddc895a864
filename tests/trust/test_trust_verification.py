"""The adversarial suite for inference: honest providers pass, cheats are caught."""

from __future__ import annotations

import pytest

from rigpool.trust.simulate import CLAIMED_MODEL as MODEL_NAME
from rigpool.trust.simulate import ModelSet, make_provider, random_prompts
from rigpool.trust.validator import Validator
from rigpool.trust.verification import (
    ProviderClaim,
    Sampling,
    TokenStats,
    VerificationResult,
    aggregate_token_test,
)

GREEDY = Sampling(temperature=0.0, max_tokens=32)
SAMPLED = Sampling(temperature=1.0, max_tokens=32)


def run(
    kind: str,
    models: ModelSet,
    validator: Validator,
    sampling: Sampling,
    n: int,
    dtype: str = "float32",
) -> list[VerificationResult]:
    provider = make_provider(kind, models, dtype=dtype)
    results = []
    for i, prompt in enumerate(random_prompts(n, 1024, seed=100)):
        s = Sampling(sampling.temperature, sampling.top_p, sampling.max_tokens, seed=i)
        gen = provider(prompt, s)
        claim = ProviderClaim(
            MODEL_NAME,
            tuple(prompt),
            tuple(gen.output_ids),
            s,
            tuple(gen.logprobs),
            tuple(gen.commitments),
        )
        results.append(validator.check(claim))
    return results


@pytest.mark.parametrize(
    "dtype", ["float32", "bfloat16", pytest.param("float16", marks=pytest.mark.slow)]
)
def test_honest_provider_passes_in_every_dtype(trust_models, validator, dtype):
    # fp16 is slow on CPU (no fast kernels); the bench measures far more honest requests.
    for sampling, n in ((GREEDY, 1), (SAMPLED, 1 if dtype != "float32" else 2)):
        results = run("honest", trust_models, validator, sampling, n, dtype)
        assert all(r.passed for r in results), [r.reasons for r in results]


def test_smaller_model_is_caught(trust_models, validator):
    results = run("smaller", trust_models, validator, GREEDY, 2)
    assert not any(r.passed for r in results)
    names = {c.name for r in results for c in r.failed}
    assert {"logprob_mean_abs", "toploc_exponent", "greedy_argmax"} <= names


def test_other_model_is_caught(trust_models, validator):
    results = run("other", trust_models, validator, SAMPLED, 2)
    assert not any(r.passed for r in results)


def test_four_bit_weights_are_caught_by_the_commitments(trust_models, validator):
    results = run("quantized4", trust_models, validator, SAMPLED, 2)
    assert not any(r.passed for r in results)
    assert all(any(c.name.startswith("toploc") for c in r.failed) for r in results)


def test_cheap_generation_then_prefill_is_caught(trust_models, validator):
    # Greedy: the cheap model's argmax differs from the claimed model's on many tokens, even
    # though logprobs and commitments were recomputed with the claimed model.
    greedy = run("prefill_cheat", trust_models, validator, GREEDY, 2)
    assert not any(r.passed for r in greedy)
    assert all({c.name for c in r.failed} == {"greedy_argmax"} for r in greedy)


@pytest.mark.slow
def test_cheap_sampling_then_prefill_is_caught_by_aggregated_token_statistics(
    trust_models, validator
):
    # Per request the excess is ~2 standard deviations (too weak alone); summed over a
    # provider's checked requests it grows with sqrt(requests). The bench measures the honest
    # side of this test (its false-positive rate) over many more requests.
    sampling = Sampling(temperature=1.0, max_tokens=48)
    cheat = run("prefill_cheat", trust_models, validator, sampling, 8)
    assert all(r.passed for r in cheat)  # logprobs and commitments are consistent ...
    assert aggregate_token_test([r.token_stats for r in cheat]).passed is False  # ... tokens not


def test_random_text_is_caught(trust_models, validator):
    results = run("random_text", trust_models, validator, SAMPLED, 2)
    assert not any(r.passed for r in results)


def test_claim_for_another_model_is_refused(validator):
    claim = ProviderClaim("some-other-model", (5, 6), (7,), GREEDY)
    assert not validator.check(claim).passed


def test_token_stats_add_up():
    a = TokenStats(10, 4.0, 16.0)
    b = TokenStats(30, 6.0, 9.0)
    total = a.combine(b)
    assert total == TokenStats(40, 10.0, 25.0)
    assert total.z == pytest.approx(2.0)


def test_results_round_trip_through_json(trust_models, validator):
    (result,) = run("smaller", trust_models, validator, GREEDY, 1)
    assert VerificationResult.from_json(result.to_json()) == result
