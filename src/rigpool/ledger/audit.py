"""The audit: every invariant of the book, checked from the raw rows, in plain words.

It recomputes balances from postings rather than trusting the cached `balance` column, so it
also catches a bug that moved a balance without a posting (or the reverse). With a chain, it
also checks that the vault on chain holds exactly what the ledger says it must.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import func, select

from rigpool.ledger.chain import Chain
from rigpool.ledger.ledger import Ledger
from rigpool.ledger.tables import (
    Account,
    AccountKind,
    ChainTx,
    Deposit,
    Hold,
    Payout,
    Posting,
    Slash,
    Unbonding,
)

K = AccountKind


def _pairs(rows: Iterable[Any]) -> dict[Any, Any]:
    return {k: v for k, v in rows}


def _slash_problems(s: Any, accounts: dict[int, Account]) -> list[str]:
    """Every slash moved exactly its amount out of the provider's stake, and nowhere else."""
    problems: list[str] = []
    for slash in s.scalars(select(Slash)):
        legs = s.execute(
            select(Posting.account_id, Posting.amount).where(Posting.tx_id == slash.journal_tx_id)
        ).all()
        taken = -sum(
            amount
            for aid, amount in legs
            if accounts[aid].owner == slash.provider
            and accounts[aid].kind in (K.PROVIDER_STAKE, K.PROVIDER_UNBONDING)
        )
        to_consumer = sum(
            amount
            for aid, amount in legs
            if accounts[aid].kind == K.CONSUMER and accounts[aid].owner == slash.consumer
        )
        if taken != slash.amount or to_consumer != slash.consumer_share:
            problems.append(
                f"slash {slash.id} of {slash.provider} records {slash.amount} "
                f"({slash.consumer_share} to the consumer) but its postings take {taken} "
                f"({to_consumer} to the consumer)"
            )
        if not slash.evidence_ref.strip():
            problems.append(f"slash {slash.id} of {slash.provider} names no evidence")
    return problems


def slashes(ledger: Ledger) -> list[dict[str, Any]]:
    """Every slash, oldest first: who, how much, why, and the evidence it rests on."""
    with ledger.sessions() as s:
        return [
            {
                "id": row.id,
                "provider": row.provider,
                "amount": row.amount,
                "consumer_share": row.consumer_share,
                "reason": row.reason,
                "evidence_ref": row.evidence_ref,
                "created": row.created.isoformat(),
            }
            for row in s.scalars(select(Slash).order_by(Slash.id))
        ]


def audit(ledger: Ledger, chain: Chain | None = None) -> list[str]:
    """Return every violated invariant as a sentence; an empty list means the book is sound."""
    problems: list[str] = []
    with ledger.sessions() as s:
        accounts = {a.id: a for a in s.scalars(select(Account))}
        total = sum(a.balance for a in accounts.values())
        if total != 0:
            problems.append(f"accounts sum to {total}, not 0: tokens were created or destroyed")
        for a in accounts.values():
            if a.kind != K.EXTERNAL and a.balance < 0:
                problems.append(f"{a.kind} account of {a.owner} is below zero ({a.balance})")
        posted = _pairs(
            s.execute(
                select(Posting.account_id, func.sum(Posting.amount)).group_by(Posting.account_id)
            ).all()
        )
        for aid, a in accounts.items():
            if int(posted.get(aid, 0) or 0) != a.balance:
                problems.append(
                    f"{a.kind} account of {a.owner} shows {a.balance} but its postings sum to "
                    f"{posted.get(aid, 0)}"
                )
        for tx_id, amount in s.execute(
            select(Posting.tx_id, func.sum(Posting.amount))
            .group_by(Posting.tx_id)
            .having(func.sum(Posting.amount) != 0)
        ):
            problems.append(f"journal transaction {tx_id} is unbalanced by {amount}")

        def by_owner(kind: K) -> dict[str, int]:
            return {a.owner: a.balance for a in accounts.values() if a.kind == kind}

        held = _pairs(
            s.execute(
                select(Hold.consumer, func.sum(Hold.amount))
                .where(Hold.state == "active")
                .group_by(Hold.consumer)
            ).all()
        )
        for owner in set(held) | set(by_owner(K.CONSUMER_HOLD)):
            want, have = int(held.get(owner, 0) or 0), by_owner(K.CONSUMER_HOLD).get(owner, 0)
            if want != have:
                problems.append(
                    f"holds of {owner} add up to {want} but its hold account has {have}"
                )
        unbonding = _pairs(
            s.execute(
                select(Unbonding.provider, func.sum(Unbonding.amount))
                .where(Unbonding.state == "pending")
                .group_by(Unbonding.provider)
            ).all()
        )
        for owner in set(unbonding) | set(by_owner(K.PROVIDER_UNBONDING)):
            want = int(unbonding.get(owner, 0) or 0)
            have = by_owner(K.PROVIDER_UNBONDING).get(owner, 0)
            if want != have:
                problems.append(
                    f"unbondings of {owner} add up to {want} but the account has {have}"
                )
        unpaid = int(s.scalar(select(func.sum(Payout.amount)).where(Payout.state != "paid")) or 0)
        pending = sum(by_owner(K.PAYOUT_PENDING).values())
        if unpaid != pending:
            problems.append(f"unpaid payouts add up to {unpaid} but payout-pending holds {pending}")
        deposited = int(s.scalar(select(func.sum(Deposit.amount))) or 0)
        paid = int(s.scalar(select(func.sum(Payout.amount)).where(Payout.state == "paid")) or 0)
        external = sum(by_owner(K.EXTERNAL).values())
        if -external != deposited - paid:
            problems.append(
                f"the vault should hold deposits {deposited} - payouts {paid} = {deposited - paid}"
                f", but the external account says {-external}"
            )
        problems.extend(_slash_problems(s, accounts))
        in_flight = int(
            s.scalar(select(func.count(ChainTx.id)).where(ChainTx.state == "prepared")) or 0
        )
    if in_flight:
        problems.append(
            f"{in_flight} settlement transaction(s) are not reconciled with the chain: "
            "run the settler's recover()"
        )
    if chain is not None and not in_flight:
        on_chain = chain.vault_balance()
        if on_chain != -external:
            problems.append(f"the vault holds {on_chain} on chain but the ledger says {-external}")
    return problems
