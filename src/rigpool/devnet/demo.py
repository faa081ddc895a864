"""`rigpool demo`: the main job of `make run`.

Starts a local network, sends a mixed workload (chat and completions, streamed and not,
concurrent) through the official `openai` client, and reports latency percentiles, throughput
and errors per provider.
"""

from __future__ import annotations

import json
import secrets
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import openai
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from rigpool.cli.tables import providers_table
from rigpool.devnet.localnet import LocalNetwork, provider_mix
from rigpool.devnet.money import UNIT, EpochSummary, settle_local_network
from rigpool.devnet.toymodel import ensure_toy_model

PROMPTS = (
    "Tell me about pooling idle graphics cards.",
    "Write a short note on tail latency.",
    "Why should a provider be paid for every token?",
    "Describe a mining rig that now serves language models.",
    "What does a gateway do?",
    "Summarise the benefits of a decentralized network.",
)


@dataclass
class Outcome:
    kind: str
    ok: bool
    provider: str | None
    ttft_s: float | None
    latency_s: float
    completion_tokens: int
    error: str | None = None


def _one_request(client: openai.OpenAI, model: str, i: int, max_tokens: int) -> Outcome:
    kind = ("chat-stream", "chat", "completion-stream", "completion")[i % 4]
    prompt = PROMPTS[i % len(PROMPTS)]
    start = time.perf_counter()
    ttft: float | None = None
    try:
        if kind == "chat-stream":
            stream = client.chat.completions.create(
                model=model,
                messages=[{"role": "user", "content": prompt}],
                max_tokens=max_tokens,
                stream=True,
                stream_options={"include_usage": True},
                seed=i,
            )
            provider, tokens = None, 0
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content and ttft is None:
                    ttft = time.perf_counter() - start
                provider = provider or chunk.system_fingerprint
                if chunk.usage is not None:
                    tokens = chunk.usage.completion_tokens
            return Outcome(kind, True, provider, ttft, time.perf_counter() - start, tokens)
        if kind == "completion-stream":
            cstream = client.completions.create(
                model=model, prompt=prompt, max_tokens=max_tokens, stream=True,
                stream_options={"include_usage": True}, seed=i,
            )  # fmt: skip
            provider, tokens = None, 0
            for cchunk in cstream:
                if cchunk.choices and cchunk.choices[0].text and ttft is None:
                    ttft = time.perf_counter() - start
                provider = provider or cchunk.system_fingerprint
                if cchunk.usage is not None:
                    tokens = cchunk.usage.completion_tokens
            return Outcome(kind, True, provider, ttft, time.perf_counter() - start, tokens)
        if kind == "chat":
            chat = client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": prompt}],
                max_tokens=max_tokens, temperature=0,
            )  # fmt: skip
            latency = time.perf_counter() - start
            used = chat.usage.completion_tokens if chat.usage else 0
            return Outcome(kind, True, chat.system_fingerprint, latency, latency, used)
        comp = client.completions.create(model=model, prompt=prompt, max_tokens=max_tokens, seed=i)
        latency = time.perf_counter() - start
        used = comp.usage.completion_tokens if comp.usage else 0
        return Outcome(kind, True, comp.system_fingerprint, latency, latency, used)
    except openai.OpenAIError as exc:
        return Outcome(kind, False, None, None, time.perf_counter() - start, 0, str(exc))


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1000 if values else float("nan")


def summarise(outcomes: list[Outcome], wall_s: float) -> dict[str, Any]:
    ok = [o for o in outcomes if o.ok]
    ttfts = [o.ttft_s for o in ok if o.ttft_s is not None]
    lat = [o.latency_s for o in ok]
    tokens = sum(o.completion_tokens for o in ok)
    per_provider: dict[str, dict[str, Any]] = {}
    for o in ok:
        entry = per_provider.setdefault(o.provider or "?", {"requests": 0, "tokens": 0, "lat": []})
        entry["requests"] += 1
        entry["tokens"] += o.completion_tokens
        entry["lat"].append(o.latency_s)
    return {
        "requests": len(outcomes),
        "ok": len(ok),
        "errors": len(outcomes) - len(ok),
        "error_messages": sorted({o.error for o in outcomes if o.error})[:5],
        "wall_s": wall_s,
        "completion_tokens": tokens,
        "tokens_per_s": tokens / wall_s if wall_s else 0.0,
        "ttft_ms": {f"p{q}": _pct(ttfts, q) for q in (50, 95, 99)},
        "latency_ms": {f"p{q}": _pct(lat, q) for q in (50, 95, 99)},
        "per_provider": {
            k: {"requests": v["requests"], "tokens": v["tokens"], "p50_ms": _pct(v["lat"], 50)}
            for k, v in per_provider.items()
        },
    }


def report_tables(summary: dict[str, Any], fleet: list[dict[str, Any]]) -> list[Table]:
    gpu_of = {
        p["id"]: ", ".join(
            g["name"] + (" (emulated)" if g.get("emulated") else "") for g in p["gpus"]
        )
        or "CPU"
        for p in fleet
    }
    per = Table(title="requests per provider")
    for col in ("provider", "hardware", "requests", "tokens", "p50 latency ms"):
        per.add_column(col)
    for pid, v in sorted(summary["per_provider"].items(), key=lambda kv: -kv[1]["requests"]):
        per.add_row(pid[:10] + "…", gpu_of.get(pid, "?"), str(v["requests"]), str(v["tokens"]),
                    f"{v['p50_ms']:.0f}")  # fmt: skip
    overall = Table(title="workload")
    for col in ("metric", "p50", "p95", "p99"):
        overall.add_column(col)
    for name, key in (("time to first token (ms)", "ttft_ms"), ("end-to-end (ms)", "latency_ms")):
        d = summary[key]
        overall.add_row(name, f"{d['p50']:.0f}", f"{d['p95']:.0f}", f"{d['p99']:.0f}")
    totals = Table(title="totals")
    for col in ("requests", "ok", "errors", "completion tokens", "tokens/s", "wall s"):
        totals.add_column(col)
    totals.add_row(
        str(summary["requests"]), str(summary["ok"]), str(summary["errors"]),
        str(summary["completion_tokens"]), f"{summary['tokens_per_s']:.1f}",
        f"{summary['wall_s']:.1f}",
    )  # fmt: skip
    return [per, overall, totals]


def money_table(epoch: EpochSummary, fleet: list[dict[str, Any]]) -> Table:
    hardware = {p["id"]: ", ".join(g["name"] for g in p["gpus"]) or "CPU" for p in fleet}
    table = Table(title="provider earnings, settled on chain (USD stablecoin, 6 decimals)")
    for col in ("provider", "hardware", "paid"):
        table.add_column(col)
    for wallet, amount in sorted(epoch.paid.items(), key=lambda kv: -kv[1]):
        table.add_row(wallet[:10] + "…", hardware.get(wallet, "?"), f"{amount / UNIT:.6f}")
    return table


def verification_line(trust: dict[str, Any]) -> str:
    """One line on the sampled teacher-forced checks of the run (docs/trust.md)."""
    if not trust.get("verification"):
        return "verification: off"
    rows = trust.get("providers", {}).values()
    total = {k: sum(int(r.get(k, 0)) for r in rows) for k in ("checked", "passed", "failed")}
    unverifiable = sum(int(r.get("unverifiable", 0)) for r in rows)
    return (
        f"verification: {total['checked']} request(s) re-checked by the validator, "
        f"{total['passed']} passed, {total['failed']} failed; {unverifiable} selected on "
        "emulated agents (no model output to check)"
    )


def run_demo(
    console: Console,
    *,
    providers: int = 4,
    requests: int = 48,
    concurrency: int = 8,
    max_tokens: int = 24,
    report_path: Path | None = None,
) -> bool:
    """Run the demo; True when every request succeeded."""
    console.print(
        "[bold]rigpool demo[/bold]: a local network serving a real (tiny, untrained) model"
    )
    with console.status("building the test model (first run only) ..."):
        model_dir = ensure_toy_model()
    key = "rp-demo-" + secrets.token_urlsafe(16)
    workdir = Path(tempfile.mkdtemp(prefix="rigpool-demo-"))
    with LocalNetwork(workdir, model_dir, provider_mix(providers), key) as net:
        console.print(providers_table(net.providers_view()))
        client = openai.OpenAI(base_url=net.gateway_url, api_key=key, max_retries=0, timeout=120)
        models = [m.id for m in client.models.list()]
        console.print(f"gateway {net.gateway_url} lists models: {', '.join(models)}")
        outcomes: list[Outcome] = []
        start = time.perf_counter()
        progress = Progress(
            TextColumn("requests"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=console,
        )  # fmt: skip
        with progress, ThreadPoolExecutor(concurrency) as pool:
            task = progress.add_task("requests", total=requests)
            futures = [
                pool.submit(_one_request, client, net.model_name, i, max_tokens)
                for i in range(requests)
            ]
            for future in as_completed(futures):
                outcomes.append(future.result())
                progress.advance(task)
        wall = time.perf_counter() - start
        fleet = net.providers_view()
        database_url = net.database_url
        trust = net.trust_view()
    summary = summarise(outcomes, wall)
    for table in report_tables(summary, fleet):
        console.print(table)
    summary["verification"] = trust
    console.print(verification_line(trust))
    with console.status("settling the epoch on the embedded Solana chain ..."):
        epoch = settle_local_network(workdir, database_url, "demo-epoch-1")
    console.print(money_table(epoch, fleet))
    summary["settlement"] = {
        "merkle_root": epoch.merkle_root,
        "receipts": epoch.receipts,
        "paid_base_units": epoch.paid,
        "transactions": epoch.signatures,
        "audit_problems": epoch.problems,
    }
    txs = ", ".join(s[:16] + "…" for s in epoch.signatures)
    console.print(
        f"epoch root {epoch.merkle_root[:16]}… over {epoch.receipts} receipts, paid in "
        f"{len(epoch.signatures)} transaction(s): {txs}"
    )
    if epoch.problems:
        for problem in epoch.problems:
            console.print(f"[red]ledger audit:[/red] {problem}")
    else:
        console.print("ledger audit: clean (every invariant holds; vault matches the chain)")
    for message in summary["error_messages"]:
        console.print(f"[red]error:[/red] {message}")
    if report_path is not None:
        report_path.write_text(
            json.dumps({"summary": summary, "outcomes": [asdict(o) for o in outcomes]}, indent=2)
        )
        console.print(f"report written to {report_path}")
    return summary["errors"] == 0 and not epoch.problems
