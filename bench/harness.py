"""A live loopback network for benchmarks: a coordinator process plus a swarm of emulated agents.

Benchmarks compare configurations of the same network in one run (ratios, not absolute
seconds), so each configuration gets a fresh coordinator and swarm with identical inputs.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from rigpool.coordinator.db import open_database
from rigpool.coordinator.keys import create_key
from rigpool.devnet.localnet import free_port
from rigpool.devnet.toymodel import ensure_toy_model
from rigpool.ledger import Ledger

API_KEY = "rp-bench-key-0123456789abcdef"
#: the ledger account the bench key spends from
CONSUMER = "bench-consumer"
RIGPOOL = [sys.executable, "-m", "rigpool"]


#: the coordinator under yappi, for `Network(profiled=True)`: the real CLI (`rigpool coordinator
#: ...`, arguments after -c) with two signal handlers. SIGUSR1 clears and starts yappi (CPU
#: clock, every thread: the event loop, the `to_thread` work, the writer threads); SIGUSR2
#: stops it and writes, per thread, each function's own and total CPU time with its callees
#: as JSON to $RIGPOOL_BENCH_PROFILE (written to a temporary name, then renamed).
_PROFILED_COORDINATOR = """
import json, os, signal, sys, yappi
from rigpool.cli.main import app

def start(*_):
    yappi.stop()
    yappi.clear_stats()
    yappi.set_clock_type("cpu")
    yappi.start(builtins=True, profile_threads=True)

def stop(*_):
    yappi.stop()
    out = os.environ["RIGPOOL_BENCH_PROFILE"]
    rows = []
    for t in yappi.get_thread_stats():
        for s in yappi.get_func_stats(ctx_id=t.id):
            rows.append({
                "thread": t.name, "index": s.index, "name": s.name, "module": s.module,
                "lineno": s.lineno, "tsub": s.tsub, "ttot": s.ttot, "ncall": s.ncall,
                "children": [[c.index, c.ttot, c.tsub, c.ncall] for c in s.children],
            })
    with open(out + ".part", "w") as f:
        json.dump(rows, f)
    os.replace(out + ".part", out)

signal.signal(signal.SIGUSR1, start)
signal.signal(signal.SIGUSR2, stop)
app(args=sys.argv[1:], prog_name="rigpool")
"""


def _pinned(cpus: str | None) -> list[str]:
    """`taskset -c CPUS` when pinning is asked for and possible, else nothing."""
    if cpus is None or shutil.which("taskset") is None:
        return []
    return ["taskset", "-c", cpus]


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and all its threads so far (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    # after the command name: state is field 3, so utime (14) and stime (15) are at 11 and 12
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Network:
    """A coordinator process and a swarm process of `agents` emulated agents, on loopback.

    Optional: pin the coordinator and the swarm to CPUs (`taskset -c`), run the coordinator
    under yappi (`profiled`: `profile_start` / `profile_stop`), and credit the API key's
    consumer account (`fund`, base units) so a billed coordinator can escrow its requests.
    """

    agents: int
    swarm_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    port: int = 0
    coordinator_cpus: str | None = None
    swarm_cpus: str | None = None
    profiled: bool = False
    fund: int = 0
    work: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="rigpool-bench-")))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def coordinator_pid(self) -> int:
        return self.procs[0].pid

    def __enter__(self) -> Network:
        model = ensure_toy_model()
        work = self.work
        db_url = f"sqlite:///{work / 'c.db'}"
        db = open_database(db_url)
        create_key(db, key=API_KEY, consumer=CONSUMER)
        if self.fund:
            Ledger(db).credit_deposit(CONSUMER, self.fund, "bench-deposit".ljust(64, "0"))
        self.port = free_port()
        # Benchmarks of routing and the gateway run unbilled unless a config says otherwise
        # (the ledger has its own benchmark, bench/ledger.py).
        env = {
            **os.environ,
            "RIGPOOL_BILLING": "false",
            "RIGPOOL_IDENTITY_PATH": str(work / "coordinator-keypair.json"),
            "RIGPOOL_BENCH_PROFILE": str(work / "profile.json"),
            **self.env,
        }
        command = ["-m", "rigpool"] if not self.profiled else ["-c", _PROFILED_COORDINATOR]
        logs = (work / "coordinator.log").open("wb")
        try:
            self.procs.append(
                subprocess.Popen(
                    [
                        *_pinned(self.coordinator_cpus),
                        sys.executable,
                        *command,
                        "coordinator",
                        "--host",
                        "127.0.0.1",
                        "--port",
                        str(self.port),
                        "--db",
                        db_url,
                        "--model-dir",
                        str(model),
                        "--log-level",
                        "warning",
                    ],
                    env=env,
                    stdout=logs,
                    stderr=subprocess.STDOUT,
                )
            )
            self._wait(lambda: self.health() is not None, "coordinator")
            self.procs.append(
                subprocess.Popen(
                    [
                        *_pinned(self.swarm_cpus),
                        *RIGPOOL,
                        "swarm",
                        "--coordinator",
                        self.url,
                        "--agents",
                        str(self.agents),
                        "--model",
                        str(model),
                        *self.swarm_args,
                    ],
                    env=env,
                    stdout=(work / "swarm.log").open("wb"),
                    stderr=subprocess.STDOUT,
                )
            )
            self._wait(lambda: (self.health() or {}).get("agents") == self.agents, "agents")
        except BaseException:
            self.__exit__()
            raise
        return self

    def health(self) -> dict[str, Any] | None:
        try:
            return dict(httpx.get(self.url + "/healthz", timeout=2).json())
        except (httpx.HTTPError, json.JSONDecodeError):
            return None

    def coordinator_cpu_s(self) -> float:
        """CPU seconds the coordinator process has used so far (all its threads)."""
        return cpu_seconds(self.coordinator_pid)

    def profile_start(self) -> None:
        """Start yappi in a `profiled` coordinator."""
        self.procs[0].send_signal(signal.SIGUSR1)
        time.sleep(0.3)  # the handler runs between two steps of the event loop

    def profile_stop(self, timeout_s: float = 60) -> list[dict[str, Any]]:
        """Stop yappi and read its function table (empty when none was written in time)."""
        out = Path(self.env.get("RIGPOOL_BENCH_PROFILE", self.work / "profile.json"))
        out.unlink(missing_ok=True)
        self.procs[0].send_signal(signal.SIGUSR2)
        deadline = time.monotonic() + timeout_s
        while not out.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        return list(json.loads(out.read_text())) if out.exists() else []

    def _wait(self, ready: Any, what: str, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if ready():
                return
            if any(p.poll() is not None for p in self.procs):
                raise RuntimeError(f"a process died while waiting for {what} (logs: {self.work})")
            time.sleep(0.2)
        raise RuntimeError(f"timed out waiting for {what} (logs: {self.work})")

    def __exit__(self, *exc: object) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in reversed(self.procs):
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self.procs.clear()


async def closed_loop(
    url: str, body: dict[str, Any], requests: int, concurrency: int, path: str = "/v1/completions"
) -> tuple[list[float], int]:
    """Send `requests` requests, `concurrency` at a time; return latencies (s) and errors."""
    latencies: list[float] = []
    errors = 0
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(requests):
        queue.put_nowait(i)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(
        base_url=url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=120, limits=limits
    ) as client:

        async def worker() -> None:
            nonlocal errors
            while True:
                try:
                    i = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                start = time.perf_counter()
                response = await client.post(path, json={**body, "seed": i})
                if response.status_code == 200:
                    latencies.append(time.perf_counter() - start)
                else:
                    errors += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, errors


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def write_result(
    name: str, metrics: dict[str, Any], goals: dict[str, Any], setup: dict[str, Any]
) -> Path:
    out = Path(__file__).parent / "results" / f"{name}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"metrics": metrics, "goals": goals, "setup": setup}, indent=2))
    return out
