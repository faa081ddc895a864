"""`rigpool ledger ...` and `rigpool receipt verify`: thin commands over `rigpool.ledger`.

The chain is either the embedded one, persisted as a journal file next to the database
(`--chain-journal`), or a cluster through `--rpc-url` and `--mint`. The coordinator's key file
(a Solana keypair JSON) is the vault's authority.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from rigpool.cli.common import DEFAULT_DB, DbOption, err
from rigpool.core.errors import RigpoolError
from rigpool.ledger.chain import Chain

ledger_app = typer.Typer(help="Inspect and settle the money ledger.", no_args_is_help=True)
receipt_app = typer.Typer(help="Check receipts against the chain.", no_args_is_help=True)
console = Console()


@receipt_app.callback()
def _receipt_group() -> None:
    """Check receipts against the chain (a group, so `rigpool receipt verify` keeps its name)."""


KeyOption = Annotated[
    Path,
    typer.Option("--coordinator-key", help="Coordinator keypair file (vault authority)."),
]
JournalOption = Annotated[
    Path | None,
    typer.Option("--chain-journal", help="Embedded chain journal (LiteSVM replay file)."),
]
RpcOption = Annotated[str | None, typer.Option("--rpc-url", help="Solana RPC URL instead.")]
MintOption = Annotated[str | None, typer.Option("--mint", help="Token mint (with --rpc-url).")]


def _chain(key: Path | None, journal: Path | None, rpc_url: str | None, mint: str | None) -> Chain:
    """The chain to talk to; without a key it is read-only (enough to verify)."""
    from rigpool.ledger.solana import LiteSVMChain, RpcChain
    from rigpool.protocol.signing import load_or_create_identity

    secret: bytes | None = None
    if key is not None:
        if not key.exists():
            raise typer.BadParameter(f"{key} does not exist", param_hint="--coordinator-key")
        secret = load_or_create_identity(key)[0].keypair_bytes()
    if rpc_url:
        if not mint:
            raise typer.BadParameter("--rpc-url needs --mint", param_hint="--mint")
        return RpcChain(rpc_url, mint, secret)
    if journal is None or not journal.exists():
        raise typer.BadParameter("give --chain-journal (an existing file) or --rpc-url")
    return LiteSVMChain(secret, journal=journal)


def _ledger(db: str):  # type: ignore[no-untyped-def]
    from rigpool.coordinator.db import open_database
    from rigpool.ledger import Ledger

    return Ledger(open_database(db))


@ledger_app.command()
def audit(
    db: DbOption = DEFAULT_DB,
    coordinator_key: Annotated[
        Path | None, typer.Option("--coordinator-key", help="Coordinator keypair file.")
    ] = None,
    chain_journal: JournalOption = None,
    rpc_url: RpcOption = None,
    mint: MintOption = None,
) -> None:
    """Check every ledger invariant; exit 1 and say what is wrong when one fails."""
    from rigpool.ledger.audit import audit as run_audit
    from rigpool.ledger.audit import slashes

    wants_chain = coordinator_key or chain_journal or rpc_url
    chain = _chain(coordinator_key, chain_journal, rpc_url, mint) if wants_chain else None
    ledger = _ledger(db)
    problems = run_audit(ledger, chain)
    penalties = slashes(ledger)
    if penalties:
        table = Table(title=f"slashes ({len(penalties)})")
        for column in ("id", "provider", "amount", "to consumer", "reason", "evidence"):
            table.add_column(column)
        for row in penalties:
            table.add_row(
                str(row["id"]),
                row["provider"],
                str(row["amount"]),
                str(row["consumer_share"]),
                row["reason"],
                row["evidence_ref"][:23],
            )
        console.print(table)
    if problems:
        for problem in problems:
            err.print(f"[red]✗[/red] {problem}")
        raise typer.Exit(1)
    console.print("[green]ledger audit clean[/green]" + (" (vault matches chain)" if chain else ""))


@ledger_app.command()
def balances(
    db: DbOption = DEFAULT_DB,
    owner: Annotated[str | None, typer.Option(help="Only this owner's accounts.")] = None,
) -> None:
    """Print account balances (integer base units)."""
    table = Table("kind", "owner", "balance")
    for (kind, who), amount in sorted(_ledger(db).balances(owner).items()):
        table.add_row(kind, who, f"{amount:,}")
    console.print(table)


@ledger_app.command()
def settle(
    coordinator_key: KeyOption,
    db: DbOption = DEFAULT_DB,
    chain_journal: JournalOption = None,
    rpc_url: RpcOption = None,
    mint: MintOption = None,
    key: Annotated[str | None, typer.Option(help="Idempotency key of the epoch.")] = None,
) -> None:
    """Recover unfinished settlement, close an epoch and pay every queued payout."""
    import secrets

    from rigpool.ledger import Settler

    ledger = _ledger(db)
    try:
        done = Settler(ledger, _chain(coordinator_key, chain_journal, rpc_url, mint)).settle_epoch(
            key or f"epoch:{secrets.token_hex(8)}"
        )
    except RigpoolError as exc:
        err.print(f"[red]error:[/red] {exc.message}")
        raise typer.Exit(1) from exc
    e = done.epoch
    console.print(
        f"epoch {e.epoch_id}: {e.receipt_count} receipts, root {e.merkle_root}, "
        f"{e.payout_count} payouts totalling {e.total:,} in {len(done.signatures)} transactions"
    )
    for sig in done.signatures:
        console.print(f"  {sig}")


@ledger_app.command()
def recover(
    coordinator_key: KeyOption,
    db: DbOption = DEFAULT_DB,
    chain_journal: JournalOption = None,
    rpc_url: RpcOption = None,
    mint: MintOption = None,
) -> None:
    """Reconcile settlement transactions left by a crash against the chain."""
    from rigpool.ledger import Settler

    report = Settler(_ledger(db), _chain(coordinator_key, chain_journal, rpc_url, mint)).recover()
    console.print(f"confirmed {len(report.confirmed)}, requeued {report.requeued} payouts")


@receipt_app.command()
def verify(
    file: Annotated[Path, typer.Argument(help="Receipt proof file (JSON).")],
    chain_journal: JournalOption = None,
    rpc_url: RpcOption = None,
    mint: MintOption = None,
    coordinator: Annotated[
        str | None, typer.Option(help="Expected coordinator public key (base58).")
    ] = None,
) -> None:
    """Prove from the chain alone that a receipt was included in its epoch and paid."""
    from rigpool.ledger.receipts import ReceiptProof
    from rigpool.ledger.verify import verify_receipt

    try:
        proof = ReceiptProof.read(file)
        ok = verify_receipt(
            proof, _chain(None, chain_journal, rpc_url, mint or proof.mint), coordinator=coordinator
        )
    except RigpoolError as exc:
        err.print(f"[red]✗ not verified:[/red] {exc.message}")
        raise typer.Exit(1) from exc
    console.print(
        f"[green]✓[/green] receipt {ok.request_id}: in epoch {ok.epoch_id}, paid {ok.paid:,} "
        f"by transaction {ok.signature}"
    )
