"""`POST /v1/completions` request body (OpenAI's field order; deviations commented)."""

from __future__ import annotations

from pydantic import Field, field_validator

from rigpool.gateway.common_schemas import SamplingFields, Text


class CompletionRequest(SamplingFields):
    # Deviation: one prompt per request (a string, or a list holding one string); token-id
    # prompts are refused because the gateway meters text with the model's tokenizer.
    prompt: Text | list[Text]
    echo: bool = False
    logprobs: int | None = Field(default=None, ge=0, le=5)
    max_tokens: int = Field(default=16, ge=1)
    suffix: None = None  # Deviation: no insertion (suffix) support.

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and len(value) != 1:
            raise ValueError("exactly one prompt per request is supported")
        return value

    @field_validator("echo")
    @classmethod
    def _no_echo(cls, value: bool) -> bool:
        if value:
            raise ValueError("echo is not supported")
        return value

    def prompt_text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]
