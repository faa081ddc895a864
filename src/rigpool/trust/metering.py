"""Metering honesty: bill the gateway's own token count; log the agent's claim and compare.

The gateway tokenizes the prompt itself and counts the streamed tokens itself, so a provider
cannot inflate a bill. It can still lie in its signed receipt (to inflate reported throughput,
rewards or a dispute), and a systematic gap is a sign of a tampered agent, so every claim is
compared with the gateway's count: a difference beyond `MeteringPolicy` is a `MeterMismatch`,
which `evidence.metering_evidence` turns into a record.

A tolerance is needed because honest counts can differ by construction: the agent counts the
final EOS as a completion token (the transformers backend does), and the gateway may stop a
stream on a stop string one token before the agent notices.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class MeteringPolicy:
    """Allowed difference between an agent's claimed count and the gateway's."""

    abs_tolerance: int = 1  # tokens, per field
    rel_tolerance: float = 0.0  # share of the gateway count, per field


@dataclass(frozen=True)
class MeterReading:
    """One request's counts: the agent's claim and the gateway's own."""

    request_id: str
    agent_id: str
    model: str
    claimed_prompt_tokens: int
    claimed_completion_tokens: int
    gateway_prompt_tokens: int
    gateway_completion_tokens: int


@dataclass(frozen=True)
class MeterMismatch:
    """A claim outside the tolerance: by how much, and in which direction."""

    reading: MeterReading
    prompt_delta: int  # claimed - gateway
    completion_delta: int

    @property
    def inflated(self) -> bool:
        return self.prompt_delta > 0 or self.completion_delta > 0

    @property
    def reason(self) -> str:
        r = self.reading
        return (
            f"metering: agent claimed {r.claimed_prompt_tokens}+{r.claimed_completion_tokens} "
            f"tokens, gateway counted {r.gateway_prompt_tokens}+{r.gateway_completion_tokens}"
        )


def billable_tokens(reading: MeterReading) -> tuple[int, int]:
    """What the consumer pays for: always the gateway's count, never the claim."""
    return reading.gateway_prompt_tokens, reading.gateway_completion_tokens


def _allowed(gateway: int, policy: MeteringPolicy) -> float:
    return policy.abs_tolerance + policy.rel_tolerance * gateway


def compare(reading: MeterReading, policy: MeteringPolicy | None = None) -> MeterMismatch | None:
    """None when the claim agrees with the gateway within tolerance, else the mismatch."""
    p = policy or MeteringPolicy()
    dp = reading.claimed_prompt_tokens - reading.gateway_prompt_tokens
    dc = reading.claimed_completion_tokens - reading.gateway_completion_tokens
    if abs(dp) <= _allowed(reading.gateway_prompt_tokens, p) and abs(dc) <= _allowed(
        reading.gateway_completion_tokens, p
    ):
        return None
    return MeterMismatch(reading, dp, dc)


@dataclass(frozen=True)
class MeteringSummary:
    """One agent's claims over many requests."""

    agent_id: str
    requests: int
    mismatches: int
    claimed_tokens: int
    gateway_tokens: int

    @property
    def inflation(self) -> float:
        """Claimed / counted tokens - 1 (0 for an honest agent)."""
        return self.claimed_tokens / self.gateway_tokens - 1.0 if self.gateway_tokens else 0.0


def summarize(
    readings: Iterable[MeterReading], policy: MeteringPolicy | None = None
) -> dict[str, MeteringSummary]:
    """Per-agent totals and mismatch counts."""
    acc: dict[str, list[int]] = {}
    for r in readings:
        row = acc.setdefault(r.agent_id, [0, 0, 0, 0])
        row[0] += 1
        row[1] += compare(r, policy) is not None
        row[2] += r.claimed_prompt_tokens + r.claimed_completion_tokens
        row[3] += r.gateway_prompt_tokens + r.gateway_completion_tokens
    return {a: MeteringSummary(a, *v) for a, v in acc.items()}
