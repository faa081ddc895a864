"""The chaos suite: a loopback network under load while its agents and coordinator misbehave.

Chaos: emulated agents in several `rigpool swarm` processes serve a thousand concurrent client
streams while the orchestrator SIGKILLs one swarm (power lost), SIGSTOPs another and later
resumes it (a frozen rig), runs one swarm with stragglers (a game launched on the rig), keeps a
few rogue agents that corrupt their streams (protocol garbage, duplicated tokens), and kills the
coordinator once and starts it again on the same port and database.

Then it checks, from what the clients saw and what the database holds:

* every request ended: completed, or a clear error (an HTTP error status, an error event in the
  stream, or a connection cut by the coordinator's crash); none hung past its client timeout,
  none is missing from the record;
* no stream holds duplicated or missing tokens: emulated text is deterministic per prompt and
  seed, so each completed stream is replayed locally, continuation by continuation (a failover
  continues from the prompt plus the text already delivered), and must match chunk for chunk;
* nobody paid twice or for a failure: one `ok` row per client request that completed, none for
  one that failed; the ledger audit is clean when the ledger is in use;
* the coordinator's memory stays bounded (RSS from /proc before and after).

`make chaos` runs the full size (`python -m rigpool.devnet.chaos`); the test suite runs a short
form (tests/chaos). The summary goes to a JSON file and is printed as a table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select

from rigpool.agent.backends.emulated import EmulatedBackend
from rigpool.agent.daemon import Agent
from rigpool.coordinator.db import open_database
from rigpool.coordinator.keys import create_key
from rigpool.coordinator.recovery import INTERRUPTED
from rigpool.coordinator.tables import RequestRecord
from rigpool.devnet.localnet import TOY_MODEL_NAME, free_port
from rigpool.devnet.swarm import SwarmSpec, build_agents
from rigpool.devnet.toymodel import ensure_toy_model
from rigpool.protocol.messages import Token

API_KEY = "rp-chaos-key-0123456789abcdef"
#: seconds after a coordinator crash within which clients may see their connection cut.
CRASH_WINDOW_S = 15.0
#: how long a client retries refused connections and 503s before any answer (SDK-like).
RETRY_BUDGET_S = 90.0

#: words the prompts are made of; each prompt is a fixed seed away from the next.
_PROMPT_WORDS = ("rigs", "pool", "tokens", "failover", "chaos", "streams", "gateway", "agents")


@dataclass(frozen=True)
class ChaosSpec:
    """How big the run is and which faults it injects."""

    agents: int = 100  # emulated agents across all swarm processes (rogues come on top)
    swarms: int = 4  # swarm processes: [0] straggles, [1] is suspended, [2] is killed
    rogues: int = 3  # in-process agents that corrupt their streams
    streams: int = 3000  # client requests in all: a wave is still to come after the crash
    concurrency: int = 1000  # client streams open at once
    max_tokens: int = 8
    prompts: int = 64
    # Emulated timing multiplier: streams last seconds (so faults hit them mid-stream) and the
    # whole fleet's token rate stays within what two CPU cores can carry for 1,000 streams.
    time_scale: float = 40.0
    max_concurrency: int = 64  # requests per agent at once (slots must outlast the faults)
    stop_s: float = 6.0  # how long the suspended swarm stays stopped
    restart_coordinator: bool = True
    client_timeout_s: float = 240.0  # well past the gateway's request timeout
    memory_growth_limit_mb: float = 300.0
    seed: int = 0


@dataclass
class Outcome:
    """What one client saw."""

    key: str  # the Idempotency-Key, which also finds its row in the requests table
    prompt: str
    seed: int
    kind: str = "pending"  # completed | error_status | error_event | error_transport | hung
    status: int | None = None
    chunks: list[str] = field(default_factory=list)
    finish_reason: str | None = None
    error: str | None = None
    connect_retries: int = 0
    seconds: float = 0.0
    ended: float = 0.0  # time.monotonic() at the end


@dataclass
class ChaosReport:
    """The summary written to chaos.json; `problems` must be empty for the run to pass."""

    requests: int = 0
    completed: int = 0
    failed_with_error: int = 0
    error_kinds: dict[str, int] = field(default_factory=dict)
    error_samples: dict[str, int] = field(default_factory=dict)  # most common error texts
    lost: int = 0
    hung: int = 0
    duplicates: int = 0
    missing_tokens: int = 0
    corrupted: int = 0
    double_charges: int = 0
    charged_failures: int = 0
    failovers: int = 0  # mid-stream: continuations visible in the delivered text
    retried_requests: int = 0  # requests that needed more than one agent (requests table)
    stream_p50_s: float = 0.0
    stream_p99_s: float = 0.0
    agent_kills: int = 0
    agents_killed: int = 0
    suspensions: int = 0
    agents_suspended: int = 0
    slowed_agents: int = 0
    rogue_agents: int = 0
    rogue_corruptions: int = 0
    coordinator_restarts: int = 0
    rows_interrupted_by_crash: int = 0
    completed_but_unrecorded_by_crash: int = 0
    transport_errors_outside_crash: int = 0
    ledger_audit: str = "not run"
    coordinator_exit_code: int | None = None  # None: still running after the load, as it must
    rss_start_mb: float = 0.0
    rss_peak_mb: float = 0.0
    rss_end_mb: float = 0.0
    wall_s: float = 0.0
    problems: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# Rogue agents: real daemons (valid hello, sealed frames) whose sending is corrupted.


class RogueAgent(Agent):
    """A daemon that, on some requests, sends protocol garbage or a duplicated token mid-stream.

    The text it does send is the honest emulated text, so any corruption the client would see
    can only come from the gateway letting a bad frame through.
    """

    def __init__(self, *args: Any, behaviour: str, rng: random.Random, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.behaviour = behaviour
        self.rng = rng
        self.corruptions = 0

    async def _send(self, ws: Any, frame: Any) -> None:  # Any: the daemon's frame union grows
        if isinstance(frame, Token) and frame.index == 2 and self.rng.random() < 0.7:
            self.corruptions += 1
            if self.behaviour == "garbage":
                async with self._send_lock:
                    for _ in range(3):
                        await ws.send("\x00garbage{{{ not a frame")
                return
            await super()._send(ws, frame)  # "duplicate": the same token twice
        await super()._send(ws, frame)


def build_rogues(coordinator: str, model_dir: Path, count: int, seed: int) -> list[RogueAgent]:
    template = build_agents(
        coordinator,
        SwarmSpec(agents=count, model_dir=model_dir, served_name=TOY_MODEL_NAME, seed=seed + 77),
    )
    return [
        RogueAgent(
            coordinator,
            honest.identity,
            honest.backend,
            honest.capabilities,
            behaviour="garbage" if i % 2 == 0 else "duplicate",
            rng=random.Random(seed * 1000 + i),
            on_status=lambda _m: None,
        )
        for i, honest in enumerate(template)
    ]


# ---------------------------------------------------------------------------------------------
# Processes.


def rss_mb(pid: int) -> float:
    """Resident memory of a process in MiB (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class Network:
    """A coordinator process and swarm processes on loopback, for the orchestrator to abuse."""

    def __init__(self, spec: ChaosSpec, work: Path):
        self.spec = spec
        self.work = work
        self.model = ensure_toy_model()
        self.db_url = f"sqlite:///{work / 'coordinator.db'}"
        self.port = free_port()
        self.coordinator: subprocess.Popen[bytes] | None = None
        self.swarms: list[subprocess.Popen[bytes]] = []
        self.swarm_sizes: list[int] = []
        self.env = {
            **os.environ,
            "RIGPOOL_RATE_LIMIT_PER_MIN": "1000000",
            "RIGPOOL_RATE_LIMIT_BURST": "1000000",
            "RIGPOOL_FIRST_TOKEN_TIMEOUT_S": "20",
            "RIGPOOL_INTER_TOKEN_TIMEOUT_S": "15",
            "RIGPOOL_REQUEST_TIMEOUT_S": "120",
            "RIGPOOL_HEARTBEAT_INTERVAL_S": "1",
            "RIGPOOL_HEARTBEAT_TIMEOUT_S": "4",
            "RIGPOOL_MAX_ATTEMPTS": "6",
        }

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start_coordinator(self) -> None:
        with (self.work / "coordinator.log").open("ab") as log:
            self.coordinator = self._spawn(
                [
                    "coordinator", "--port", str(self.port), "--db", self.db_url,
                    "--model-dir", str(self.model), "--log-level", "error",
                ],
                log,
            )  # fmt: skip

    def _spawn(self, args: list[str], log: Any) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "rigpool", *args],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def start_swarm(self, index: int, agents: int) -> subprocess.Popen[bytes]:
        straggle: list[str] = []
        if index == 0:  # the slowed swarm: half its agents straggle, often and badly
            straggle = ["--straggler-share", "0.5", "--straggle-prob", "0.3"]
            straggle += ["--straggle-factor", "6"]
        with (self.work / f"swarm{index}.log").open("ab") as log:
            return self._spawn(
                [
                    "swarm", "--coordinator", self.url, "--agents", str(agents),
                    "--model", str(self.model), "--time-scale", str(self.spec.time_scale),
                    "--max-concurrency", str(self.spec.max_concurrency),
                    "--seed", str(self.spec.seed * 100 + index), *straggle,
                ],
                log,
            )  # fmt: skip

    def start(self) -> None:
        db = open_database(self.db_url)
        create_key(db, key=API_KEY)
        db.kw["bind"].dispose()
        self.start_coordinator()
        self.wait(lambda: self.health() is not None, "coordinator")
        base, extra = divmod(self.spec.agents, self.spec.swarms)
        self.swarm_sizes = [base + (1 if i < extra else 0) for i in range(self.spec.swarms)]
        self.swarms = [self.start_swarm(i, n) for i, n in enumerate(self.swarm_sizes)]

    def health(self) -> dict[str, Any] | None:
        try:
            return dict(httpx.get(self.url + "/healthz", timeout=2).json())
        except (httpx.HTTPError, json.JSONDecodeError):
            return None

    def agents(self) -> int:
        return int((self.health() or {}).get("agents", 0))

    def wait(self, ready: Any, what: str, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if ready():
                return
            if self.coordinator is not None and self.coordinator.poll() is not None:
                raise RuntimeError(f"the coordinator died while waiting for {what}")
            time.sleep(0.2)
        raise RuntimeError(f"timed out waiting for {what}")

    def crash_and_restart_coordinator(self) -> None:
        assert self.coordinator is not None
        self.coordinator.kill()  # SIGKILL: no drain, no goodbye
        self.coordinator.wait(10)
        self.start_coordinator()

    def stop(self) -> None:
        procs = [*self.swarms, *([self.coordinator] if self.coordinator else [])]
        for proc in procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGCONT)
                    proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


# ---------------------------------------------------------------------------------------------
# Clients.


def prompt_for(i: int) -> str:
    rng = random.Random(i)
    words = " ".join(rng.choice(_PROMPT_WORDS) for _ in range(6))
    return f"Chaos prompt {i}: {words}"


async def one_stream(client: httpx.AsyncClient, outcome: Outcome, spec: ChaosSpec) -> None:
    """Run one streamed completion to its end; connection failures before any answer retry."""
    body = {
        "model": TOY_MODEL_NAME,
        "prompt": outcome.prompt,
        "max_tokens": spec.max_tokens,
        "seed": outcome.seed,
        "stream": True,
    }
    headers = {"Idempotency-Key": outcome.key}
    give_up = time.monotonic() + RETRY_BUDGET_S
    while True:
        retry = time.monotonic() < give_up
        try:
            async with client.stream(
                "POST", "/v1/completions", json=body, headers=headers
            ) as response:
                outcome.status = response.status_code
                if response.status_code != 200:
                    text = (await response.aread()).decode(errors="replace")
                    # 503 before admission or before any agent took it: retry like SDKs do.
                    if response.status_code == 503 and retry:
                        await asyncio.sleep(0.5 + random.random())
                        outcome.connect_retries += 1
                        continue
                    outcome.kind, outcome.error = "error_status", text[:300]
                    return
                async for line in response.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    data = line[len("data: ") :]
                    if data == "[DONE]":
                        outcome.kind = "completed"
                        return
                    event = json.loads(data)
                    if "error" in event:
                        outcome.kind, outcome.error = "error_event", event["error"]["message"]
                        return
                    choice = event["choices"][0]
                    if choice.get("finish_reason"):
                        outcome.finish_reason = choice["finish_reason"]
                    elif choice["text"]:
                        outcome.chunks.append(choice["text"])
                outcome.kind, outcome.error = "error_transport", "stream ended without [DONE]"
                return
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            # Nothing reached the coordinator (it is restarting): retry with the same key.
            if not retry:
                outcome.kind, outcome.error = "error_unreachable", type(exc).__name__
                return
            outcome.connect_retries += 1
            await asyncio.sleep(0.5 + random.random())
        except httpx.TransportError as exc:
            # The coordinator went away mid-request (the crash): a clear, retryable error.
            outcome.kind, outcome.error = "error_transport", f"{type(exc).__name__}: {exc}"
            return


async def run_clients(
    url: str, spec: ChaosSpec, outcomes: list[Outcome], issued: list[int]
) -> None:
    queue: asyncio.Queue[Outcome] = asyncio.Queue()
    for outcome in outcomes:
        queue.put_nowait(outcome)
    limits = httpx.Limits(max_connections=spec.concurrency, max_keepalive_connections=64)
    timeout = httpx.Timeout(spec.client_timeout_s, connect=5.0)
    async with httpx.AsyncClient(
        base_url=url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=timeout,
        limits=limits,
    ) as client:  # fmt: skip

        async def worker() -> None:
            while True:
                try:
                    outcome = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                issued[0] += 1
                start = time.monotonic()
                try:
                    await asyncio.wait_for(
                        one_stream(client, outcome, spec), spec.client_timeout_s + 30
                    )
                except TimeoutError:
                    outcome.kind, outcome.error = "hung", "no end within the client timeout"
                outcome.ended = time.monotonic()
                outcome.seconds = outcome.ended - start
                issued[1] += 1

        await asyncio.gather(*(worker() for _ in range(spec.concurrency)))


# ---------------------------------------------------------------------------------------------
# Checks.


class _UntimedBackend(EmulatedBackend):
    """The emulated text without the performance model's timing (replays need only the text)."""

    def timing(self, prompt_tokens: int, batch: int) -> tuple[float, float]:
        return 0.0, 0.0


class Replayer:
    """The emulated text for (prompt, seed, max_tokens), computed locally, one chunk per token."""

    def __init__(self, model_dir: Path):
        self.backend = _UntimedBackend(
            "A100 80GB", TOY_MODEL_NAME, time_scale=0.0, tokenizer_dir=model_dir
        )
        self._cache: dict[tuple[str, int, int], list[str]] = {}

    async def chunks(self, prompt: str, seed: int, max_tokens: int) -> list[str]:
        from rigpool.agent.backends.base import GenerationRequest, SamplingParams, TokenChunk

        key = (prompt, seed, max_tokens)
        if key not in self._cache:
            request = GenerationRequest(
                "replay", TOY_MODEL_NAME, prompt, SamplingParams(max_tokens=max_tokens, seed=seed)
            )
            self._cache[key] = [
                item.text
                async for item in self.backend.generate(request)
                if isinstance(item, TokenChunk)
            ]
        return self._cache[key]

    async def check(self, outcome: Outcome, max_tokens: int) -> tuple[str | None, int]:
        """(None or what is wrong, number of failovers the text shows)."""
        got = outcome.chunks
        if len(got) != max_tokens:
            return f"{len(got)} tokens streamed, {max_tokens} expected", 0
        base, failovers = 0, 0
        expected = await self.chunks(outcome.prompt, outcome.seed, max_tokens)
        i = 0
        while i < len(got):
            if i - base < len(expected) and got[i] == expected[i - base]:
                i += 1
                continue
            # A failover continued the text from the prompt plus chunks[:j], for some j <= i.
            for j in range(i, base, -1):
                prompt = outcome.prompt + "".join(got[:j])
                cont = await self.chunks(prompt, outcome.seed, max_tokens - j)
                if got[j : i + 1] == cont[: i + 1 - j]:
                    base, expected, failovers = j, cont, failovers + 1
                    break
            else:
                return f"token {i} ({got[i]!r}) is neither the text nor a continuation", failovers
            i += 1
        return None, failovers


def check_database(db_url: str, outcomes: list[Outcome]) -> dict[str, int]:
    """Rows per client request: one `ok` row for each completed one, none for failures."""
    db = open_database(db_url)
    with db() as session:
        rows = session.execute(
            select(
                RequestRecord.idempotency_key,
                RequestRecord.status,
                RequestRecord.attempts,
                RequestRecord.error,
            )
        ).all()
    db.kw["bind"].dispose()
    ok_rows: Counter[str] = Counter()
    running: Counter[str] = Counter()
    for idem, status, _attempts, error in rows:
        key = idem.split(":failed:", 1)[0].split(":interrupted:", 1)[0]
        if status == "ok":
            ok_rows[key] += 1
        elif status == "running" or error == INTERRUPTED:
            # Cut by the coordinator's crash: start-up recovery ends such rows as interrupted.
            running[key] += 1
    result = {"double_charges": 0, "charged_failures": 0, "lost": 0, "interrupted": 0}
    result["retried"] = sum(1 for _, _, attempts, _ in rows if attempts > 1)
    result["unrecorded"] = 0
    for outcome in outcomes:
        charged = ok_rows.get(outcome.key, 0)
        cut = running.get(outcome.key, 0)
        result["double_charges"] += max(0, charged - 1)
        result["interrupted"] += 1 if cut else 0
        if outcome.kind != "completed" and charged:
            result["charged_failures"] += 1
        if outcome.kind == "completed" and charged == 0:
            if cut:
                # The crash fell between the last byte sent and the row's update: the client
                # has its answer, the record says "running" (reported, not lost).
                result["unrecorded"] += 1
            else:
                result["lost"] += 1  # a full answer the record knows nothing of
        elif cut and outcome.kind != "error_transport":
            result["lost"] += 1  # a row left running that no crash explains
    return result


def ledger_audit(db_url: str) -> str:
    """`rigpool ledger audit` in-process: "clean", "not available", or the problems found."""
    try:
        from rigpool.ledger import Ledger
        from rigpool.ledger.audit import audit
    except ImportError:
        return "not available"
    db = open_database(db_url)
    try:
        problems = audit(Ledger(db), None)
    finally:
        db.kw["bind"].dispose()
    return "clean" if not problems else "; ".join(str(p) for p in problems)[:500]


# ---------------------------------------------------------------------------------------------
# The run.


async def _run(spec: ChaosSpec, net: Network, report: ChaosReport, log: Any) -> list[Outcome]:
    outcomes = [
        Outcome(key=f"chaos-{uuid.uuid4().hex}", prompt=prompt_for(i % spec.prompts), seed=i % 7)
        for i in range(spec.streams)
    ]
    rogues = build_rogues(net.url, net.model, spec.rogues, spec.seed)
    rogue_tasks = [asyncio.create_task(r.run_forever()) for r in rogues]
    report.rogue_agents = len(rogues)
    report.slowed_agents = round(net.swarm_sizes[0] * 0.5)
    await asyncio.to_thread(
        net.wait, lambda: net.agents() == spec.agents + spec.rogues, "every agent online"
    )
    assert net.coordinator is not None
    report.rss_start_mb = rss_mb(net.coordinator.pid)
    issued = [0, 0]  # requests started, requests ended
    crash_times: list[float] = []
    clients = asyncio.create_task(run_clients(net.url, spec, outcomes, issued))

    async def when_issued(share: float) -> None:
        while issued[0] < share * spec.streams and not clients.done():
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0 * spec.time_scale / 3)  # let the wave get mid-stream

    async def when_finished(share: float) -> None:
        while issued[1] < share * spec.streams and not clients.done():
            await asyncio.sleep(0.05)

    async def suspend() -> None:
        # A frozen rig: SIGSTOP a whole swarm process mid-stream, SIGCONT it later.
        await when_issued(0.05)
        frozen = net.swarms[1]
        frozen.send_signal(signal.SIGSTOP)
        report.suspensions += 1
        report.agents_suspended += net.swarm_sizes[1]
        log(f"SIGSTOP swarm 1 ({net.swarm_sizes[1]} agents)")
        await asyncio.sleep(spec.stop_s)
        frozen.send_signal(signal.SIGCONT)
        log("SIGCONT swarm 1")

    async def kill() -> None:
        # Power lost: SIGKILL a whole swarm process; the rigs come back later as a new process.
        await when_issued(0.1)
        net.swarms[2].kill()
        report.agent_kills += 1
        report.agents_killed += net.swarm_sizes[2]
        log(f"SIGKILL swarm 2 ({net.swarm_sizes[2]} agents)")
        await asyncio.sleep(3)
        net.swarms[2] = net.start_swarm(2, net.swarm_sizes[2])
        log("swarm 2 started again")

    async def restart() -> None:
        # The coordinator crashes and is started again on the same port and database.
        if not spec.restart_coordinator:
            return
        await when_finished(0.4)  # a later wave, with streams in flight
        assert net.coordinator is not None
        report.rss_peak_mb = max(report.rss_peak_mb, rss_mb(net.coordinator.pid))
        crash_times.append(time.monotonic())
        await asyncio.to_thread(net.crash_and_restart_coordinator)
        report.coordinator_restarts += 1
        log("coordinator SIGKILLed and started again")

    async def faults() -> None:
        await asyncio.gather(suspend(), kill(), restart())

    async def sample_memory() -> None:
        while not clients.done():
            if net.coordinator is not None:
                report.rss_peak_mb = max(report.rss_peak_mb, rss_mb(net.coordinator.pid))
            await asyncio.sleep(0.5)

    fault_task = asyncio.create_task(faults())
    sampler = asyncio.create_task(sample_memory())
    await clients
    await fault_task
    sampler.cancel()
    report.rogue_corruptions = sum(r.corruptions for r in rogues)
    for rogue in rogues:
        rogue.stop()
    await asyncio.gather(*rogue_tasks, return_exceptions=True)
    # A connection cut is the crash's doing only if it ended right after a crash.
    report.transport_errors_outside_crash = sum(
        1
        for o in outcomes
        if o.kind == "error_transport"
        and not any(t <= o.ended <= t + CRASH_WINDOW_S for t in crash_times)
    )
    return outcomes


def run_chaos(spec: ChaosSpec, out: Path | None = None, *, verbose: bool = True) -> ChaosReport:
    """Run the suite; return (and write to `out`) the report. `report.problems` lists failures."""
    from rich.console import Console

    console = Console(stderr=True)

    def log(msg: str) -> None:
        if verbose:
            console.log(msg)

    report = ChaosReport(requests=spec.streams)
    work = Path(tempfile.mkdtemp(prefix="rigpool-chaos-"))
    net = Network(spec, work)
    started = time.monotonic()
    try:
        net.start()
        log(f"{spec.agents} agents in {spec.swarms} swarms + {spec.rogues} rogues -> {net.url}")
        outcomes = asyncio.run(_run(spec, net, report, log))
        assert net.coordinator is not None
        # Memory after the load has drained (the restarted process, its whole second half).
        time.sleep(1.0)
        report.coordinator_exit_code = net.coordinator.poll()
        report.rss_end_mb = rss_mb(net.coordinator.pid)
    finally:
        net.stop()
    report.wall_s = time.monotonic() - started

    kinds = Counter(o.kind for o in outcomes)
    report.error_kinds = {k: v for k, v in sorted(kinds.items()) if k != "completed"}
    report.completed = kinds["completed"]
    texts = Counter(f"{o.kind}: {(o.error or '')[:90]}" for o in outcomes if o.kind != "completed")
    report.error_samples = dict(texts.most_common(6))
    report.hung = kinds["hung"] + kinds["pending"]
    report.failed_with_error = spec.streams - report.completed - report.hung

    replayer = Replayer(net.model)

    async def verify() -> None:
        for outcome in outcomes:
            if outcome.kind != "completed":
                continue
            problem, failovers = await replayer.check(outcome, spec.max_tokens)
            report.failovers += failovers
            if problem is None:
                continue
            if len(outcome.chunks) < spec.max_tokens:
                report.missing_tokens += 1
            elif len(outcome.chunks) > spec.max_tokens:
                report.duplicates += 1
            else:
                report.corrupted += 1  # a wrong chunk in place of the right one
            if len(report.problems) < 10:
                report.problems.append(f"stream {outcome.key}: {problem}")

    asyncio.run(verify())
    db = check_database(net.db_url, outcomes)
    report.double_charges = db["double_charges"]
    report.charged_failures = db["charged_failures"]
    report.rows_interrupted_by_crash = db["interrupted"]
    report.retried_requests = db["retried"]
    report.completed_but_unrecorded_by_crash = db["unrecorded"]
    seconds = sorted(o.seconds for o in outcomes if o.kind == "completed") or [0.0]
    report.stream_p50_s = seconds[len(seconds) // 2]
    report.stream_p99_s = seconds[min(len(seconds) - 1, int(len(seconds) * 0.99))]
    report.lost = db["lost"] + report.hung
    report.ledger_audit = ledger_audit(net.db_url)

    checks = {
        "lost": report.lost == 0,
        "hung": report.hung == 0,
        "duplicates": report.duplicates == 0,
        "missing tokens": report.missing_tokens == 0,
        "corrupted streams": report.corrupted == 0,
        "double charges": report.double_charges == 0,
        "charged failures": report.charged_failures == 0,
        "ledger audit": report.ledger_audit in ("clean", "not available"),
        "coordinator alive at the end": report.coordinator_exit_code is None,
        "memory": max(report.rss_peak_mb, report.rss_end_mb)
        <= report.rss_start_mb + spec.memory_growth_limit_mb,
        # Connections are cut only by the crash; other failures must stay rare.
        "connections cut only by the crash": report.transport_errors_outside_crash == 0,
        "other failures under 5 %": (
            report.failed_with_error - report.error_kinds.get("error_transport", 0)
            <= 0.05 * spec.streams
        ),
    }
    report.problems += [f"check failed: {name}" for name, ok in checks.items() if not ok]
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(
            json.dumps(
                {"metrics": asdict(report), "goals": checks, "setup": asdict(spec)}, indent=2
            )
        )
    if verbose:
        print_report(report, spec)
    return report


def print_report(report: ChaosReport, spec: ChaosSpec) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"chaos: {spec.agents} agents, {spec.concurrency} concurrent streams")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for name, value in asdict(report).items():
        if name == "problems":
            continue
        shown = f"{value:.1f}" if isinstance(value, float) else str(value)
        table.add_row(name.replace("_", " "), shown)
    console = Console()
    console.print(table)
    for problem in report.problems:
        console.print(f"[red]✗[/red] {problem}")
    if not report.problems:
        console.print("[green]chaos suite passed[/green]")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="rigpool chaos suite")
    defaults = ChaosSpec()
    parser.add_argument("--agents", type=int, default=defaults.agents)
    parser.add_argument("--swarms", type=int, default=defaults.swarms)
    parser.add_argument("--rogues", type=int, default=defaults.rogues)
    parser.add_argument("--streams", type=int, default=defaults.streams)
    parser.add_argument("--concurrency", type=int, default=defaults.concurrency)
    parser.add_argument("--max-tokens", type=int, default=defaults.max_tokens)
    parser.add_argument("--time-scale", type=float, default=defaults.time_scale)
    parser.add_argument("--no-restart", action="store_true")
    parser.add_argument("--out", type=Path, default=None, help="write the JSON summary here")
    args = parser.parse_args(argv)
    spec = ChaosSpec(
        agents=args.agents,
        swarms=args.swarms,
        rogues=args.rogues,
        streams=args.streams,
        concurrency=args.concurrency,
        max_tokens=args.max_tokens,
        time_scale=args.time_scale,
        restart_coordinator=not args.no_restart,
    )
    report = run_chaos(spec, args.out)
    return 1 if report.problems else 0


if __name__ == "__main__":
    sys.exit(main())
