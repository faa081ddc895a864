"""Tail latency on a live loopback network with stragglers: how much do routing and hedging win?

Configurations, each on a fresh coordinator + swarm of emulated agents with identical inputs:
  ideal          no stragglers, rigpool routing with hedging (the reference p99)
  round-robin    stragglers, naive ring
  least-loaded   stragglers, fewest requests in flight
  rigpool        stragglers, power-of-two-choices on peak-EWMA, no hedging
  rigpool+hedge  stragglers, the same plus hedging (budget 5 % of requests)
Goal (issue 4): rigpool's p99 within 1.3x of the no-straggler p99, with under 5 % extra load.

    .venv/bin/python bench/tail.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import time

from rich.console import Console
from rich.table import Table

from harness import Network, closed_loop, pct, write_result
from rigpool.devnet.localnet import TOY_MODEL_NAME


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short run (for smoke tests)")
    parser.add_argument("--agents", type=int, default=20)
    parser.add_argument("--requests", type=int, default=800)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--straggler-share", type=float, default=0.1)
    parser.add_argument("--straggle-prob", type=float, default=0.2)
    parser.add_argument("--straggle-factor", type=float, default=10.0)
    parser.add_argument("--time-scale", type=float, default=1.0)
    args = parser.parse_args()
    if args.quick:
        args.requests, args.agents = 120, 20
    console = Console()
    body = {"model": TOY_MODEL_NAME, "prompt": "Tail latency matters because", "max_tokens": 12}
    straggle = [
        "--straggler-share", str(args.straggler_share),
        "--straggle-prob", str(args.straggle_prob),
        "--straggle-factor", str(args.straggle_factor),
    ]  # fmt: skip
    common = ["--time-scale", str(args.time_scale), "--max-concurrency", "8"]

    def env(policy: str, hedging: bool) -> dict[str, str]:
        return {"RIGPOOL_ROUTING_POLICY": policy, "RIGPOOL_HEDGING": str(hedging).lower()}

    configs = [
        ("ideal", [], env("rigpool", True)),
        ("round-robin", straggle, env("round-robin", False)),
        ("least-loaded", straggle, env("least-loaded", False)),
        ("rigpool", straggle, env("rigpool", False)),
        ("rigpool+hedge", straggle, env("rigpool", True)),
    ]
    rows: dict[str, dict[str, float]] = {}
    for name, extra, env in configs:
        with console.status(f"{name}: starting {args.agents} agents ..."):
            net = Network(args.agents, [*common, *extra], env).__enter__()
        try:
            with console.status(f"{name}: {args.requests} requests ..."):
                # Warm-up: the router and hedge policy learn each agent's TTFT.
                asyncio.run(closed_loop(net.url, body, args.agents * 3, args.concurrency))
                before = net.health() or {}
                start = time.perf_counter()
                lat, errors = asyncio.run(
                    closed_loop(net.url, body, args.requests, args.concurrency)
                )
                wall = time.perf_counter() - start
                after = net.health() or {}
        finally:
            net.__exit__()
        hedges = after["routing"]["hedges"] - before["routing"]["hedges"]
        reqs = after["routing"]["requests"] - before["routing"]["requests"]
        rows[name] = {
            "p50_ms": pct(lat, 50) * 1000,
            "p99_ms": pct(lat, 99) * 1000,
            "p999_ms": pct(lat, 99.9) * 1000,
            "errors": errors,
            "extra_load": hedges / reqs if reqs else 0.0,
            "requests_per_s": len(lat) / wall,
        }
        console.print(
            f"{name}: p50 {rows[name]['p50_ms']:.0f} ms, p99 {rows[name]['p99_ms']:.0f} ms"
        )
    ideal = rows["ideal"]["p99_ms"]
    table = Table(title="tail latency with stragglers (ratios vs the no-straggler p99)")
    for col in ("config", "p50 ms", "p99 ms", "p99.9 ms", "p99 / ideal", "extra load", "errors"):
        table.add_column(col)
    for name, r in rows.items():
        table.add_row(
            name, f"{r['p50_ms']:.0f}", f"{r['p99_ms']:.0f}", f"{r['p999_ms']:.0f}",
            f"{r['p99_ms'] / ideal:.2f}x", f"{r['extra_load']:.1%}", str(int(r["errors"])),
        )  # fmt: skip
    console.print(table)
    hedge = rows["rigpool+hedge"]
    metrics = {
        **{f"{name}.{k}": v for name, r in rows.items() for k, v in r.items()},
        "rigpool_hedge_p99_over_ideal": hedge["p99_ms"] / ideal,
        "round_robin_p99_over_ideal": rows["round-robin"]["p99_ms"] / ideal,
        "hedge_extra_load": hedge["extra_load"],
    }
    goals = {
        "rigpool_hedge_p99_over_ideal": {"max": 1.3, "met": hedge["p99_ms"] / ideal <= 1.3},
        "hedge_extra_load": {"max": 0.05, "met": hedge["extra_load"] < 0.05},
    }
    setup = {k.replace("_", "-"): v for k, v in vars(args).items()} | {
        "model": TOY_MODEL_NAME,
        "body": body,
        "gpus": "cycled RTX 3060 8GB, RTX 3090, RTX 4090, L4, A100 80GB, H100 SXM (emulated)",
        "timing": "hardware.perf roofline for llama-3.1-8b at the best precision that fits",
    }
    path = write_result("tail", metrics, goals, setup)
    console.print(f"wrote {path}")


if __name__ == "__main__":
    main()
