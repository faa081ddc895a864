"""Ledger: the double-entry book of every token the network holds.

Every public operation is *one* balanced journal transaction (postings sum to zero) inside *one*
database transaction, keyed by an idempotency key:

- replaying a key with the same arguments returns the first result and moves nothing, so a
  gateway or a retry loop can call again after a timeout without double charging;
- the same key with different arguments raises `IdempotencyConflict`;
- invalid input raises a `LedgerError` (a `BadRequest`) before anything is written, and a
  balance that would go below zero aborts the whole database transaction.

Balances are updated with a conditional `UPDATE ... WHERE balance + delta >= 0`, so the check
and the write are one statement: two concurrent holds can't both spend the same balance, on
SQLite or PostgreSQL. A process-wide lock additionally serializes writers, which keeps SQLite
from answering "database is locked" to threads of the same coordinator.

The escrow hot path (hold, capture, release, receipts, recovery from a receipt) goes through
`book.py`: each operation is a validated unit (`hold_op`, ...) applied in bulk by a `Book`,
alone here (one transaction per call, as before) or many per transaction by a `GroupCommit`
(`group_commit.py`). Both write exactly the same rows.

All methods are synchronous and thread-safe: call them from async code with
`await asyncio.to_thread(ledger.hold, consumer, amount, key)`, or submit units to a
`GroupCommit`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import base58
from sqlalchemy import Table, bindparam, func, insert, select, update
from sqlalchemy.orm import Session, sessionmaker

from rigpool.ledger import merkle
from rigpool.ledger.book import (
    MAX_AMOUNT,
    Book,
    Capture,
    CaptureOp,
    EscrowOp,
    HoldOp,
    Outcome,
    ReceiptOp,
    Recovery,
    RecoveryOp,
    ReleaseOp,
    StaleBook,
    apply_all,
    check_amount,
    check_key,
    check_owner,
    request_digest,
)
from rigpool.ledger.errors import (
    DuplicateDeposit,
    IdempotencyConflict,
    InsufficientFunds,
    InvalidAmount,
    InvalidReceipt,
    InvalidState,
    LedgerError,
    UnknownAccount,
)
from rigpool.ledger.faults import Faults
from rigpool.ledger.receipts import CheckedReceipt, SignedReceipt, check_all, check_receipt
from rigpool.ledger.tables import (
    EXTERNAL_OWNER,
    NETWORK_OWNER,
    Account,
    AccountKind,
    Deposit,
    Epoch,
    Hold,
    JournalTx,
    Payout,
    Posting,
    Receipt,
    Slash,
    Unbonding,
)

K = AccountKind
__all__ = [
    "MAX_AMOUNT",
    "Capture",
    "EpochClose",
    "Ledger",
    "Recovery",
    "check_amount",
    "check_owner",
]


def utcnow() -> datetime:
    """Naive UTC, as the coordinator's tables store it."""
    return datetime.now(UTC).replace(tzinfo=None)


def check_wallet(value: str, name: str = "destination") -> str:
    """A Solana wallet: base58 of 32 bytes (an ed25519 public key)."""
    try:
        raw = base58.b58decode(value)
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise LedgerError(f"{name} {value!r} is not a base58 Solana address")
    return value


@dataclass(frozen=True)
class EpochClose:
    """An epoch just closed: its Merkle root and the payouts queued for it."""

    epoch_id: int
    merkle_root: str
    receipt_count: int
    payout_count: int
    total: int


Legs = list[tuple[Account, int]]


class Ledger:
    """Accounts, holds, stakes and payouts over a SQLAlchemy `sessionmaker`.

    Get one with `Ledger(open_database(url))`; the schema comes from the Alembic migrations.
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        *,
        unbonding_period: timedelta = timedelta(days=7),
        clock: Callable[[], datetime] = utcnow,
        faults: Faults | None = None,
    ):
        self.sessions = sessions
        self.unbonding_period = unbonding_period
        self.clock = clock
        self.lock = threading.RLock()
        #: crash tests arm `commit.mid_batch` here (between two bulk writes of a batch)
        self.faults = faults if faults is not None else Faults()

    # ------------------------------------------------------------------ core

    def apply(
        self,
        key: str,
        kind: str,
        params: dict[str, Any],
        build: Callable[[Session, JournalTx, datetime], tuple[Legs, dict[str, Any]]],
        *,
        on_replay: Callable[[JournalTx], None] | None = None,
        memo: str = "",
        reference: str | None = None,
    ) -> dict[str, Any]:
        """Run one movement exactly once per `key`; `build` returns (legs, result).

        `build` runs inside the database transaction after the journal row exists (so business
        rows can point at it) and may raise to abort everything.
        """
        check_key(key)
        digest = request_digest(kind, params)
        with self.lock, self.sessions() as s, s.begin():
            old = s.scalar(select(JournalTx).where(JournalTx.idempotency_key == key))
            if old is not None:
                if old.request_hash != digest:
                    raise IdempotencyConflict(
                        f"idempotency key {key!r} was used for a different {old.kind}"
                    )
                if on_replay is not None:
                    on_replay(old)
                return dict(old.result)
            now = self.clock()
            tx = JournalTx(
                idempotency_key=key,
                kind=kind,
                request_hash=digest,
                memo=memo,
                reference=reference,
                result={},
                created=now,
            )
            s.add(tx)
            s.flush()
            legs, result = build(s, tx, now)
            self.post(s, tx.id, legs)
            tx.result = result
        return result

    def post(self, s: Session, tx_id: int, legs: Legs) -> None:
        """Write balanced legs and move the balances; refuse any non-external overdraft."""
        merged: dict[int, int] = {}
        accounts: dict[int, Account] = {}
        for account, amount in legs:
            merged[account.id] = merged.get(account.id, 0) + amount
            accounts[account.id] = account
        if sum(merged.values()) != 0:
            raise AssertionError(f"unbalanced journal tx: legs sum to {sum(merged.values())}")
        rows = [(aid, amt) for aid, amt in merged.items() if amt != 0]
        if not rows:
            return
        # One executemany for every leg, then one query for any non-external account that went
        # below zero. Inside the transaction the updated rows stay locked (SQLite's write lock,
        # PostgreSQL's row locks), so the check cannot race with another writer; an overdraft
        # raises and rolls the whole movement back. (One ORM UPDATE per account made a
        # 10,000-provider epoch take minutes.)
        table = cast(Table, Account.__table__)
        s.connection().execute(
            update(table)
            .where(table.c.id == bindparam("aid"))
            .values(balance=table.c.balance + bindparam("delta")),
            [{"aid": aid, "delta": amt} for aid, amt in rows],
        )
        debited = [aid for aid, amt in rows if amt < 0 and accounts[aid].kind != K.EXTERNAL]
        for i in range(0, len(debited), 500):
            short = s.execute(
                select(table.c.id, table.c.balance).where(
                    table.c.id.in_(debited[i : i + 500]), table.c.balance < 0
                )
            ).first()
            if short is not None:
                acc, amt = accounts[short[0]], merged[short[0]]
                raise InsufficientFunds(
                    f"{acc.kind} account of {acc.owner} holds {short[1] - amt}, cannot take {-amt}"
                )
        s.execute(
            insert(Posting),
            [{"tx_id": tx_id, "account_id": aid, "amount": amt} for aid, amt in rows],
        )

    def account(self, s: Session, kind: K, owner: str, *, create: bool) -> Account:
        acc = s.scalar(select(Account).where(Account.kind == kind, Account.owner == owner))
        if acc is None:
            if not create:
                raise UnknownAccount(f"no {kind} account for {owner!r}")
            acc = Account(kind=str(kind), owner=owner, balance=0, created=self.clock())
            s.add(acc)
            s.flush()
        return acc

    def external(self, s: Session) -> Account:
        return self.account(s, K.EXTERNAL, EXTERNAL_OWNER, create=True)

    def treasury(self, s: Session) -> Account:
        return self.account(s, K.TREASURY, NETWORK_OWNER, create=True)

    def payout_pending(self, s: Session) -> Account:
        return self.account(s, K.PAYOUT_PENDING, NETWORK_OWNER, create=True)

    # ------------------------------------------------------------- balances

    def balance(self, kind: K | str, owner: str) -> int:
        """Balance of one account; 0 when it does not exist yet."""
        with self.sessions() as s:
            value = s.scalar(
                select(Account.balance).where(Account.kind == str(kind), Account.owner == owner)
            )
        return int(value or 0)

    def balances(self, owner: str | None = None) -> dict[tuple[str, str], int]:
        """All balances as {(kind, owner): amount}, optionally for one owner."""
        with self.sessions() as s:
            q = select(Account.kind, Account.owner, Account.balance)
            if owner is not None:
                q = q.where(Account.owner == owner)
            return {(k, o): int(b) for k, o, b in s.execute(q)}

    def hold_info(self, hold_id: int) -> Hold:
        with self.sessions() as s:
            hold = s.get(Hold, hold_id)
            if hold is None:
                raise UnknownAccount(f"no hold {hold_id}")
            return hold

    # ------------------------------------------------------------- deposits

    def credit_deposit(
        self, owner: str, amount: int, tx_signature: str, *, purpose: str = "consumer"
    ) -> int:
        """Credit a confirmed on-chain transfer into the vault, exactly once per signature.

        `purpose` "consumer" credits the spendable balance; "stake" bonds it as the provider's
        stake. A signature seen before raises `DuplicateDeposit` (even with the same amount):
        a second credit would mint tokens the vault does not hold. Returns the deposit id.
        """
        check_owner(owner)
        check_amount(amount)
        if not isinstance(tx_signature, str) or not 32 <= len(tx_signature) <= 128:
            raise LedgerError(f"{tx_signature!r} is not a transaction signature")
        if purpose not in ("consumer", "stake"):
            raise LedgerError(f"deposit purpose must be consumer or stake, not {purpose!r}")
        target = K.CONSUMER if purpose == "consumer" else K.PROVIDER_STAKE

        def replayed(_old: JournalTx) -> None:
            raise DuplicateDeposit(f"deposit {tx_signature} was already credited")

        def build(s: Session, tx: JournalTx, now: datetime) -> tuple[Legs, dict[str, Any]]:
            if s.scalar(select(Deposit.id).where(Deposit.tx_signature == tx_signature)):
                raise DuplicateDeposit(f"deposit {tx_signature} was already credited")
            dep = Deposit(
                tx_signature=tx_signature,
                owner=owner,
                purpose=purpose,
                amount=amount,
                journal_tx_id=tx.id,
                created=now,
            )
            s.add(dep)
            s.flush()
            legs = [
                (self.external(s), -amount),
                (self.account(s, target, owner, create=True), amount),
            ]
            return legs, {"deposit_id": dep.id}

        try:
            result = self.apply(
                f"deposit:{tx_signature}",
                "deposit",
                {"owner": owner, "amount": amount, "purpose": purpose},
                build,
                on_replay=replayed,
                reference=tx_signature,
            )
        except IdempotencyConflict as exc:
            raise DuplicateDeposit(f"deposit {tx_signature} was already credited") from exc
        return int(result["deposit_id"])

    def stake(self, provider: str, amount: int, tx_signature: str) -> int:
        """Bond `amount` the provider transferred into the vault (signature) as its stake."""
        return self.credit_deposit(provider, amount, tx_signature, purpose="stake")

    # ------------------------------------------------- escrow (the hot path)

    def hold_op(self, consumer: str, amount: int, key: str) -> HoldOp:
        """`hold` as a unit of work (for `GroupCommit`, or `op(session)` in a transaction)."""
        return HoldOp(self, consumer, amount, key)

    def capture_op(
        self, hold_id: int, amount: int, provider: str, fee_bps: int, key: str
    ) -> CaptureOp:
        """`capture` as a unit of work."""
        return CaptureOp(self, hold_id, amount, provider, fee_bps, key)

    def release_op(self, hold_id: int, key: str | None = None) -> ReleaseOp:
        """`release` as a unit of work."""
        return ReleaseOp(self, hold_id, key)

    def receipt_op(self, receipt: SignedReceipt | CheckedReceipt) -> ReceiptOp:
        """`record_receipt` as a unit of work; a `SignedReceipt` has its signatures checked here.

        Pass a `CheckedReceipt` (from `check_receipt`, e.g. on another thread) to skip the
        second check.
        """
        checked = receipt if isinstance(receipt, CheckedReceipt) else check_receipt(receipt)
        return ReceiptOp(self, checked)

    def recovery_op(
        self, receipt: SignedReceipt, *, coordinator: str, fee_bps: int | None = None
    ) -> RecoveryOp:
        """`recover_from_receipt` as a unit of work (signatures are checked here)."""
        return RecoveryOp(self, receipt, coordinator, fee_bps)

    def run_batch(self, s: Session, units: Sequence[Any]) -> list[Outcome]:
        """Apply escrow operations in order inside `s`'s open transaction (see `book.py`).

        Each operation's own `LedgerError` is its outcome and leaves nothing behind; any other
        exception (`StaleBook`, a database error) means nothing of the batch may be kept.
        """
        ops = cast(Sequence[EscrowOp], units)
        engine = s.get_bind()
        book = Book(s, self.clock(), check_rowcounts=engine.dialect.supports_sane_multi_rowcount)
        book.load(ops)
        applied = apply_all(book, ops)
        book.write(lambda: self.faults.hit("commit.mid_batch"))
        return [(True, value()) if ok else (False, value) for ok, value in applied]

    def run(self, op: EscrowOp) -> Any:
        """One operation in one database transaction (retried if another writer raced it)."""
        return self.run_all([op], atomic=True)[0]

    def run_all(self, ops: Sequence[EscrowOp], *, atomic: bool) -> list[Any]:
        """Operations in one transaction. `atomic`: the first failure raises, nothing is kept.

        Without `atomic` each failure is returned in place of its result.
        """
        for attempt in range(3):
            try:
                with self.lock, self.sessions() as s, s.begin():
                    outcomes = self.run_batch(s, ops)
                    failed = next((v for ok, v in outcomes if not ok), None)
                    if atomic and failed is not None:
                        raise failed
            except StaleBook:
                if attempt == 2:
                    raise
                continue
            return [v for _, v in outcomes]
        raise AssertionError("unreachable")

    def hold(self, consumer: str, amount: int, key: str) -> int:
        """Reserve `amount` of the consumer's balance for one request; returns the hold id.

        Raises `UnknownAccount` for a consumer that never deposited and `InsufficientFunds`
        when the balance is below `amount` (a hold never exceeds the balance).
        """
        return int(self.run(self.hold_op(consumer, amount, key)))

    def capture(self, hold_id: int, amount: int, provider: str, fee_bps: int, key: str) -> Capture:
        """Charge the actual cost of a finished request and release the rest of its hold.

        `amount` is capped at the hold: a consumer never pays more than was admitted. Of the
        charge, `network_fee(charge, fee_bps)` goes to the treasury and the rest to the
        provider's earnings (paid at the next epoch settlement).
        """
        return cast(Capture, self.run(self.capture_op(hold_id, amount, provider, fee_bps, key)))

    def release(self, hold_id: int, key: str | None = None) -> int:
        """Give a hold back in full (a failed request costs nothing); returns the amount.

        Calling it twice is safe (the default key is per hold). Releasing a captured hold is an
        `InvalidState` error.
        """
        return int(self.run(self.release_op(hold_id, key)))

    def recover_from_receipt(
        self, receipt: SignedReceipt, *, coordinator: str, fee_bps: int | None = None
    ) -> Recovery:
        """Make the ledger agree with a receipt the agent holds; idempotent.

        The receipt must carry both valid signatures and be countersigned by `coordinator`
        (this coordinator's id: nobody else's countersignature may move money here). Then, in
        one transaction, with the request's hold found by its key (`hold_key(request_id)`):

        - the capture is in the ledger: nothing moves (its charge must equal the receipt's);
        - the hold is active (the capture never reached the database): it is captured now at
          the receipt's amount, fee and provider, under the capture's key (`capture_key`). With
          `fee_bps` and a fee that matches it, the row is the gateway's own capture, so a late
          capture from the gateway replays instead of conflicting;
        - the hold was released (start-up recovery releases every active hold): the consumer's
          balance is charged the receipt's amount under the same key; `InsufficientFunds` if it
          no longer holds that much (nothing moves; present the receipt again later);
        - no hold: `InvalidReceipt`, since a request is dispatched only after its hold is
          durable (a receipt of amount 0 moves nothing and is just stored).

        The receipt is stored too (once). Calling it again returns "already_captured".
        """
        return cast(
            Recovery,
            self.run(self.recovery_op(receipt, coordinator=coordinator, fee_bps=fee_bps)),
        )

    # -------------------------------------------------------------- payouts

    def _queue_payout(
        self,
        s: Session,
        now: datetime,
        kind: str,
        owner: str,
        destination: str,
        amount: int,
        epoch_id: int | None = None,
    ) -> Payout:
        payout = Payout(
            kind=kind,
            owner=owner,
            destination=destination,
            amount=amount,
            epoch_id=epoch_id,
            state="queued",
            created=now,
        )
        s.add(payout)
        s.flush()
        return payout

    def withdraw(self, consumer: str, amount: int, key: str, destination: str | None = None) -> int:
        """Queue a payout of unused balance to the consumer's wallet; returns the payout id.

        The tokens move to the payout-pending account now and leave the vault when a `Settler`
        sends the queued payouts.
        """
        check_owner(consumer, "consumer")
        check_amount(amount)
        dest = check_wallet(destination or consumer)

        def build(s: Session, tx: JournalTx, now: datetime) -> tuple[Legs, dict[str, Any]]:
            src = self.account(s, K.CONSUMER, consumer, create=False)
            payout = self._queue_payout(s, now, "withdrawal", consumer, dest, amount)
            return [(src, -amount), (self.payout_pending(s), amount)], {"payout_id": payout.id}

        params = {"consumer": consumer, "amount": amount, "destination": dest}
        return int(self.apply(key, "withdraw", params, build)["payout_id"])

    # -------------------------------------------------------------- staking

    def unbond(self, provider: str, amount: int, key: str) -> int:
        """Start unbonding part of a stake; withdrawable after `unbonding_period`.

        The waiting period is what makes slashing work: fraud found late can still be punished
        from stake that is on its way out. Returns the unbonding id.
        """
        check_owner(provider, "provider")
        check_amount(amount)

        def build(s: Session, tx: JournalTx, now: datetime) -> tuple[Legs, dict[str, Any]]:
            stake = self.account(s, K.PROVIDER_STAKE, provider, create=False)
            out = self.account(s, K.PROVIDER_UNBONDING, provider, create=True)
            row = Unbonding(
                provider=provider,
                amount=amount,
                available_at=now + self.unbonding_period,
                state="pending",
                created=now,
            )
            s.add(row)
            s.flush()
            return [(stake, -amount), (out, amount)], {"unbonding_id": row.id}

        return int(
            self.apply(key, "unbond", {"provider": provider, "amount": amount}, build)[
                "unbonding_id"
            ]
        )

    def withdraw_unbonded(self, provider: str, key: str) -> int:
        """Queue a payout of every unbonding that is due; returns the amount queued."""
        check_owner(provider, "provider")
        check_wallet(provider, "provider")

        def build(s: Session, tx: JournalTx, now: datetime) -> tuple[Legs, dict[str, Any]]:
            due = s.scalars(
                select(Unbonding).where(
                    Unbonding.provider == provider,
                    Unbonding.state == "pending",
                    Unbonding.available_at <= now,
                )
            ).all()
            total = sum(u.amount for u in due)
            if total <= 0:
                raise InvalidState(f"nothing unbonded is due for {provider} yet")
            for u in due:
                u.state = "withdrawn"
            src = self.account(s, K.PROVIDER_UNBONDING, provider, create=False)
            payout = self._queue_payout(s, now, "unbonded", provider, provider, total)
            legs = [(src, -total), (self.payout_pending(s), total)]
            return legs, {"amount": total, "payout_id": payout.id}

        return int(self.apply(key, "withdraw_unbonded", {"provider": provider}, build)["amount"])

    def slash(
        self,
        provider: str,
        amount: int,
        consumer_share: int,
        reason: str,
        evidence_ref: str,
        *,
        key: str,
        consumer: str | None = None,
    ) -> int:
        """Penalize a provider: `consumer_share` to the harmed consumer, the rest to treasury.

        Takes from the bonded stake first, then from stake still unbonding (newest first).
        Raises `InsufficientFunds` when `amount` exceeds both together. Returns the slash id.
        """
        check_owner(provider, "provider")
        check_amount(amount)
        check_amount(consumer_share, "consumer_share", allow_zero=True)
        if consumer_share > amount:
            raise InvalidAmount("consumer_share cannot exceed the slashed amount")
        if consumer_share and consumer is None:
            raise LedgerError("a consumer share needs the harmed consumer's id")
        if consumer is not None:
            check_owner(consumer, "consumer")
        if not reason.strip() or not evidence_ref.strip():
            raise LedgerError("a slash needs a reason and an evidence reference")

        def build(s: Session, tx: JournalTx, now: datetime) -> tuple[Legs, dict[str, Any]]:
            stake = s.scalar(
                select(Account).where(Account.kind == K.PROVIDER_STAKE, Account.owner == provider)
            )
            pending = s.scalars(
                select(Unbonding)
                .where(Unbonding.provider == provider, Unbonding.state == "pending")
                .order_by(Unbonding.available_at.desc(), Unbonding.id.desc())
            ).all()
            bonded = stake.balance if stake is not None else 0
            if stake is None and not pending:
                raise UnknownAccount(f"provider {provider!r} has no stake")
            available = bonded + sum(u.amount for u in pending)
            if amount > available:
                raise InsufficientFunds(
                    f"slash of {amount} is above the stake of {provider} ({available})"
                )
            from_stake = min(amount, bonded)
            rest = amount - from_stake
            legs: Legs = []
            if from_stake and stake is not None:
                legs.append((stake, -from_stake))
            if rest:
                legs.append((self.account(s, K.PROVIDER_UNBONDING, provider, create=False), -rest))
            for u in pending:
                if rest <= 0:
                    break
                take = min(rest, u.amount)
                u.amount -= take
                rest -= take
                if u.amount == 0:
                    u.state = "slashed"
            if consumer_share and consumer is not None:
                legs.append((self.account(s, K.CONSUMER, consumer, create=True), consumer_share))
            if amount - consumer_share:
                legs.append((self.treasury(s), amount - consumer_share))
            row = Slash(
                provider=provider,
                amount=amount,
                consumer=consumer,
                consumer_share=consumer_share,
                reason=reason,
                evidence_ref=evidence_ref,
                journal_tx_id=tx.id,
                created=now,
            )
            s.add(row)
            s.flush()
            return legs, {"slash_id": row.id}

        params = {
            "provider": provider,
            "amount": amount,
            "consumer_share": consumer_share,
            "consumer": consumer,
            "reason": reason,
            "evidence_ref": evidence_ref,
        }
        return int(self.apply(key, "slash", params, build, memo=reason)["slash_id"])

    # ------------------------------------------------------------- receipts

    def record_receipts(self, receipts: Iterable[SignedReceipt], *, verify: bool = True) -> int:
        """Store countersigned receipts (batched in one database transaction).

        Recording the same receipt twice is a no-op; a different receipt under a known request
        id is refused (and then nothing of the batch is stored). With `verify`, both signatures
        are checked first. Returns how many new receipts were stored.
        """
        batch = list(receipts)
        if len({r.body.request_id for r in batch}) != len(batch):
            raise InvalidReceipt("the batch holds two receipts for one request id")
        checked = check_all(batch, signatures=verify)
        results = self.run_all([ReceiptOp(self, c) for c in checked], atomic=True)
        return sum(1 for new in results if new)

    def record_receipt(self, receipt: SignedReceipt) -> bool:
        """Store one receipt (both signatures checked); False when it was already stored."""
        return bool(self.run(self.receipt_op(receipt)))

    # ------------------------------------------------------------ epochs

    def close_epoch(self, key: str) -> EpochClose:
        """Close an epoch: seal the receipts so far under a Merkle root, queue net earnings.

        Every provider-earnings balance above zero moves to payout-pending in this one journal
        transaction, with one queued payout per provider; a `Settler` then sends them on chain
        with the root in a Memo.
        """

        def build(s: Session, tx: JournalTx, now: datetime) -> tuple[Legs, dict[str, Any]]:
            leaves_hex = s.execute(
                select(Receipt.id, Receipt.leaf)
                .where(Receipt.epoch_id.is_(None))
                .order_by(Receipt.id)
            ).all()
            root = merkle.root([bytes.fromhex(h) for _, h in leaves_hex])
            epoch = Epoch(
                state="closed", merkle_root=root, receipt_count=len(leaves_hex), created=now
            )
            s.add(epoch)
            s.flush()
            if leaves_hex:
                s.execute(
                    update(Receipt)
                    .execution_options(synchronize_session=False)
                    .where(Receipt.epoch_id.is_(None), Receipt.id <= leaves_hex[-1][0])
                    .values(epoch_id=epoch.id)
                )
            earners = s.scalars(
                select(Account)
                .where(Account.kind == K.PROVIDER_EARNINGS, Account.balance > 0)
                .order_by(Account.id)
            ).all()
            legs: Legs = []
            total = 0
            rows = []
            for acc in earners:
                legs.append((acc, -acc.balance))
                total += acc.balance
                rows.append(
                    {
                        "kind": "settlement",
                        "owner": acc.owner,
                        "destination": acc.owner,
                        "amount": acc.balance,
                        "epoch_id": epoch.id,
                        "state": "queued",
                        "created": now,
                    }
                )
            if rows:
                s.execute(insert(Payout), rows)
                legs.append((self.payout_pending(s), total))
            epoch.total_paid = total
            return legs, {
                "epoch_id": epoch.id,
                "merkle_root": root,
                "receipt_count": len(leaves_hex),
                "payout_count": len(rows),
                "total": total,
            }

        return EpochClose(**self.apply(key, "epoch", {}, build))

    def epoch_leaves(self, epoch_id: int) -> list[tuple[str, str]]:
        """(request_id, leaf hex) of an epoch, in tree order."""
        with self.sessions() as s:
            return [
                (rid, leaf)
                for rid, leaf in s.execute(
                    select(Receipt.request_id, Receipt.leaf)
                    .where(Receipt.epoch_id == epoch_id)
                    .order_by(Receipt.id)
                )
            ]

    def totals(self) -> dict[str, int]:
        """Sum of balances per account kind (for reports and the audit)."""
        with self.sessions() as s:
            return {
                k: int(v)
                for k, v in s.execute(
                    select(Account.kind, func.sum(Account.balance)).group_by(Account.kind)
                )
            }
