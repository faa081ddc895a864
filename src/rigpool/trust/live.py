"""What the gateway hands the verifier about one served request (`LiveClaim`).

Pure data, shared by the gateway (which builds it from the agent's `done`) and the coordinator's
verifier (which re-checks it), so neither imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass

from rigpool.trust.verification import ProviderClaim

#: backends that run the model themselves and so must send verification data with every answer
VERIFIABLE_BACKENDS = frozenset({"transformers"})


@dataclass(frozen=True)
class LiveClaim:
    """One served request as the verifier receives it from the gateway."""

    provider: str
    request_id: str  # the attempt id the agent signed its statement for
    consumer: str
    model: str
    model_path: str
    claim: ProviderClaim
    signature: str
    prompt_text: str
    output_text: str
    prompt_tokens: int  # as the agent signed them
    completion_tokens: int
    #: why the claim disagrees with what the gateway saw ("" when it agrees)
    mismatch: str = ""
