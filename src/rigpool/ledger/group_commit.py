"""Group commit: many units of work per database transaction, each told only once it is durable.

A *unit* is a callable taking a SQLAlchemy `Session` (inside an open transaction) and returning
a value. `GroupCommit.submit(unit)` queues it and returns a `concurrent.futures.Future`; `await
group.run(unit)` is the asyncio form. One writer thread takes **whatever is queued when it
wakes** (at most `max_batch` units; with `linger_s` > 0 it waits up to that long for more), runs
them in submission order inside one transaction, commits, and only then resolves each future
with its unit's result, or with the exception its unit raised.

- **Low load commits at once.** A lone unit is committed as soon as the writer takes it; no
  timer delays it. Under load, units queue while the writer commits the previous batch, and the
  next batch takes them all: one commit (one fsync on PostgreSQL) per batch.
- **One bad unit fails alone.** Units that carry a `batcher` (the ledger's escrow operations:
  `EscrowOp`) are applied together by it, and each operation's own error is its outcome,
  written nowhere. Any other unit runs inside a SAVEPOINT (`session.begin_nested()`), rolled
  back if it raises. If the batch as a whole cannot be written (a database error, another
  writer raced the in-memory view), the transaction is rolled back and the batch re-run one
  unit at a time, each in its own SAVEPOINT; if even that commit fails, every unit of the batch
  gets that error (and may be retried under the same idempotency key).
- **Resolved only after COMMIT.** A future that resolved means its effect is in the database;
  one that did not resolve (the process died) means nothing: retry under the same idempotency
  key, which either does the work or replays the committed result.

SQLite: the writer keeps one connection of the engine's pool for itself and opens each batch
with `BEGIN IMMEDIATE` (pysqlite's own transaction handling would break SAVEPOINTs and read
outside the transaction). WAL with `synchronous=NORMAL` (`coordinator/db.py`): a commit survives
the process being killed, not a power cut (see docs/money.md, "What is durable when").

Crash tests arm `commit.before_apply`, `commit.before_commit` and `commit.after_commit` via
`faults=` (see `faults.py`): the writer then stops as a killed process would: the open
transaction is discarded, its connection closed and no future of the batch resolved.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any, Generic, TypeVar, cast

from sqlalchemy import Connection
from sqlalchemy.orm import Session, sessionmaker

from rigpool.ledger.faults import Faults, InjectedCrash

log = logging.getLogger(__name__)

T = TypeVar("T")
Outcome = tuple[bool, Any]
Unit = Callable[[Session], T]

_STOP = object()


class WriterStopped(RuntimeError):
    """The group-commit writer is closed (or crashed): nothing more is accepted."""


class _Item(Generic[T]):
    """A queued unit and whom to tell: a thread's Future, or an asyncio future and its loop."""

    __slots__ = ("future", "loop", "unit")

    def __init__(
        self,
        unit: Unit[T],
        future: Future[T] | asyncio.Future[T],
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.unit, self.future, self.loop = unit, future, loop

    def start(self) -> bool:
        """False when the submitter cancelled before the batch began (then it is skipped)."""
        if self.loop is None:
            return cast(Future[T], self.future).set_running_or_notify_cancel()
        return not self.future.cancelled()


def _resolve(outcomes: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    """On the event loop: resolve the asyncio futures of one batch (one wake-up per batch)."""
    for future, ok, value in outcomes:
        if future.done():  # cancelled while it was being committed
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)


class GroupCommit:
    """A writer thread that commits submitted units of work in batches (see module doc).

    `sessions` is the database's sessionmaker (its engine is used); `lock` is held for each
    transaction (pass `Ledger.lock` so that one-transaction ledger calls and the writer never
    interleave). Use as a context manager, or call `close()` to drain and stop.
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        *,
        max_batch: int = 1024,
        linger_s: float = 0.0,
        lock: threading.RLock | None = None,
        faults: Faults | None = None,
        name: str = "group-commit",
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.engine = sessions.kw["bind"]
        if self.engine.dialect.name == "sqlite" and self.engine.url.database in (
            None,
            "",
            ":memory:",
        ):
            raise ValueError("group commit needs a database file or server, not :memory:")
        self.max_batch = max_batch
        self.linger_s = linger_s
        self.lock = lock if lock is not None else threading.RLock()
        self.faults = faults if faults is not None else Faults()
        self.crashed: BaseException | None = None
        #: batches committed, units in them (successes and failures), the largest batch, batches
        #: retried unit by unit, and the writer thread's CPU time in microseconds
        self.stats = {"batches": 0, "units": 0, "largest": 0, "retried": 0, "cpu_us": 0}
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._closed = False
        self._conn: Connection | None = None
        self._sessions_by_conn: tuple[Connection, Session] | None = None
        self._sqlite = self.engine.dialect.name == "sqlite"
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()

    # ---------------------------------------------------------------- callers

    def submit(self, unit: Unit[T]) -> Future[T]:
        """Queue `unit`; the future resolves after the transaction holding it committed."""
        if self._closed or self.crashed is not None:
            raise WriterStopped("the group-commit writer is stopped")
        future: Future[T] = Future()
        self._queue.put(_Item(unit, future))
        return future

    def enqueue(self, unit: Unit[T], future: Future[T]) -> None:
        """Queue `unit` to resolve a future the caller already handed out (see `submit`)."""
        if self._closed or self.crashed is not None:
            raise WriterStopped("the group-commit writer is stopped")
        self._queue.put(_Item(unit, future))

    def submit_async(self, unit: Unit[T]) -> asyncio.Future[T]:
        """Queue `unit` from a coroutine; the asyncio future resolves after the commit.

        Cheaper than wrapping `submit`: the writer wakes the event loop once per batch, not
        once per unit. Must be called on the event loop's thread.
        """
        if self._closed or self.crashed is not None:
            raise WriterStopped("the group-commit writer is stopped")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.put(_Item(unit, future, loop))
        return future

    async def run(self, unit: Unit[T]) -> T:
        """Submit `unit` and wait, without blocking the event loop, until it is durable."""
        return await self.submit_async(unit)

    def close(self, timeout: float | None = None) -> None:
        """Commit what is queued, then stop the writer (idempotent)."""
        if not self._closed:
            self._closed = True
            self._queue.put(_STOP)
        self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        """Whether the writer thread runs (False after `close` or a crash)."""
        return self._thread.is_alive()

    def __enter__(self) -> GroupCommit:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- writer

    def _main(self) -> None:
        try:
            while True:
                batch, stop = self._take()
                if batch:
                    self._commit(batch)
                if stop:
                    break
        except (InjectedCrash, SystemExit, KeyboardInterrupt) as exc:
            # A crash: like a killed process, the open transaction is discarded and nobody is
            # told anything (the futures of the batch never resolve).
            self.crashed = exc
            if self._conn is not None:
                self._conn.invalidate()
                self._conn.close()
            self._conn = self._sessions_by_conn = None
            return
        self._release_connection()

    def _take(self) -> tuple[list[_Item[Any]], bool]:
        """Block for one unit, then take what else is queued (and linger, if configured)."""
        first = self._queue.get()
        if first is _STOP:
            return [], True
        batch = [first]
        deadline = time.monotonic() + self.linger_s if self.linger_s > 0 else 0.0
        while len(batch) < self.max_batch:
            try:
                if deadline:
                    left = deadline - time.monotonic()
                    item = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
                else:
                    item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                return self._runnable(batch), True
            batch.append(item)
        return self._runnable(batch), False

    @staticmethod
    def _runnable(batch: list[_Item[Any]]) -> list[_Item[Any]]:
        return [item for item in batch if item.start()]

    def _commit(self, batch: list[_Item[Any]]) -> None:
        cpu = time.thread_time()
        units = [item.unit for item in batch]
        try:
            outcomes = self._transaction(units, grouped=True)
        except Exception as exc:  # the batch as a whole could not be written
            log.info("group commit: batch of %d failed (%s); one unit at a time", len(units), exc)
            self.stats["retried"] += 1
            try:
                outcomes = self._transaction(units, grouped=False)
            except Exception as again:
                log.warning("group commit: batch of %d not committed: %s", len(units), again)
                outcomes = [(False, again)] * len(units)
        self.stats["batches"] += 1
        self.stats["units"] += len(units)
        self.stats["largest"] = max(self.stats["largest"], len(units))
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], bool, Any]]] = {}
        for item, (ok, value) in zip(batch, outcomes, strict=True):
            if item.loop is not None:
                by_loop.setdefault(item.loop, []).append((cast(Any, item.future), ok, value))
            elif ok:
                item.future.set_result(value)
            else:
                item.future.set_exception(value)
        for loop, resolved in by_loop.items():
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting any more
                loop.call_soon_threadsafe(_resolve, resolved)
        self.stats["cpu_us"] += round((time.thread_time() - cpu) * 1e6)

    def _connection(self) -> Connection:
        conn = self._conn
        if conn is None or conn.closed or conn.invalidated:
            if conn is not None:
                conn.close()
            conn = self._conn = self.engine.connect()
        if self.engine.dialect.name == "sqlite":
            # Hand transactions to us: BEGIN IMMEDIATE below, SAVEPOINTs that work.
            raw = conn.connection.driver_connection
            if raw is not None and raw.isolation_level is not None:
                raw.isolation_level = None
        return conn

    def _release_connection(self) -> None:
        conn, self._conn = self._conn, None
        self._sessions_by_conn = None
        if conn is None:
            return
        if self.engine.dialect.name == "sqlite" and not conn.invalidated:
            raw = conn.connection.driver_connection
            if raw is not None:
                raw.isolation_level = ""  # pysqlite's default, for the pool's next user
        conn.close()

    def _session(self, conn: Connection) -> Session:
        """The writer's one `Session`, joined to each batch's transaction on `conn`.

        Built once per connection, not once per batch: constructing, beginning, committing and
        closing a `Session` cost about ten times SQLite's own `BEGIN IMMEDIATE; COMMIT`. The
        transaction is the connection's (`_transaction` begins and commits it); the session
        joins it (`join_transaction_mode="rollback_only"`), so its `commit()` or `close()`
        never ends the batch's transaction, and its `begin_nested()` is a SAVEPOINT inside it.
        """
        session = self._sessions_by_conn
        if session is None or session[0] is not conn:
            made = Session(
                bind=conn,
                expire_on_commit=False,
                autoflush=False,
                join_transaction_mode="rollback_only",
            )
            session = self._sessions_by_conn = (conn, made)
        return session[1]

    def _transaction(self, units: Sequence[Unit[Any]], *, grouped: bool) -> list[Outcome]:
        with self.lock:
            conn = self._connection()
            session = self._session(conn)
            transaction = conn.begin()
            try:
                if self._sqlite:
                    conn.exec_driver_sql("BEGIN IMMEDIATE")
                self.faults.hit("commit.before_apply")
                outcomes = (
                    self._apply(session, units) if grouped else self._one_by_one(session, units)
                )
                session.flush()
                # Forget this batch's objects (the values handed back stay usable, detached);
                # the joined session leaves the connection's transaction open.
                session.close()
                self.faults.hit("commit.before_commit")
                transaction.commit()
            except Exception:
                session.close()
                transaction.rollback()
                raise
            self.faults.hit("commit.after_commit")
            return outcomes

    def _apply(self, session: Session, units: Sequence[Unit[Any]]) -> list[Outcome]:
        """Units with a `batcher` go to it together; other units one by one, in order.

        Between two plain units, the batched units are grouped by batcher, each batcher's
        units kept in submission order. Different batchers write unrelated rows (escrow
        movements, request rows), so a batch's order between them does not matter, and
        grouping is what lets requests that interleave (hold, row, hold, row ...) share one
        statement per kind. A plain unit stays where it was submitted relative to everything.
        """
        outcomes: list[Outcome | None] = [None] * len(units)
        i = 0
        while i < len(units):
            if getattr(units[i], "batcher", None) is None:
                outcomes[i] = self._savepoint(session, units[i])
                i += 1
                continue
            j = i
            groups: dict[int, tuple[Any, list[int]]] = {}
            while j < len(units) and (batcher := getattr(units[j], "batcher", None)) is not None:
                groups.setdefault(id(batcher), (batcher, []))[1].append(j)
                j += 1
            for batcher, members in groups.values():
                results = batcher.run_batch(session, [units[k] for k in members])
                for k, result in zip(members, results, strict=True):
                    outcomes[k] = result
            i = j
        return [o for o in outcomes if o is not None]

    def _one_by_one(self, session: Session, units: Sequence[Unit[Any]]) -> list[Outcome]:
        return [self._savepoint(session, unit) for unit in units]

    @staticmethod
    def _savepoint(session: Session, unit: Unit[Any]) -> Outcome:
        savepoint = session.begin_nested()
        try:
            value = unit(session)
            session.flush()
        except Exception as exc:
            savepoint.rollback()
            return False, exc
        savepoint.commit()
        return True, value
