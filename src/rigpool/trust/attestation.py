"""Attestation: proof that an agent's claimed GPU is there, as fast and as large as claimed.

Coordinator side (this module: numpy and hashlib only, no torch). The agent side, which runs
the work on torch (CUDA when present, CPU otherwise), is `attestation_agent`.

The protocol has two rounds, both timed by the coordinator's own clock:

1. **Challenge** (`size_challenge`): random seed, sized for the claimed card so that the work
   takes about `target_s` on it according to the performance model (`hardware.perf`):

   * *compute*: ``n`` products ``C = A_a @ B_b`` of ``m x m`` matrices with entries in
     {-1, 0, 1}, drawn from a pool generated from the seed. Every partial sum is an integer far
     below 2**11, so fp16 tensor cores, fp32, TF32 and any summation order give the *exact* same
     C on every GPU. Each product is reduced to ``D = (C mod 7) @ R`` (R: m x 4, entries +-1),
     again exact, and its SHA-256 is returned. The ``mod 7`` makes D impossible to get from
     ``A (B R)`` without the full product.
   * *memory*: a buffer of most of the claimed VRAM, ``rows x chunks x words`` of int64, filled
     row by row: row 0 from a counter-based hash of the seed, each later chunk
     ``mix(chunk(r-1, c), chunk(rho_r, pi_r(c)))`` with ``rho_r`` a random earlier row and
     ``pi_r`` an affine permutation, all derived from the seed. The fill is bandwidth-bound.
     The agent returns the Merkle root (SHA-256) over per-chunk digests.

   The reply must arrive within ``expected x (1 + tolerance) + allowance_s``.

2. **Probe** (`make_probe`, after the reply, so the agent could not prepare for it): some
   products, whose D the agent returns (the coordinator checks the hash and recomputes a few rows
   with numpy), and some chunks, which the agent opens with both parents and Merkle paths (the
   coordinator checks the paths and the mix relation). Answering from memory is immediate; an
   agent that did not keep the buffer must rebuild each opened chunk's ancestry, which spans
   earlier rows recursively, so the probe deadline is short.

An agent on a CPU, or an emulated one, can pass the checks but is only ever *unverified*, which
only a development network accepts. NVIDIA confidential-computing attestation (H100/H200 in CC
mode) plugs in behind `ConfidentialAttestor`; the shipped implementation says it is not
available rather than pretending.
"""

from __future__ import annotations

import hashlib
import math
import secrets
import struct
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np

from rigpool.hardware.catalog import GpuSpec
from rigpool.hardware.perf import EFF

# --- shared arithmetic (mirrored bit for bit by attestation_agent on torch) --------------------

#: splitmix64 constants as signed int64 (numpy and torch multiply int64 with wrap-around)
_C1 = 0xBF58476D1CE4E5B9 - 2**64
_C2 = 0x94D049BB133111EB - 2**64
_GOLDEN = 0x9E3779B97F4A7C15 - 2**64
_MASK63 = 2**63 - 1


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on int64 with arithmetic shifts (the torch twin is identical)."""
    x = np.asarray(x, dtype=np.int64)
    x = x ^ (x >> 30)
    x = x * np.int64(_C1)
    x = x ^ (x >> 27)
    x = x * np.int64(_C2)
    return x ^ (x >> 31)


def mix_pair(a: np.ndarray, b: np.ndarray, row: int) -> np.ndarray:
    """The buffer's label function: a chunk from its two parents."""
    return mix64(a ^ (b * np.int64(_GOLDEN) + np.int64(row)))


def ternary(seed: int, start: int, count: int) -> np.ndarray:
    """Entries in {-1, 0, 1} from a counter-based hash of (seed, position)."""
    idx = np.arange(start, start + count, dtype=np.int64)
    return (mix64(idx * np.int64(_GOLDEN) ^ np.int64(seed)) % 3 - 1).astype(np.int64)


def row0_words(seed: int, start: int, count: int) -> np.ndarray:
    """Words of the buffer's first row, by global word index."""
    idx = np.arange(start, start + count, dtype=np.int64)
    return mix64(idx ^ np.int64(seed ^ 0x5EED))


def chunk_digest(words: np.ndarray) -> tuple[int, int]:
    """Two 64-bit lanes that summarise a chunk (computed on the device by the agent)."""
    w = np.asarray(words, dtype=np.int64)
    weights = np.arange(len(w), dtype=np.int64) * 2 + 1
    lane1 = int(mix64(w).sum())  # numpy sums int64 with wrap-around, like torch
    lane2 = int((w * weights).sum())
    return lane1, lane2


def leaf_hash(row: int, chunk: int, digest: tuple[int, int]) -> bytes:
    return hashlib.sha256(struct.pack("<IIqq", row, chunk, *digest)).digest()


def merkle_levels(leaves: Sequence[bytes]) -> list[list[bytes]]:
    """All levels of a SHA-256 Merkle tree, leaves first (odd levels padded with zeros)."""
    levels = [list(leaves)]
    while len(levels[-1]) > 1:
        cur = levels[-1]
        if len(cur) % 2:
            cur = [*cur, b"\0" * 32]
        levels.append([hashlib.sha256(cur[i] + cur[i + 1]).digest() for i in range(0, len(cur), 2)])
    return levels


def merkle_path(levels: list[list[bytes]], index: int) -> list[bytes]:
    path = []
    for level in levels[:-1]:
        sibling = index ^ 1
        path.append(level[sibling] if sibling < len(level) else b"\0" * 32)
        index //= 2
    return path


def merkle_verify(root: bytes, leaf: bytes, index: int, path: Sequence[bytes]) -> bool:
    node = leaf
    for sibling in path:
        node = hashlib.sha256(node + sibling if index % 2 == 0 else sibling + node).digest()
        index //= 2
    return node == root


# --- the challenge -----------------------------------------------------------------------------

#: achieved / peak dense fp16 tensor throughput on large square GEMMs (assumption: cuBLAS reaches
#: 60-80% of peak; perf.EFF.compute, fitted on LLM prefill, is lower)
GEMM_EFF = 0.6
#: full passes over the buffer that the fill + digest perform (count of the torch ops in
#: attestation_agent, each a read and a write of a row)
MEM_PASSES = 52
#: bytes moved per element of each product's digest step (C to int32, mod 7, to fp32, @ R)
DIGEST_BYTES_PER_ELEM = 26
#: bytes moved per generated pool element (counter hash on int64)
POOL_BYTES_PER_ELEM = 200
#: default: honest cards must finish within (1 + TOLERANCE) x the model's expectation
TOLERANCE = 1.0
#: fixed allowance for network round trip, process start-up and kernel launches
ALLOWANCE_S = 2.0
DIGEST_COLS = 4
#: cap on products per challenge (a bigger card gets a bigger `matrix_size` instead)
MAX_PRODUCTS = 1 << 16


@dataclass(frozen=True)
class Challenge:
    """One attestation challenge, as sent to the agent (all fields are plain JSON values).

    Attributes:
        challenge_id, gpu: Identity of the challenge and the claimed card's catalog name.
        seed: 62-bit random seed everything derives from.
        matrix_size, pool, products: Compute part: `products` products of `matrix_size` square
            matrices drawn from `pool` A's and `pool` B's.
        rows, row_chunks, chunk_words: Memory part: buffer of rows x row_chunks chunks of
            chunk_words int64 words (row_chunks is a power of two).
        expected_s: What the performance model predicts for the whole reply on the claimed card.
        limit_s: Deadline for the reply (coordinator clock).
        probe_limit_s: Deadline for the probe answer.

    """

    challenge_id: str
    gpu: str
    seed: int
    matrix_size: int
    pool: int
    products: int
    rows: int
    row_chunks: int
    chunk_words: int
    expected_s: float
    limit_s: float
    probe_limit_s: float

    @property
    def buffer_bytes(self) -> int:
        return self.rows * self.row_chunks * self.chunk_words * 8

    def product_pairs(self) -> list[tuple[int, int]]:
        """Which (A, B) pool entries each product multiplies: distinct pairs, seed-shuffled.

        `pool` is a power of two, so ``i -> (a i + b) mod pool**2`` with odd `a` is a
        permutation of the pairs: no product repeats, so no result can be reused.
        """
        n = self.pool * self.pool
        h = int(mix64(np.array([self.seed ^ 0xABCDEF], dtype=np.int64))[0]) & _MASK63
        a, b = (h | 1) % n or 1, (h >> 17) % n
        return [
            (((a * i + b) % n) // self.pool, ((a * i + b) % n) % self.pool)
            for i in range(self.products)
        ]

    def parent(self, row: int, chunk: int) -> tuple[int, int]:
        """The second parent (earlier row, permuted chunk) of a chunk in row >= 1."""
        h = int(mix64(np.array([self.seed ^ (row * 0x1F1F1F1F)], dtype=np.int64))[0]) & _MASK63
        rho = h % row
        a = (h >> 20) | 1
        b = h >> 40
        return rho, (a * chunk + b) % self.row_chunks

    def matrix(self, which: Literal["A", "B"], index: int) -> np.ndarray:
        """Pool matrix as int64 (m x m), from the seed."""
        m = self.matrix_size
        base = (0 if which == "A" else self.pool) + index
        return ternary(self.seed, base * m * m, m * m).reshape(m, m)

    def r_matrix(self) -> np.ndarray:
        m = self.matrix_size
        return ternary(self.seed ^ 0x7777, 0, m * DIGEST_COLS).reshape(m, DIGEST_COLS) | 1

    def to_json(self) -> dict[str, object]:
        return dict(self.__dict__)


def _pow2_ceil(x: float) -> int:
    return max(2, 1 << max(0, math.ceil(math.log2(max(1.0, x)))))


def _pow2_floor(x: float) -> int:
    return 1 << max(0, math.floor(math.log2(max(1.0, x))))


def expected_seconds(
    gpu: GpuSpec, *, matrix_size: int, pool: int, products: int, buffer_bytes: int
) -> tuple[float, float]:
    """(compute, memory) seconds the performance model allows for this work on `gpu`."""
    m = matrix_size
    flops = 2.0 * m**3 * products
    bw = gpu.mem_bandwidth_gbs * 1e9 * EFF.memory
    compute_s = flops / (gpu.fp16_tflops * 1e12 * GEMM_EFF)
    moved = (
        DIGEST_BYTES_PER_ELEM * m * m * products
        + POOL_BYTES_PER_ELEM * 2 * pool * m * m
        + MEM_PASSES * buffer_bytes
    )
    return compute_s, moved / bw


def size_challenge(
    gpu: GpuSpec,
    *,
    target_s: float = 1.0,
    vram_fraction: float = 0.85,
    reserved_bytes: float = 0.0,
    matrix_size: int = 4096,
    chunk_bytes: int = 256 * 1024,
    rows: int = 32,
    max_buffer_bytes: float | None = None,
    products: int | None = None,
    tolerance: float = TOLERANCE,
    allowance_s: float = ALLOWANCE_S,
    seed: int | None = None,
) -> Challenge:
    """A challenge whose compute part takes about `target_s` on `gpu` per the perf model.

    Args:
        gpu: The claimed card (catalog entry).
        target_s: Compute seconds the claimed card should need.
        vram_fraction: Share of (claimed VRAM - `reserved_bytes`) the buffer must fill; the rest
            is head-room for the fill's temporaries (three rows) and the CUDA context.
        reserved_bytes: VRAM legitimately in use (a loaded model) when challenged later.
        matrix_size: Side of the compute part's square matrices.
        chunk_bytes: Size of one buffer chunk (the unit the probe opens).
        rows: Rows of the buffer to aim for (each row depends on earlier ones); the actual
            count is between this and twice this, so the buffer fills the budget.
        max_buffer_bytes: Cap on the buffer (tests; never in production).
        products: Fixed number of products instead of sizing by `target_s` (tests: the same
            work judged against different claimed cards).
        tolerance: Honest cards finish within ``(1 + tolerance) x expected``.
        allowance_s: Fixed seconds added to both deadlines (network, launch).
        seed: Fixed seed for reproducible tests; random otherwise.

    """
    m = matrix_size
    rate = gpu.fp16_tflops * 1e12 * GEMM_EFF
    if products is None:
        products = max(1, round(target_s * rate / (2.0 * m**3)))
    products = min(products, MAX_PRODUCTS)
    pool = _pow2_ceil(math.sqrt(products))
    chunk_words = max(8, chunk_bytes // 8)
    budget = (gpu.vram_bytes - reserved_bytes) * vram_fraction
    if max_buffer_bytes is not None:
        budget = min(budget, max_buffer_bytes)
    # Power-of-two row width (for the affine permutation), then as many rows as fit: the buffer
    # fills the budget to within one row.
    row_chunks = _pow2_floor(budget / rows / (chunk_words * 8))
    rows = max(2, int(budget // (row_chunks * chunk_words * 8)))
    compute_s, memory_s = expected_seconds(
        gpu,
        matrix_size=m,
        pool=pool,
        products=products,
        buffer_bytes=rows * row_chunks * chunk_words * 8,
    )
    expected = compute_s + memory_s
    open_bytes = 3 * chunk_words * 8 * PROBE_CHUNKS + PROBE_PRODUCTS * m * DIGEST_COLS * 8
    return Challenge(
        challenge_id=uuid.uuid4().hex,
        gpu=gpu.name,
        seed=seed if seed is not None else secrets.randbits(62),
        matrix_size=m,
        pool=pool,
        products=products,
        rows=rows,
        row_chunks=row_chunks,
        chunk_words=chunk_words,
        expected_s=expected,
        limit_s=expected * (1.0 + tolerance) + allowance_s,
        # reading from memory is instant; budget the transfer at 50 MB/s plus the allowance
        probe_limit_s=allowance_s + open_bytes / 50e6,
    )


@dataclass(frozen=True)
class ChallengeResponse:
    """The agent's reply to round 1: one hash per product and the buffer's Merkle root."""

    challenge_id: str
    product_hashes: tuple[str, ...]
    memory_root: str
    device: str = ""
    agent_seconds: float = 0.0  # self-reported; informative only, never trusted


PROBE_PRODUCTS = 2
PROBE_ROWS = 4
PROBE_CHUNKS = 8


@dataclass(frozen=True)
class Probe:
    """Round 2: which products and chunks to open (chosen after the reply arrived)."""

    challenge_id: str
    products: tuple[int, ...]
    rows_checked: tuple[int, ...]
    chunks: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class ChunkOpening:
    """One opened chunk with its two parents; words are int64 lists, paths hex strings."""

    row: int
    chunk: int
    words: tuple[int, ...]
    path: tuple[str, ...]
    parent1_words: tuple[int, ...]
    parent1_path: tuple[str, ...]
    parent2_words: tuple[int, ...]
    parent2_path: tuple[str, ...]


@dataclass(frozen=True)
class ProbeAnswer:
    """Round 2 reply: the D matrices of the probed products and the opened chunks."""

    challenge_id: str
    product_digests: tuple[tuple[tuple[int, ...], ...], ...]  # per probed product: m rows of 4
    openings: tuple[ChunkOpening, ...]


def make_probe(challenge: Challenge, rng: np.random.Generator | None = None) -> Probe:
    """Pick products, rows and chunks to open. Call only after the reply has arrived."""
    rng = rng or np.random.default_rng(secrets.randbits(64))
    n_prod = min(PROBE_PRODUCTS, challenge.products)
    products = tuple(int(i) for i in rng.choice(challenge.products, n_prod, replace=False))
    rows_checked = tuple(
        int(i)
        for i in rng.choice(
            challenge.matrix_size, min(PROBE_ROWS, challenge.matrix_size), replace=False
        )
    )
    chunks = tuple(
        (int(rng.integers(1, challenge.rows)), int(rng.integers(0, challenge.row_chunks)))
        for _ in range(PROBE_CHUNKS)
    )
    return Probe(challenge.challenge_id, products, rows_checked, chunks)


Status = Literal["verified", "unverified", "refused"]


@dataclass(frozen=True)
class AttestationResult:
    """The verdict. `status` is what the registry records; `reasons` say why it is not verified."""

    status: Status
    gpu: str
    reasons: tuple[str, ...] = ()
    reply_s: float = 0.0
    limit_s: float = 0.0
    expected_s: float = 0.0
    probe_s: float = 0.0
    probe_limit_s: float = 0.0
    confidential_computing: str = "not attempted"

    def allowed_on(self, network: Literal["dev", "main"]) -> bool:
        """Verified agents join any network; unverified ones only a development network."""
        return self.status == "verified" or (self.status == "unverified" and network == "dev")


def _check_openings(
    challenge: Challenge, root: bytes, openings: Sequence[ChunkOpening], probe: Probe
) -> list[str]:
    reasons: list[str] = []
    asked = set(probe.chunks)
    got = {(o.row, o.chunk) for o in openings}
    if not asked <= got:
        reasons.append(f"memory: {len(asked - got)} probed chunks not opened")
    w = challenge.chunk_words
    for o in openings:
        if (o.row, o.chunk) not in asked:
            continue
        rho, pc = challenge.parent(o.row, o.chunk)
        parts = [
            (o.row, o.chunk, o.words, o.path),
            (o.row - 1, o.chunk, o.parent1_words, o.parent1_path),
            (rho, pc, o.parent2_words, o.parent2_path),
        ]
        for r, c, words, path in parts:
            arr = np.asarray(words, dtype=np.int64)
            if arr.shape != (w,):
                reasons.append(f"memory: chunk ({r},{c}) has {arr.size} words, want {w}")
                break
            leaf = leaf_hash(r, c, chunk_digest(arr))
            if not merkle_verify(
                root, leaf, r * challenge.row_chunks + c, [bytes.fromhex(p) for p in path]
            ):
                reasons.append(f"memory: chunk ({r},{c}) is not in the committed buffer")
                break
            if r == 0 and not np.array_equal(arr, row0_words(challenge.seed, c * w, w)):
                reasons.append(f"memory: chunk (0,{c}) is not the seeded first row")
                break
        else:
            expect = mix_pair(
                np.asarray(o.parent1_words, np.int64), np.asarray(o.parent2_words, np.int64), o.row
            )
            if not np.array_equal(expect, np.asarray(o.words, np.int64)):
                reasons.append(f"memory: chunk ({o.row},{o.chunk}) does not follow from parents")
    return reasons


def _check_products(
    challenge: Challenge, response: ChallengeResponse, probe: Probe, answer: ProbeAnswer
) -> list[str]:
    reasons: list[str] = []
    if len(response.product_hashes) != challenge.products:
        return [
            f"compute: {len(response.product_hashes)} product hashes, want {challenge.products}"
        ]
    if len(answer.product_digests) != len(probe.products):
        return ["compute: probed products not all answered"]
    pairs = challenge.product_pairs()
    r_mat = challenge.r_matrix()
    for idx, digest in zip(probe.products, answer.product_digests, strict=True):
        d = np.asarray(digest, dtype=np.int64)
        if d.shape != (challenge.matrix_size, DIGEST_COLS):
            reasons.append(f"compute: product {idx} digest has shape {d.shape}")
            continue
        if hashlib.sha256(d.astype("<i8").tobytes()).hexdigest() != response.product_hashes[idx]:
            reasons.append(f"compute: product {idx} does not match its committed hash")
            continue
        a_idx, b_idx = pairs[idx]
        b = challenge.matrix("B", b_idx)
        a = challenge.matrix("A", a_idx)
        for row in probe.rows_checked:
            c_row = a[row] @ b
            if not np.array_equal(np.mod(c_row, 7) @ r_mat, d[row]):
                reasons.append(f"compute: product {idx} row {row} is wrong")
                break
    return reasons


def verify_attestation(
    challenge: Challenge,
    response: ChallengeResponse,
    reply_s: float,
    probe: Probe,
    answer: ProbeAnswer,
    probe_s: float,
    *,
    claimed_segment: str = "datacenter",
    emulated: bool = False,
) -> AttestationResult:
    """Judge both rounds. `reply_s` and `probe_s` are measured on the coordinator's clock.

    Returns `refused` (with reasons) on any wrong answer or missed deadline; otherwise
    `verified`, or `unverified` for CPU and emulated agents, whose answers can be right but
    whose hardware claims mean nothing on a production network.
    """
    reasons: list[str] = []
    if (
        response.challenge_id != challenge.challenge_id
        or answer.challenge_id != challenge.challenge_id
    ):
        reasons.append("reply is for another challenge")
    if reply_s > challenge.limit_s:
        reasons.append(
            f"too slow for a {challenge.gpu}: {reply_s:.3g} s, limit {challenge.limit_s:.3g} s "
            f"(model expects {challenge.expected_s:.3g} s)"
        )
    if probe_s > challenge.probe_limit_s:
        reasons.append(
            f"probe answered in {probe_s:.3g} s, limit {challenge.probe_limit_s:.3g} s: "
            "the buffer was not held in memory"
        )
    try:
        root = bytes.fromhex(response.memory_root)
    except ValueError:
        root = b""
    if len(root) != 32:
        reasons.append("memory: malformed Merkle root")
    else:
        reasons.extend(_check_openings(challenge, root, answer.openings, probe))
    reasons.extend(_check_products(challenge, response, probe, answer))
    status: Status
    if reasons:
        status = "refused"
    elif emulated or claimed_segment == "cpu":
        status = "unverified"
        reasons.append("CPU or emulated agent: unverified, development networks only")
    else:
        status = "verified"
    return AttestationResult(
        status=status,
        gpu=challenge.gpu,
        reasons=tuple(reasons),
        reply_s=reply_s,
        limit_s=challenge.limit_s,
        expected_s=challenge.expected_s,
        probe_s=probe_s,
        probe_limit_s=challenge.probe_limit_s,
    )


def refuse_timeout(challenge: Challenge, waited_s: float) -> AttestationResult:
    """The verdict when no reply (or no probe answer) came back before its deadline."""
    return AttestationResult(
        status="refused",
        gpu=challenge.gpu,
        reasons=(
            f"no reply within {waited_s:.3g} s (limit {challenge.limit_s:.3g} s for a "
            f"{challenge.gpu}, model expects {challenge.expected_s:.3g} s)",
        ),
        reply_s=waited_s,
        limit_s=challenge.limit_s,
        expected_s=challenge.expected_s,
    )


# --- confidential computing seam ----------------------------------------------------------------


@dataclass(frozen=True)
class CCEvidence:
    """What a confidential-computing GPU returns for a nonce (a signed attestation report)."""

    kind: str
    nonce: str
    report: bytes = b""
    certificates: tuple[bytes, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class CCVerdict:
    ok: bool
    reason: str


class CCUnavailable(RuntimeError):
    """Raised where confidential-computing attestation cannot be collected."""


class ConfidentialAttestor(Protocol):
    """The seam for hardware attestation (NVIDIA H100/H200 in confidential-computing mode).

    A real implementation collects the GPU's attestation report over the nonce on the agent
    (NVIDIA's nvtrust / NVML attestation API), and verifies on the coordinator the report's
    signature chain up to NVIDIA's root, the driver/VBIOS measurements against NVIDIA's reference
    values (RIM service) and the nonce. A verified report proves the card model and that the
    workload runs in CC mode; it would let `verify_attestation` skip the timing margin.
    """

    name: str

    def available(self) -> bool: ...

    def collect(self, nonce: str) -> CCEvidence: ...

    def verify(self, evidence: CCEvidence, nonce: str, gpu: GpuSpec) -> CCVerdict: ...


CC_ARCHITECTURES = frozenset({"Hopper", "Blackwell"})


def cc_capable(gpu: GpuSpec) -> bool:
    """Whether the card supports NVIDIA confidential computing (Hopper and Blackwell)."""
    return gpu.architecture in CC_ARCHITECTURES


class NvidiaCCNotAvailable:
    """The shipped `ConfidentialAttestor`: says plainly that CC attestation is not integrated."""

    name = "nvidia-cc"
    reason = (
        "NVIDIA confidential-computing attestation is not integrated: it needs an H100/H200 "
        "booted in CC mode, NVIDIA's attestation SDK (nvtrust) on the agent, and report "
        "verification against NVIDIA's certificate chain and reference measurements on the "
        "coordinator"
    )

    def available(self) -> bool:
        return False

    def collect(self, nonce: str) -> CCEvidence:
        raise CCUnavailable(self.reason)

    def verify(self, evidence: CCEvidence, nonce: str, gpu: GpuSpec) -> CCVerdict:
        return CCVerdict(False, self.reason)
