import numpy as np
import pytest

from rigpool.trust.toploc import (
    PRIME,
    ToplocCommitter,
    commit_chunk,
    commit_hidden_states,
    compare_chunk,
    compare_commitments,
    evaluate,
    interpolate,
)


def test_polynomial_passes_through_every_point():
    rng = np.random.default_rng(0)
    xs = rng.choice(PRIME, 128, replace=False)
    ys = rng.integers(0, PRIME, 128)
    assert np.array_equal(evaluate(interpolate(xs, ys), xs), ys)


def test_commitment_is_258_bytes_per_32_tokens_of_llama_8b_width():
    hidden = np.random.default_rng(1).standard_normal((32, 4096)).astype(np.float32)
    assert len(commit_chunk(hidden)) == 258


def test_same_activations_match_exactly_and_small_noise_passes():
    rng = np.random.default_rng(2)
    hidden = rng.standard_normal((32, 256)).astype(np.float32)
    commit = commit_chunk(hidden)
    exact = compare_chunk(commit, hidden)
    assert exact.exp_mismatches == 0 and exact.mant_diff_mean == 0.0
    noisy = compare_chunk(commit, hidden * (1 + 1e-3 * rng.standard_normal(hidden.shape)))
    assert noisy.exp_mismatches <= 4 and noisy.mant_diff_median <= 1


def test_other_activations_mismatch_almost_everywhere():
    rng = np.random.default_rng(3)
    commit = commit_chunk(rng.standard_normal((32, 256)))
    other = compare_chunk(commit, rng.standard_normal((32, 256)))
    assert other.exp_mismatches > 100


def test_committer_chunks_by_32_and_commits_the_remainder():
    rng = np.random.default_rng(4)
    hidden = rng.standard_normal((70, 64)).astype(np.float32)
    committer = ToplocCommitter()
    emitted = [c for row in hidden if (c := committer.add(row)) is not None]
    assert len(emitted) == 2
    commits = committer.finish()
    assert commits == commit_hidden_states(hidden)
    assert len(compare_commitments(commits, hidden)) == 3


def test_wrong_number_of_commitments_is_an_error():
    hidden = np.ones((40, 8), np.float32)
    with pytest.raises(ValueError):
        compare_commitments([commit_chunk(hidden[:32])], hidden)
