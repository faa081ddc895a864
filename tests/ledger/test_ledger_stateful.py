"""Property-based: random money movements, crashes and retries never break an invariant.

Hypothesis drives deposits, holds, captures, releases, stakes, unbonds, slashes, withdrawals,
settlements (some crashed at a random fault point, then recovered) and replays of old keys.
After every step the audit (which includes "the vault on chain holds what the ledger says")
must be clean; after every settlement each wallet's on-chain balance must equal what it was
funded, minus what it deposited, plus what the ledger paid it.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from datetime import datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, rule
from sqlalchemy import func, select

from rigpool.coordinator.db import open_database
from rigpool.ledger import Ledger, Settler, audit
from rigpool.ledger.errors import LedgerError
from rigpool.ledger.faults import POINTS, Faults, InjectedCrash
from rigpool.ledger.solana import LiteSVMChain
from rigpool.ledger.tables import Payout
from rigpool.protocol.signing import Identity

FUNDING = 1_000_000
amounts = st.integers(min_value=-5, max_value=400_000)
idx = st.integers(min_value=0, max_value=2)


class Money(RuleBasedStateMachine):
    holds = Bundle("holds")

    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp()
        self.now = datetime(2026, 1, 1)
        self.ledger = Ledger(
            open_database(f"sqlite:///{self.dir}/x.db"),
            clock=lambda: self.now,
            unbonding_period=timedelta(hours=1),
        )
        self.coordinator = Identity.generate()
        self.chain = LiteSVMChain(self.coordinator.keypair_bytes())
        self.settler = Settler(self.ledger, self.chain, faults=Faults(""))
        self.consumers = [Identity.generate() for _ in range(3)]
        self.providers = [Identity.generate() for _ in range(3)]
        self.deposited: dict[str, int] = {}
        for who in [*self.consumers, *self.providers]:
            self.chain.fund(who.agent_id, FUNDING)
            self.deposited[who.agent_id] = 0
        self.n = 0
        self.last: tuple[Any, ...] | None = None

    def teardown(self) -> None:
        self.ledger.sessions.kw["bind"].dispose()
        shutil.rmtree(self.dir, ignore_errors=True)

    def key(self) -> str:
        self.n += 1
        return f"k{self.n}"

    def attempt(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run an operation; a refused one must leave every balance as it was."""
        before = self.ledger.balances()
        try:
            result = fn(*args, **kwargs)
        except LedgerError:
            assert self.ledger.balances() == before
            return None
        self.last = (fn, args, kwargs, self.ledger.balances())
        return result

    def chain_deposit(self, who: Identity, amount: int, purpose: str) -> None:
        if not 0 < amount <= self.chain.token_balance(who.agent_id):
            return
        signature = self.chain.deposit(who.keypair_bytes(), amount)
        self.deposited[who.agent_id] += amount
        self.attempt(self.settler.confirm_deposit, signature, purpose=purpose)

    @rule(c=idx, amount=amounts)
    def deposit(self, c: int, amount: int) -> None:
        self.chain_deposit(self.consumers[c], amount, "consumer")

    @rule(p=idx, amount=amounts)
    def stake(self, p: int, amount: int) -> None:
        self.chain_deposit(self.providers[p], amount, "stake")

    @rule(target=holds, c=idx, amount=amounts)
    def hold(self, c: int, amount: int) -> int:
        return self.attempt(self.ledger.hold, self.consumers[c].agent_id, amount, self.key()) or 0

    @rule(h=consumes(holds), amount=amounts, p=idx, fee=st.integers(0, 3_000))
    def capture(self, h: int, amount: int, p: int, fee: int) -> None:
        self.attempt(self.ledger.capture, h, amount, self.providers[p].agent_id, fee, self.key())

    @rule(h=consumes(holds))
    def release(self, h: int) -> None:
        self.attempt(self.ledger.release, h)

    @rule(p=idx, amount=amounts)
    def unbond(self, p: int, amount: int) -> None:
        self.attempt(self.ledger.unbond, self.providers[p].agent_id, amount, self.key())

    @rule(p=idx)
    def withdraw_unbonded(self, p: int) -> None:
        self.now += timedelta(minutes=40)
        self.attempt(self.ledger.withdraw_unbonded, self.providers[p].agent_id, self.key())

    @rule(p=idx, c=idx, amount=amounts, share=st.integers(0, 100))
    def slash(self, p: int, c: int, amount: int, share: int) -> None:
        part = max(amount, 0) * share // 100
        self.attempt(
            self.ledger.slash,
            self.providers[p].agent_id,
            amount,
            part,
            "fraud",
            "ev",
            key=self.key(),
            consumer=self.consumers[c].agent_id,
        )

    @rule(c=idx, amount=amounts)
    def withdraw(self, c: int, amount: int) -> None:
        self.attempt(self.ledger.withdraw, self.consumers[c].agent_id, amount, self.key())

    @rule()
    def replay_last(self) -> None:
        if self.last is not None:
            fn, args, kwargs, _ = self.last
            before = self.ledger.balances()
            with contextlib.suppress(LedgerError):  # a replayed deposit is a duplicate
                fn(*args, **kwargs)
            assert self.ledger.balances() == before

    @rule(crash=st.sampled_from([None, *POINTS]), expire=st.booleans())
    def settle(self, crash: str | None, expire: bool) -> None:
        key = self.key()
        if crash is not None:
            try:
                Settler(self.ledger, self.chain, faults=Faults(crash)).settle_epoch(key)
            except InjectedCrash:
                if expire:
                    self.chain.expire_blockhash()
        self.settler.settle_epoch(key)  # restart: replays the epoch key, recovers, pays
        with self.ledger.sessions() as s:
            paid = dict(
                s.execute(
                    select(Payout.destination, func.sum(Payout.amount))
                    .where(Payout.state == "paid")
                    .group_by(Payout.destination)
                ).all()
            )
        for who in [*self.consumers, *self.providers]:
            w = who.agent_id
            expected = FUNDING - self.deposited[w] + int(paid.get(w, 0))
            assert self.chain.token_balance(w) == expected

    @invariant()
    def books_are_sound(self) -> None:
        assert audit(self.ledger, self.chain) == []


Money.TestCase.settings = settings(
    max_examples=12,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestMoney = pytest.mark.slow(Money.TestCase)
