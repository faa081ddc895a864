"""The agent's durable journal of countersigned receipts the coordinator has not acknowledged.

A receipt the coordinator countersigned is the agent's proof that it served a request at a
price: if the coordinator dies before the capture it proves reaches its database, the agent
presents the receipt when it reconnects and the coordinator charges it then (docs/money.md,
"What is durable when"). So the agent keeps each one on disk until the coordinator says its
ledger holds it (`receipts_ack`).

The file is JSON lines, appended and fsynced: `{"add": <receipt>}` when one arrives,
`{"ack": [request ids]}` when the coordinator acknowledged them. Loading replays it; a line
that does not parse (a write torn by a crash, a disk error) is skipped with a warning. The
file is rewritten (to a temporary file, fsynced, renamed) when acknowledged lines outnumber
the live ones, and after a load that skipped lines. At most `max_receipts` are held: beyond
that a new receipt is not kept, and an error says so once per episode.

Every method does blocking file I/O: the daemon calls them on its one journal thread, never
on the event loop. A lock makes the in-memory view safe to read from other threads.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterable
from pathlib import Path

from pydantic import ValidationError

from rigpool.protocol.messages import CountersignedReceipt

log = logging.getLogger(__name__)

#: receipts held at most (about 1 KiB each on disk and a few in memory)
MAX_HELD_RECEIPTS = 20_000

#: a rewrite happens once this many acknowledged lines have piled up (and outnumber the live)
COMPACT_AFTER = 1024

JOURNAL_NAME = "receipts.jsonl"


def default_journal_path(identity_path: Path) -> Path:
    """Where an agent whose keypair is `identity_path` keeps its receipts: beside it."""
    return identity_path.with_name(identity_path.stem + "-" + JOURNAL_NAME)


class ReceiptJournal:
    """Countersigned receipts held until acknowledged; on disk when `path` is set."""

    def __init__(self, path: Path | None, *, max_receipts: int = MAX_HELD_RECEIPTS) -> None:
        self.path = path
        self.max_receipts = max_receipts
        self._held: dict[str, CountersignedReceipt] = {}
        self._dead_lines = 0
        self._full_logged = False
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._held)

    def __contains__(self, request_id: object) -> bool:
        return request_id in self._held

    def request_ids(self) -> list[str]:
        """The request ids of the receipts held, oldest first."""
        with self._lock:
            return list(self._held)

    def pending(self, coordinator: str | None = None) -> list[CountersignedReceipt]:
        """The receipts held (those `coordinator` countersigned, when given), oldest first."""
        with self._lock:
            return [
                r
                for r in self._held.values()
                if coordinator is None or r.body.get("coordinator") == coordinator
            ]

    def load(self) -> int:
        """Read the journal (replaying adds and acks); returns how many receipts it holds."""
        if self.path is None or not self.path.exists():
            return 0
        held: dict[str, CountersignedReceipt] = {}
        lines = bad = 0
        with self.path.open("rb") as fh:
            for number, raw in enumerate(fh, 1):
                if not raw.strip():
                    continue
                lines += 1
                try:
                    entry = json.loads(raw)
                    if "add" in entry:
                        receipt = CountersignedReceipt.model_validate(entry["add"])
                        if receipt.request_id:
                            held[receipt.request_id] = receipt
                    elif "ack" in entry:
                        for request_id in entry["ack"]:
                            held.pop(request_id, None)
                    else:
                        raise ValueError("neither add nor ack")
                except (ValueError, TypeError, ValidationError) as exc:
                    bad += 1
                    log.warning(
                        "receipt journal %s: line %d is corrupt and skipped (%s)",
                        self.path,
                        number,
                        str(exc).splitlines()[0][:200],
                    )
        with self._lock:
            self._held = held
            self._dead_lines = lines - len(held)
        if bad:
            self._rewrite()  # drop the corrupt lines (and a torn end) for good
        if held:
            log.info("receipt journal %s: %d receipt(s) not yet acknowledged", self.path, len(held))
        return len(held)

    def add(self, receipt: CountersignedReceipt) -> bool:
        """Keep a (checked) receipt durably; False when already held or the journal is full."""
        request_id = receipt.request_id
        with self._lock:
            if request_id in self._held:
                return False
            if len(self._held) >= self.max_receipts:
                if not self._full_logged:
                    self._full_logged = True
                    log.error(
                        "receipt journal %s is full (%d receipts the coordinator has not "
                        "acknowledged): new receipts are not kept, starting with %s; a request "
                        "whose capture a coordinator crash loses is then unpaid",
                        self.path or "(memory)",
                        len(self._held),
                        request_id,
                    )
                return False
            self._full_logged = False
            self._held[request_id] = receipt
        self._append({"add": receipt.model_dump(mode="json")})
        return True

    def ack(self, request_ids: Iterable[str]) -> int:
        """Forget acknowledged receipts, durably; returns how many were held."""
        with self._lock:
            gone = [rid for rid in request_ids if self._held.pop(rid, None) is not None]
            if gone and len(self._held) < self.max_receipts:
                self._full_logged = False
        if gone:
            self._append({"ack": gone})
            self._dead_lines += len(gone) + 1
            if self._dead_lines >= COMPACT_AFTER and self._dead_lines > len(self._held):
                self._rewrite()
        return len(gone)

    def _append(self, entry: dict[str, object]) -> None:
        if self.path is None:
            return
        line = json.dumps(entry, separators=(",", ":")) + "\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, line.encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    def _rewrite(self) -> None:
        """Replace the file by one `add` line per receipt held (atomic rename)."""
        if self.path is None:
            return
        with self._lock:
            held = list(self._held.values())
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            for receipt in held:
                line = json.dumps({"add": receipt.model_dump(mode="json")}, separators=(",", ":"))
                os.write(fd, (line + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        tmp.replace(self.path)
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        self._dead_lines = 0
