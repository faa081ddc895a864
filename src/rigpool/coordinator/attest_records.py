"""What the coordinator keeps of attestations: each agent's last verdict and the inbox of a round.

Plain records, apart from `attest_link` (which runs the challenges and needs the hub and the
state) so that the hub and the state can hold these without importing the challenger: no cycle.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from rigpool.protocol.messages import AttestData
from rigpool.trust.attestation import AttestationResult

AttestStatus = Literal["pending", "verified", "unverified", "refused", "not attested"]


@dataclass
class AttestationRecord:
    """What the coordinator knows of an agent's last attestation (the providers view shows it)."""

    status: AttestStatus
    gpu: str = ""
    reasons: tuple[str, ...] = ()
    reply_s: float | None = None
    limit_s: float | None = None
    expected_s: float | None = None
    probe_s: float | None = None
    probe_limit_s: float | None = None
    #: unix time of the verdict
    time: float = field(default_factory=time.time)
    #: challenges passed on this connection
    passed: int = 0
    #: unix time the next re-attestation is due (None: none planned)
    next_at: float | None = None

    @classmethod
    def of(cls, result: AttestationResult, passed: int) -> AttestationRecord:
        return cls(
            status=result.status,
            gpu=result.gpu,
            reasons=result.reasons,
            reply_s=result.reply_s,
            limit_s=result.limit_s,
            expected_s=result.expected_s,
            probe_s=result.probe_s or None,
            probe_limit_s=result.probe_limit_s or None,
            passed=passed,
        )

    def view(self) -> dict[str, Any]:
        def r(x: float | None) -> float | None:
            return None if x is None else round(x, 4)

        return {
            "status": self.status,
            "gpu": self.gpu,
            "reasons": list(self.reasons),
            "reply_s": r(self.reply_s),
            "limit_s": r(self.limit_s),
            "expected_s": r(self.expected_s),
            "probe_s": r(self.probe_s),
            "probe_limit_s": r(self.probe_limit_s),
            "time": round(self.time, 3),
            "passed": self.passed,
            "next_at": r(self.next_at),
        }


class AttestBook(dict[str, AttestationRecord]):
    """Every agent's last attestation, and a bound on verifications running at once.

    Checking a probe answer regenerates the probed products' matrices with numpy (about a GiB of
    temporaries for 4096 x 4096): after a coordinator restart every agent reconnects at once,
    so verifications queue here instead of exhausting the coordinator's memory.
    """

    def __init__(self, verify_slots: int = 2) -> None:
        super().__init__()
        self.verify_slots = asyncio.Semaphore(verify_slots)


class AttestInbox:
    """Joins the `attest_data` pieces of one round; `result` resolves to (text, error)."""

    def __init__(self, challenge_id: str, round_: str, max_chars: int) -> None:
        self.challenge_id = challenge_id
        self.round = round_
        self.max_chars = max_chars
        self.result: asyncio.Future[tuple[str, str]] = asyncio.get_running_loop().create_future()
        self.done_at: float | None = None
        self._parts: dict[int, str] = {}
        self._count: int | None = None
        self._size = 0

    def _finish(self, text: str, error: str = "") -> None:
        if not self.result.done():
            self.done_at = time.perf_counter()
            self.result.set_result((text, error))

    def add(self, frame: AttestData) -> None:
        if self.result.done() or frame.challenge_id != self.challenge_id:
            return
        if frame.round != self.round:
            return
        if frame.error:
            self._finish("", frame.error)
            return
        if self._count is None:
            self._count = frame.parts
        if frame.parts != self._count or frame.part >= frame.parts or frame.part in self._parts:
            self._finish("", "malformed attest_data pieces")
            return
        self._size += len(frame.data)
        if self._size > self.max_chars:
            self._finish("", f"{self.round} exceeds the {self.max_chars} characters it may take")
            return
        self._parts[frame.part] = frame.data
        if len(self._parts) == self._count:
            self._finish("".join(self._parts[i] for i in range(self._count)))
