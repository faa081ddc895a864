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


class InsufficientMemory(RuntimeError):
    """The device cannot hold the challenge's work: the agent says so instead of trying.

    A machine claiming more memory than it has must not be pushed into swapping or the OOM
    killer by a challenge sized for the claim; the coordinator refuses it with this reason.
    """


_GIB = float(1 << 30)


def required_bytes(challenge: Challenge, device: str) -> tuple[int, int]:
    """(device, host) bytes a `ChallengeRun` needs at its peak on `device`.

    Device: the larger of the compute phase (both matrix pools plus one product's or one pool
    matrix's temporaries) and the memory phase (the buffer plus the fill's row temporaries).
    Host: the kept product digests (m x 4 int64 each) and the Merkle tree.
    """
    m2 = challenge.matrix_size**2
    elem = 2 if device.startswith("cuda") else 4
    compute = 2 * challenge.pool * m2 * elem + max(3 * 8, elem + 12) * m2
    row = challenge.row_chunks * challenge.chunk_words * 8
    fill = challenge.buffer_bytes + 4 * row
    leaves = challenge.rows * challenge.row_chunks
    host = challenge.products * challenge.matrix_size * DIGEST_COLS * 8 + leaves * 2 * 100
    return max(compute, fill), host


def host_available_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (None where there is none: the check is skipped)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def device_available_bytes(device: str) -> int | None:
    """Bytes this process could still allocate on `device` (CUDA: free plus cached-unused)."""
    if not device.startswith("cuda"):
        return host_available_bytes()
    import torch

    free, _total = torch.cuda.mem_get_info(device)
    cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return int(free + max(0, cached))


def memory_shortfall(challenge: Challenge, device: str) -> str | None:
    """Why `device` cannot hold the challenge (the agent's error reply), or None if it can."""
    need_device, need_host = required_bytes(challenge, device)
    on_host = not device.startswith("cuda")
    checks = [(need_device + need_host if on_host else need_device, device_available_bytes(device))]
    if not on_host:
        checks.append((need_host, host_available_bytes()))
    for need, available in checks:
        if available is not None and need > available:
            return (
                f"cannot hold the challenge buffer: needs {need / _GIB:.2f} GiB, "
                f"{available / _GIB:.2f} GiB available"
            )
    return None


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
        """Do round 1 and return the reply (the buffer stays allocated for the probe).

        Raises:
            InsufficientMemory: the device (or host) cannot hold the work; nothing allocated.
            ChallengeTimeout: the deadline passed before the work was done.

        """
        self._t0 = t0 = time.perf_counter()
        shortfall = memory_shortfall(self.challenge, self.device)
        if shortfall is not None:
            raise InsufficientMemory(shortfall)
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
