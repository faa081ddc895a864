"""The ledger's escrow operations through one group-commit writer.

`EscrowWriter(ledger)` owns a `GroupCommit` over the ledger's database (holding the ledger's
lock per transaction) and a small pool that checks receipt signatures off the writer thread.
Every method returns a `concurrent.futures.Future` that resolves once the operation is
**committed** (or with its `LedgerError`); wrap it with `asyncio.wrap_future` to await it.
Bad arguments (a zero amount, an empty key) raise at once, before anything is queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from typing import Any, TypeVar

from rigpool.ledger.book import Capture, EscrowOp, Recovery
from rigpool.ledger.faults import Faults
from rigpool.ledger.group_commit import GroupCommit, Unit, WriterStopped
from rigpool.ledger.ledger import Ledger
from rigpool.ledger.receipts import CheckedReceipt, SignedReceipt, check_receipt

T = TypeVar("T")


class Checker:
    """Threads that check receipts in chunks, then queue them for the writer.

    A chunk is whatever is waiting (at most `chunk`): one queue hop per chunk rather than a pool
    task per receipt, and the writer then finds many receipts per batch.
    """

    def __init__(self, group: GroupCommit, threads: int, chunk: int = 256) -> None:
        self.group = group
        self.chunk = chunk
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._main, name=f"receipt-check-{i}", daemon=True)
            for i in range(max(1, threads))
        ]
        for t in self._threads:
            t.start()

    def put(self, build: Callable[[], EscrowOp], future: Future[Any]) -> None:
        self._queue.put((build, future))

    def close(self) -> None:
        for _ in self._threads:
            self._queue.put(_STOP)
        for t in self._threads:
            t.join()

    def _main(self) -> None:
        while True:
            chunk = [self._queue.get()]
            while chunk[-1] is not _STOP and len(chunk) < self.chunk:
                try:
                    chunk.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = chunk[-1] is _STOP
            checked = []
            for build, future in chunk[:-1] if stop else chunk:
                try:
                    checked.append((build(), future))
                except Exception as exc:  # a bad receipt
                    _fail(future, exc)
            # The whole chunk at once: the writer then commits it in one batch.
            for op, future in checked:
                try:
                    self.group.enqueue(op, future)
                except WriterStopped as exc:
                    _fail(future, exc)
            if stop:
                return


def _fail(future: Future[Any], exc: BaseException) -> None:
    with contextlib.suppress(InvalidStateError):  # cancelled meanwhile
        future.set_exception(exc)


_STOP = object()


class EscrowWriter:
    """Holds, captures, releases, receipts and recoveries, group-committed (see module doc).

    `check_threads` threads check receipt signatures (ed25519 releases the GIL, so they run
    beside the writer). `max_batch`, `linger_s` and `faults` go to the `GroupCommit`.
    """

    def __init__(
        self,
        ledger: Ledger,
        *,
        max_batch: int = 1024,
        linger_s: float = 0.0,
        check_threads: int = 2,
        faults: Faults | None = None,
    ) -> None:
        self.ledger = ledger
        self.group = GroupCommit(
            ledger.sessions,
            max_batch=max_batch,
            linger_s=linger_s,
            lock=ledger.lock,
            faults=faults,
            name="ledger-writer",
        )
        self.checker = Checker(self.group, check_threads)

    def submit(self, unit: Unit[T]) -> Future[T]:
        """Any unit of work (a callable taking a Session), committed with the escrow batches."""
        return self.group.submit(unit)

    def hold(self, consumer: str, amount: int, key: str) -> Future[int]:
        """`Ledger.hold`, group-committed: the future's value is the hold id."""
        return self.group.submit(self.ledger.hold_op(consumer, amount, key))

    def hold_async(self, consumer: str, amount: int, key: str) -> asyncio.Future[int]:
        """`hold` for a coroutine (on the loop's thread): await it to know the hold is durable."""
        return self.group.submit_async(self.ledger.hold_op(consumer, amount, key))

    def capture(
        self, hold_id: int, amount: int, provider: str, fee_bps: int, key: str
    ) -> Future[Capture]:
        """`Ledger.capture`, group-committed."""
        return self.group.submit(self.ledger.capture_op(hold_id, amount, provider, fee_bps, key))

    def release(self, hold_id: int, key: str | None = None) -> Future[int]:
        """`Ledger.release`, group-committed: the future's value is the amount released."""
        return self.group.submit(self.ledger.release_op(hold_id, key))

    def record_receipt(self, receipt: SignedReceipt) -> Future[bool]:
        """Check both signatures on a checker thread, then store the receipt group-committed.

        The value is True for a new receipt, False when the same one was stored; a bad
        signature or another receipt under the same request id fails with `InvalidReceipt`.
        """
        return self._checked(lambda: self.ledger.receipt_op(check_receipt(receipt)))

    def record_checked(self, checked: CheckedReceipt) -> Future[bool]:
        """Store a receipt whose signatures are known good, group-committed, no checker hop.

        For `countersign_checked`'s result (the coordinator checked the agent's signature and
        made its own a moment ago); anything else goes through `record_receipt`.
        """
        return self.group.submit(self.ledger.receipt_op(checked))

    def record_checked_async(self, checked: CheckedReceipt) -> asyncio.Future[bool]:
        """`record_checked` for a coroutine (on the loop's thread)."""
        return self.group.submit_async(self.ledger.receipt_op(checked))

    def recover_from_receipt(
        self, receipt: SignedReceipt, *, coordinator: str, fee_bps: int | None = None
    ) -> Future[Recovery]:
        """`Ledger.recover_from_receipt`, signatures checked on a checker, group-committed."""
        return self._checked(
            lambda: self.ledger.recovery_op(receipt, coordinator=coordinator, fee_bps=fee_bps)
        )

    def _checked(self, build: Callable[[], EscrowOp]) -> Future[Any]:
        if self.group.crashed is not None or not self.group.alive:
            raise WriterStopped("the group-commit writer is stopped")
        future: Future[Any] = Future()
        self.checker.put(build, future)
        return future

    def close(self, timeout: float | None = None) -> None:
        """Finish the receipt checks, commit what is queued, stop the writer."""
        self.checker.close()
        self.group.close(timeout)

    def __enter__(self) -> EscrowWriter:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
