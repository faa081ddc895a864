"""The `requests` table behind the gateway's `RequestStore` port: admission and final rows.

Admission inserts the row keyed by `(api key, Idempotency-Key)`; a reused key replays the first
answer (or is a conflict while it runs). The final row is written once by the gateway's
`finish` step. A failed request frees its idempotency key, so the client may retry with it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Table, bindparam, func, insert, select, update
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


class RowBatcher:
    """Applies consecutive row writes together: one executemany per kind and column set.

    Inserts are tried as one statement inside a SAVEPOINT; if one of them collides with an
    existing idempotency key, they are re-run one by one (each in its own SAVEPOINT) so that
    only the colliding request fails. Updates cannot fail on a constraint. Every update's row
    was inserted by an earlier, committed batch (a request finishes only after its admission
    is durable), so inserts going first is only a formality.
    """

    def run_batch(self, session: Session, units: Sequence[_RowWrite]) -> list[tuple[bool, Any]]:
        outcomes: dict[int, tuple[bool, Any]] = {}
        inserts = [(i, u) for i, u in enumerate(units) if u.kind == "insert"]
        if inserts:
            outcomes.update(self._insert(session, inserts))
        groups: dict[tuple[str, ...], list[tuple[int, _RowWrite]]] = {}
        for i, u in enumerate(units):
            if u.kind == "update":
                groups.setdefault(tuple(u.values), []).append((i, u))
        for columns, members in groups.items():
            # Bound names differ from the columns' (SQLAlchemy reserves those for SET).
            statement = (
                update(_TABLE)
                .where(_TABLE.c.id == bindparam("b__id"))
                .values({c: bindparam(f"b_{c}") for c in columns if c != "_id"})
            )
            params = [{f"b_{k}": v for k, v in u.values.items()} for _, u in members]
            session.execute(statement, params)
            outcomes.update((i, (True, None)) for i, _ in members)
        return [outcomes[i] for i in range(len(units))]

    @staticmethod
    def _insert(
        session: Session, inserts: list[tuple[int, _RowWrite]]
    ) -> list[tuple[int, tuple[bool, Any]]]:
        try:
            with session.begin_nested():
                session.execute(insert(_TABLE), [u.values for _, u in inserts])
            return [(i, (True, None)) for i, _ in inserts]
        except IntegrityError:
            pass
        done: list[tuple[int, tuple[bool, Any]]] = []
        for i, u in inserts:
            try:
                with session.begin_nested():
                    session.execute(insert(_TABLE), [u.values])
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
