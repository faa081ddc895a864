"""Ledger benchmark: receipts recorded per second, and settling a large epoch on LiteSVM.

    python bench/ledger.py            # full: 50k receipts; 1,000,000 receipts x 10,000 providers
    python bench/ledger.py --quick    # small run for CI

Part 1 records countersigned receipts (both ed25519 signatures verified) into SQLite, batched
1,000 per database transaction, against a baseline of one database transaction per receipt.
It also times the per-request money path (hold + capture, one database transaction each).

Part 2 settles one epoch of N receipts across P providers. The receipts are aggregated per
provider before anything touches the chain (that is what provider-earnings accounts are), so
the chain sees one transfer per provider, packed several per transaction. Honest shortcuts,
stated in the JSON's setup: the 1M receipt rows are inserted with synthetic leaf hashes (signing
and verifying was measured in part 1) and the providers' earnings are credited by one bulk
journal transaction; the Merkle root over all N leaves, the payout queue, every chain
transaction and the crash-safe intent/confirm writes are the real code. The per-request
baseline (one transfer transaction per receipt) is timed on a sample and extrapolated.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from sqlalchemy import insert
from sqlalchemy.orm import Session

from rigpool.coordinator.db import open_database
from rigpool.ledger import Ledger, Price, ReceiptBody, Settler, agent_sign, audit, countersign
from rigpool.ledger.ledger import Legs
from rigpool.ledger.solana import LiteSVMChain
from rigpool.ledger.solana.common import LAMPORTS_PER_SIGNATURE
from rigpool.ledger.tables import AccountKind, JournalTx, Receipt
from rigpool.protocol.signing import Identity

RESULTS = Path(__file__).parent / "results" / "ledger.json"
ATA_RENT_LAMPORTS = 2_039_280  # rent-exempt minimum of a 165-byte token account


def make_receipts(n: int, coordinator: Identity, providers: list[Identity]) -> list[Any]:
    price = Price(100_000, 300_000)
    out = []
    for i in range(n):
        p = providers[i % len(providers)]
        amount = price.cost(500 + i % 700, 50 + i % 300)
        fee = amount * 500 // 10_000
        body = ReceiptBody(
            request_id=f"req-{i}",
            model="toy",
            prompt_tokens=500 + i % 700,
            completion_tokens=50 + i % 300,
            price_input_per_million=100_000,
            price_output_per_million=300_000,
            amount=amount,
            fee=fee,
            provider_amount=amount - fee,
            provider=p.agent_id,
            consumer="consumer-1",
            coordinator=coordinator.agent_id,
            time=datetime(2026, 1, 1),
        )
        out.append(countersign(body, agent_sign(body, p), coordinator))
    return out


def bench_receipts(n: int, baseline_n: int, ops_n: int, tmp: Path) -> dict[str, float]:
    coordinator = Identity.generate()
    providers = [Identity.generate() for _ in range(50)]
    receipts = make_receipts(n + baseline_n, coordinator, providers)
    ledger = Ledger(open_database(f"sqlite:///{tmp}/receipts.db"))
    t = time.perf_counter()
    for i in range(0, n, 1000):
        ledger.record_receipts(receipts[i : i + 1000])
    batched = n / (time.perf_counter() - t)
    t = time.perf_counter()
    for r in receipts[n:]:
        ledger.record_receipt(r)
    single = baseline_n / (time.perf_counter() - t)

    ledger.credit_deposit("consumer-1", 10**15, "9" * 88)
    t = time.perf_counter()
    for i in range(ops_n):
        hold = ledger.hold("consumer-1", 5_000, f"h{i}")
        ledger.capture(hold, 3_000, providers[i % 50].agent_id, 500, f"c{i}")
    requests = ops_n / (time.perf_counter() - t)
    assert audit(ledger) == []
    return {
        "receipts_per_s_batched": round(batched),
        "receipts_per_s_one_tx_each": round(single),
        "requests_per_s_hold_capture": round(requests),
    }


def bench_settlement(n_receipts: int, n_providers: int, sample: int, tmp: Path) -> dict[str, Any]:
    coordinator = Identity.generate()
    chain = LiteSVMChain(coordinator.keypair_bytes())
    ledger = Ledger(open_database(f"sqlite:///{tmp}/settle.db"))
    settler = Settler(ledger, chain)
    providers = [Identity.generate().agent_id for _ in range(n_providers)]
    consumer = Identity.generate()
    chain.fund(consumer.agent_id, 10**15)
    settler.confirm_deposit(chain.deposit(consumer.keypair_bytes(), 10**15))

    # Receipts: per-provider aggregation happens as they are recorded.
    t = time.perf_counter()
    earned = [0] * n_providers
    now = datetime(2026, 1, 1)
    rows = []
    with ledger.sessions() as s, s.begin():
        for i in range(n_receipts):
            p = i % n_providers
            amount = 1_000 + i % 977
            earned[p] += amount
            rows.append(
                {
                    "request_id": f"r{i}",
                    "provider": providers[p],
                    "consumer": consumer.agent_id,
                    "amount": amount,
                    "provider_amount": amount,
                    "leaf": hashlib.sha256(b"%d" % i).hexdigest(),
                    "body": {},
                    "epoch_id": None,
                    "created": now,
                }
            )
            if len(rows) == 50_000:
                s.execute(insert(Receipt), rows)
                rows = []
        if rows:
            s.execute(insert(Receipt), rows)
    insert_s = time.perf_counter() - t

    def build(s: Session, tx: JournalTx, _now: datetime) -> tuple[Legs, dict[str, Any]]:
        legs: Legs = [
            (ledger.account(s, AccountKind.CONSUMER, consumer.agent_id, create=False), -sum(earned))
        ]
        for p, amount in zip(providers, earned, strict=True):
            legs.append((ledger.account(s, AccountKind.PROVIDER_EARNINGS, p, create=True), amount))
        return legs, {}

    ledger.apply("bench:captures", "bench", {}, build)

    t = time.perf_counter()
    first = settler.settle_epoch("epoch-1")
    first_s = time.perf_counter() - t
    txs_first = len(first.signatures)

    # Steady state: the providers' token accounts exist now; same earnings again.
    ledger.apply("bench:captures-2", "bench", {}, build)
    t = time.perf_counter()
    second = settler.settle_epoch("epoch-2")
    second_s = time.perf_counter() - t
    txs_second = len(second.signatures)
    assert all(
        chain.token_balance(p) == 2 * e for p, e in zip(providers[:50], earned[:50], strict=False)
    )
    problems = audit(ledger, chain)
    assert problems == [], problems

    # Baseline: one transaction per receipt, timed on a sample.
    t = time.perf_counter()
    for i in range(sample):
        for tx in chain.prepare_payouts([(providers[i % n_providers], 1)], f"per-request:{i}"):
            chain.send(tx.raw)
    per_tx_s = (time.perf_counter() - t) / sample

    fees = txs_second * LAMPORTS_PER_SIGNATURE
    per_request_fees = n_receipts * LAMPORTS_PER_SIGNATURE
    return {
        "receipts": n_receipts,
        "providers": n_providers,
        "receipt_rows_insert_s": round(insert_s, 2),
        "merkle_root": first.epoch.merkle_root,
        "txs_first_epoch_creating_token_accounts": txs_first,
        "wall_s_first_epoch": round(first_s, 2),
        "txs_steady_epoch": txs_second,
        "wall_s_steady_epoch": round(second_s, 2),
        "transfers_per_tx_steady": round(n_providers / txs_second, 1),
        "fee_lamports_steady_epoch": fees,
        "fee_lamports_first_epoch": txs_first * LAMPORTS_PER_SIGNATURE,
        "one_time_token_account_rent_lamports": n_providers * ATA_RENT_LAMPORTS,
        "baseline_per_request_txs": n_receipts,
        "baseline_per_request_fee_lamports": per_request_fees,
        "baseline_per_request_wall_s_extrapolated": round(per_tx_s * n_receipts, 1),
        "fee_saving_factor": round(per_request_fees / fees, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (seconds)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.quick:
        sizes = {
            "receipts": 5_000,
            "baseline": 500,
            "ops": 500,
            "n": 20_000,
            "providers": 200,
            "sample": 200,
        }
    else:
        sizes = {
            "receipts": 50_000,
            "baseline": 2_000,
            "ops": 2_000,
            "n": 1_000_000,
            "providers": 10_000,
            "sample": 2_000,
        }
    console = Console()
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        rec = bench_receipts(sizes["receipts"], sizes["baseline"], sizes["ops"], Path(d))
        st = bench_settlement(sizes["n"], sizes["providers"], sizes["sample"], Path(d))
        total = time.perf_counter() - t

    table = Table(title=f"rigpool ledger benchmark ({'quick' if args.quick else 'full'})")
    table.add_column("measure")
    table.add_column("rigpool", justify="right")
    table.add_column("baseline", justify="right")
    table.add_row(
        "receipts recorded / s (SQLite)",
        f"{rec['receipts_per_s_batched']:,} (batch 1000)",
        f"{rec['receipts_per_s_one_tx_each']:,} (1 per tx)",
    )
    table.add_row("requests / s (hold + capture)", f"{rec['requests_per_s_hold_capture']:,}", "")
    table.add_row(
        f"on-chain txs, {st['receipts']:,} receipts / {st['providers']:,} providers",
        f"{st['txs_steady_epoch']:,} "
        f"({st['txs_first_epoch_creating_token_accounts']:,} first epoch)",
        f"{st['baseline_per_request_txs']:,} (1 per request)",
    )
    table.add_row(
        "settlement wall time",
        f"{st['wall_s_steady_epoch']} s ({st['wall_s_first_epoch']} s first)",
        f"{st['baseline_per_request_wall_s_extrapolated']} s (extrapolated)",
    )
    table.add_row(
        "Solana fees (lamports)",
        f"{st['fee_lamports_steady_epoch']:,}",
        f"{st['baseline_per_request_fee_lamports']:,}",
    )
    table.add_row(
        "one-time token-account rent (lamports)",
        f"{st['one_time_token_account_rent_lamports']:,}",
        "",
    )
    console.print(table)

    result = {
        "metrics": {**rec, **st, "bench_wall_s": round(total, 1)},
        "goals": {
            "receipts_per_s_batched": ">= 5000",
            "txs_steady_epoch": f"<= {st['providers']} (one per provider), fewer with packing",
            "met": {
                "receipts_per_s": rec["receipts_per_s_batched"] >= 5_000,
                "txs_at_most_one_per_provider": st["txs_first_epoch_creating_token_accounts"]
                <= st["providers"],
            },
        },
        "setup": {
            "mode": "quick" if args.quick else "full",
            "sizes": sizes,
            "database": "SQLite file (WAL, synchronous=NORMAL)",
            "chain": "LiteSVM (solders) in-process, SPL Token + ATA + Memo v1",
            "receipt_rows": "part 2 inserts synthetic leaf hashes; signing + verifying is part 1",
            "earnings": "credited to the provider accounts by one bulk journal tx",
            "fee_model": f"{LAMPORTS_PER_SIGNATURE} lamports per signature, one signature per tx",
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    console.print(f"wrote {args.out} in {total:.1f} s")


if __name__ == "__main__":
    main()
