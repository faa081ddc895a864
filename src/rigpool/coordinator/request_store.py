"""The `requests` table behind the gateway's `RequestStore` port: admission and final rows.

Admission inserts the row keyed by `(api key, Idempotency-Key)`; a reused key replays the first
answer (or is a conflict while it runs). The final row is written once by the gateway's
`finish` step. A failed request frees its idempotency key, so the client may retry with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Table, bindparam, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from rigpool.coordinator.tables import RequestRecord
from rigpool.gateway.request import IdempotentReplay, Outcome, RequestSpec
from rigpool.ledger.group_commit import GroupCommit


def _utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


_TABLE: Table = RequestRecord.__table__  # type: ignore[assignment]  # a Table at runtime


class _RowWrite:
    """One write to the requests table, as a group-commit unit that `RowBatcher` batches.

    Called alone (`unit(session)`, as `GroupCommit` does when it retries a batch unit by unit)
    it is applied by the same batcher, so both paths run the same code.
    """

    __slots__ = ("kind", "values")

    def __init__(self, kind: str, values: dict[str, Any]) -> None:
        self.kind = kind  # "insert" | "update" (values["_id"] names the row)
        self.values = values

    @property
    def batcher(self) -> RowBatcher:
        return ROWS

    def __call__(self, session: Session) -> None:
        ok, value = ROWS.run_batch(session, [self])[0]
        if not ok:
            raise value


class _Statement:
    """A requests-table statement compiled once per dialect, its rows sent to `executemany`.

    Like the ledger's postings (`ledger/book.py`): SQLAlchemy compiles the statement (quoting,
    the dialect's paramstyle, PostgreSQL's casts) and gives each column's bind processor
    (SQLite's datetime strings, JSON), and the driver gets the rows as it takes them, without
    SQLAlchemy's per-statement and per-row work.
    """

    def __init__(self, stmt: Any, keys: Sequence[str], columns: Sequence[str]) -> None:
        self.stmt, self.keys, self.columns = stmt, list(keys), list(columns)
        self._compiled: dict[str, tuple[str, list[str] | None, list[tuple[str, Any]]]] = {}
        # Columns the rows leave out but the compiled statement fills: their scalar defaults.
        self._defaults: dict[str, Any] = {}

    def run(self, conn: Connection, rows: list[dict[str, Any]]) -> None:
        """Send `rows` (bind name -> Python value; processed in place) to `executemany`."""
        dialect = conn.dialect
        found = self._compiled.get(dialect.name)
        if found is None:
            compiled = self.stmt.compile(dialect=dialect, column_keys=self.keys)
            order = list(compiled.positiontup) if compiled.positional else None
            names = dict(zip(self.keys, self.columns, strict=True))
            for key in compiled.params:
                if key not in names:  # a column with a default, filled by SQLAlchemy
                    default = _TABLE.c[key].default
                    if default is None or not default.is_scalar:
                        raise ValueError(f"requests.{key} has no scalar default to fill in")
                    self._defaults[key] = default.arg
                    names[key] = key
            processors = []
            for key, column in names.items():
                process = _TABLE.c[column].type.dialect_impl(dialect).bind_processor(dialect)
                if process is not None:
                    processors.append((key, process))
            found = self._compiled[dialect.name] = (compiled.string, order, processors)
        sql, order, processors = found
        if self._defaults:
            rows = [{**self._defaults, **row} for row in rows]
        for key, process in processors:
            for row in rows:
                if row[key] is not None:
                    row[key] = process(row[key])
        params: list[Any] = (
            rows if order is None else [tuple(row[k] for k in order) for row in rows]
        )
        conn.exec_driver_sql(sql, params)


_INSERTS: dict[tuple[str, ...], _Statement] = {}
_UPDATES: dict[tuple[str, ...], _Statement] = {}


def _insert_statement(columns: tuple[str, ...]) -> _Statement:
    found = _INSERTS.get(columns)
    if found is None:
        found = _INSERTS[columns] = _Statement(insert(_TABLE), columns, columns)
    return found


def _update_statement(columns: tuple[str, ...]) -> _Statement:
    found = _UPDATES.get(columns)
    if found is None:
        # Bound names differ from the columns' (SQLAlchemy reserves those for SET).
        values = [c for c in columns if c != "_id"]
        stmt = (
            update(_TABLE)
            .where(_TABLE.c.id == bindparam("b__id"))
            .values({c: bindparam(f"b_{c}") for c in values})
        )
        found = _UPDATES[columns] = _Statement(
            stmt, [f"b_{c}" for c in columns], ["id" if c == "_id" else c for c in columns]
        )
    return found


class _Savepoint:
    """A raw `SAVEPOINT` on the batch's connection (no ORM state is involved in row writes)."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def __enter__(self) -> None:
        self.conn.exec_driver_sql("SAVEPOINT request_rows")

    def __exit__(self, exc_type: object, *_rest: object) -> None:
        if exc_type is not None:
            self.conn.exec_driver_sql("ROLLBACK TO SAVEPOINT request_rows")
        self.conn.exec_driver_sql("RELEASE SAVEPOINT request_rows")


class RowBatcher:
    """Applies consecutive row writes together: one executemany per kind and column set.

    Rows go to the driver's `executemany` with the dialect's paramstyle (`_Statement`).
    Inserts are tried as one statement; if one of them collides with an existing idempotency
    key, they are re-run one by one so that only the colliding request fails. What a failed
    INSERT leaves behind is undone by a SAVEPOINT only where it must be: PostgreSQL aborts the
    whole transaction on an error (every insert runs in a SAVEPOINT there); SQLite rolls back
    just the failing statement, so a lone row needs none (the common case: one request per
    batch), and only several rows in one `executemany` (the earlier rows stay written) do.
    Updates cannot fail on a constraint. Every update's row was inserted by an earlier,
    committed batch (a request finishes only after its admission is durable), so inserts going
    first is only a formality.
    """

    def run_batch(self, session: Session, units: Sequence[_RowWrite]) -> list[tuple[bool, Any]]:
        """Apply `units` in the session's open transaction; each outcome is (ok, value)."""
        conn = session.connection()
        outcomes: dict[int, tuple[bool, Any]] = {}
        inserts = [(i, u) for i, u in enumerate(units) if u.kind == "insert"]
        if inserts:
            outcomes.update(self._insert(conn, inserts))
        groups: dict[tuple[str, ...], list[tuple[int, _RowWrite]]] = {}
        for i, u in enumerate(units):
            if u.kind == "update":
                groups.setdefault(tuple(u.values), []).append((i, u))
        for columns, members in groups.items():
            rows = [{f"b_{k}": v for k, v in u.values.items()} for _, u in members]
            _update_statement(columns).run(conn, rows)
            outcomes.update((i, (True, None)) for i, _ in members)
        return [outcomes[i] for i in range(len(units))]

    @staticmethod
    def _insert(
        conn: Connection, inserts: list[tuple[int, _RowWrite]]
    ) -> list[tuple[int, tuple[bool, Any]]]:
        statement_atomic = conn.dialect.name == "sqlite"

        def guard(rows: int) -> contextlib.AbstractContextManager[None]:
            return contextlib.nullcontext() if statement_atomic and rows == 1 else _Savepoint(conn)

        by_columns: dict[tuple[str, ...], list[tuple[int, _RowWrite]]] = {}
        for i, u in inserts:
            by_columns.setdefault(tuple(u.values), []).append((i, u))
        try:
            with guard(len(inserts)):
                for columns, members in by_columns.items():
                    _insert_statement(columns).run(conn, [dict(u.values) for _, u in members])
            return [(i, (True, None)) for i, _ in inserts]
        except IntegrityError as exc:
            if len(inserts) == 1:
                return [(inserts[0][0], (False, exc))]
        done: list[tuple[int, tuple[bool, Any]]] = []
        for i, u in inserts:
            try:
                with guard(1):
                    _insert_statement(tuple(u.values)).run(conn, [dict(u.values)])
                done.append((i, (True, None)))
            except IntegrityError as exc:
                done.append((i, (False, exc)))
        return done


ROWS = RowBatcher()


class SqlRequestStore:
    """`RequestStore` over SQLAlchemy (SQLite or PostgreSQL), group-committed.

    Rows are written through `writer`, the coordinator's one group-commit writer (shared with
    the ledger when billing is on, so a request's final row and its capture usually commit in
    the same transaction). SQLAlchemy Core statements, not the ORM: no unit of work to build
    per request.
    """

    def __init__(self, db: sessionmaker[Session], writer: GroupCommit) -> None:
        self.db = db
        self.writer = writer

    async def admit(self, spec: RequestSpec) -> None:
        row = {
            "id": spec.request_id,
            "api_key_id": spec.api_key_id,
            "idempotency_key": spec.idempotency_key,
            "endpoint": spec.endpoint,
            "model": spec.model.name,
            "stream": spec.stream,
            "prompt_tokens": spec.prompt_tokens,
            "status": "running",
            "attempts": 0,
            "completion_tokens": 0,
            "created": _utcnow(),
        }
        try:
            await self.writer.submit_async(_RowWrite("insert", row))
        except IntegrityError:
            prior = await asyncio.to_thread(self._prior, spec)
            raise IdempotentReplay(prior) from None

    def _prior(self, spec: RequestSpec) -> dict[str, Any] | None:
        with self.db() as session:
            prior = session.scalar(
                select(RequestRecord).where(
                    RequestRecord.api_key_id == spec.api_key_id,
                    RequestRecord.idempotency_key == spec.idempotency_key,
                )
            )
        return prior.response if prior is not None else None

    def finish(
        self,
        spec: RequestSpec,
        outcome: Outcome,
        *,
        status: str,
        error: str | None,
        response: dict[str, Any] | None,
    ) -> asyncio.Future[None]:
        values: dict[str, Any] = {
            "status": status,
            "provider_id": outcome.provider_id,
            "attempts": outcome.attempts,
            "completion_tokens": outcome.billed_tokens,
            "completion_tokens_claimed": outcome.claimed_tokens,
            "ttft_ms": outcome.ttft_s * 1000 if outcome.ttft_s is not None else None,
            "latency_ms": (time.time() - spec.created) * 1000,
            "error": error,
            "response": response,
            "finished": _utcnow(),
        }
        if status != "ok":
            # A request that did not end well frees its idempotency key for a retry.
            values["idempotency_key"] = f"{spec.idempotency_key}:failed:{spec.request_id}"[:128]
        return self.writer.submit_async(_RowWrite("update", {"_id": spec.request_id, **values}))

    def tokens_used_today(self, key_id: int) -> int:
        """Prompt + completion tokens of the key's requests since 00:00 UTC."""
        start = _utcnow().replace(hour=0, minute=0, second=0, microsecond=0)
        with self.db() as session:
            used = session.scalar(
                select(
                    func.coalesce(
                        func.sum(RequestRecord.prompt_tokens + RequestRecord.completion_tokens), 0
                    )
                ).where(RequestRecord.api_key_id == key_id, RequestRecord.created >= start)
            )
        return int(used or 0)
