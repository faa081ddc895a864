"""The agent's side of attestation: answer the coordinator's challenges off the event loop.

On `attest_challenge` the agent runs `trust.attestation_agent.ChallengeRun` on its backend's
device in one dedicated worker thread (heartbeats and streams keep flowing), sends the reply in
`attest_data` pieces, keeps the run (and its buffer) until the `attest_probe`, answers it from
memory and frees the buffer. Whatever stops the work (no torch, not enough memory, the
deadline) becomes an `attest_data` frame with `error` set, so the coordinator refuses with the
agent's own reason instead of waiting out the deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal, TypeVar

from rigpool.protocol.messages import MAX_ATTEST_PART_CHARS, AttestData
from rigpool.trust.attestation_wire import (
    WireError,
    answer_to_text,
    challenge_from_json,
    probe_from_json,
    response_to_text,
    split_parts,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

NO_TORCH = (
    "this agent cannot run attestation challenges: torch is not installed "
    "(pip install 'rigpool[torch]')"
)


def data_frames(
    challenge_id: str, round_: Literal["reply", "answer"], text: str = "", error: str = ""
) -> list[AttestData]:
    """One round's answer as `attest_data` frames (one frame when it is an error)."""
    if error:
        return [AttestData(challenge_id=challenge_id, round=round_, error=error[:2048])]
    pieces = split_parts(text, MAX_ATTEST_PART_CHARS)
    return [
        AttestData(challenge_id=challenge_id, round=round_, part=i, parts=len(pieces), data=p)
        for i, p in enumerate(pieces)
    ]


@contextlib.contextmanager
def _one_cpu_thread(device: str) -> Iterator[None]:
    """Run CPU challenges on one torch thread.

    Many small ops on an oversubscribed machine are several times slower with OpenMP's spinning
    workers. Safe because the coordinator routes nothing to an agent while it is being
    challenged (the setting is process-wide).
    """
    if device != "cpu":
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class Attester:
    """Runs the challenges of one agent; at most one run (one buffer) is held at a time."""

    def __init__(self, device: str = "auto") -> None:
        self.device = device
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rigpool-attest")
        self._run: Any = None  # the ChallengeRun waiting for its probe

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _resolved_device(self) -> str:
        import torch  # ImportError: no torch on this agent

        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return self.device

    # -- off the clock ---------------------------------------------------------------------------

    def _warm_up(self) -> None:
        with contextlib.suppress(Exception):  # the challenge itself reports what is missing
            device = self._resolved_device()
            if device.startswith("cuda"):
                import torch

                torch.zeros(1, device=device)  # creates the CUDA context now, not on the clock

    async def warm_up(self) -> None:
        """Import torch and create the device context before any challenge is timed."""
        await self._call(self._warm_up)

    def vram_free_mb(self) -> int | None:
        """Free MiB of a CUDA device this process already uses, else None.

        Heartbeats report it, so the coordinator leaves the loaded model out of a challenge.
        """
        torch = sys.modules.get("torch")
        if torch is None or self.device == "cpu" or not torch.cuda.is_initialized():
            return None
        try:
            from rigpool.trust.attestation_agent import device_available_bytes

            device = "cuda" if self.device == "auto" else self.device
            available = device_available_bytes(device)
        except Exception:  # a driver hiccup must not stop the heartbeats
            return None
        return None if available is None else available // (1 << 20)

    # -- round 1 ---------------------------------------------------------------------------------

    def _reply(self, payload: dict[str, Any]) -> list[AttestData]:
        self._release()
        challenge_id = str(payload.get("challenge_id", ""))[:64]
        try:
            challenge = challenge_from_json(payload)
        except WireError as exc:
            return data_frames(challenge_id, "reply", error=f"malformed challenge: {exc}")
        try:
            from rigpool.trust.attestation_agent import (
                ChallengeRun,
                ChallengeTimeout,
                InsufficientMemory,
            )

            run = ChallengeRun(challenge, device=self._resolved_device())
        except ImportError:
            return data_frames(challenge_id, "reply", error=NO_TORCH)
        try:
            with _one_cpu_thread(run.device):
                response = run.respond()
        except (ChallengeTimeout, InsufficientMemory) as exc:
            run.release()
            return data_frames(challenge_id, "reply", error=str(exc))
        except Exception as exc:  # e.g. CUDA out of memory despite the check
            run.release()
            log.warning("attestation challenge failed", exc_info=True)
            return data_frames(
                challenge_id, "reply", error=f"challenge failed: {type(exc).__name__}: {exc}"
            )
        self._run = run
        return data_frames(challenge_id, "reply", response_to_text(response))

    async def reply(self, payload: dict[str, Any]) -> list[AttestData]:
        """Do a challenge's work; the reply's frames (or one error frame)."""
        return await self._call(self._reply, payload)

    # -- round 2 ---------------------------------------------------------------------------------

    def _answer(self, challenge_id: str, payload: dict[str, Any]) -> list[AttestData]:
        run = self._run
        if run is None or run.challenge.challenge_id != challenge_id:
            return data_frames(challenge_id, "answer", error="no challenge held for this probe")
        try:
            probe = probe_from_json(payload, run.challenge)
            text = answer_to_text(run.answer(probe))
        except WireError as exc:
            return data_frames(challenge_id, "answer", error=f"malformed probe: {exc}")
        except Exception as exc:  # a torch error must not leave the coordinator waiting
            log.warning("attestation probe failed", exc_info=True)
            return data_frames(
                challenge_id, "answer", error=f"probe failed: {type(exc).__name__}: {exc}"
            )
        finally:
            self._release()
        return data_frames(challenge_id, "answer", text)

    async def answer(self, challenge_id: str, payload: dict[str, Any]) -> list[AttestData]:
        """Open what the probe asks from the held run, then free it."""
        return await self._call(self._answer, challenge_id, payload)

    # -- cleanup ---------------------------------------------------------------------------------

    def _release(self) -> None:
        run, self._run = self._run, None
        if run is not None:
            run.release()

    def release_soon(self) -> None:
        """Free a held buffer once the worker is idle (the connection is gone)."""
        with contextlib.suppress(RuntimeError):  # executor shut down
            self._executor.submit(self._release)
