"""Money on a local network: the embedded Solana chain, a funded dev consumer, staked agents.

Before the coordinator starts, `fund_local_network` creates the mint and vault (LiteSVM, kept
in a journal file so a later process can replay it), mints tokens to a dev consumer and to every
agent's wallet, and makes real deposits into the vault: the consumer's is credited to its
balance, each agent's is bonded as its stake. After the run, `settle_local_network` closes the
epoch and pays every provider on chain, with the Merkle root of the epoch's receipts in a memo.
Only one process holds the chain at a time: the coordinator never touches it during the run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rigpool.coordinator.db import open_database
from rigpool.ledger import Ledger, Settler, audit
from rigpool.ledger.solana.litesvm_chain import LiteSVMChain
from rigpool.protocol.signing import load_or_create_identity

#: 6-decimal USD stablecoin units
UNIT = 1_000_000


@dataclass(frozen=True)
class LocalMoney:
    coordinator_key: Path
    chain_journal: Path
    consumer_wallet: str
    consumer_deposit: int
    stake_per_provider: int


def fund_local_network(
    workdir: Path,
    database_url: str,
    provider_keys: list[Path],
    *,
    consumer_deposit: int = 100 * UNIT,
    stake: int = 50 * UNIT,
) -> LocalMoney:
    coordinator, _ = load_or_create_identity(workdir / "coordinator-keypair.json")
    journal = workdir / "chain.jsonl"
    chain = LiteSVMChain(coordinator.keypair_bytes(), journal=journal)
    settler = Settler(Ledger(open_database(database_url)), chain)
    consumer, _ = load_or_create_identity(workdir / "consumer-keypair.json")
    chain.fund(consumer.agent_id, consumer_deposit)
    settler.confirm_deposit(chain.deposit(consumer.keypair_bytes(), consumer_deposit))
    for key in provider_keys:
        provider, _ = load_or_create_identity(key)
        chain.fund(provider.agent_id, stake)
        settler.confirm_deposit(chain.deposit(provider.keypair_bytes(), stake), purpose="stake")
    return LocalMoney(
        workdir / "coordinator-keypair.json", journal, consumer.agent_id, consumer_deposit, stake
    )


@dataclass(frozen=True)
class EpochSummary:
    merkle_root: str
    receipts: int
    paid: dict[str, int]  # provider wallet -> base units paid on chain this epoch
    signatures: list[str]
    problems: list[str]  # `rigpool ledger audit` findings (empty: clean)


def settle_local_network(workdir: Path, database_url: str, epoch_key: str) -> EpochSummary:
    coordinator, _ = load_or_create_identity(workdir / "coordinator-keypair.json")
    chain = LiteSVMChain(coordinator.keypair_bytes(), journal=workdir / "chain.jsonl")
    ledger = Ledger(open_database(database_url))
    before = {k: v for k, v in ledger.balances().items() if k[0] == "provider_earnings"}
    settlement = Settler(ledger, chain).settle_epoch(epoch_key)
    paid = {owner: amount for (_kind, owner), amount in before.items() if amount > 0}
    return EpochSummary(
        merkle_root=settlement.epoch.merkle_root,
        receipts=settlement.epoch.receipt_count,
        paid=paid,
        signatures=settlement.signatures,
        problems=audit(ledger, chain),
    )
