"""Gateway throughput, added latency and CPU per request: rigpool's path vs the backend directly.

Same machine, same run, same backend: an `EmulatedBackend` (time_scale 0 by default, so the
backend itself costs only its token loop) is called in-process ("direct"), then the same
requests go through coordinator + agent over loopback ("gateway": HTTP, auth, admission row,
escrow hold, routing, the agent's WebSocket, SSE, metering, the finishing row, capture, the
receipt signed by the agent and countersigned, the verifier's sampling). Streamed and not, at
concurrency 1, 8, 64 and 256, with billing on (receipts and verification sampling on too) and
again with billing off.

Placement (on a machine with at least two CPUs): the coordinator is pinned to CPU 0
(`taskset -c 0`); the agents (one swarm process) and this load generator share CPU 1, so the
requests per second measure what one core of coordinator carries. Reported per step: requests/s,
p50/p99 latency of each path and the added latency (gateway minus direct, per percentile), the
coordinator's CPU microseconds per request (from /proc, no profiler attached) and how busy its
core was. The load generator is a lean keep-alive HTTP/1.1 client on asyncio streams.

Where the time goes: during a streamed run (c=64, billing on) the same coordinator is profiled
with yappi (CPU clock, every thread), and each function's own CPU time is attributed to a stage
(HTTP, auth, validation, tokenisation, routing, agent link, token relay, SSE, metering, ledger,
receipts ...) by the `STAGES` table below; functions no rule names (asyncio, SQLAlchemy,
pydantic ...) take the stages of their callers, in proportion to the time each caller spent in
them. The shares are then applied to the unprofiled CPU per request of that step (yappi itself
slows the process down several times). Goals (issue 12): added p50 <= 1 ms at concurrency 1
(streamed) and at least 1,000 streamed requests/s on the one core with billing on.

Every step is bounded: it runs for `--seconds` (each worker finishing at least one request),
every request has a timeout, and the whole step a hard limit; only loopback addresses are used.

    .venv/bin/python bench/load.py [--quick] [--no-profile] [--no-pin]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from harness import API_KEY, Network, pct, write_result
from rigpool.agent.backends.base import Finish, GenerationRequest, SamplingParams
from rigpool.agent.backends.emulated import EmulatedBackend
from rigpool.devnet.localnet import TOY_MODEL_NAME
from rigpool.devnet.toymodel import ensure_toy_model

PROMPT = "Measure the gateway, not the model:"
#: a request that takes longer than this counts as an error (and its connection is dropped)
REQUEST_TIMEOUT_S = 60.0
#: base units credited to the bench consumer when billing is on (never runs out in a run)
FUNDS = 10**15
#: the agents' posted prices with billing on (USD per million tokens): receipts need a charge
PRICE_IN, PRICE_OUT = 0.5, 1.5
#: the stage of functions that no rule names and whose callers are unknown (the event loop)
OTHER = "event loop & other"

#: stage, module path pattern, function name pattern ("" matches any); first match wins.
#: Functions without a rule take the stages of their callers (see `attribute`).
STAGES: list[tuple[str, str, str]] = [
    ("receipts", r"rigpool/ledger/receipts\.py$", ""),
    ("receipts", r"rigpool/gateway/(generation|finish|serving)\.py$", r"receipt"),
    ("receipts", r"rigpool/coordinator/(hub|wiring|ports)\.py$", r"sign_receipt|deliver_receipt"),
    ("ledger", r"rigpool/ledger/|rigpool/gateway/billing\.py$", ""),
    ("ledger", r"rigpool/gateway/(generation|finish|serving)\.py$", r"hold|settle|capture"),
    ("metering", r"rigpool/gateway/provider_claims\.py$|rigpool/trust/metering\.py$", ""),
    ("verification", r"rigpool/coordinator/verify_link\.py$|rigpool/trust/", ""),
    ("verification", r"rigpool/gateway/(serving|finish)\.py$", r"verify"),
    ("request rows", r"rigpool/coordinator/request_store\.py$", ""),
    ("request rows", r"rigpool/gateway/(generation|finish)\.py$", r"^(admit|finish_record)$"),
    ("request rows", r"rigpool/gateway/serving\.py$", r"^_admit$"),
    ("auth", r"rigpool/gateway/(auth|ratelimit)\.py$|rigpool/coordinator/keys\.py$", ""),
    ("tokenisation", r"rigpool/gateway/tokenization\.py$|tokenizers/|jinja2/", ""),
    (
        "validation",
        r"rigpool/gateway/(chat/|completions/|common_)schemas\.py$|"
        r"rigpool/coordinator/body_limit\.py$|fastapi/dependencies/|fastapi/_compat",
        "",
    ),
    ("validation", r"rigpool/gateway/(request|serving|generation)\.py$", r"check_|new_(spec|job)"),
    ("validation", r"starlette/requests\.py$", r"json|body|stream"),
    ("routing", r"rigpool/scheduler/|rigpool/coordinator/fleet\.py$", ""),
    (
        "routing",
        r"rigpool/coordinator/(state|wiring)\.py$",
        r"pick|route|hedge|dispatch|first_token|on_end|on_request|observed|price_cap|lost_race",
    ),
    (
        "routing",
        r"rigpool/gateway/(generation|dispatch)\.py$",
        r"_start$|_first_frame|_failed|_gave_up|_close$",
    ),
    ("agent link", r"rigpool/coordinator/(hub|agent_link)\.py$", ""),
    ("agent link", r"rigpool/protocol/(messages|channel)\.py$", ""),
    ("agent link", r"websockets/|uvicorn/protocols/websockets/|starlette/websockets\.py$", ""),
    # the dispatcher's per-frame loop: what the gateway pays for each frame it takes
    ("token relay", r"rigpool/gateway/(generation|dispatch)\.py$", ""),
    ("SSE", r"rigpool/gateway/serving\.py$", r"body|_sse|stream|_usage_chunk"),
    ("SSE", r"rigpool/gateway/(chat|completions)/router\.py$", r"chunk"),
    ("SSE", r"starlette/responses\.py$", r"StreamingResponse"),
    ("HTTP", r"uvicorn/|h11/|httptools|starlette/|fastapi/|anyio/", ""),
    ("HTTP", r"rigpool/gateway/", ""),
]
_STAGE_RULES = [(stage, re.compile(m), re.compile(f)) for stage, m, f in STAGES]


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
            for _ in range(1_000_000):  # bounded: a chunked body ends with a 0-size chunk
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


@dataclass
class Step:
    """What one closed-loop step measured."""

    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    wall_s: float = 0.0
    cpu_s: float = float("nan")  # the coordinator's, during the step


async def gateway_step(
    port: int, stream: bool, concurrency: int, seconds: float, max_requests: int, max_tokens: int
) -> Step:
    """Closed loop through the gateway for `seconds` (each worker does at least one request)."""
    step = Step()
    issued = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal issued
        client = LeanClient(port)
        done = 0
        try:
            while issued < max_requests and (done == 0 or time.perf_counter() < deadline):
                issued += 1
                start = time.perf_counter()
                try:
                    status, content = await asyncio.wait_for(
                        client.post("/v1/completions", body_for(issued, stream, max_tokens)),
                        REQUEST_TIMEOUT_S,
                    )
                except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError):
                    await client.close()
                    client = LeanClient(port)
                    status, content = 0, b""
                elapsed = time.perf_counter() - start
                done += 1
                ok = status == 200 and (not stream or content.rstrip().endswith(b"[DONE]"))
                if ok:
                    step.latencies.append(elapsed)
                else:
                    step.errors += 1
        finally:
            await client.close()

    start = time.perf_counter()
    # hard limit: every request has its own timeout, so this only guards against a bug here
    await asyncio.wait_for(
        asyncio.gather(*(worker() for _ in range(concurrency))), seconds + 3 * REQUEST_TIMEOUT_S
    )
    step.wall_s = time.perf_counter() - start
    return step


async def direct_step(
    backend: EmulatedBackend, concurrency: int, requests: int, max_tokens: int
) -> Step:
    """The same requests straight into the backend, in-process."""
    step = Step()
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
            step.latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    step.wall_s = time.perf_counter() - start
    return step


def measured(net: Network, run: Callable[[], Step]) -> Step:
    """Run a gateway step and record the coordinator's CPU time during it."""
    before = net.coordinator_cpu_s()
    step = run()
    step.cpu_s = net.coordinator_cpu_s() - before
    return step


# ---------------------------------------------------------------------------------------------
# Attribution of the profile to stages.


def stage_of(module: str, name: str) -> str | None:
    """The stage a rule of `STAGES` gives a function, or None."""
    path = module.replace("\\", "/")
    for stage, module_re, name_re in _STAGE_RULES:
        if module_re.search(path) and name_re.search(name):
            return stage
    return None


#: thread name pattern -> the stage of that thread's time no rule and no caller explains (the
#: coordinator's writer and checker threads do one job each); other threads: OTHER
THREADS: list[tuple[str, str]] = [
    ("ledger", r"^ledger-writer"),
    ("receipts", r"^receipt-check"),
    ("request rows", r"^rigpool-requests"),
    ("verification", r"^rigpool-(validator|attest)"),
]
_THREAD_RULES = [(stage, re.compile(pattern)) for stage, pattern in THREADS]


def thread_stage(name: str) -> str:
    """The stage of a thread's time that no rule and no recorded caller explains."""
    return next((stage for stage, pattern in _THREAD_RULES if pattern.search(name)), OTHER)


def attribute(
    rows: list[dict[str, Any]], rounds: int = 40
) -> tuple[dict[str, float], dict[str, list[tuple[str, float]]]]:
    """CPU seconds per stage, and each stage's functions by seconds (most first).

    Thread by thread (yappi's caller -> callee edges are per thread), each function's own time
    is split over stages: a function a rule names belongs to that stage; any other takes the
    mixture of its callers' stages, weighted by the time it spent under each caller, iterated
    to a fixed point; a function with no caller on record (the thread's entry, or a call in
    progress when profiling began) takes its thread's stage (`THREADS`, else OTHER). This is
    what a full stack would say whenever a library function's time follows its callers' mix,
    which holds for the generic code here (asyncio, SQLAlchemy, pydantic).
    """
    threads: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        threads[str(r.get("thread", ""))].append(r)
    seconds: dict[str, float] = defaultdict(float)
    by_label: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for thread, thread_rows in threads.items():
        root = thread_stage(thread)
        for r, dist in _attribute_thread(thread_rows, root, rounds):
            for stage, share in dist.items():
                seconds[stage] += float(r["tsub"]) * share
                by_label[stage][_label(r)] += float(r["tsub"]) * share
    functions = {
        stage: sorted(labels.items(), key=lambda item: -item[1])
        for stage, labels in by_label.items()
    }
    return dict(seconds), functions


def _attribute_thread(
    rows: list[dict[str, Any]], root: str, rounds: int
) -> list[tuple[dict[str, Any], dict[str, float]]]:
    """Each function of one thread with its stage mixture (see `attribute`)."""
    by_index = {r["index"]: r for r in rows}
    callers: dict[int, list[tuple[int, float]]] = defaultdict(list)
    for r in rows:
        for child, ttot, _tsub, ncall in r["children"]:
            if child != r["index"] and child in by_index:
                callers[child].append((r["index"], max(float(ttot), 1e-9 * int(ncall))))
    fixed = {i: stage_of(r["module"], r["name"]) for i, r in by_index.items()}
    dist: dict[int, dict[str, float]] = {i: {fixed[i] or root: 1.0} for i in by_index}
    for _ in range(rounds):
        changed = 0.0
        for i in by_index:
            if fixed[i] is not None or not callers[i]:
                continue
            weight = sum(w for _c, w in callers[i])
            mix: dict[str, float] = defaultdict(float)
            for caller, w in callers[i]:
                for stage, share in dist[caller].items():
                    mix[stage] += share * w / weight
            changed += sum(abs(mix.get(s, 0.0) - dist[i].get(s, 0.0)) for s in {*mix, *dist[i]})
            dist[i] = dict(mix)
        if changed < 1e-6:
            break
    return [(by_index[i], dist[i]) for i in by_index]


def _label(r: dict[str, Any]) -> str:
    return f"{r['name']} ({'/'.join(r['module'].split('/')[-2:])}:{r['lineno']})"


def top_functions(rows: list[dict[str, Any]], n: int = 12) -> list[tuple[str, float]]:
    """The functions with the most own CPU time, all threads: (name (module:line), seconds)."""
    own: dict[str, float] = defaultdict(float)
    for r in rows:
        own[_label(r)] += float(r["tsub"])
    return sorted(own.items(), key=lambda item: -item[1])[:n]


# ---------------------------------------------------------------------------------------------
# The run.


@dataclass
class Config:
    """One network configuration of the run."""

    label: str
    billing: bool
    modes: tuple[bool, ...]  # stream flags to measure
    levels: list[int]
    #: the agents' token flush window; 0: one message per token, as protocol 1.4 agents send
    flush_window_ms: float = 2.0


def run_config(
    cfg: Config,
    args: argparse.Namespace,
    backend: EmulatedBackend,
    console: Console,
    profile: dict[str, Any] | None,
) -> list[dict[str, Any]]:
    """Start a network for `cfg`, measure every step, optionally profile; return the rows."""
    swarm = ["--time-scale", str(args.time_scale), "--max-concurrency", "256"]
    swarm += ["--gpus", "H100 SXM", "--flush-window-ms", str(cfg.flush_window_ms)]
    if cfg.billing:
        swarm += ["--price-in", str(PRICE_IN), "--price-out", str(PRICE_OUT)]
    env = {
        "RIGPOOL_RATE_LIMIT_PER_MIN": "100000000",
        "RIGPOOL_RATE_LIMIT_BURST": "1000000",
        "RIGPOOL_BILLING": "true" if cfg.billing else "false",
        "RIGPOOL_VERIFICATION": "true",
    }
    pin = not args.no_pin
    rows: list[dict[str, Any]] = []
    with console.status(f"{cfg.label}: starting a coordinator and {args.agents} agents ..."):
        net = Network(
            args.agents,
            swarm,
            env,
            coordinator_cpus="0" if pin else None,
            swarm_cpus="1" if pin else None,
            profiled=profile is not None,
            fund=FUNDS if cfg.billing else 0,
        ).__enter__()
    try:
        with console.status(f"{cfg.label}: warming up ..."):
            for stream in (False, True):
                asyncio.run(gateway_step(net.port, stream, 8, 1.0, 400, args.max_tokens))
        for stream in cfg.modes:
            for c in cfg.levels:
                label = f"{cfg.label}, {'streamed' if stream else 'plain'} c={c}"
                with console.status(f"{label} ..."):
                    gw = measured(
                        net,
                        lambda s=stream, c=c: asyncio.run(
                            gateway_step(
                                net.port, s, c, args.seconds, args.max_requests, args.max_tokens
                            )
                        ),
                    )
                    n = max(len(gw.latencies), c)
                    direct = asyncio.run(direct_step(backend, c, n, args.max_tokens))
                served = len(gw.latencies)
                row = {
                    "config": cfg.label,
                    "billing": cfg.billing,
                    "mode": "streamed" if stream else "plain",
                    "concurrency": c,
                    "requests": served,
                    "errors": gw.errors,
                    "gateway_rps": served / gw.wall_s,
                    "direct_rps": len(direct.latencies) / direct.wall_s,
                    "gateway_p50_ms": pct(gw.latencies, 50) * 1000,
                    "gateway_p99_ms": pct(gw.latencies, 99) * 1000,
                    "direct_p50_ms": pct(direct.latencies, 50) * 1000,
                    "direct_p99_ms": pct(direct.latencies, 99) * 1000,
                    "coordinator_cpu_us_per_request": gw.cpu_s / max(1, served + gw.errors) * 1e6,
                    "coordinator_core_busy": gw.cpu_s / gw.wall_s,
                }
                row["added_p50_ms"] = row["gateway_p50_ms"] - row["direct_p50_ms"]
                row["added_p99_ms"] = row["gateway_p99_ms"] - row["direct_p99_ms"]
                rows.append(row)
                console.print(
                    f"{label}: {row['gateway_rps']:.0f} req/s, "
                    f"+{row['added_p50_ms']:.2f} ms p50, +{row['added_p99_ms']:.2f} ms p99, "
                    f"{row['coordinator_cpu_us_per_request']:.0f} CPU-us/request "
                    f"(core {row['coordinator_core_busy']:.0%} busy), {gw.errors} errors"
                )
        if profile is not None:
            c = args.profile_concurrency
            with console.status(f"{cfg.label}: profiling (yappi, streamed c={c}) ..."):
                net.profile_start()
                step = asyncio.run(
                    gateway_step(net.port, True, c, args.profile_seconds, 10**9, args.max_tokens)
                )
                table = net.profile_stop()
            profile.update(
                {"rows": table, "requests": len(step.latencies) + step.errors, "concurrency": c}
            )
    finally:
        net.__exit__()
    return rows


def breakdown(profile: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Stage shares of the profile, applied to the unprofiled CPU per request of that step."""
    table = profile.get("rows") or []
    if not table or not profile.get("requests"):
        return {}
    seconds, functions = attribute(table)
    total = sum(seconds.values())
    c = profile["concurrency"]
    ref = next(
        (r for r in rows if r["billing"] and r["mode"] == "streamed" and r["concurrency"] == c),
        None,
    ) or next((r for r in rows if r["billing"] and r["mode"] == "streamed"), None)
    unprofiled = ref["coordinator_cpu_us_per_request"] if ref else float("nan")
    order = [s for s, _m, _f in STAGES] + [OTHER]
    stages = {
        stage: {
            "share": seconds.get(stage, 0.0) / total,
            "profiled_us_per_request": seconds.get(stage, 0.0) / profile["requests"] * 1e6,
            "us_per_request": seconds.get(stage, 0.0) / total * unprofiled,
        }
        for stage in dict.fromkeys(order)
    }
    return {
        "concurrency": c,
        "requests_profiled": profile["requests"],
        "profiled_cpu_us_per_request": total / profile["requests"] * 1e6,
        "unprofiled_cpu_us_per_request": unprofiled,
        "stages": stages,
        "top_functions": [
            {"function": name, "share": s / total} for name, s in top_functions(table)
        ],
        "stage_functions": {
            stage: [
                {"function": name, "us_per_request": s / total * unprofiled}
                for name, s in functions.get(stage, [])[:8]
            ]
            for stage in stages
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="about a minute in all")
    parser.add_argument("--concurrency", default="1,8,64,256")
    parser.add_argument("--seconds", type=float, default=8.0, help="per step")
    parser.add_argument("--max-requests", type=int, default=20_000, help="per step at most")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--agents", type=int, default=8)
    parser.add_argument("--time-scale", type=float, default=0.0)
    parser.add_argument("--profile-seconds", type=float, default=15.0)
    parser.add_argument("--profile-concurrency", type=int, default=64)
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    parser.add_argument(
        "--compare-unbatched",
        action="store_true",
        help="add a billing-off row whose agents send one message per token (as protocol 1.4)",
    )
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.profile_seconds = 2.0, 5.0
    levels = [int(c) for c in args.concurrency.split(",")]
    cpus = sorted(os.sched_getaffinity(0))
    load_at_start = os.getloadavg()
    if len(cpus) < 2:
        args.no_pin = True
    if not args.no_pin:
        os.sched_setaffinity(0, {1})  # the load generator shares CPU 1 with the agents
    console = Console(width=200)
    model = ensure_toy_model()
    backend = EmulatedBackend(
        "H100 SXM", TOY_MODEL_NAME, time_scale=args.time_scale, tokenizer_dir=model
    )
    configs = [
        Config("billing on", True, (False, True), levels),
        # the second row: billing off, streamed (all levels in a full run; two in a quick one)
        Config(
            "billing off",
            False,
            (True,) if args.quick else (False, True),
            [c for c in levels if c in (1, 64)] if args.quick else levels,
        ),
    ]
    if args.compare_unbatched:
        off = configs[1]
        configs.append(Config("unbatched", False, off.modes, off.levels, flush_window_ms=0.0))
    profile: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    for cfg in configs:
        wants_profile = cfg.billing and not args.no_profile
        rows += run_config(cfg, args, backend, console, profile if wants_profile else None)
    stages = breakdown(profile, rows)

    table = Table(title=f"gateway vs direct backend ({args.max_tokens} tokens per request)")
    for col in (
        "config", "mode", "c", "gateway req/s", "direct req/s", "gw p50 ms", "gw p99 ms",
        "direct p50 ms", "added p50 ms", "added p99 ms", "coord CPU us/req", "core busy",
        "errors",
    ):  # fmt: skip
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            r["config"], r["mode"], str(r["concurrency"]),
            f"{r['gateway_rps']:.0f}", f"{r['direct_rps']:.0f}", f"{r['gateway_p50_ms']:.2f}",
            f"{r['gateway_p99_ms']:.2f}", f"{r['direct_p50_ms']:.3f}",
            f"{r['added_p50_ms']:.2f}", f"{r['added_p99_ms']:.2f}",
            f"{r['coordinator_cpu_us_per_request']:.0f}", f"{r['coordinator_core_busy']:.0%}",
            str(r["errors"]),
        )  # fmt: skip
    console.print(table)
    if stages:
        stable = Table(
            title=(
                "coordinator CPU per streamed request by stage (billing on, "
                f"c={stages['concurrency']}; yappi shares x "
                f"{stages['unprofiled_cpu_us_per_request']:.0f} us unprofiled)"
            )
        )
        for col in ("stage", "share", "CPU us/request", "profiled us/request"):
            stable.add_column(col, justify="right" if col != "stage" else "left")
        for name, s in stages["stages"].items():
            stable.add_row(
                name,
                f"{s['share']:.1%}",
                f"{s['us_per_request']:.0f}",
                f"{s['profiled_us_per_request']:.0f}",
            )
        console.print(stable)
        ftable = Table(title="functions with the most own CPU time (profiled run)")
        ftable.add_column("function")
        ftable.add_column("share", justify="right")
        for f in stages["top_functions"]:
            ftable.add_row(f["function"], f"{f['share']:.1%}")
        console.print(ftable)
        for name, funcs in stages["stage_functions"].items():
            listed = ", ".join(f"{f['function']} {f['us_per_request']:.0f}" for f in funcs[:6])
            console.print(f"[bold]{name}[/bold] (us/request): {escape(listed)}")

    billed_streamed = [r for r in rows if r["config"] == "billing on" and r["mode"] == "streamed"]
    c1 = next((r for r in billed_streamed if r["concurrency"] == 1), None)
    added_p50 = c1["added_p50_ms"] if c1 else float("nan")
    best_rps = max((r["gateway_rps"] for r in billed_streamed), default=float("nan"))
    goals = {
        "added_p50_ms_c1_streamed": {"max": 1.0, "value": added_p50, "met": added_p50 <= 1.0},
        "streamed_rps_one_core_billing_on": {
            "min": 1000, "value": best_rps, "met": best_rps >= 1000
        },
    }  # fmt: skip
    for name, goal in goals.items():
        mark = "[green]met[/green]" if goal["met"] else "[red]missed[/red]"
        console.print(f"goal {name}: {goal['value']:.2f} ({mark})")
    metrics: dict[str, Any] = {
        f"{r['config'].replace(' ', '_')}.{r['mode']}.c{r['concurrency']}.{k}": v
        for r in rows
        for k, v in r.items()
        if k not in ("config", "billing", "mode", "concurrency")
    }
    metrics["best_streamed_rps_billing_on"] = best_rps
    metrics["added_p50_ms_c1_streamed"] = added_p50
    if stages:
        metrics["stage_breakdown"] = stages
    setup = {
        "agents": args.agents,
        "backend": f"emulated H100 SXM, time_scale={args.time_scale} (zero token delay at 0)",
        "max_tokens": args.max_tokens,
        "concurrency": levels,
        "seconds_per_step": args.seconds,
        "billing_on": "escrow hold + capture, receipts signed by the agent and countersigned, "
        f"verification sampling on; agents post {PRICE_IN}/{PRICE_OUT} USD per Mtok in/out",
        "billing_off": "RIGPOOL_BILLING=false (verification sampling still on)",
        "unbatched": "billing off, agents with a 0 ms flush window: one message per token",
        "flush_window_ms": 2.0,
        "pinning": "none"
        if args.no_pin
        else "coordinator on CPU 0 (taskset -c 0); agents + load generator on CPU 1",
        "cpus": len(cpus),
        "client": "lean asyncio HTTP/1.1 keep-alive, one connection per worker, loopback",
        "cpu_per_request": "coordinator user+system CPU from /proc over the step / requests",
        "stages": "yappi CPU-clock shares (streamed, billing on) x unprofiled CPU per request",
        "quick": args.quick,
        # other work on the machine shows here (the steps' ratios to "direct" absorb some of it)
        "load_average_1min_start_end": [round(load_at_start[0], 2), round(os.getloadavg()[0], 2)],
    }
    path = write_result("load", metrics, goals, setup)
    console.print(f"wrote {path}")


if __name__ == "__main__":
    main()
