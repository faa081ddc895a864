from __future__ import annotations

from collections.abc import Sequence

from rigpool.agent.backends.text import IncrementalDetokenizer, find_stop, stop_holdback


def _byte_decode(ids: Sequence[int]) -> str:
    return bytes(ids).decode("utf-8", errors="replace")


def test_incremental_detokenizer_holds_back_partial_characters() -> None:
    data = "añ你🙂b".encode()
    detok = IncrementalDetokenizer(_byte_decode)
    pieces = [detok.push(b) for b in data]
    assert "\ufffd" not in "".join(pieces)
    assert "".join(pieces) + detok.flush() == "añ你🙂b"
    # the emoji's four bytes come out together, on the last one
    assert pieces[-2] == "🙂"
    assert pieces[-3:-2] == [""]


def test_incremental_detokenizer_flush_emits_incomplete_tail() -> None:
    detok = IncrementalDetokenizer(_byte_decode)
    assert detok.push(ord("x")) == "x"
    assert detok.push(0xE4) == ""
    assert detok.flush() == "\ufffd"


def test_find_stop_and_holdback() -> None:
    assert find_stop("hello world", ("lo", "o w"), 0) == 3
    assert find_stop("hello world", ("zz", ""), 0) is None
    assert find_stop("abcabc", ("abc",), 1) == 3
    assert stop_holdback("the end", ("END", "ndx")) == 2
    assert stop_holdback("the en", ("end",)) == 2
    assert stop_holdback("the", ("xyz",)) == 0
    assert stop_holdback("", ("abc",)) == 0
