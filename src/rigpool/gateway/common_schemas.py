"""Request fields shared by the OpenAI endpoints, in upstream order; deviations are commented."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from rigpool.scheduler.routing import Constraints

MAX_STOP = 4  # OpenAI's own limit on stop sequences


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False


class RigpoolOptions(BaseModel):
    """Extension (pass with the openai client's `extra_body={"rigpool": {...}}`).

    `regions` is data residency: the request never reaches an agent outside these regions (an
    entry may be a prefix: "eu" admits "eu-west").
    """

    model_config = ConfigDict(extra="forbid")

    regions: list[str] | None = Field(default=None, min_length=1, max_length=32)
    max_price_per_mtok: float | None = Field(default=None, ge=0)
    min_reputation: float = Field(default=0.0, ge=0, le=1)

    def constraints(self) -> Constraints:
        return Constraints.of(self.regions, self.max_price_per_mtok, self.min_reputation)


class SamplingFields(BaseModel):
    """Fields both chat and completions accept.

    Unknown fields are ignored (as vLLM does) so newer clients keep working; fields we accept
    but cannot honour are refused explicitly rather than silently dropped.
    """

    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1, max_length=256)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    # Deviation: only n=1 is served (hedging and failover are per stream).
    n: int = Field(default=1, ge=1, le=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float = Field(default=1.0, ge=0, le=2)
    top_p: float = Field(default=1.0, gt=0, le=1)
    user: str | None = Field(default=None, max_length=256)
    # Extension: routing constraints (data residency, price cap, minimum reputation).
    rigpool: RigpoolOptions | None = None

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list):
            if len(value) > MAX_STOP:
                raise ValueError(f"at most {MAX_STOP} stop sequences are allowed")
            if any(not s or len(s) > 256 for s in value):
                raise ValueError("stop sequences must be 1 to 256 characters")
        elif isinstance(value, str) and len(value) > 256:
            raise ValueError("a stop sequence must be at most 256 characters")
        return value

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def constraints(self) -> Constraints:
        return self.rigpool.constraints() if self.rigpool else Constraints()

    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)
