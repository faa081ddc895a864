"""Each ledger operation, its idempotency, and bad input refused with nothing moved."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import inspect, update

from rigpool.core.errors import BadRequest
from rigpool.ledger import Ledger, Price, audit, network_fee
from rigpool.ledger.errors import (
    DuplicateDeposit,
    IdempotencyConflict,
    InsufficientFunds,
    InvalidAmount,
    InvalidReceipt,
    InvalidState,
    UnknownAccount,
)
from rigpool.ledger.pricing import check_admission
from rigpool.ledger.tables import Account, AccountKind
from rigpool.protocol.signing import Identity

K = AccountKind
SIG = "5" * 88
CONSUMER = Identity.generate().agent_id
PROVIDER = Identity.generate().agent_id


def sig(n: int) -> str:
    return f"{n:0>88}"


def funded(ledger: Ledger, amount: int = 10_000) -> None:
    ledger.credit_deposit(CONSUMER, amount, sig(1))


def test_migration_creates_the_ledger_tables(ledger: Ledger) -> None:
    names = set(inspect(ledger.sessions.kw["bind"]).get_table_names())
    assert {"ledger_accounts", "ledger_postings", "ledger_journal_txs", "ledger_holds"} <= names


def test_deposit_credits_once_per_signature(ledger: Ledger) -> None:
    # Execute
    ledger.credit_deposit(CONSUMER, 500, sig(1))
    # Assert
    assert ledger.balance(K.CONSUMER, CONSUMER) == 500
    assert ledger.balance(K.EXTERNAL, "world") == -500
    with pytest.raises(DuplicateDeposit):
        ledger.credit_deposit(CONSUMER, 500, sig(1))
    with pytest.raises(DuplicateDeposit):
        ledger.credit_deposit(CONSUMER, 700, sig(1))
    assert ledger.balance(K.CONSUMER, CONSUMER) == 500
    assert audit(ledger) == []


def test_hold_capture_pays_provider_and_fee_and_releases_the_rest(ledger: Ledger) -> None:
    funded(ledger, 1_000)
    hold = ledger.hold(CONSUMER, 400, "req-1")
    assert ledger.balance(K.CONSUMER, CONSUMER) == 600
    assert ledger.balance(K.CONSUMER_HOLD, CONSUMER) == 400

    cap = ledger.capture(hold, 300, PROVIDER, 1_000, "req-1/capture")

    assert (cap.charged, cap.fee, cap.provider_amount, cap.released) == (300, 30, 270, 100)
    assert ledger.balance(K.CONSUMER, CONSUMER) == 700
    assert ledger.balance(K.CONSUMER_HOLD, CONSUMER) == 0
    assert ledger.balance(K.PROVIDER_EARNINGS, PROVIDER) == 270
    assert ledger.balance(K.TREASURY, "network") == 30
    assert audit(ledger) == []


def test_capture_is_capped_at_the_hold(ledger: Ledger) -> None:
    funded(ledger, 1_000)
    hold = ledger.hold(CONSUMER, 100, "h")
    cap = ledger.capture(hold, 250, PROVIDER, 0, "c")
    assert cap.charged == 100
    assert ledger.balance(K.CONSUMER, CONSUMER) == 900


def test_release_gives_everything_back_and_is_safe_twice(ledger: Ledger) -> None:
    funded(ledger, 1_000)
    hold = ledger.hold(CONSUMER, 999, "h")
    assert ledger.release(hold) == 999
    assert ledger.release(hold) == 999  # replay, nothing moves
    assert ledger.balance(K.CONSUMER, CONSUMER) == 1_000
    with pytest.raises(InvalidState):
        ledger.capture(hold, 1, PROVIDER, 0, "late-capture")
    assert audit(ledger) == []


def test_replayed_key_returns_first_result_and_conflicting_key_fails(ledger: Ledger) -> None:
    funded(ledger, 1_000)
    first = ledger.hold(CONSUMER, 100, "same-key")
    assert ledger.hold(CONSUMER, 100, "same-key") == first
    assert ledger.balance(K.CONSUMER, CONSUMER) == 900
    with pytest.raises(IdempotencyConflict):
        ledger.hold(CONSUMER, 200, "same-key")


def test_stake_unbond_waits_for_the_period(ledger: Ledger, clock) -> None:  # type: ignore[no-untyped-def]
    ledger.stake(PROVIDER, 1_000, sig(2))
    ledger.unbond(PROVIDER, 400, "unbond-1")
    assert ledger.balance(K.PROVIDER_STAKE, PROVIDER) == 600
    with pytest.raises(InvalidState):
        ledger.withdraw_unbonded(PROVIDER, "early")
    clock.now += ledger.unbonding_period + timedelta(seconds=1)
    assert ledger.withdraw_unbonded(PROVIDER, "due") == 400
    assert ledger.balance(K.PAYOUT_PENDING, "network") == 400
    assert audit(ledger) == []


def test_slash_splits_between_consumer_and_treasury_and_reaches_unbonding(ledger: Ledger) -> None:
    ledger.stake(PROVIDER, 1_000, sig(2))
    ledger.unbond(PROVIDER, 800, "u")
    slash_id = ledger.slash(
        PROVIDER, 500, 300, "wrong model served", "evidence:42", key="s1", consumer=CONSUMER
    )
    assert slash_id == 1
    assert ledger.balance(K.PROVIDER_STAKE, PROVIDER) == 0
    assert ledger.balance(K.PROVIDER_UNBONDING, PROVIDER) == 500
    assert ledger.balance(K.CONSUMER, CONSUMER) == 300
    assert ledger.balance(K.TREASURY, "network") == 200
    assert audit(ledger) == []


def test_withdraw_queues_a_payout(ledger: Ledger) -> None:
    funded(ledger, 1_000)
    ledger.withdraw(CONSUMER, 250, "w")
    assert ledger.balance(K.CONSUMER, CONSUMER) == 750
    assert ledger.balance(K.PAYOUT_PENDING, "network") == 250
    assert audit(ledger) == []


BAD_INPUT = [
    ("zero deposit", lambda lg: lg.credit_deposit(CONSUMER, 0, sig(9)), InvalidAmount),
    ("negative deposit", lambda lg: lg.credit_deposit(CONSUMER, -5, sig(9)), InvalidAmount),
    ("float deposit", lambda lg: lg.credit_deposit(CONSUMER, 1.5, sig(9)), InvalidAmount),
    ("double deposit", lambda lg: lg.credit_deposit(CONSUMER, 5, sig(1)), DuplicateDeposit),
    ("hold zero", lambda lg: lg.hold(CONSUMER, 0, "k"), InvalidAmount),
    ("hold unknown consumer", lambda lg: lg.hold("nobody", 5, "k"), UnknownAccount),
    ("hold above balance", lambda lg: lg.hold(CONSUMER, 1_001, "k"), InsufficientFunds),
    ("capture unknown hold", lambda lg: lg.capture(77, 5, PROVIDER, 0, "k"), UnknownAccount),
    ("capture negative", lambda lg: lg.capture(1, -1, PROVIDER, 0, "k"), InvalidAmount),
    ("fee above 100%", lambda lg: lg.capture(1, 1, PROVIDER, 10_001, "k"), InvalidAmount),
    ("release unknown hold", lambda lg: lg.release(77), UnknownAccount),
    ("withdraw above balance", lambda lg: lg.withdraw(CONSUMER, 1_001, "k"), InsufficientFunds),
    ("withdraw unknown", lambda lg: lg.withdraw(PROVIDER, 1, "k"), UnknownAccount),
    ("withdraw to bad wallet", lambda lg: lg.withdraw(CONSUMER, 1, "k", "0xdead"), BadRequest),
    ("unbond without stake", lambda lg: lg.unbond(CONSUMER, 1, "k"), UnknownAccount),
    ("unbond above stake", lambda lg: lg.unbond(PROVIDER, 501, "k"), InsufficientFunds),
    (
        "slash above stake",
        lambda lg: lg.slash(PROVIDER, 501, 0, "fraud", "ev", key="k"),
        InsufficientFunds,
    ),
    (
        "slash share above amount",
        lambda lg: lg.slash(PROVIDER, 5, 6, "fraud", "ev", key="k", consumer=CONSUMER),
        InvalidAmount,
    ),
    (
        "slash without reason",
        lambda lg: lg.slash(PROVIDER, 5, 0, " ", "ev", key="k"),
        BadRequest,
    ),
    (
        "slash unknown provider",
        lambda lg: lg.slash(CONSUMER, 5, 0, "fraud", "ev", key="k"),
        UnknownAccount,
    ),
    ("empty key", lambda lg: lg.hold(CONSUMER, 5, ""), BadRequest),
]


@pytest.mark.parametrize(("name", "call", "error"), BAD_INPUT, ids=[b[0] for b in BAD_INPUT])
def test_bad_input_is_a_clear_error_and_moves_nothing(
    ledger: Ledger,
    snapshot,
    name: str,
    call,
    error: type[Exception],  # type: ignore[no-untyped-def]
) -> None:
    # Prepare
    ledger.credit_deposit(CONSUMER, 1_000, sig(1))
    ledger.stake(PROVIDER, 500, sig(2))
    before = snapshot()
    # Execute
    with pytest.raises(error) as info:
        call(ledger)
    # Assert
    assert isinstance(info.value, BadRequest)
    assert str(info.value)
    assert snapshot() == before
    assert audit(ledger) == []


def test_receipt_with_a_bad_signature_is_refused(ledger: Ledger, make_receipt) -> None:  # type: ignore[no-untyped-def]
    provider = Identity.generate()
    good = make_receipt("r-1", provider, CONSUMER)
    forged = good.model_copy(update={"agent_signature": good.coordinator_signature})
    with pytest.raises(InvalidReceipt, match="agent signature"):
        ledger.record_receipt(forged)
    tampered = good.model_copy(update={"body": good.body.model_copy(update={"amount": 1})})
    with pytest.raises(InvalidReceipt):
        ledger.record_receipt(tampered)
    assert ledger.record_receipt(good)
    assert not ledger.record_receipt(good)  # recording twice is a no-op


def test_audit_names_a_tampered_balance(ledger: Ledger) -> None:
    funded(ledger, 1_000)
    with ledger.sessions() as s, s.begin():
        s.execute(update(Account).where(Account.kind == K.CONSUMER).values(balance=1_500))
    problems = audit(ledger)
    assert any("sum to 500" in p for p in problems)
    assert any("postings sum to 1000" in p for p in problems)


def test_pricing_rounds_cost_up_and_fee_down() -> None:
    price = Price(input_per_million=150, output_per_million=600)
    assert price.cost(1, 0) == 1  # 0.00015 of a unit rounds up to one
    assert price.cost(1_000_000, 1_000_000) == 750
    assert price.worst_case(1000, 4096) == price.cost(1000, 4096)
    assert network_fee(999, 100) == 9
    with pytest.raises(BadRequest):
        Price(-1, 5)
    with pytest.raises(BadRequest):
        check_admission(price, floor=Price(200, 0), max_price=None)
    with pytest.raises(BadRequest):
        check_admission(price, floor=None, max_price=Price(150, 500))
    check_admission(price, floor=Price(100, 100), max_price=Price(150, 600))


def test_only_ledger_solana_imports_solders() -> None:
    root = Path(__file__).resolve().parents[2] / "src" / "rigpool"
    offenders = []
    for path in root.rglob("*.py"):
        if "ledger/solana" in path.as_posix():
            continue
        text = path.read_text()
        if any(f"import {m}" in text or f"from {m}" in text for m in ("solders", "solana", "spl")):
            offenders.append(str(path))
    assert offenders == []


def test_concurrent_holds_never_overspend(ledger: Ledger) -> None:
    import asyncio

    funded(ledger, 1_000)

    async def admit(i: int) -> bool:
        try:
            await asyncio.to_thread(ledger.hold, CONSUMER, 300, f"h{i}")
        except InsufficientFunds:
            return False
        return True

    async def main() -> list[bool]:
        return await asyncio.gather(*(admit(i) for i in range(8)))

    admitted = asyncio.run(main())
    assert sum(admitted) == 3
    assert ledger.balance(K.CONSUMER, CONSUMER) == 100
    assert audit(ledger) == []


def test_a_large_batch_is_verified_in_parallel_and_one_forgery_fails_it(
    ledger: Ledger, make_receipt
) -> None:  # type: ignore[no-untyped-def]
    provider = Identity.generate()
    batch = [make_receipt(f"r{i}", provider, CONSUMER) for i in range(300)]
    bad = batch[123].model_copy(update={"coordinator_signature": batch[0].coordinator_signature})
    with pytest.raises(InvalidReceipt, match="coordinator signature"):
        ledger.record_receipts([*batch[:123], bad, *batch[124:]])
    assert ledger.record_receipts(batch) == 300
