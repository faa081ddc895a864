"""A SHA-256 Merkle tree over an epoch's receipts, with inclusion proofs.

Leaves and inner nodes are hashed with different prefixes (0x00 / 0x01, as RFC 6962 does), so a
leaf can never be passed off as an inner node. An odd node is carried up unpaired rather than
paired with a copy of itself: duplicating it would let two different leaf lists share a root
(the flaw behind Bitcoin's CVE-2012-2459).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

LEAF = b"\x00"
NODE = b"\x01"
EMPTY_ROOT = hashlib.sha256(b"rigpool:empty-epoch").hexdigest()


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(LEAF + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(NODE + left + right).digest()


@dataclass(frozen=True)
class ProofStep:
    """The sibling at one level and on which side it sits."""

    sibling: str  # hex
    left: bool  # True when the sibling is the left child


def _levels(leaves: list[bytes]) -> list[list[bytes]]:
    levels = [leaves]
    while len(levels[-1]) > 1:
        cur = levels[-1]
        nxt = [node_hash(cur[i], cur[i + 1]) for i in range(0, len(cur) - 1, 2)]
        if len(cur) % 2:
            nxt.append(cur[-1])
        levels.append(nxt)
    return levels


def root(leaves: list[bytes]) -> str:
    """Hex root of the leaf hashes (not the raw data); a fixed constant when empty."""
    if not leaves:
        return EMPTY_ROOT
    return _levels(leaves)[-1][0].hex()


def proof(leaves: list[bytes], index: int) -> list[ProofStep]:
    """Siblings from leaf `index` up to the root."""
    if not 0 <= index < len(leaves):
        raise IndexError(f"leaf {index} not in a tree of {len(leaves)}")
    steps: list[ProofStep] = []
    for level in _levels(leaves)[:-1]:
        sibling = index ^ 1
        if sibling < len(level):
            steps.append(ProofStep(level[sibling].hex(), left=sibling < index))
        index //= 2
    return steps


def verify(leaf: bytes, steps: list[ProofStep], expected_root: str) -> bool:
    node = leaf
    for step in steps:
        sib = bytes.fromhex(step.sibling)
        node = node_hash(sib, node) if step.left else node_hash(node, sib)
    return node.hex() == expected_root
