"""Attestation: honest CPU answers pass (as unverified), spoofed GPUs are refused."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest

from rigpool.hardware.catalog import cpu_spec, find_gpu
from rigpool.trust.attestation import (
    AttestationResult,
    CCUnavailable,
    Challenge,
    ChunkOpening,
    NvidiaCCNotAvailable,
    cc_capable,
    chunk_digest,
    make_probe,
    mix64,
    refuse_timeout,
    row0_words,
    size_challenge,
    verify_attestation,
)
from rigpool.trust.attestation_agent import ChallengeRun, ChallengeTimeout, _mix64

# Small work for a CPU test: 64x64 matrices, a 2 MiB buffer of 512-byte chunks.
# Small work for a CPU test (about 0.1-0.3 s here): 400 products of 128x128 matrices and a
# 2 MiB buffer of 512-byte chunks. An A100 would need microseconds, so its deadline is the
# 50 ms allowance, which this work never meets.
SMALL = dict(
    matrix_size=128,
    chunk_bytes=512,
    rows=8,
    max_buffer_bytes=2 << 20,
    products=400,
    allowance_s=0.05,
)
# A "GPU" slow enough that this machine honestly meets its deadline even when busy.
SLOW_GPU = dataclasses.replace(find_gpu("RTX 3060"), fp16_tflops=0.0001, mem_bandwidth_gbs=0.02)


def attest(
    challenge: Challenge, run: ChallengeRun | None = None, *, segment: str = "consumer", tamper=None
) -> AttestationResult:
    run = run or ChallengeRun(challenge, device="cpu")
    start = time.perf_counter()
    try:
        response = run.respond()
    except ChallengeTimeout:
        return refuse_timeout(challenge, time.perf_counter() - start)
    reply_s = time.perf_counter() - start
    if tamper:
        response = tamper(response)
    probe = make_probe(challenge, np.random.default_rng(7))
    start = time.perf_counter()
    answer = run.answer(probe)
    probe_s = time.perf_counter() - start
    return verify_attestation(
        challenge, response, reply_s, probe, answer, probe_s, claimed_segment=segment
    )


def test_numpy_and_torch_mixers_agree_bit_for_bit():
    import torch

    x = np.random.default_rng(0).integers(-(2**63), 2**63 - 1, 1000, dtype=np.int64)
    assert np.array_equal(mix64(x), _mix64(torch.from_numpy(x)).numpy())


def test_honest_gpu_claim_is_verified():
    challenge = size_challenge(SLOW_GPU, seed=1, **SMALL)
    result = attest(challenge)
    assert result.status == "verified", result.reasons
    assert result.allowed_on("main")


def test_cpu_agent_is_unverified_and_dev_only():
    challenge = size_challenge(
        dataclasses.replace(cpu_spec(), fp16_tflops=0.0001, mem_bandwidth_gbs=0.02), seed=2, **SMALL
    )
    result = attest(challenge, segment="cpu")
    assert result.status == "unverified"
    assert result.allowed_on("dev") and not result.allowed_on("main")


def test_claiming_an_a100_on_a_cpu_is_refused_as_too_slow():
    challenge = size_challenge(find_gpu("A100 80GB"), seed=3, **SMALL)
    result = attest(challenge)
    assert result.status == "refused"
    assert "A100" in result.reasons[0]


def test_wrong_product_hash_is_refused():
    challenge = size_challenge(SLOW_GPU, seed=4, **SMALL)

    def forge(response):
        hashes = list(response.product_hashes)
        hashes = ["0" * 64] * len(hashes)
        return dataclasses.replace(response, product_hashes=tuple(hashes))

    result = attest(challenge, tamper=forge)
    assert result.status == "refused"
    assert any("compute" in r for r in result.reasons)


class ForgetfulRun(ChallengeRun):
    """Computes the buffer, commits to it, then frees it (cannot hold the VRAM) and makes
    openings up from the seed's first row."""

    def respond(self):
        response = super().respond()
        self._kept = self._buffer[0].clone()  # keeps only row 0 (1/rows of the memory)
        self._buffer = None
        return response

    def answer(self, probe):
        import torch

        ch = self.challenge
        fake = torch.zeros((ch.rows, ch.row_chunks, ch.chunk_words), dtype=torch.int64)
        fake[0] = self._kept
        self._buffer = fake
        return super().answer(probe)


def test_agent_that_cannot_hold_the_buffer_is_refused():
    challenge = size_challenge(SLOW_GPU, seed=5, **SMALL)
    result = attest(challenge, ForgetfulRun(challenge, device="cpu"))
    assert result.status == "refused"
    assert any("not in the committed buffer" in r for r in result.reasons)


def test_forged_opening_that_does_not_follow_from_parents_is_refused():
    challenge = size_challenge(SLOW_GPU, seed=6, **SMALL)
    run = ChallengeRun(challenge, device="cpu")

    class Liar(ChallengeRun):
        def answer(self, probe):
            answer = run.answer(probe)
            first = answer.openings[0]
            bad = dataclasses.replace(first, words=tuple(w + 1 for w in first.words))
            return dataclasses.replace(answer, openings=(bad, *answer.openings[1:]))

        def respond(self):
            return run.respond()

    result = attest(challenge, Liar(challenge, device="cpu"))
    assert result.status == "refused"


def test_late_probe_answer_is_refused():
    challenge = size_challenge(SLOW_GPU, seed=8, **SMALL)
    run = ChallengeRun(challenge, device="cpu")
    response = run.respond()
    probe = make_probe(challenge, np.random.default_rng(1))
    answer = run.answer(probe)
    result = verify_attestation(
        challenge, response, 0.01, probe, answer, challenge.probe_limit_s + 1
    )
    assert result.status == "refused"
    assert any("not held in memory" in r for r in result.reasons)


def test_an_agent_gives_up_at_the_deadline():
    challenge = size_challenge(
        find_gpu("H100 SXM"),
        matrix_size=64,
        chunk_bytes=512,
        rows=8,
        max_buffer_bytes=2 << 20,
        allowance_s=0.05,
        seed=9,
    )
    assert challenge.products >= 2**16  # sized for an H100: hopeless on a CPU
    start = time.perf_counter()
    with pytest.raises(ChallengeTimeout):
        ChallengeRun(challenge, device="cpu").respond()
    assert time.perf_counter() - start < 5


def test_challenge_is_sized_from_the_performance_model():
    h100 = size_challenge(find_gpu("H100 SXM"), seed=1)
    rtx = size_challenge(find_gpu("RTX 3060"), seed=1)
    assert h100.products > 10 * rtx.products  # ~30x the tensor throughput
    assert 0.85 * 80 * 2**30 >= h100.buffer_bytes > 0.8 * 80 * 2**30
    assert h100.limit_s == pytest.approx(2 * h100.expected_s + 2.0)


def test_first_row_and_digests_are_reproducible_on_the_coordinator():
    challenge = size_challenge(SLOW_GPU, seed=10, **SMALL)
    run = ChallengeRun(challenge, device="cpu")
    run.respond()
    w = challenge.chunk_words
    assert np.array_equal(run._buffer[0, 3].numpy(), row0_words(challenge.seed, 3 * w, w))
    assert chunk_digest(run._buffer[2, 1].numpy()) != chunk_digest(run._buffer[2, 2].numpy())


def test_confidential_computing_seam_says_it_is_not_available():
    cc = NvidiaCCNotAvailable()
    assert cc_capable(find_gpu("H100 SXM")) and not cc_capable(find_gpu("RTX 3060"))
    assert not cc.available()
    with pytest.raises(CCUnavailable, match="not integrated"):
        cc.collect("nonce")
    assert not cc.verify(None, "nonce", find_gpu("H100 SXM")).ok  # type: ignore[arg-type]


def test_openings_type_is_plain_data():
    assert dataclasses.is_dataclass(ChunkOpening)
