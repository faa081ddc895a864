"""A live loopback network for benchmarks: a coordinator process plus a swarm of emulated agents.

Benchmarks compare configurations of the same network in one run (ratios, not absolute
seconds), so each configuration gets a fresh coordinator and swarm with identical inputs.
"""

from __future__ import annotations

import asyncio
import json
import os
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

API_KEY = "rp-bench-key-0123456789abcdef"
RIGPOOL = [sys.executable, "-m", "rigpool"]


@dataclass
class Network:
    agents: int
    swarm_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Network:
        model = ensure_toy_model()
        work = Path(tempfile.mkdtemp(prefix="rigpool-bench-"))
        db_url = f"sqlite:///{work / 'c.db'}"
        db = open_database(db_url)
        create_key(db, key=API_KEY)
        self.port = free_port()
        # Benchmarks of routing and the gateway run unbilled unless a config says otherwise
        # (the ledger has its own benchmark, bench/ledger.py).
        env = {**os.environ, "RIGPOOL_BILLING": "false", **self.env}
        logs = (work / "coordinator.log").open("wb")
        self.procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "rigpool",
                    "coordinator",
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
                    sys.executable,
                    "-m",
                    "rigpool",
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
        return self

    def health(self) -> dict[str, Any] | None:
        try:
            return dict(httpx.get(self.url + "/healthz", timeout=2).json())
        except (httpx.HTTPError, json.JSONDecodeError):
            return None

    def _wait(self, ready: Any, what: str, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if ready():
                return
            if any(p.poll() is not None for p in self.procs):
                raise RuntimeError(f"a process died while waiting for {what}")
            time.sleep(0.2)
        raise RuntimeError(f"timed out waiting for {what}")

    def __exit__(self, *exc: object) -> None:
        for proc in reversed(self.procs):
            proc.send_signal(signal.SIGTERM)
        for proc in reversed(self.procs):
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()


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
