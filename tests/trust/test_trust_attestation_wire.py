"""Attestation on the wire: lossless JSON, frames under the size limit, and the memory check."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib

import numpy as np
import pytest

from rigpool.agent.attest import data_frames
from rigpool.coordinator.attest_records import AttestInbox
from rigpool.hardware.catalog import cpu_spec, find_gpu
from rigpool.protocol.channel import Opener, Sealer
from rigpool.protocol.messages import MAX_FRAME_BYTES, AttestData, decode_agent_frame, encode
from rigpool.trust import attestation_agent
from rigpool.trust.attestation import (
    ChallengeResponse,
    ChunkOpening,
    ProbeAnswer,
    make_probe,
    size_challenge,
    verify_attestation,
)
from rigpool.trust.attestation_agent import ChallengeRun, InsufficientMemory, memory_shortfall
from rigpool.trust.attestation_wire import (
    WireError,
    answer_from_text,
    answer_size_bound,
    answer_to_text,
    challenge_from_json,
    challenge_to_json,
    probe_from_json,
    probe_to_json,
    response_from_text,
    response_to_text,
)

SMALL = dict(matrix_size=64, chunk_bytes=512, rows=8, max_buffer_bytes=1 << 20, products=16)
SLOW_CPU = dataclasses.replace(cpu_spec(), fp16_tflops=0.0001, mem_bandwidth_gbs=0.02)


def test_a_real_run_survives_the_wire_and_verifies():
    challenge = size_challenge(SLOW_CPU, seed=11, **SMALL)
    assert challenge_from_json(challenge_to_json(challenge)) == challenge
    run = ChallengeRun(challenge, device="cpu")
    response = run.respond()
    probe = make_probe(challenge, np.random.default_rng(3))
    assert probe_from_json(probe_to_json(probe), challenge) == probe
    answer = run.answer(probe)
    response2 = response_from_text(response_to_text(response))
    answer2 = answer_from_text(answer_to_text(answer))
    assert response2 == response
    assert answer2 == answer
    result = verify_attestation(
        challenge, response2, 0.1, probe, answer2, 0.01, claimed_segment="cpu"
    )
    assert result.status == "unverified", result.reasons


@pytest.mark.parametrize(
    "text",
    ["", "[]", "{}", '{"challenge_id": "x", "product_hashes": "***", "memory_root": ""}'],
)
def test_malformed_replies_are_wire_errors(text):
    with pytest.raises(WireError):
        response_from_text(text)
    with pytest.raises(WireError):
        answer_from_text(text)


def test_malformed_challenges_and_out_of_range_probes_are_wire_errors():
    challenge = size_challenge(SLOW_CPU, seed=12, **SMALL)
    raw = challenge_to_json(challenge)
    for bad in ({**raw, "rows": "8"}, {**raw, "row_chunks": 3}, {**raw, "limit_s": -1}, {}):
        with pytest.raises(WireError):
            challenge_from_json(bad)
    probe = probe_to_json(make_probe(challenge))
    for bad in (
        {**probe, "chunks": [[challenge.rows, 0]]},
        {**probe, "products": [challenge.products]},
        {**probe, "challenge_id": "other"},
        {**probe, "chunks": [[1, 2, 3]]},
    ):
        with pytest.raises(WireError):
            probe_from_json(bad, challenge)


def _production_answer() -> tuple[object, ProbeAnswer]:
    """A probe answer of production size for an H100 (256 KiB chunks, 4096 x 4 digests)."""
    challenge = size_challenge(find_gpu("H100 SXM"), seed=1)
    rng = np.random.default_rng(0)
    depth = int(np.ceil(np.log2(challenge.rows * challenge.row_chunks)))
    path = tuple(hashlib.sha256(bytes([i])).hexdigest() for i in range(depth))

    def words() -> tuple[int, ...]:
        return tuple(rng.integers(-(2**63), 2**63 - 1, challenge.chunk_words).tolist())

    openings = tuple(
        ChunkOpening(1, i, words(), path, words(), path, words(), path) for i in range(8)
    )
    digest = tuple(tuple(r) for r in rng.integers(-50000, 50000, (4096, 4)).tolist())
    return challenge, ProbeAnswer(challenge.challenge_id, (digest, digest), openings)


def test_a_production_probe_answer_travels_in_sealed_frames_under_the_limit():
    challenge, answer = _production_answer()
    text = answer_to_text(answer)
    assert len(text) <= answer_size_bound(challenge)  # type: ignore[arg-type]
    frames = data_frames(answer.challenge_id, "answer", text)
    assert len(frames) > 10  # megabytes: many pieces
    key = b"k" * 32
    sealer, opener = Sealer(key), Opener(key)

    async def reassemble() -> str:
        inbox = AttestInbox(answer.challenge_id, "answer", 2 * len(text))
        for frame in frames:
            wire = sealer.seal(encode(frame))
            assert len(wire) < MAX_FRAME_BYTES
            sealed = decode_agent_frame(wire)
            piece = decode_agent_frame(opener.open(sealed))  # type: ignore[arg-type]
            assert isinstance(piece, AttestData)
            inbox.add(piece)
        joined, error = await inbox.result
        assert not error
        return joined

    assert asyncio.run(reassemble()) == text
    assert answer_from_text(text) == answer


def test_reassembly_refuses_oversized_or_inconsistent_pieces():
    async def run(pieces: list[AttestData], max_chars: int = 100) -> tuple[str, str]:
        inbox = AttestInbox("c", "reply", max_chars)
        for piece in pieces:
            inbox.add(piece)
        return await asyncio.wait_for(inbox.result, 1)

    def piece(part: int, parts: int, data: str = "x") -> AttestData:
        return AttestData(challenge_id="c", round="reply", part=part, parts=parts, data=data)

    assert asyncio.run(run([piece(1, 2, "b"), piece(0, 2, "a")])) == ("ab", "")
    assert asyncio.run(run([piece(0, 2, "x" * 101), piece(1, 2)]))[1]
    assert asyncio.run(run([piece(0, 2), piece(0, 2)]))[1]
    assert asyncio.run(run([piece(0, 2), piece(1, 3)]))[1]
    error = AttestData(challenge_id="c", round="reply", error="cannot hold it")
    other = AttestData(challenge_id="other", round="reply", data="ignored")
    assert asyncio.run(run([other, error])) == ("", "cannot hold it")


def test_a_machine_without_the_claimed_memory_says_so_instead_of_allocating(monkeypatch):
    challenge = size_challenge(find_gpu("A100 80GB"), seed=2)  # a 68 GiB buffer
    monkeypatch.setattr(attestation_agent, "host_available_bytes", lambda: 8 << 30)
    shortfall = memory_shortfall(challenge, "cpu")
    assert shortfall is not None
    need = float(shortfall.split("needs ")[1].split(" GiB")[0])
    assert 68 < need < 80  # the buffer plus the fill's temporaries
    assert shortfall.startswith("cannot hold the challenge buffer: needs ")
    assert shortfall.endswith("GiB, 8.00 GiB available")
    with pytest.raises(InsufficientMemory, match="cannot hold"):
        ChallengeRun(challenge, device="cpu").respond()
    small = size_challenge(SLOW_CPU, seed=3, **SMALL)
    assert memory_shortfall(small, "cpu") is None


def test_required_memory_counts_the_pools_and_the_buffer():
    challenge = size_challenge(find_gpu("H100 SXM"), seed=4)
    device, host = attestation_agent.required_bytes(challenge, "cuda")
    pools = 2 * challenge.pool * challenge.matrix_size**2 * 2
    assert device >= max(challenge.buffer_bytes, pools)
    assert device < 1.1 * challenge.buffer_bytes + pools
    assert host >= challenge.products * challenge.matrix_size * 4 * 8


def test_unused_response_fields_default():
    text = response_to_text(ChallengeResponse("c", ("00" * 32,), "11" * 32))
    assert response_from_text(text).device == ""
