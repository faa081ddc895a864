"""Request fields shared by the OpenAI endpoints, in upstream order; deviations are commented."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

from rigpool.scheduler.routing import Constraints

MAX_STOP = 4  # OpenAI's own limit on stop sequences

_SURROGATE = re.compile("[\ud800-\udfff]")


def has_lone_surrogate(text: str) -> bool:
    """Whether `text` holds a UTF-16 surrogate code point (U+D800..U+DFFF), i.e. is not Unicode.

    JSON can spell one as an escape sequence and Python's JSON parser keeps it; a valid pair
    of escapes is already one character (U+10000 and up) by then, so any surrogate left is a
    lone one. Such a string cannot be encoded as UTF-8 (tokenizers, SQL, the agent's frames
    all fail on it), so it must never get past validation.
    """
    return not text.isascii() and _SURROGATE.search(text) is not None


def _valid_text(value: object) -> object:
    # Before pydantic's own str validation: with a length constraint, that one refuses such text
    # too, but as "unable to parse raw data as a unicode string"; without one it lets it pass.
    if not isinstance(value, str):
        return value  # not text: the str validation after this says so
    found = None if value.isascii() else _SURROGATE.search(value)
    if found is not None:
        raise PydanticCustomError(
            "invalid_text",
            "text must be valid Unicode: lone UTF-16 surrogate {surrogate} at index {index}",
            {"surrogate": f"U+{ord(found.group()):04X}", "index": found.start()},
        )
    return value


#: Every string a client sends: refused at validation (400 naming the field) if it is not valid
#: Unicode, so bad text never reaches routing, the request row or an agent.
Text = Annotated[str, BeforeValidator(_valid_text)]


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False


class RigpoolOptions(BaseModel):
    """Extension (pass with the openai client's `extra_body={"rigpool": {...}}`).

    `regions` is data residency: the request never reaches an agent outside these regions (an
    entry may be a prefix: "eu" admits "eu-west").
    """

    model_config = ConfigDict(extra="forbid")

    regions: list[Text] | None = Field(default=None, min_length=1, max_length=32)
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

    model: Text = Field(min_length=1, max_length=256)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    # Deviation: only n=1 is served (hedging and failover are per stream).
    n: int = Field(default=1, ge=1, le=1)
    seed: int | None = None
    stop: Text | list[Text] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float = Field(default=1.0, ge=0, le=2)
    top_p: float = Field(default=1.0, gt=0, le=1)
    user: Text | None = Field(default=None, max_length=256)
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
