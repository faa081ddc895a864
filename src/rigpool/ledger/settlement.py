"""Settlement: moving queued payouts from the vault to wallets on chain, crash-safely.

The order of writes is what makes it safe (the outbox pattern, with the chain as the outbox's
reader):

1. `close_epoch` (or `withdraw`) moves the tokens to the payout-pending account and queues one
   payout per wallet, in one database transaction.
2. The settler signs the transactions, then records each one's *signature and blockhash* as a
   `ChainTx` intent, with its payouts marked "sent", in one database transaction. Nothing has
   left the vault yet.
3. It sends each transaction, and once it landed, confirms it: payout-pending -> external, the
   payouts "paid". Also one database transaction, idempotent on the signature.

A crash between any two steps leaves intents whose fate `recover()` reads off the chain: found
and successful -> confirm; not found and blockhash still valid -> send the *same* bytes again
(same signature, so it can land at most once); not found and blockhash expired -> it can never
land, so its payouts go back to the queue and are paid by a new transaction. Nothing is paid
twice and nothing is left unpaid.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from rigpool.ledger import merkle
from rigpool.ledger.chain import Chain, PreparedTx
from rigpool.ledger.errors import ChainError, InvalidReceipt, UnknownAccount
from rigpool.ledger.faults import Faults
from rigpool.ledger.ledger import EpochClose, Ledger, Legs
from rigpool.ledger.receipts import ReceiptProof, SignedReceipt
from rigpool.ledger.tables import ChainTx, Epoch, JournalTx, Payout, Receipt


@dataclass
class FlushReport:
    """Transactions a flush or recovery sent and confirmed, and what it gave back to the queue."""

    confirmed: list[str] = field(default_factory=list)
    requeued: int = 0


@dataclass(frozen=True)
class Settlement:
    epoch: EpochClose
    signatures: list[str]


class Settler:
    """Sends the ledger's queued payouts through a `Chain`; run `recover()` at start-up."""

    def __init__(self, ledger: Ledger, chain: Chain, *, faults: Faults | None = None):
        self.ledger = ledger
        self.chain = chain
        self.faults = faults if faults is not None else Faults()

    # ------------------------------------------------------------- deposits

    def confirm_deposit(self, signature: str, *, purpose: str = "consumer") -> int:
        """Credit the transfer into the vault made by transaction `signature`, exactly once.

        The depositor is the wallet that signed the transfer; the amount is what reached the
        vault. Raises `DuplicateDeposit` for a signature already credited.
        """
        tx = self.chain.get_transaction(signature)
        if tx is None or not tx.ok:
            raise UnknownAccount(f"no successful transaction {signature} on chain")
        into = [t for t in tx.transfers if t.destination == self.chain.vault]
        if not into:
            raise UnknownAccount(f"transaction {signature} pays nothing into the vault")
        owners = {t.authority for t in into}
        if len(owners) != 1:
            raise UnknownAccount(f"transaction {signature} mixes several depositors")
        amount = sum(t.amount for t in into)
        return self.ledger.credit_deposit(owners.pop(), amount, signature, purpose=purpose)

    # ----------------------------------------------------------- settlement

    def settle_epoch(self, key: str) -> Settlement:
        """Close an epoch (idempotent on `key`) and pay every queued payout."""
        epoch = self.ledger.close_epoch(key)
        report = self.flush()
        return Settlement(epoch, report.confirmed)

    def flush(self) -> FlushReport:
        """Reconcile old intents, then send every queued payout; returns what landed."""
        report = self.recover()
        while True:
            batch = self._next_batch()
            if batch is None:
                return report
            ids, memo, payments = batch
            self.faults.hit("settle.before_intent")
            prepared = self.chain.prepare_payouts(payments, memo)
            intent_ids = self._record_intents(ids, prepared)
            for cid, tx in zip(intent_ids, prepared, strict=True):
                self.faults.hit("settle.before_send")
                self.chain.send(tx.raw)
                self.faults.hit("settle.after_send")
                self._confirm(cid, tx.signature)
                report.confirmed.append(tx.signature)
                self.faults.hit("settle.after_record")

    def _next_batch(self) -> tuple[list[int], str, list[tuple[str, int]]] | None:
        """The oldest group of queued payouts that share a memo (one epoch, or withdrawals)."""
        with self.ledger.sessions() as s:
            first = s.scalar(select(Payout).where(Payout.state == "queued").order_by(Payout.id))
            if first is None:
                return None
            q = select(Payout).where(Payout.state == "queued").order_by(Payout.id)
            if first.epoch_id is not None:
                epoch = s.get(Epoch, first.epoch_id)
                assert epoch is not None
                q = q.where(Payout.epoch_id == first.epoch_id)
                memo = f"rigpool:epoch:{epoch.id}:{epoch.merkle_root}:q={first.id}"
            else:
                q = q.where(Payout.epoch_id.is_(None))
                memo = f"rigpool:payout:q={first.id}"
            rows = s.scalars(q).all()
            return [p.id for p in rows], memo, [(p.destination, p.amount) for p in rows]

    def _record_intents(self, payout_ids: list[int], prepared: list[PreparedTx]) -> list[int]:
        """Step 2: write every intent and mark its payouts sent, before anything is sent."""
        now = self.ledger.clock()
        out: list[int] = []
        with self.ledger.lock, self.ledger.sessions() as s, s.begin():
            pos = 0
            for tx in prepared:
                row = ChainTx(
                    signature=tx.signature,
                    blockhash=tx.blockhash,
                    raw=tx.raw,
                    memo="",
                    state="prepared",
                    created=now,
                    updated=now,
                )
                s.add(row)
                s.flush()
                ids = payout_ids[pos : pos + len(tx.payments)]
                pos += len(tx.payments)
                done = s.execute(
                    update(Payout)
                    .execution_options(synchronize_session=False)
                    .execution_options(synchronize_session=False)
                    .where(Payout.id.in_(ids), Payout.state == "queued")
                    .values(state="sent", chain_tx_id=row.id)
                )
                if done.rowcount != len(ids):  # type: ignore[attr-defined]
                    raise ChainError("payouts changed while being sent (two settlers?)")
                out.append(row.id)
        return out

    def _confirm(self, chain_tx_id: int, signature: str) -> None:
        """Step 3: the transaction landed; the tokens left the vault."""

        def build(s: Session, tx: JournalTx, now: object) -> tuple[Legs, dict[str, object]]:
            ct = s.get(ChainTx, chain_tx_id)
            assert ct is not None
            payouts = s.scalars(select(Payout).where(Payout.chain_tx_id == chain_tx_id)).all()
            total = sum(p.amount for p in payouts)
            for p in payouts:
                p.state = "paid"
            ct.state = "confirmed"
            epochs = {p.epoch_id for p in payouts if p.epoch_id is not None}
            s.flush()
            for eid in epochs:
                left = s.scalar(
                    select(Payout.id).where(Payout.epoch_id == eid, Payout.state != "paid")
                )
                if left is None:
                    s.execute(update(Epoch).where(Epoch.id == eid).values(state="paid"))
            legs: Legs = [
                (self.ledger.payout_pending(s), -total),
                (self.ledger.external(s), total),
            ]
            return legs, {"paid": total}

        self.ledger.apply(
            f"chain:{signature}", "payout", {"chain_tx": chain_tx_id}, build, reference=signature
        )

    def _drop(self, chain_tx_id: int) -> int:
        """The transaction can never land: give its payouts back to the queue."""
        with self.ledger.lock, self.ledger.sessions() as s, s.begin():
            ct = s.get(ChainTx, chain_tx_id)
            assert ct is not None
            ct.state, ct.updated = "dropped", self.ledger.clock()
            done = s.execute(
                update(Payout)
                .execution_options(synchronize_session=False)
                .where(Payout.chain_tx_id == chain_tx_id, Payout.state == "sent")
                .values(state="queued", chain_tx_id=None)
            )
            return int(done.rowcount)  # type: ignore[attr-defined]

    def recover(self) -> FlushReport:
        """Settle the fate of every intent left by a crash, by asking the chain."""
        report = FlushReport()
        with self.ledger.sessions() as s:
            pending = s.execute(
                select(ChainTx.id, ChainTx.signature, ChainTx.blockhash, ChainTx.raw)
                .where(ChainTx.state == "prepared")
                .order_by(ChainTx.id)
            ).all()
        for cid, sig, blockhash, raw in pending:
            onchain = self.chain.get_transaction(sig)
            if onchain is None and self.chain.blockhash_valid(blockhash):
                self.chain.send(raw)  # same bytes, same signature: lands at most once
                onchain = self.chain.get_transaction(sig)
            if onchain is not None and onchain.ok:
                self._confirm(cid, sig)
                report.confirmed.append(sig)
            else:
                report.requeued += self._drop(cid)
        return report

    # --------------------------------------------------------------- proofs

    def receipt_proof(self, request_id: str) -> ReceiptProof:
        """The file a consumer or provider keeps: receipt, Merkle proof, settlement hints."""
        with self.ledger.sessions() as s:
            rec = s.scalar(select(Receipt).where(Receipt.request_id == request_id))
            if rec is None:
                raise UnknownAccount(f"no receipt for request {request_id}")
            if rec.epoch_id is None:
                raise InvalidReceipt(f"receipt {request_id} is not settled yet (epoch open)")
            epoch = s.get(Epoch, rec.epoch_id)
            assert epoch is not None
            leaves = list(
                s.execute(
                    select(Receipt.id, Receipt.leaf)
                    .where(Receipt.epoch_id == rec.epoch_id)
                    .order_by(Receipt.id)
                ).tuples()
            )
            sigs = s.scalars(
                select(ChainTx.signature)
                .join(Payout, Payout.chain_tx_id == ChainTx.id)
                .where(
                    Payout.epoch_id == rec.epoch_id,
                    Payout.owner == rec.provider,
                    ChainTx.state == "confirmed",
                )
            ).all()
        index = next(i for i, (rid, _) in enumerate(leaves) if rid == rec.id)
        steps = merkle.proof([bytes.fromhex(h) for _, h in leaves], index)
        return ReceiptProof(
            receipt=SignedReceipt.model_validate(rec.body),
            epoch_id=epoch.id,
            merkle_root=epoch.merkle_root,
            proof=[{"sibling": p.sibling, "left": p.left} for p in steps],
            mint=self.chain.mint,
            settlement_signatures=list(sigs),
        )
