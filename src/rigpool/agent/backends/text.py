"""Text helpers shared by backends that turn token ids into streamed text themselves.

Two problems every token-level backend has, solved once here so they are tested once:

* **Incremental detokenization.** A byte-level token can end in the middle of a UTF-8 character, so
  decoding each token on its own would emit replacement characters (U+FFFD) and break non-ASCII
  text. `IncrementalDetokenizer` decodes a short window of recent ids and only emits the new suffix
  once it no longer ends in U+FFFD (the scheme vLLM and TGI use), so the concatenated stream equals
  decoding all ids at once.
* **Stop strings.** A stop string may be split across tokens and must never reach the client.
  `find_stop` finds the earliest match and `stop_holdback` says how many trailing characters to
  keep back because they could still become the start of a stop string.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

REPLACEMENT_CHAR = "\ufffd"

#: decode(ids) -> text; the backend binds its tokenizer options (skip special tokens, ...)
DecodeFn = Callable[[Sequence[int]], str]


class IncrementalDetokenizer:
    """Turns a growing list of token ids into stable text deltas.

    `prefix_offset..read_offset` is the window of already-emitted ids that is re-decoded as
    context (so merges and leading-space rules of the tokenizer see their neighbours); ids after
    `read_offset` are not yet emitted. Cost per step is the window, not the whole output.
    """

    def __init__(self, decode: DecodeFn) -> None:
        self._decode = decode
        self.ids: list[int] = []
        self._prefix_offset = 0
        self._read_offset = 0

    def push(self, token_id: int) -> str:
        """Add one id; return the newly stable text (may be "" while a character is incomplete)."""
        self.ids.append(token_id)
        prefix_text = self._decode(self.ids[self._prefix_offset : self._read_offset])
        new_text = self._decode(self.ids[self._prefix_offset :])
        if len(new_text) > len(prefix_text) and not new_text.endswith(REPLACEMENT_CHAR):
            delta = new_text[len(prefix_text) :]
            self._prefix_offset = self._read_offset
            self._read_offset = len(self.ids)
            return delta
        return ""

    def flush(self) -> str:
        """The text of ids not yet emitted, even if it ends in an incomplete character."""
        prefix_text = self._decode(self.ids[self._prefix_offset : self._read_offset])
        new_text = self._decode(self.ids[self._prefix_offset :])
        self._prefix_offset = self._read_offset = len(self.ids)
        return new_text[len(prefix_text) :]


def find_stop(text: str, stops: Sequence[str], start: int = 0) -> int | None:
    """Index of the earliest occurrence of any non-empty stop string in `text[start:]`, or None."""
    best: int | None = None
    for stop in stops:
        if not stop:
            continue
        index = text.find(stop, start)
        if index != -1 and (best is None or index < best):
            best = index
    return best


def stop_holdback(text: str, stops: Sequence[str]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of some stop string.

    Those characters must not be streamed yet: the next tokens may complete the stop string.
    """
    hold = 0
    for stop in stops:
        for length in range(min(len(stop) - 1, len(text)), hold, -1):
            if text.endswith(stop[:length]):
                hold = length
                break
    return hold
