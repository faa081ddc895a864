"""A whole rigpool network on this machine: one coordinator and N agents as real processes.

Used by `rigpool up`, `rigpool demo` and the end-to-end tests. Every part is the real one —
uvicorn on loopback, SQLite, agents dialling out over WebSockets — only the GPUs of emulated
agents are emulated (and say so).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import httpx

from rigpool.coordinator.db import open_database
from rigpool.coordinator.keys import create_key
from rigpool.devnet.money import LocalMoney, fund_local_network

TOY_MODEL_NAME = "rigpool-toy-untrained"


@dataclass(frozen=True)
class ProviderSpec:
    """One agent of the local network: a real CPU agent or an emulated GPU."""

    gpu: str | None = None  # None: a real transformers agent on this machine's CPU/GPU

    @property
    def label(self) -> str:
        return f"emulated {self.gpu}" if self.gpu else "cpu (transformers)"


#: The default mix cycles through these: real CPU agents and emulated cards of each class,
#: from a former mining rig's 8 GB card to a data-center A100.
PROVIDER_CYCLE = (
    ProviderSpec(None),
    ProviderSpec("RTX 3060 8GB"),
    ProviderSpec("RTX 4090"),
    ProviderSpec("A100 80GB"),
    ProviderSpec(None),
    ProviderSpec("RTX 3090"),
    ProviderSpec("L4"),
    ProviderSpec("H100 SXM"),
)


def provider_mix(count: int) -> list[ProviderSpec]:
    return [PROVIDER_CYCLE[i % len(PROVIDER_CYCLE)] for i in range(count)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class NetworkError(RuntimeError):
    """The local network failed to start; the message includes the failing process's log."""


@dataclass
class _Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]


@dataclass
class LocalNetwork:
    """Start with `with LocalNetwork(...) as net:`; everything stops on exit (even on Ctrl-C)."""

    workdir: Path
    model_dir: Path
    providers: list[ProviderSpec]
    api_key: str
    port: int = 0
    model_name: str = TOY_MODEL_NAME
    extra_env: dict[str, str] = field(default_factory=dict)
    money: LocalMoney | None = None
    _procs: list[_Proc] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def gateway_url(self) -> str:
        return f"{self.base_url}/v1"

    @property
    def database_url(self) -> str:
        return f"sqlite:///{self.workdir / 'coordinator.db'}"

    def __enter__(self) -> LocalNetwork:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _spawn(self, name: str, args: list[str]) -> _Proc:
        logs = self.workdir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        log_path = logs / f"{name}.log"
        log_file = log_path.open("wb")
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.extra_env}
        popen = subprocess.Popen(
            [sys.executable, "-m", "rigpool", *args],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # Ctrl-C in the terminal reaches us, and we stop them
        )
        proc = _Proc(name, popen, log_path, log_file)
        self._procs.append(proc)
        return proc

    def start(self, timeout_s: float = 180.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.port == 0:
            self.port = free_port()
        keys = [self.workdir / f"provider-{i}.json" for i in range(len(self.providers))]
        self.money = fund_local_network(self.workdir, self.database_url, keys)
        db = open_database(self.database_url)
        create_key(db, name="local network", key=self.api_key, consumer=self.money.consumer_wallet)
        db.kw["bind"].dispose()
        self.extra_env.setdefault("RIGPOOL_IDENTITY_PATH", str(self.money.coordinator_key))
        self.extra_env.setdefault("RIGPOOL_MIN_STAKE", str(self.money.stake_per_provider))
        # A local network has one real model agent and a cheap (toy) model: re-check every
        # request it serves, so the demo shows verification at work (production: 2-50 %).
        self.extra_env.setdefault("RIGPOOL_CHECK_RATE_FLOOR", "1.0")
        self.extra_env.setdefault("RIGPOOL_CHECK_RATE_CAP", "1.0")
        self._spawn(
            "coordinator",
            [
                "coordinator",
                "--host", "127.0.0.1",
                "--port", str(self.port),
                "--db", self.database_url,
                "--model-dir", str(self.model_dir),
            ],
        )  # fmt: skip
        self._wait(lambda: self._get("/healthz") is not None, timeout_s, "coordinator to answer")
        for i, spec in enumerate(self.providers):
            args = [
                "provide",
                "--coordinator", self.base_url,
                "--identity", str(self.workdir / f"provider-{i}.json"),
                "--served-name", self.model_name,
                "--region", "local",
            ]  # fmt: skip
            # Emulated agents read the model folder only for its tokenizer (their filler text
            # is then cut into real tokens); CPU agents load and run the model itself.
            args += ["--model", str(self.model_dir)]
            args += ["--emulate", spec.gpu] if spec.gpu else ["--device", "cpu"]
            self._spawn(f"provider-{i}", args)
        self._wait(
            lambda: self.online_providers() >= len(self.providers),
            timeout_s,
            f"{len(self.providers)} providers to come online",
        )

    def _get(self, path: str) -> dict[str, Any] | None:
        try:
            response = httpx.get(self.base_url + path, timeout=2.0)
        except httpx.HTTPError:
            return None
        return response.json() if response.status_code == 200 else None

    def providers_view(self) -> list[dict[str, Any]]:
        body = self._get("/v1/providers")
        return list(body["data"]) if body else []

    def trust_view(self) -> dict[str, Any]:
        """`GET /v1/trust`, after the checks still queued have run (bounded wait)."""
        deadline = time.monotonic() + 30
        body = self._get("/v1/trust") or {}
        while time.monotonic() < deadline and body.get("queued"):
            time.sleep(0.2)
            body = self._get("/v1/trust") or {}
        return body

    def online_providers(self) -> int:
        return sum(1 for p in self.providers_view() if p["state"] == "online")

    def _wait(self, ready: Any, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for proc in self._procs:
                if proc.popen.poll() is not None:
                    raise NetworkError(
                        f"{proc.name} exited with code {proc.popen.returncode} while waiting for "
                        f"{what}; last lines of {proc.log_path}:\n{tail(proc.log_path)}"
                    )
            if ready():
                return
            time.sleep(0.2)
        raise NetworkError(f"timed out after {timeout_s:.0f} s waiting for {what}")

    def process(self, name: str) -> subprocess.Popen[bytes]:
        return next(p.popen for p in self._procs if p.name == name)

    def stop(self, grace_s: float = 15.0) -> None:
        """SIGTERM every process (agents first), then SIGKILL whatever is left after `grace_s`."""
        agents = [p for p in self._procs if p.name != "coordinator"]
        others = [p for p in self._procs if p.name == "coordinator"]
        for group in (agents, others):
            for proc in group:
                if proc.popen.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        proc.popen.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + grace_s
            for proc in group:
                try:
                    proc.popen.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    proc.popen.kill()
                    proc.popen.wait()
                proc.log_file.close()
        self._procs.clear()


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
