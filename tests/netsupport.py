"""Test helpers: a real coordinator on loopback in a thread, agents in threads, waiting."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from rigpool.coordinator.settings import Settings
from rigpool.devnet.server_thread import CoordinatorThread

API_KEY = "rp-test-key-0123456789abcdef"


class ServerThread(CoordinatorThread):
    """A real uvicorn server on 127.0.0.1 in a background thread."""

    def agents_online(self) -> int:
        return len(self.app.state.coordinator.hub.sessions)


def make_settings(tmp_path: Path, model_dirs: list[Path], **overrides: object) -> Settings:
    values: dict[str, object] = {
        "database_url": f"sqlite:///{tmp_path / 'coordinator.db'}",
        "identity_path": tmp_path / "coordinator-keypair.json",
        "model_dirs": model_dirs,
        "first_token_timeout_s": 5.0,
        "inter_token_timeout_s": 5.0,
        "request_timeout_s": 30.0,
        "heartbeat_interval_s": 0.5,
        "heartbeat_timeout_s": 3.0,
        # Escrow has its own tests (tests/gateway/test_billing.py); others run unbilled.
        "billing": False,
    }
    values.update(overrides)
    return Settings.model_validate(values)


class AgentThread:
    """A real `Agent` (the daemon's code) with any backend, on its own event loop thread."""

    def __init__(
        self,
        coordinator_url: str,
        backend: object,
        *,
        identity: object | None = None,
        receipts_path: Path | None = None,
        **caps: object,
    ):
        from rigpool.agent.daemon import Agent
        from rigpool.agent.setup import ProvideOptions, capabilities_for
        from rigpool.protocol.signing import Identity

        self.identity = identity if isinstance(identity, Identity) else Identity.generate()
        capabilities, _ = capabilities_for(backend, ProvideOptions(backend="auto"))  # type: ignore[arg-type]
        if caps:
            capabilities = capabilities.model_copy(update=caps)
        self.agent = Agent(
            coordinator_url,
            self.identity,
            backend,  # type: ignore[arg-type]
            capabilities,
            receipts_path=receipts_path,
        )
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.error: BaseException | None = None

    def _run(self) -> None:
        try:
            self.loop.run_until_complete(self.agent.run_forever())
        except BaseException as exc:  # surfaced to the test
            self.error = exc

    def start(self) -> AgentThread:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.agent.stop)
        self.thread.join(15)


def wait_for(predicate: object, timeout_s: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class RawAgent:
    """A hand-driven agent over a real WebSocket: valid signed hello, sealed frames after it.

    Tests script it to misbehave in ways the real daemon never would.
    """

    def __init__(
        self,
        coordinator_url: str,
        caps: object,
        identity: object | None = None,
        protocol_version: str | None = None,
    ):
        import json

        from websockets.sync.client import connect

        from rigpool.agent.daemon import agent_url, signed_hello
        from rigpool.protocol.channel import Sealer, agent_session_key
        from rigpool.protocol.signing import Identity, canonical_bytes

        self.identity = identity or Identity.generate()
        self.ws = connect(agent_url(coordinator_url))
        hello = signed_hello(self.identity, caps)  # type: ignore[arg-type]
        if protocol_version is not None:  # an agent of an older (or newer) minor version
            hello = hello.model_copy(update={"protocol_version": protocol_version})
            hello = hello.model_copy(
                update={"signature": self.identity.sign(canonical_bytes(hello))}  # type: ignore[attr-defined]
            )
        self.ws.send(hello.model_dump_json())
        self.welcome = json.loads(self.ws.recv(timeout=10))
        assert self.welcome["type"] == "welcome", self.welcome
        key = agent_session_key(
            self.identity.keypair_bytes(),  # type: ignore[attr-defined]
            bytes.fromhex(self.welcome["session_pubkey"]),
            hello.nonce,
        )
        self.sealer = Sealer(key)
        self._lock = threading.Lock()
        self._closed = threading.Event()
        # Heartbeats keep the session alive however slowly the test itself runs.
        threading.Thread(target=self._heartbeats, daemon=True).start()

    def _heartbeats(self) -> None:
        from rigpool.protocol.messages import Heartbeat

        while not self._closed.wait(0.5):
            try:
                self.send(Heartbeat())
            except Exception:
                return

    def send(self, frame: object) -> None:
        with self._lock:
            self.ws.send(self.sealer.seal(frame.model_dump_json()))  # type: ignore[attr-defined]

    def send_raw(self, text: str) -> None:
        with self._lock:
            self.ws.send(text)

    def recv(self, timeout: float | None = None) -> dict[str, object]:
        import json

        return dict(json.loads(self.ws.recv(timeout=timeout)))

    def close(self) -> None:
        self._closed.set()
        self.ws.close()


class SharedBackend:
    """The module's one loaded toy model, lent to one agent after another (close() keeps it)."""

    def __init__(self, backend: Any) -> None:
        self._backend = backend
        self.kind = backend.kind
        self.emulated = False
        self.device = backend.device
        self.requests = 0

    def models(self) -> Any:
        return self._backend.models()

    def generate(self, request: Any) -> AsyncIterator[Any]:
        self.requests += 1
        return self._backend.generate(request)  # type: ignore[no-any-return]

    async def close(self) -> None:
        pass
