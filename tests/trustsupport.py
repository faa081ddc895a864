"""Test helpers for the trust suite: a provider's answer as a claim, with its signature."""

from __future__ import annotations

from rigpool.protocol.signing import Identity
from rigpool.trust.evidence import provider_statement
from rigpool.trust.simulate import CLAIMED_MODEL, ModelSet, make_provider, random_prompts
from rigpool.trust.verification import ProviderClaim, Sampling

GREEDY = Sampling(temperature=0.0, max_tokens=24)


def served(
    kind: str, trust_models: ModelSet, provider: Identity, seed: int = 0
) -> tuple[ProviderClaim, str]:
    """Run a provider of `kind` on a seeded prompt; its claim and its signature over it."""
    prompt = random_prompts(1, 1024, seed=seed)[0]
    gen = make_provider(kind, trust_models)(prompt, GREEDY)
    claim = ProviderClaim(
        CLAIMED_MODEL,
        tuple(prompt),
        tuple(gen.output_ids),
        GREEDY,
        tuple(gen.logprobs),
        tuple(gen.commitments),
    )
    statement = provider_statement(
        request_id=f"req-{seed}",
        model=CLAIMED_MODEL,
        prompt_ids=claim.prompt_ids,
        output_ids=claim.output_ids,
        sampling=GREEDY,
        logprobs=claim.logprobs,
        commitments=claim.commitments,
    )
    return claim, provider.sign(statement)
