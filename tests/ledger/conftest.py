"""Fixtures for the money tests: a fresh migrated SQLite file per test, keys and a chain."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from rigpool.coordinator.db import open_database
from rigpool.ledger import Ledger, Price, ReceiptBody, SignedReceipt, agent_sign, countersign
from rigpool.ledger.solana import LiteSVMChain
from rigpool.ledger.tables import Hold, JournalTx, Payout, Posting
from rigpool.protocol.signing import Identity


class Clock:
    """A settable clock, so unbonding periods pass instantly."""

    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def ledger(tmp_path: Path, clock: Clock) -> Ledger:
    return Ledger(open_database("sqlite:///" + str(tmp_path / "x.db")), clock=clock)


@pytest.fixture
def coordinator_key() -> Identity:
    return Identity.generate()


@pytest.fixture
def chain(coordinator_key: Identity) -> LiteSVMChain:
    return LiteSVMChain(coordinator_key.keypair_bytes())


@pytest.fixture
def snapshot(ledger: Ledger) -> Callable[[], dict[str, Any]]:
    """Everything a movement could change: balances and row counts."""

    def take() -> dict[str, Any]:
        with ledger.sessions() as s:
            counts = {
                t.__tablename__: s.scalar(select(func.count()).select_from(t))
                for t in (JournalTx, Posting, Hold, Payout)
            }
        return {"balances": ledger.balances(), **counts}

    return take


@pytest.fixture
def make_receipt(coordinator_key: Identity) -> Callable[..., SignedReceipt]:
    price = Price(100_000, 300_000)

    def make(
        request_id: str,
        provider: Identity,
        consumer: str,
        prompt: int = 1000,
        completion: int = 200,
        fee_bps: int = 500,
    ) -> SignedReceipt:
        amount = price.cost(prompt, completion)
        fee = amount * fee_bps // 10_000
        body = ReceiptBody(
            request_id=request_id,
            model="toy",
            prompt_tokens=prompt,
            completion_tokens=completion,
            price_input_per_million=price.input_per_million,
            price_output_per_million=price.output_per_million,
            amount=amount,
            fee=fee,
            provider_amount=amount - fee,
            provider=provider.agent_id,
            consumer=consumer,
            coordinator=coordinator_key.agent_id,
            time=datetime(2026, 1, 1),
        )
        return countersign(body, agent_sign(body, provider), coordinator_key)

    return make
