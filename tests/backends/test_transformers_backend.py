from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path
from typing import Any

import pytest

from rigpool.agent.backends.base import Finish, GenerationRequest, SamplingParams, TokenChunk
from rigpool.agent.backends.transformers_backend import PREFETCH_TOKENS, TransformersBackend
from rigpool.core.errors import BackendError

PROMPT = "<|bos|><|user|>\nTell me about the lighthouse.<|eos|>\n<|assistant|>\n"


def _request(prompt: str = PROMPT, **sampling: Any) -> GenerationRequest:
    return GenerationRequest(
        request_id="t",
        model="rigpool-toy-untrained",
        prompt=prompt,
        sampling=SamplingParams(**sampling),
    )


async def _collect(backend: TransformersBackend, request: GenerationRequest) -> list[Any]:
    return [item async for item in backend.generate(request)]


def run(backend: TransformersBackend, **sampling: Any) -> tuple[list[TokenChunk], Finish]:
    items = asyncio.run(_collect(backend, _request(**sampling)))
    *chunks, finish = items
    assert isinstance(finish, Finish)
    assert all(isinstance(c, TokenChunk) for c in chunks)
    return chunks, finish


def _text(chunks: list[TokenChunk]) -> str:
    return "".join(c.text for c in chunks)


def test_models_reports_folder_name_and_context(toy_backend: TransformersBackend) -> None:
    (served,) = toy_backend.models()
    assert served.name == "rigpool-toy-untrained"
    assert served.context_length == 2048
    assert toy_backend.kind == "transformers"
    assert toy_backend.emulated is False


def test_served_name_override(toy_model_dir: Path) -> None:
    backend = TransformersBackend(str(toy_model_dir), device="cpu", served_name="toy")
    assert backend.models()[0].name == "toy"


def test_greedy_is_deterministic_and_respects_max_tokens(toy_backend: TransformersBackend) -> None:
    first, finish = run(toy_backend, max_tokens=12, temperature=0)
    second, _ = run(toy_backend, max_tokens=12, temperature=0)
    assert [c.token_id for c in first] == [c.token_id for c in second]
    assert (finish.finish_reason, finish.completion_tokens) == ("length", 12)
    assert len(first) == 12
    assert all(c.logprob is None for c in first)  # not requested


def test_sampling_is_deterministic_for_a_seed(toy_backend: TransformersBackend) -> None:
    a, _ = run(toy_backend, max_tokens=16, temperature=1.0, seed=1234)
    b, _ = run(toy_backend, max_tokens=16, temperature=1.0, seed=1234)
    c, _ = run(toy_backend, max_tokens=16, temperature=1.0, seed=4321)
    assert [x.token_id for x in a] == [x.token_id for x in b]
    assert _text(a) == _text(b)
    assert [x.token_id for x in a] != [x.token_id for x in c]


def test_tiny_top_p_equals_greedy(toy_backend: TransformersBackend) -> None:
    greedy, _ = run(toy_backend, max_tokens=8, temperature=0)
    nucleus, _ = run(toy_backend, max_tokens=8, temperature=0.7, top_p=1e-6, seed=5, logprobs=True)
    assert [c.token_id for c in greedy] == [c.token_id for c in nucleus]
    # the sampled-from distribution had a single token left, so its logprob is exactly 0
    assert all(c.logprob == 0.0 for c in nucleus)


def test_logprobs_and_top_logprobs(toy_backend: TransformersBackend) -> None:
    chunks, _ = run(toy_backend, max_tokens=6, temperature=0, logprobs=True, top_logprobs=3)
    for chunk in chunks:
        assert chunk.logprob is not None
        assert chunk.logprob <= 0.0
        assert len(chunk.top_logprobs) == 3
        values = [v for _, v in chunk.top_logprobs]
        assert values == sorted(values, reverse=True)
        assert all(v <= 0.0 for v in values)
        # greedy: the chosen token is the most likely one
        assert chunk.logprob == pytest.approx(values[0])
    sampled, _ = run(toy_backend, max_tokens=6, temperature=1.3, seed=3, logprobs=True)
    assert all(c.logprob is not None and c.logprob <= 0.0 for c in sampled)


def test_stream_text_equals_full_decode(toy_backend: TransformersBackend) -> None:
    tokenizer = toy_backend._tokenizer
    for seed in (1, 2, 3):
        chunks, _ = run(toy_backend, max_tokens=40, temperature=1.5, seed=seed)
        ids = [c.token_id for c in chunks if c.token_id is not None]
        ids = [i for i in ids if i not in toy_backend._eos_ids]
        expected = tokenizer.decode(
            ids, skip_special_tokens=True, clean_up_tokenization_spaces=False
        )
        assert _text(chunks) == expected


def test_multibyte_characters_are_never_split(toy_backend: TransformersBackend) -> None:
    # Force the model to "generate" a known multi-byte text by feeding pieces through the
    # backend's detokenizer path: push the tokenizer's ids for a non-ASCII string one by one.
    from rigpool.agent.backends.text import IncrementalDetokenizer

    text = "Zürich 你好 🙂 καλημέρα"
    ids = toy_backend._tokenizer.encode(text, add_special_tokens=False)
    detok = IncrementalDetokenizer(toy_backend._decode)
    pieces = [detok.push(i) for i in ids]
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) + detok.flush() == text


def test_stop_string_is_honoured_and_not_emitted(toy_backend: TransformersBackend) -> None:
    full_chunks, _ = run(toy_backend, max_tokens=30, temperature=1.0, seed=11)
    full = _text(full_chunks)
    start = next(
        i
        for i in range(8, len(full) - 3)
        if full[i : i + 3].isascii() and full[i : i + 3].isprintable()
    )
    stop = full[start : start + 3]
    expected = full[: full.find(stop)]
    chunks, finish = run(
        toy_backend, max_tokens=30, temperature=1.0, seed=11, stop=(stop, "\x00never")
    )
    assert _text(chunks) == expected
    assert stop not in _text(chunks)
    assert finish.finish_reason == "stop"
    assert finish.completion_tokens == len(chunks) < 30
    # the token that completed the stop string was sampled, so it is in the verification data
    assert finish.output_ids == tuple(c.token_id for c in chunks)


def test_max_tokens_zero(toy_backend: TransformersBackend) -> None:
    chunks, finish = run(toy_backend, max_tokens=0, temperature=0)
    assert chunks == []
    assert (finish.finish_reason, finish.completion_tokens) == ("length", 0)
    assert finish.output_ids == finish.logprobs == finish.commitments == ()
    assert finish.prompt_ids == tuple(toy_backend._encode(PROMPT))


def test_context_overflow_is_not_retryable(toy_backend: TransformersBackend) -> None:
    prompt = "The keeper climbed the hundred and twelve steps. " * 400
    with pytest.raises(BackendError) as info:
        asyncio.run(_collect(toy_backend, _request(prompt=prompt, max_tokens=4)))
    assert info.value.retryable is False
    assert "context" in info.value.message


def test_generation_stops_at_context_end(toy_backend: TransformersBackend) -> None:
    ids = toy_backend._tokenizer.encode(
        "The keeper climbed the tower and lit the lamp. " * 300, add_special_tokens=False
    )[: 2048 - 3]
    prompt = toy_backend._decode(ids)
    # re-encoding a decoded prefix may shift by a token; measure what the backend will see
    room = 2048 - len(toy_backend._encode(prompt))
    assert 0 < room < 10
    items = asyncio.run(
        _collect(toy_backend, _request(prompt=prompt, max_tokens=100, temperature=0))
    )
    finish = items[-1]
    assert finish.finish_reason in ("length", "stop")
    assert finish.completion_tokens <= room


def test_closing_the_iterator_stops_the_worker(toy_backend: TransformersBackend) -> None:
    async def consume_three() -> None:
        agen = toy_backend.generate(_request(max_tokens=1500, temperature=1.0, seed=9))
        got = 0
        async for _ in agen:
            got += 1
            if got == 3:
                break
        await agen.aclose()  # type: ignore[attr-defined]

    asyncio.run(consume_three())
    assert toy_backend._lock.acquire(timeout=5)  # the worker let go of the model
    toy_backend._lock.release()
    assert toy_backend._last_steps <= 3 + PREFETCH_TOKENS + 2


def test_cancelling_the_task_stops_the_worker(toy_backend: TransformersBackend) -> None:
    async def main() -> None:
        seen = asyncio.Event()

        async def consume() -> None:
            async for _ in toy_backend.generate(_request(max_tokens=1500, temperature=0)):
                seen.set()
                await asyncio.sleep(10)  # a slow client

        task = asyncio.create_task(consume())
        await asyncio.wait_for(seen.wait(), timeout=10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    started = time.monotonic()
    asyncio.run(main())
    assert toy_backend._lock.acquire(timeout=5)
    toy_backend._lock.release()
    assert toy_backend._last_steps <= PREFETCH_TOKENS + 3
    assert time.monotonic() - started < 10


def test_concurrent_generations_are_serialized_and_correct(
    toy_backend: TransformersBackend,
) -> None:
    async def main() -> list[list[Any]]:
        requests = [_request(max_tokens=6, temperature=0), _request(max_tokens=6, temperature=0)]
        return list(await asyncio.gather(*(_collect(toy_backend, r) for r in requests)))

    a, b = asyncio.run(main())
    assert [c.token_id for c in a[:-1]] == [c.token_id for c in b[:-1]]
    assert a[-1] == b[-1]  # verification data included: the same tokens, logprobs, commitments
    assert (a[-1].finish_reason, a[-1].completion_tokens) == ("length", 6)


def test_unknown_model_path_is_a_backend_error(tmp_path: Path) -> None:
    with pytest.raises(BackendError) as info:
        TransformersBackend(str(tmp_path), device="cpu")
    assert info.value.retryable is False


def test_close_then_generate_fails(toy_model_dir: Path) -> None:
    backend = TransformersBackend(str(toy_model_dir), device="cpu")
    asyncio.run(backend.close())
    with pytest.raises(BackendError):
        asyncio.run(_collect(backend, _request(max_tokens=2)))


def test_finish_carries_verification_data(toy_backend: TransformersBackend) -> None:
    chunks, finish = run(toy_backend, max_tokens=40, temperature=1.0, seed=21, logprobs=True)
    n = len(chunks)
    assert finish.prompt_ids == tuple(
        toy_backend._tokenizer.encode(PROMPT, add_special_tokens=False)
    )
    assert finish.output_ids == tuple(c.token_id for c in chunks)
    assert finish.logprobs is not None and len(finish.logprobs) == n == finish.completion_tokens
    # the same numbers the client saw (streamed logprobs are float32 values too)
    assert finish.logprobs == pytest.approx([c.logprob for c in chunks], abs=1e-6)
    assert all(-1e9 <= lp <= 0.0 for lp in finish.logprobs)
    assert finish.commitments is not None
    assert len(finish.commitments) == math.ceil(n / 32)
    assert all(len(c) == 258 for c in finish.commitments)


def test_logprobs_are_collected_even_when_not_requested(toy_backend: TransformersBackend) -> None:
    quiet, finish = run(toy_backend, max_tokens=33, temperature=0)
    asked, asked_finish = run(toy_backend, max_tokens=33, temperature=0, logprobs=True)
    assert all(c.logprob is None for c in quiet)
    assert finish.logprobs == asked_finish.logprobs
    assert finish.logprobs == pytest.approx([c.logprob for c in asked], abs=1e-6)
    assert finish.commitments is not None and len(finish.commitments) == 2  # 32 + 1 tokens


def test_commitments_can_be_turned_off(toy_model_dir: Path) -> None:
    on = TransformersBackend(str(toy_model_dir), device="cpu")
    off = TransformersBackend(str(toy_model_dir), device="cpu", commitments=False)
    chunks_on, finish_on = run(on, max_tokens=10, temperature=1.0, seed=5)
    chunks_off, finish_off = run(off, max_tokens=10, temperature=1.0, seed=5)
    assert finish_off.commitments is None
    assert finish_on.commitments is not None and len(finish_on.commitments) == 1
    assert chunks_on == chunks_off
    assert finish_off.output_ids == finish_on.output_ids
    assert finish_off.logprobs == finish_on.logprobs
