"""Agent side of attestation: do the challenge's work on the real device and keep the buffer.

Imported by the agent (depends on torch, numpy and `trust.attestation` only). Usage::

    run = ChallengeRun(challenge, device="auto")     # CUDA when available, CPU otherwise
    response = run.respond()                         # round 1: send back to the coordinator
    answer = run.answer(probe)                       # round 2: from the buffer still in memory
    run.release()                                    # free the VRAM

Every integer operation here has an exact numpy twin in `attestation` (int64 wrap-around,
arithmetic shifts), so the coordinator can check any opened piece without a GPU.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

import numpy as np

from rigpool.trust.attestation import (
    _C1,
    _C2,
    _GOLDEN,
    DIGEST_COLS,
    Challenge,
    ChallengeResponse,
    ChunkOpening,
    Probe,
    ProbeAnswer,
    leaf_hash,
    merkle_levels,
    merkle_path,
)


def _mix64(x: Any) -> Any:
    x = x ^ (x >> 30)
    x = x * _C1
    x = x ^ (x >> 27)
    x = x * _C2
    return x ^ (x >> 31)


class ChallengeTimeout(RuntimeError):
    """The work ran past the challenge's deadline; the agent stops instead of finishing late."""


class ChallengeRun:
    """Runs one challenge on `device` and holds its buffer until `release()`.

    The run gives up (raising `ChallengeTimeout`) once `challenge.limit_s` has passed on its own
    clock: the coordinator would refuse a late reply anyway, and a card that cannot meet the
    deadline should not spend minutes finishing work sized for a faster one.
    """

    def __init__(self, challenge: Challenge, device: str = "auto") -> None:
        import torch

        self._torch = torch
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = device
        self.challenge = challenge
        # fp16 on tensor cores; CPU has no fast fp16 GEMM, fp32 is just as exact here
        self._dtype = torch.float16 if device.startswith("cuda") else torch.float32
        self._buffer: Any = None
        self._levels: list[list[bytes]] = []
        self._digests: dict[int, np.ndarray] = {}
        self._t0 = time.perf_counter()

    # -- round 1 ---------------------------------------------------------------------------------

    def _ternary(self, seed: int, start: int, count: int) -> Any:
        torch = self._torch
        idx = torch.arange(start, start + count, dtype=torch.int64, device=self.device)
        return _mix64((idx * _GOLDEN) ^ seed).remainder(3) - 1

    def _compute(self) -> list[str]:
        torch = self._torch
        ch = self.challenge
        m = ch.matrix_size

        def matrix(base: int) -> Any:
            self._check_deadline()
            return self._ternary(ch.seed, base * m * m, m * m).reshape(m, m).to(self._dtype)

        pool_a = [matrix(i) for i in range(ch.pool)]
        pool_b = [matrix(ch.pool + i) for i in range(ch.pool)]
        r = (self._ternary(ch.seed ^ 0x7777, 0, m * DIGEST_COLS).reshape(m, DIGEST_COLS) | 1).to(
            torch.float32
        )
        hashes = []
        for a_idx, b_idx in ch.product_pairs():
            self._check_deadline()
            c = pool_a[a_idx] @ pool_b[b_idx]
            d = torch.remainder(c.to(torch.int32), 7).to(torch.float32) @ r
            d64 = d.to(torch.int64).cpu().numpy()
            hashes.append(hashlib.sha256(d64.astype("<i8").tobytes()).hexdigest())
            self._digests[len(hashes) - 1] = d64
        del pool_a, pool_b
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()  # hand the pool's blocks back before the big buffer
        return hashes

    def _fill(self) -> str:
        torch = self._torch
        ch = self.challenge
        n, w = ch.row_chunks, ch.chunk_words
        buf = torch.empty((ch.rows, n, w), dtype=torch.int64, device=self.device)
        idx = torch.arange(n * w, dtype=torch.int64, device=self.device)
        buf[0] = _mix64(idx ^ (ch.seed ^ 0x5EED)).reshape(n, w)
        del idx
        chunks = torch.arange(n, dtype=torch.int64, device=self.device)
        for row in range(1, ch.rows):
            self._check_deadline()
            rho, _ = ch.parent(row, 0)
            # pi_r(c) = (a c + b) mod n, the same affine map `Challenge.parent` uses
            _, b = ch.parent(row, 0)
            _, a_plus_b = ch.parent(row, 1)
            a = (a_plus_b - b) % n
            perm = (chunks * a + b) % n
            other = buf[rho].index_select(0, perm)
            buf[row] = _mix64(buf[row - 1] ^ (other * _GOLDEN + row))
            del other
        weights = torch.arange(w, dtype=torch.int64, device=self.device) * 2 + 1
        lane1 = torch.stack([_mix64(buf[r]).sum(-1) for r in range(ch.rows)])
        lane2 = torch.stack([(buf[r] * weights).sum(-1) for r in range(ch.rows)])
        l1 = lane1.cpu().numpy()
        l2 = lane2.cpu().numpy()
        leaves = [
            leaf_hash(r, c, (int(l1[r, c]), int(l2[r, c])))
            for r in range(ch.rows)
            for c in range(n)
        ]
        self._levels = merkle_levels(leaves)
        self._buffer = buf
        return self._levels[-1][0].hex()

    def _check_deadline(self) -> None:
        if time.perf_counter() - self._t0 > self.challenge.limit_s:
            raise ChallengeTimeout(f"challenge not finished within {self.challenge.limit_s:.3g} s")

    def respond(self) -> ChallengeResponse:
        """Do round 1 and return the reply (the buffer stays allocated for the probe)."""
        self._t0 = t0 = time.perf_counter()
        hashes = self._compute()
        root = self._fill()
        if self.device.startswith("cuda"):
            self._torch.cuda.synchronize()
        return ChallengeResponse(
            challenge_id=self.challenge.challenge_id,
            product_hashes=tuple(hashes),
            memory_root=root,
            device=self.device,
            agent_seconds=time.perf_counter() - t0,
        )

    # -- round 2 ---------------------------------------------------------------------------------

    def _open(self, row: int, chunk: int) -> tuple[tuple[int, ...], tuple[str, ...]]:
        words = tuple(int(x) for x in self._buffer[row, chunk].cpu().numpy().tolist())
        path = merkle_path(self._levels, row * self.challenge.row_chunks + chunk)
        return words, tuple(p.hex() for p in path)

    def answer(self, probe: Probe) -> ProbeAnswer:
        """Open the probed products and chunks from what this run kept."""
        if self._buffer is None:
            raise RuntimeError("respond() first, and do not release() before the probe")
        openings = []
        for row, chunk in probe.chunks:
            rho, pc = self.challenge.parent(row, chunk)
            words, path = self._open(row, chunk)
            w1, p1 = self._open(row - 1, chunk)
            w2, p2 = self._open(rho, pc)
            openings.append(ChunkOpening(row, chunk, words, path, w1, p1, w2, p2))
        digests = tuple(
            tuple(tuple(int(v) for v in r) for r in self._digests[i].tolist())
            for i in probe.products
        )
        return ProbeAnswer(self.challenge.challenge_id, digests, tuple(openings))

    def release(self) -> None:
        self._buffer = None
        self._digests.clear()
        if self.device.startswith("cuda"):
            self._torch.cuda.empty_cache()
