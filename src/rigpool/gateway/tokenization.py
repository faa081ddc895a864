"""The gateway's own token counting: the model's tokenizer, never the provider's claim.

Only `tokenizer.json` (the `tokenizers` library) and the chat template from
`tokenizer_config.json` (sandboxed Jinja, as transformers renders it) are read, so the gateway
needs no PyTorch. Prompt tokens = tokens of the rendered prompt; completion tokens = tokens of the
text the client actually received.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from jinja2.exceptions import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer

from rigpool.core.errors import BadRequest

# Used when a model folder carries no chat template: plain role-prefixed turns.
FALLBACK_CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def _raise_exception(message: str) -> None:
    raise TemplateError(message)


class ModelTokenizer:
    """Counts tokens and renders chat prompts for one model folder."""

    def __init__(self, folder: Path):
        tokenizer_file = folder / "tokenizer.json"
        if not tokenizer_file.exists():
            raise FileNotFoundError(f"{folder} has no tokenizer.json; the gateway cannot meter it")
        self._tok = Tokenizer.from_file(str(tokenizer_file))
        config: dict[str, Any] = {}
        config_file = folder / "tokenizer_config.json"
        if config_file.exists():
            config = json.loads(config_file.read_text())
        # transformers >= 4.43 may write the template to its own file instead of the config.
        template_file = folder / "chat_template.jinja"
        template = config.get("chat_template") or (
            template_file.read_text() if template_file.exists() else FALLBACK_CHAT_TEMPLATE
        )
        if isinstance(template, list):  # some configs carry named templates
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default") or next(iter(named.values()), FALLBACK_CHAT_TEMPLATE)
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise_exception
        self._template = env.from_string(str(template))
        self._special = {
            "bos_token": _token_text(config.get("bos_token")),
            "eos_token": _token_text(config.get("eos_token")),
        }

    def count(self, text: str) -> int:
        if not text:
            return 0
        return len(self._tok.encode(text, add_special_tokens=False).ids)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` without special tokens (what an agent feeds its model)."""
        return list(self._tok.encode(text, add_special_tokens=False).ids) if text else []

    def render_chat(self, messages: list[dict[str, str]]) -> str:
        try:
            return self._template.render(
                messages=messages, add_generation_prompt=True, **self._special
            )
        except TemplateError as exc:
            raise BadRequest(f"the model's chat template refused the messages: {exc}") from None


def _token_text(value: Any) -> str:
    if isinstance(value, dict):
        return str(value.get("content", ""))
    return str(value or "")


@lru_cache(maxsize=64)
def load_tokenizer(folder: str) -> ModelTokenizer:
    return ModelTokenizer(Path(folder))
