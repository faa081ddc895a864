"""Verified inference: checks that an output came from the claimed model, sampled as claimed.

Validator: re-runs a provider's prompt + output through the claimed model in one teacher-forced
forward pass (prefill-priced, far cheaper than decoding token by token) and judges five things,
each with a tolerance calibrated on honest dtype differences (fp32 / bf16 / fp16; see
docs/trust.md and bench/results/trust.json for the measured distributions):

1. **logprobs** - the provider's per-token logprobs against the validator's. A provider running
   another model reports other numbers.
2. **top-k membership** - output tokens must be among the validator's top `TOPK_MEMBERSHIP`
   next tokens. Greedy output: all of them (up to a small share for numeric ties). Sampled
   output: an honest sampler lands outside the top-k with probability equal to the tail mass the
   validator computes per position, so the count of misses must stay within that expectation
   plus four standard deviations (a one-sided binomial test).
3. **greedy** - at temperature 0 every token must be the validator's argmax, up to a logit margin
   that covers numeric ties.
4. **TOPLOC** - the provider's hidden-state commitments (`toploc`) against the recomputed hidden
   states: catches precision swaps and model swaps even when the provider fakes logprobs.
5. **token statistics** - for sampled output, ``sum_t (-log p(x_t) - H_t) / sqrt(sum_t Var_t)``
   under the claimed sampling distribution is approximately standard normal for an honest
   sampler. A provider that generated cheaply with another model and then prefilled the claimed
   model to make logprobs and commitments consistent still cannot make its *tokens* look drawn
   from the claimed model: their cross-entropy exceeds the claimed model's entropy by the KL
   divergence. Per request the test is weak, so `TokenStats` add up across a provider's checked
   requests (`TokenStats.combine`), and the aggregate is tested too.

This module is pure (numpy): `judge` turns a `ForcedPass` (numbers from `torchops.teacher_force`)
and a `ProviderClaim` into a `VerificationResult`; `trust/validator.py` glues the two (it alone
reaches torch, through `torchops`, so this module and `torchops` never import each other).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from rigpool.trust.toploc import ChunkComparison, compare_commitments

#: k of the top-k membership check (the forced pass records each position's mass beyond it)
TOPK_MEMBERSHIP = 20


@dataclass(frozen=True)
class Sampling:
    """The sampling the client asked for; temperature 0 is greedy."""

    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 64
    seed: int | None = None


@dataclass
class ForcedPass:
    """Per output token, what the claimed model says (from one teacher-forced pass).

    Attributes:
        logprob_model: log p(token) under the raw model distribution.
        logprob_sampled: log p(token) under the sampling distribution (temperature, top-p);
            -inf when the token is outside the validator's nucleus.
        rank: How many tokens have a strictly larger logit (0 = argmax).
        margin: Max logit minus the token's logit.
        entropy: Entropy of the sampling distribution (nats).
        nll_var: Variance of -log p(x) for x drawn from the sampling distribution.
        tail_mass: Probability, under the sampling distribution, of drawing a token ranked
            `TOPK_MEMBERSHIP` or lower.
        hidden: Final hidden states (tokens x hidden), for TOPLOC.

    """

    logprob_model: np.ndarray
    logprob_sampled: np.ndarray
    rank: np.ndarray
    margin: np.ndarray
    entropy: np.ndarray
    nll_var: np.ndarray
    tail_mass: np.ndarray
    hidden: np.ndarray

    @classmethod
    def empty(cls, hidden_size: int) -> ForcedPass:
        z = np.zeros(0)
        return cls(z, z, z.astype(np.int64), z, z, z, z, np.zeros((0, hidden_size), np.float32))

    def __len__(self) -> int:
        return len(self.rank)


@dataclass(frozen=True)
class Tolerances:
    """Pass limits. Defaults: calibrated on honest fp32/bf16/fp16 providers (docs/trust.md).

    Each limit sits well outside the worst honest value measured and well inside the smallest
    cheat measured; the bench re-measures both sides.
    """

    #: a token's |provider logprob - validator logprob| above this counts as a bad token
    logprob_token_abs: float = 0.5
    #: mean |delta logprob| over the request
    logprob_mean_abs: float = 0.06
    #: share of bad tokens allowed
    logprob_bad_frac: float = 0.10
    #: greedy: share of tokens allowed outside the validator's top-k
    topk_miss_frac: float = 0.05
    #: sampled: misses allowed above the expected count, in standard deviations (+1 token)
    topk_sigma: float = 4.0
    #: greedy: token logit may trail the max by this much (numeric ties) ...
    greedy_margin: float = 0.25
    #: ... and this share of tokens may miss
    greedy_miss_frac: float = 0.02
    #: TOPLOC, per 128 values of a chunk: sign/exponent mismatches allowed
    toploc_exp_mismatch: int = 8
    #: TOPLOC: mean and median mantissa difference (7-bit units) allowed
    toploc_mant_mean: float = 2.0
    toploc_mant_median: float = 2.0
    #: token statistics: |z| above this fails the request (two-sided)
    token_z: float = 5.0
    #: sampled tokens below this count are not tested statistically (too little power)
    token_min: int = 8


@dataclass(frozen=True)
class ProviderClaim:
    """What a provider asserted about one request, as the validator receives it.

    `logprobs` and `commitments` are optional: a provider that sends neither is judged on
    top-k membership, greedy agreement and token statistics alone.
    """

    model: str
    prompt_ids: tuple[int, ...]
    output_ids: tuple[int, ...]
    sampling: Sampling = field(default_factory=Sampling)
    logprobs: tuple[float, ...] | None = None
    commitments: tuple[bytes, ...] | None = None


@dataclass(frozen=True)
class TokenStats:
    """Sufficient statistics of the token test; add them up over a provider's requests."""

    n: int = 0
    excess: float = 0.0  # sum of (-log p(x_t) - H_t)
    var: float = 0.0  # sum of Var_t

    @property
    def z(self) -> float:
        return self.excess / math.sqrt(self.var) if self.var > 0 else 0.0

    def combine(self, other: TokenStats) -> TokenStats:
        return TokenStats(self.n + other.n, self.excess + other.excess, self.var + other.var)


@dataclass(frozen=True)
class CheckResult:
    """One named check: its measured value, its limit, and whether it passed."""

    name: str
    passed: bool
    value: float
    limit: float
    detail: str = ""


@dataclass(frozen=True)
class VerificationResult:
    """The verdict on one request, with every check that ran."""

    passed: bool
    checks: tuple[CheckResult, ...]
    token_stats: TokenStats
    n_tokens: int

    @property
    def failed(self) -> list[CheckResult]:
        return [c for c in self.checks if not c.passed]

    @property
    def reasons(self) -> list[str]:
        return [
            f"{c.name}: {c.detail or f'{c.value:.4g} vs limit {c.limit:.4g}'}" for c in self.failed
        ]

    def to_json(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "n_tokens": self.n_tokens,
            "checks": [asdict(c) for c in self.checks],
            "token_stats": asdict(self.token_stats),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> VerificationResult:
        return cls(
            passed=bool(data["passed"]),
            checks=tuple(CheckResult(**c) for c in data["checks"]),
            token_stats=TokenStats(**data["token_stats"]),
            n_tokens=int(data["n_tokens"]),
        )


def token_stats(forced: ForcedPass, sampling: Sampling) -> TokenStats:
    """The token-statistics sums for sampled output (greedy output has no randomness to test)."""
    if sampling.temperature <= 0 or len(forced) == 0:
        return TokenStats()
    lp = forced.logprob_sampled
    ok = np.isfinite(lp)
    excess = (-lp[ok] - forced.entropy[ok]).sum()
    return TokenStats(int(ok.sum()), float(excess), float(forced.nll_var[ok].sum()))


def _toploc_checks(
    forced: ForcedPass, commitments: Sequence[bytes], tol: Tolerances
) -> list[CheckResult]:
    try:
        chunks: list[ChunkComparison] = compare_commitments(commitments, forced.hidden)
    except ValueError as exc:
        return [CheckResult("toploc", False, 1.0, 0.0, f"malformed commitments: {exc}")]
    if not chunks:
        return []
    worst_exp = max(c.exp_mismatches for c in chunks)
    worst_mean = max(c.mant_diff_mean for c in chunks)
    worst_median = max(c.mant_diff_median for c in chunks)
    return [
        CheckResult(
            "toploc_exponent",
            worst_exp <= tol.toploc_exp_mismatch,
            worst_exp,
            tol.toploc_exp_mismatch,
            "",
        ),
        CheckResult(
            "toploc_mantissa_mean",
            worst_mean <= tol.toploc_mant_mean,
            worst_mean,
            tol.toploc_mant_mean,
            "",
        ),
        CheckResult(
            "toploc_mantissa_median",
            worst_median <= tol.toploc_mant_median,
            worst_median,
            tol.toploc_mant_median,
            "",
        ),
    ]


def judge(
    forced: ForcedPass, claim: ProviderClaim, tol: Tolerances | None = None
) -> VerificationResult:
    """Decide whether `claim` is consistent with the claimed model's teacher-forced pass."""
    tol = tol or Tolerances()
    n = len(claim.output_ids)
    checks: list[CheckResult] = []
    if len(forced) != n:
        checks.append(CheckResult("length", False, len(forced), n, "forced pass length differs"))
        return VerificationResult(False, tuple(checks), TokenStats(), n)
    if n == 0:
        return VerificationResult(True, (), TokenStats(), 0)
    s = claim.sampling

    if claim.logprobs is not None:
        if len(claim.logprobs) != n:
            checks.append(
                CheckResult(
                    "logprobs",
                    False,
                    len(claim.logprobs),
                    n,
                    "logprob count differs from token count",
                )
            )
        else:
            theirs = np.asarray(claim.logprobs, dtype=np.float64)
            mine = forced.logprob_sampled
            both_finite = np.isfinite(mine) & (theirs > -1e8)
            delta = np.where(both_finite, np.abs(theirs - np.where(both_finite, mine, 0.0)), 10.0)
            mean = float(delta.mean())
            bad = float((delta > tol.logprob_token_abs).mean())
            checks.append(
                CheckResult(
                    "logprob_mean_abs", mean <= tol.logprob_mean_abs, mean, tol.logprob_mean_abs
                )
            )
            checks.append(
                CheckResult(
                    "logprob_bad_tokens", bad <= tol.logprob_bad_frac, bad, tol.logprob_bad_frac
                )
            )

    misses = forced.rank >= TOPK_MEMBERSHIP
    if s.temperature <= 0:
        miss = float(misses.mean())
        checks.append(
            CheckResult("topk_membership", miss <= tol.topk_miss_frac, miss, tol.topk_miss_frac)
        )
    else:
        tail = np.clip(forced.tail_mass, 0.0, 1.0)
        expected = float(tail.sum())
        limit = expected + tol.topk_sigma * math.sqrt(float((tail * (1 - tail)).sum())) + 1.0
        count = float(misses.sum())
        checks.append(
            CheckResult(
                "topk_membership",
                count <= limit,
                count,
                limit,
                f"{count:.0f} tokens outside the top-{TOPK_MEMBERSHIP}, {expected:.1f} expected",
            )
        )

    if s.temperature <= 0:
        gmiss = float((forced.margin > tol.greedy_margin).mean())
        checks.append(
            CheckResult("greedy_argmax", gmiss <= tol.greedy_miss_frac, gmiss, tol.greedy_miss_frac)
        )

    if claim.commitments is not None:
        checks.extend(_toploc_checks(forced, claim.commitments, tol))

    stats = token_stats(forced, s)
    if s.temperature > 0 and stats.n >= tol.token_min:
        z = stats.z
        checks.append(CheckResult("token_statistics_z", abs(z) <= tol.token_z, z, tol.token_z))
    passed = all(c.passed for c in checks)
    return VerificationResult(passed, tuple(checks), stats, n)


def aggregate_token_test(stats: Sequence[TokenStats], z_limit: float = 5.0) -> CheckResult:
    """The token test over many requests of one provider (power grows with sqrt(tokens))."""
    total = TokenStats()
    for st in stats:
        total = total.combine(st)
    return CheckResult(
        "token_statistics_aggregate",
        abs(total.z) <= z_limit,
        total.z,
        z_limit,
        f"{total.n} tokens over {len(stats)} requests",
    )
