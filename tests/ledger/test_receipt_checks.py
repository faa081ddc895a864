"""The fast paths of receipt checking give exactly what the plain computations give."""

from __future__ import annotations

import json
from collections.abc import Callable

import base58
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rigpool.ledger import SignedReceipt
from rigpool.ledger.errors import InvalidReceipt
from rigpool.ledger.receipts import b58decode, check_receipt
from rigpool.protocol.signing import Identity


@given(st.binary(max_size=80), st.integers(min_value=0, max_value=4))
def test_b58decode_matches_the_base58_package(raw: bytes, zeros: int) -> None:
    data = b"\0" * zeros + raw
    text = base58.b58encode(data).decode()
    assert b58decode(text) == base58.b58decode(text) == data


def test_b58decode_refuses_foreign_characters() -> None:
    with pytest.raises(ValueError, match="base58"):
        b58decode("abc0")  # 0 is not in the alphabet


def test_check_receipt_gives_the_leaf_and_the_stored_body_of_the_receipt(
    make_receipt: Callable[..., SignedReceipt],
) -> None:
    receipt = make_receipt("r-1", Identity.generate(), "consumer-1")
    checked = check_receipt(receipt)
    assert checked.leaf == receipt.leaf().hex()
    assert checked.payload == receipt.model_dump(mode="json")
    assert json.loads(checked.payload_json) == checked.payload
    forged = receipt.model_copy(update={"agent_signature": receipt.coordinator_signature})
    with pytest.raises(InvalidReceipt, match="agent signature"):
        check_receipt(forged)
    assert check_receipt(forged, signatures=False).leaf == forged.leaf().hex()
