"""Gateway throughput and added latency: rigpool's path vs calling an agent's backend directly.

Same machine, same run, same backend: an `EmulatedBackend` (time_scale 0 by default, so the
backend itself costs only its token loop) is called in-process ("direct"), then the same
requests go through coordinator + agent over loopback ("gateway": HTTP, auth, admission row,
routing, the agent's WebSocket, metering, the finishing row). Streamed and not, at rising
concurrency. Reported: requests/s, p50/p99 latency of each path, and the overhead (gateway minus
direct, per percentile). The load generator is a lean keep-alive HTTP/1.1 client on asyncio
streams, so the client's own cost stays small next to the gateway's.
Goal (issue 8): under 2 ms added p50, and at least 1,000 streamed requests/s, with emulated agents.
When a goal is missed, a coordinator is profiled with yappi (CPU time, all threads) under streamed
load and the functions that cost the most are reported (where the time goes).

    .venv/bin/python bench/load.py [--quick] [--no-profile]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from harness import API_KEY, RIGPOOL, Network, pct, write_result
from rigpool.agent.backends.base import Finish, GenerationRequest, SamplingParams
from rigpool.agent.backends.emulated import EmulatedBackend
from rigpool.coordinator.db import open_database
from rigpool.coordinator.keys import create_key
from rigpool.devnet.localnet import TOY_MODEL_NAME, free_port
from rigpool.devnet.toymodel import ensure_toy_model

PROMPT = "Measure the gateway, not the model:"


class LeanClient:
    """One keep-alive HTTP/1.1 connection; POST JSON, read a plain or chunked (SSE) answer."""

    def __init__(self, port: int):
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: dict[str, Any]) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        assert self.reader is not None
        payload = json.dumps(body).encode()
        self.writer.write(
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {API_KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n".encode()
            + payload
        )
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {
            k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:] if h)
        }
        if headers.get("transfer-encoding") == "chunked":
            parts = []
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).strip(), 16)
                data = await self.reader.readexactly(size + 2)
                if size == 0:
                    break
                parts.append(data[:-2])
            content = b"".join(parts)
        else:
            content = await self.reader.readexactly(int(headers.get("content-length", "0")))
        if headers.get("connection") == "close":
            await self.close()
        return status, content

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def body_for(i: int, stream: bool, max_tokens: int) -> dict[str, Any]:
    return {
        "model": TOY_MODEL_NAME,
        "prompt": PROMPT,
        "max_tokens": max_tokens,
        "seed": i,
        "stream": stream,
    }


async def gateway_step(
    port: int, stream: bool, concurrency: int, requests: int, max_tokens: int
) -> tuple[list[float], int, float]:
    """Closed loop through the gateway: latencies (s), errors, wall seconds."""
    latencies: list[float] = []
    errors = 0
    counter = iter(range(requests))

    async def worker() -> None:
        nonlocal errors
        client = LeanClient(port)
        try:
            for i in counter:
                start = time.perf_counter()
                status, content = await client.post(
                    "/v1/completions", body_for(i, stream, max_tokens)
                )
                elapsed = time.perf_counter() - start
                ok = status == 200 and (not stream or content.rstrip().endswith(b"[DONE]"))
                if ok:
                    latencies.append(elapsed)
                else:
                    errors += 1
        finally:
            await client.close()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, errors, time.perf_counter() - start


async def direct_step(
    backend: EmulatedBackend, concurrency: int, requests: int, max_tokens: int
) -> tuple[list[float], float]:
    """The same requests straight into the backend, in-process."""
    latencies: list[float] = []
    counter = iter(range(requests))

    async def worker() -> None:
        for i in counter:
            request = GenerationRequest(
                f"direct-{i}", TOY_MODEL_NAME, PROMPT, SamplingParams(max_tokens=max_tokens, seed=i)
            )
            start = time.perf_counter()
            async for item in backend.generate(request):
                if isinstance(item, Finish):
                    break
            latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, time.perf_counter() - start


#: the coordinator, profiled by yappi (CPU clock, every thread: the event loop and the
#: `to_thread` database work); stats are written on SIGUSR1 (uvicorn re-raises SIGTERM).
_PROFILED_COORDINATOR = """
import signal, sys, yappi, uvicorn
from rigpool.coordinator.app import create_app
from rigpool.coordinator.settings import Settings
from rigpool.protocol.messages import MAX_FRAME_BYTES
db, model, port, out = sys.argv[1:5]

def dump(*_):
    tab, newline = chr(9), chr(10)
    with open(out + ".part", "w") as f:
        for s in yappi.get_func_stats():
            row = [s.name, s.module, s.lineno, s.tsub, s.ttot, s.ncall]
            f.write(tab.join(str(v) for v in row) + newline)
    import os
    os.replace(out + ".part", out)

signal.signal(signal.SIGUSR1, dump)
app = create_app(Settings(database_url=db, port=int(port), model_dirs=[model]))
yappi.set_clock_type("cpu")
yappi.start()
uvicorn.run(app, host="127.0.0.1", port=int(port), log_level="warning",
            ws_max_size=MAX_FRAME_BYTES, timeout_graceful_shutdown=5)
"""


def profile_coordinator(
    agents: int, swarm_args: list[str], env: dict[str, str], seconds: float, c: int, tokens: int
) -> list[dict[str, Any]]:
    """Streamed load on a yappi-profiled coordinator: top functions by own and total CPU time."""
    try:
        import yappi  # noqa: F401
    except ImportError:
        return [{"function": "yappi not installed", "self_share": 0.0, "total_share": 0.0}]
    work = Path(tempfile.mkdtemp(prefix="rigpool-load-"))
    db_url = f"sqlite:///{work / 'c.db'}"
    create_key(open_database(db_url), key=API_KEY)
    port = free_port()
    out = work / "profile.tsv"
    model = ensure_toy_model()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _PROFILED_COORDINATOR, db_url, str(model), str(port), str(out)],
            env={**os.environ, **env},
        )
    ]
    net = Network(agents)
    net.port = port
    try:
        deadline = time.monotonic() + 60
        while net.health() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        swarm = [*RIGPOOL, "swarm", "--coordinator", net.url, "--agents", str(agents)]
        swarm += ["--model", str(model), *swarm_args]
        procs.append(
            subprocess.Popen(
                swarm,
                env={**os.environ, **env},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        while (net.health() or {}).get("agents") != agents and time.monotonic() < deadline:
            time.sleep(0.2)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            asyncio.run(gateway_step(port, True, c, c * 10, tokens))
        procs[0].send_signal(signal.SIGUSR1)  # write the stats
        deadline = time.monotonic() + 60
        while not out.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        for proc in reversed(procs):
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    rows = [line.split(chr(9)) for line in out.read_text().splitlines()] if out.exists() else []
    if not rows:
        return [{"function": "no profile written", "self_share": 0.0, "total_share": 0.0}]
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    calls: Counter[str] = Counter()
    ours: set[str] = set()
    for name, module, lineno, tsub, ttot, ncall in rows:
        key = f"{name} ({_short_module(module)}:{lineno})"
        own[key] += float(tsub)
        total[key] = max(total[key], float(ttot))
        calls[key] += int(ncall)
        if "/rigpool/" in module or "/sqlalchemy/" in module:
            ours.add(key)
    cpu = sum(own.values())
    served = [v for k, v in calls.items() if k.startswith("finish_record (")]
    per_request_ms = cpu / served[0] * 1000 if served else float("nan")
    head = {
        "function": f"[coordinator CPU per streamed request: {per_request_ms:.2f} ms]",
        "self_share": 1.0,
        "total_share": 1.0,
    }
    inclusive = sorted(ours, key=lambda k: -total[k])[:15]
    return (
        [head]
        + [
            {"function": k, "self_share": v / cpu, "total_share": total[k] / cpu}
            for k, v in own.most_common(15)
        ]
        + [
            {"function": f"[incl] {k}", "self_share": own[k] / cpu, "total_share": total[k] / cpu}
            for k in inclusive
        ]
    )


def _short_module(path: str) -> str:
    """'/x/site-packages/starlette/routing.py' -> 'starlette/routing.py'."""
    parts = path.replace("\\", "/").split("/")
    return "/".join(parts[-2:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short run (for smoke tests)")
    parser.add_argument("--concurrency", default="1,8,64,256")
    parser.add_argument("--requests", type=int, default=2000, help="per step (at least 50 x c)")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--agents", type=int, default=8)
    parser.add_argument("--time-scale", type=float, default=0.0)
    parser.add_argument("--no-profile", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.requests, args.concurrency = 300, "1,8,64"
    levels = [int(c) for c in args.concurrency.split(",")]
    console = Console()
    model = ensure_toy_model()
    backend = EmulatedBackend(
        "H100 SXM", TOY_MODEL_NAME, time_scale=args.time_scale, tokenizer_dir=model
    )
    swarm = ["--time-scale", str(args.time_scale), "--max-concurrency", "256", "--gpus", "H100 SXM"]
    env = {"RIGPOOL_RATE_LIMIT_PER_MIN": "100000000", "RIGPOOL_RATE_LIMIT_BURST": "1000000"}
    rows: list[dict[str, Any]] = []
    profile: list[dict[str, Any]] = []
    with console.status(f"starting a coordinator and {args.agents} agents ..."):
        net = Network(args.agents, swarm, env).__enter__()
    try:
        with console.status("warming up ..."):
            asyncio.run(gateway_step(net.port, True, 8, 200, args.max_tokens))
            asyncio.run(gateway_step(net.port, False, 8, 200, args.max_tokens))
        for stream in (False, True):
            for c in levels:
                n = max(args.requests, 50 * c) if not args.quick else max(args.requests, 10 * c)
                label = f"{'streamed' if stream else 'plain'} c={c}"
                with console.status(f"{label}: {n} requests ..."):
                    direct, direct_wall = asyncio.run(direct_step(backend, c, n, args.max_tokens))
                    lat, errors, wall = asyncio.run(
                        gateway_step(net.port, stream, c, n, args.max_tokens)
                    )
                row = {
                    "mode": "streamed" if stream else "plain",
                    "concurrency": c,
                    "requests": n,
                    "errors": errors,
                    "gateway_rps": len(lat) / wall,
                    "direct_rps": len(direct) / direct_wall,
                    "gateway_p50_ms": pct(lat, 50) * 1000,
                    "gateway_p99_ms": pct(lat, 99) * 1000,
                    "direct_p50_ms": pct(direct, 50) * 1000,
                    "direct_p99_ms": pct(direct, 99) * 1000,
                }
                row["added_p50_ms"] = row["gateway_p50_ms"] - row["direct_p50_ms"]
                row["added_p99_ms"] = row["gateway_p99_ms"] - row["direct_p99_ms"]
                rows.append(row)
                console.print(
                    f"{label}: {row['gateway_rps']:.0f} req/s, "
                    f"+{row['added_p50_ms']:.2f} ms p50, +{row['added_p99_ms']:.2f} ms p99"
                )
        single = next(r for r in rows if r["mode"] == "plain" and r["concurrency"] == 1)
        single_stream = next(r for r in rows if r["mode"] == "streamed" and r["concurrency"] == 1)
        best_stream_rps = max(r["gateway_rps"] for r in rows if r["mode"] == "streamed")
        added_p50 = max(single["added_p50_ms"], single_stream["added_p50_ms"])
        goals = {
            "added_p50_ms_at_c1": {"max": 2.0, "value": added_p50, "met": added_p50 < 2.0},
            "streamed_rps": {
                "min": 1000, "value": best_stream_rps, "met": best_stream_rps >= 1000
            },
        }  # fmt: skip
    finally:
        net.__exit__()
    missed = not all(g["met"] for g in goals.values())
    if missed and not args.no_profile:
        with console.status("profiling a coordinator under streamed load (yappi) ..."):
            seconds = 8 if args.quick else 20
            profile = profile_coordinator(args.agents, swarm, env, seconds, 64, args.max_tokens)

    table = Table(title=f"gateway vs direct backend ({args.max_tokens} tokens per request)")
    for col in (
        "mode", "c", "gateway req/s", "direct req/s", "gw p50 ms", "gw p99 ms",
        "direct p50 ms", "added p50 ms", "added p99 ms", "errors",
    ):  # fmt: skip
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            r["mode"], str(r["concurrency"]), f"{r['gateway_rps']:.0f}", f"{r['direct_rps']:.0f}",
            f"{r['gateway_p50_ms']:.2f}", f"{r['gateway_p99_ms']:.2f}", f"{r['direct_p50_ms']:.3f}",
            f"{r['added_p50_ms']:.2f}", f"{r['added_p99_ms']:.2f}", str(r["errors"]),
        )  # fmt: skip
    console.print(table)
    for name, goal in goals.items():
        mark = "[green]met[/green]" if goal["met"] else "[red]missed[/red]"
        console.print(f"goal {name}: {goal['value']:.2f} ({mark})")
    if profile:
        ptable = Table(title="where the coordinator's CPU goes (yappi, streamed c=64)")
        for col in ("function", "own %", "incl. %"):
            ptable.add_column(col)
        for p in profile:
            shares = f"{p['self_share']:.1%}", f"{p['total_share']:.1%}"
            ptable.add_row(escape(p["function"]), *shares)
        console.print(ptable)
    metrics: dict[str, Any] = {
        f"{r['mode']}.c{r['concurrency']}.{k}": v
        for r in rows
        for k, v in r.items()
        if k not in ("mode", "concurrency")
    }
    metrics["best_streamed_rps"] = best_stream_rps
    metrics["added_p50_ms_at_c1"] = added_p50
    if profile:
        metrics["profile"] = profile
    setup = {
        "agents": args.agents,
        "backend": f"emulated H100 SXM, time_scale={args.time_scale}",
        "max_tokens": args.max_tokens,
        "concurrency": levels,
        "requests_per_step": args.requests,
        "client": "lean asyncio HTTP/1.1 keep-alive, one connection per worker",
        "processes": "coordinator, one swarm process, and this client: same machine, loopback",
        "quick": args.quick,
    }
    path = write_result("load", metrics, goals, setup)
    console.print(f"wrote {path}")


if __name__ == "__main__":
    main()
