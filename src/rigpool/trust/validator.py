"""A validator: one locally loaded copy of the claimed model, judging providers' claims.

The glue between `torchops.teacher_force` (torch) and `verification.judge` (numpy). It lives
apart from both so that `verification` stays pure and `torchops` can import its types without a
cycle; torch is imported only when a claim is checked.
"""

from __future__ import annotations

from typing import Any

from rigpool.trust.verification import (
    CheckResult,
    ForcedPass,
    ProviderClaim,
    TokenStats,
    Tolerances,
    VerificationResult,
    judge,
)


class Validator:
    """Checks claims against one locally loaded copy of the claimed model.

    Args:
        model: A loaded Hugging Face causal LM (see `torchops.load_model`), or anything
            `torchops.teacher_force` accepts.
        name: The model name claims must carry.
        tolerances: Pass limits (default: the calibrated `Tolerances()`).

    """

    def __init__(self, model: Any, name: str, tolerances: Tolerances | None = None) -> None:
        self.model = model
        self.name = name
        self.tolerances = tolerances or Tolerances()

    def forced_pass(self, claim: ProviderClaim) -> ForcedPass:
        from rigpool.trust.torchops import teacher_force  # torch only when a claim is checked

        return teacher_force(self.model, claim.prompt_ids, claim.output_ids, claim.sampling)

    def check(self, claim: ProviderClaim) -> VerificationResult:
        if claim.model != self.name:
            bad = CheckResult("model", False, 0.0, 0.0, f"claim is for {claim.model!r}")
            return VerificationResult(False, (bad,), TokenStats(), len(claim.output_ids))
        return judge(self.forced_pass(claim), claim, self.tolerances)
