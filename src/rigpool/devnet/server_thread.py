"""A real coordinator in a background thread: uvicorn on 127.0.0.1, for tests and benchmarks.

`LocalNetwork` runs the coordinator as a process (what `rigpool up` does); a test or benchmark
that needs to look inside the running coordinator (its fleet index, its verifier) runs it in a
thread of its own process instead, with the very same app, server and frame limits.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import uvicorn
from sqlalchemy.orm import Session, sessionmaker

from rigpool.coordinator.access_log import install_redaction
from rigpool.coordinator.app import create_app
from rigpool.coordinator.http_protocol import http_protocol
from rigpool.coordinator.settings import Settings
from rigpool.devnet.localnet import free_port
from rigpool.protocol.messages import MAX_FRAME_BYTES


class CoordinatorThread:
    """`with CoordinatorThread(settings) as server:` serves at `server.url` until the block ends."""

    def __init__(self, settings: Settings, port: int | None = None, log_level: str = "warning"):
        self.port = port or free_port()
        self.app = create_app(settings.model_copy(update={"port": self.port}))
        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=self.port, log_level=log_level,
            ws_max_size=MAX_FRAME_BYTES, lifespan="on",
            http=http_protocol(settings.header_read_timeout_s),
        )  # fmt: skip
        install_redaction()  # as `rigpool coordinator` does
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def state(self) -> Any:
        """The running `CoordinatorState`."""
        return self.app.state.coordinator

    @property
    def db(self) -> sessionmaker[Session]:
        return self.state.db

    def start(self, timeout_s: float = 30.0) -> CoordinatorThread:
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the coordinator thread did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)

    def __enter__(self) -> CoordinatorThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
