"""Fault injection for crash tests: stop the coordinator at a named point.

The points are in settlement and in the group-commit writer.

Set `RIGPOOL_FAULT=settle.after_send` (comma-separated for several) or pass `faults=` to the
settler. At that point `InjectedCrash` is raised. It derives from `BaseException`, not
`Exception`, so no `except Exception` cleanup on the way up can hide it: the effect is that of a
process killed between two statements. `RIGPOOL_FAULT_MODE=exit` makes it a real `os._exit(75)`.

Points (in order, per chain transaction):
    settle.before_intent   payouts queued, nothing written about the transaction yet
    settle.before_send     intent (signature, blockhash, raw bytes) committed, not sent
    settle.after_send      sent and landed on chain, not recorded as paid
    settle.after_record    recorded as paid (the next batch has not started)

Group commit (`GroupCommit`, per batch of units; `commit.mid_batch` is armed on the `Ledger`):
    commit.before_apply    the batch is taken from the queue, its transaction begun, nothing done
    commit.mid_batch       half of a ledger batch is written (holds/journal rows), not the rest
    commit.before_commit   every unit applied in the transaction, not committed
    commit.after_commit    committed, no submitter told yet (their futures never resolve)
"""

from __future__ import annotations

import os

POINTS = (
    "settle.before_intent",
    "settle.before_send",
    "settle.after_send",
    "settle.after_record",
)
COMMIT_POINTS = (
    "commit.before_apply",
    "commit.mid_batch",
    "commit.before_commit",
    "commit.after_commit",
)


class InjectedCrash(BaseException):
    """Raised at an armed fault point."""


class Faults:
    """The armed fault points; each fires once (a restarted process is a new `Faults`)."""

    def __init__(self, armed: str | None = None):
        spec = os.environ.get("RIGPOOL_FAULT", "") if armed is None else armed
        self.armed = {p.strip() for p in spec.split(",") if p.strip()}
        unknown = self.armed - set(POINTS) - set(COMMIT_POINTS)
        if unknown:
            raise ValueError(
                f"unknown fault point(s) {sorted(unknown)}; known: {POINTS + COMMIT_POINTS}"
            )

    def hit(self, point: str) -> None:
        """Crash here if `point` is armed (once): raise `InjectedCrash`, or exit the process."""
        if point in self.armed:
            self.armed.discard(point)
            if os.environ.get("RIGPOOL_FAULT_MODE") == "exit":
                os._exit(75)
            raise InjectedCrash(point)
