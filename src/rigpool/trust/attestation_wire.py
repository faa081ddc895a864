"""Attestation on the wire: compact JSON for challenges, probes, replies and probe answers.

Pure (json, base64, numpy): both the coordinator and the agent import it. int64 arrays travel as
base64 of their little-endian bytes and Merkle paths / product hashes as base64 of the
concatenated 32-byte digests, so a probe answer (8 chunks x 3 x 256 KiB plus two m x 4 digests
in production) is about 1.35 x its raw size instead of ~3 x as decimal JSON lists.

Every `*_from_*` function raises `WireError` on anything malformed; what the decoded values
*mean* (shapes, hashes, paths) is checked by `attestation.verify_attestation`.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from rigpool.trust.attestation import (
    DIGEST_COLS,
    PROBE_CHUNKS,
    PROBE_PRODUCTS,
    Challenge,
    ChallengeResponse,
    ChunkOpening,
    Probe,
    ProbeAnswer,
)

_DIGEST = 32


class WireError(ValueError):
    """A challenge, probe, reply or answer that does not decode."""


def _dumps(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))


def _loads(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise WireError(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise WireError("not a JSON object")
    return value


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _unb64(text: object) -> bytes:
    if not isinstance(text, str):
        raise WireError("expected a base64 string")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise WireError(f"bad base64: {exc}") from None


def int64_to_b64(values: Sequence[int] | np.ndarray) -> str:
    """int64 values as base64 of their little-endian bytes."""
    return _b64(np.asarray(values, dtype="<i8").tobytes())


def b64_to_int64(text: object) -> np.ndarray:
    raw = _unb64(text)
    if len(raw) % 8:
        raise WireError("int64 array of a length that is not a multiple of 8 bytes")
    return np.frombuffer(raw, dtype="<i8").astype(np.int64)


def _digests_to_b64(hex_digests: Sequence[str]) -> str:
    try:
        return _b64(b"".join(bytes.fromhex(h) for h in hex_digests))
    except ValueError as exc:
        raise WireError(f"bad hex digest: {exc}") from None


def _b64_to_digests(text: object) -> tuple[str, ...]:
    raw = _unb64(text)
    if len(raw) % _DIGEST:
        raise WireError("digest list of a length that is not a multiple of 32 bytes")
    return tuple(raw[i : i + _DIGEST].hex() for i in range(0, len(raw), _DIGEST))


def _int(d: dict[str, Any], key: str) -> int:
    value = d.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise WireError(f"{key} must be an integer")
    return value


def _ints(values: object) -> tuple[int, ...]:
    if not isinstance(values, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in values
    ):
        raise WireError("expected a list of integers")
    return tuple(values)


# --- challenge and probe (coordinator -> agent, as dicts inside the protocol frames) ----------

_CHALLENGE_INTS = (
    "seed",
    "matrix_size",
    "pool",
    "products",
    "rows",
    "row_chunks",
    "chunk_words",
)
_CHALLENGE_FLOATS = ("expected_s", "limit_s", "probe_limit_s")


def challenge_to_json(challenge: Challenge) -> dict[str, Any]:
    return dataclasses.asdict(challenge)


def challenge_from_json(d: dict[str, Any]) -> Challenge:
    """A `Challenge` from its JSON object, with types and basic ranges checked."""
    if not isinstance(d, dict):
        raise WireError("challenge must be an object")
    values: dict[str, Any] = {}
    for key in ("challenge_id", "gpu"):
        if not isinstance(d.get(key), str) or not 0 < len(d[key]) <= 128:
            raise WireError(f"{key} must be a non-empty string")
        values[key] = d[key]
    for key in _CHALLENGE_INTS:
        values[key] = _int(d, key)
    for key in _CHALLENGE_FLOATS:
        value = d.get(key)
        if not isinstance(value, int | float) or isinstance(value, bool) or not value > 0:
            raise WireError(f"{key} must be a positive number")
        values[key] = float(value)
    ch = Challenge(**values)
    if min(ch.matrix_size, ch.pool, ch.products, ch.row_chunks, ch.chunk_words) < 1:
        raise WireError("challenge sizes must be positive")
    if ch.rows < 2 or ch.row_chunks & (ch.row_chunks - 1) or ch.pool & (ch.pool - 1):
        raise WireError("challenge needs >= 2 rows and power-of-two row_chunks and pool")
    if ch.products > ch.pool * ch.pool:
        raise WireError("more products than distinct pool pairs")
    return ch


def probe_to_json(probe: Probe) -> dict[str, Any]:
    return {
        "challenge_id": probe.challenge_id,
        "products": list(probe.products),
        "rows_checked": list(probe.rows_checked),
        "chunks": [list(c) for c in probe.chunks],
    }


def probe_from_json(d: dict[str, Any], challenge: Challenge | None = None) -> Probe:
    """A `Probe` from JSON; with `challenge`, every index is checked to lie inside it."""
    if not isinstance(d, dict):
        raise WireError("probe must be an object")
    try:
        products = _ints(d["products"])
        rows_checked = _ints(d["rows_checked"])
        chunks = tuple((r, c) for r, c in (_ints(pair) for pair in d["chunks"]))
        challenge_id = str(d["challenge_id"])
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, WireError):
            raise
        raise WireError(f"malformed probe: {exc!r}") from None
    if len(products) > 4 * PROBE_PRODUCTS or len(chunks) > 4 * PROBE_CHUNKS:
        raise WireError("probe asks for too much")
    if challenge is not None:
        if challenge_id != challenge.challenge_id:
            raise WireError("probe is for another challenge")
        if (
            any(not 0 <= i < challenge.products for i in products)
            or any(not 0 <= r < challenge.matrix_size for r in rows_checked)
            or any(
                not (1 <= r < challenge.rows and 0 <= c < challenge.row_chunks) for r, c in chunks
            )
        ):
            raise WireError("probe index outside the challenge")
    return Probe(challenge_id, products, rows_checked, chunks)


# --- reply and answer (agent -> coordinator, as text split over attest_data frames) -----------


def response_to_text(response: ChallengeResponse) -> str:
    return _dumps(
        {
            "challenge_id": response.challenge_id,
            "product_hashes": _digests_to_b64(response.product_hashes),
            "memory_root": response.memory_root,
            "device": response.device,
            "agent_seconds": response.agent_seconds,
        }
    )


def response_from_text(text: str) -> ChallengeResponse:
    d = _loads(text)
    try:
        seconds = float(d.get("agent_seconds", 0.0))
        return ChallengeResponse(
            challenge_id=str(d["challenge_id"]),
            product_hashes=_b64_to_digests(d["product_hashes"]),
            memory_root=str(d["memory_root"]),
            device=str(d.get("device", ""))[:64],
            agent_seconds=seconds if math.isfinite(seconds) else 0.0,
        )
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, WireError):
            raise
        raise WireError(f"malformed reply: {exc!r}") from None


def _path_to_b64(path: Sequence[str]) -> str:
    return _digests_to_b64(path)


def _opening_to_json(o: ChunkOpening) -> dict[str, Any]:
    return {
        "row": o.row,
        "chunk": o.chunk,
        "words": int64_to_b64(o.words),
        "path": _path_to_b64(o.path),
        "p1": int64_to_b64(o.parent1_words),
        "p1_path": _path_to_b64(o.parent1_path),
        "p2": int64_to_b64(o.parent2_words),
        "p2_path": _path_to_b64(o.parent2_path),
    }


def _opening_from_json(d: object) -> ChunkOpening:
    if not isinstance(d, dict):
        raise WireError("opening must be an object")
    return ChunkOpening(
        row=_int(d, "row"),
        chunk=_int(d, "chunk"),
        words=tuple(b64_to_int64(d.get("words")).tolist()),
        path=_b64_to_digests(d.get("path")),
        parent1_words=tuple(b64_to_int64(d.get("p1")).tolist()),
        parent1_path=_b64_to_digests(d.get("p1_path")),
        parent2_words=tuple(b64_to_int64(d.get("p2")).tolist()),
        parent2_path=_b64_to_digests(d.get("p2_path")),
    )


def answer_to_text(answer: ProbeAnswer) -> str:
    digests = []
    for digest in answer.product_digests:
        arr = np.asarray(digest, dtype=np.int64)
        digests.append({"rows": int(arr.shape[0]) if arr.ndim else 0, "d": int64_to_b64(arr)})
    return _dumps(
        {
            "challenge_id": answer.challenge_id,
            "digests": digests,
            "openings": [_opening_to_json(o) for o in answer.openings],
        }
    )


def answer_from_text(text: str) -> ProbeAnswer:
    d = _loads(text)
    try:
        digests = []
        for item in d["digests"]:
            flat = b64_to_int64(item["d"])
            rows = _int(item, "rows")
            if rows < 0 or flat.size != rows * DIGEST_COLS:
                raise WireError("product digest of the wrong size")
            digests.append(tuple(tuple(r) for r in flat.reshape(rows, DIGEST_COLS).tolist()))
        openings = tuple(_opening_from_json(o) for o in d["openings"])
        return ProbeAnswer(str(d["challenge_id"]), tuple(digests), openings)
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, WireError):
            raise
        raise WireError(f"malformed probe answer: {exc!r}") from None


# --- splitting into frames ------------------------------------------------------------------


def split_parts(text: str, part_chars: int) -> list[str]:
    """`text` in pieces of at most `part_chars` characters (at least one piece)."""
    return [text[i : i + part_chars] for i in range(0, len(text), part_chars)] or [""]


def reply_size_bound(challenge: Challenge) -> int:
    """Most characters an honest reply can take (a cap for the coordinator's reassembly)."""
    return 4096 + math.ceil(challenge.products * _DIGEST / 3) * 4


def answer_size_bound(challenge: Challenge) -> int:
    """Most characters an honest probe answer can take (a cap for the reassembly)."""
    depth = max(1, math.ceil(math.log2(max(2, challenge.rows * challenge.row_chunks))) + 1)
    per_chunk = math.ceil(challenge.chunk_words * 8 / 3) * 4 + math.ceil(depth * _DIGEST / 3) * 4
    digest = math.ceil(challenge.matrix_size * DIGEST_COLS * 8 / 3) * 4 + 64
    return 4096 + PROBE_CHUNKS * 3 * (per_chunk + 64) + PROBE_PRODUCTS * digest
