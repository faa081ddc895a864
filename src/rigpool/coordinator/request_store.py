"""The `requests` table behind the gateway's `RequestStore` port: admission and final rows.

Admission inserts the row keyed by `(api key, Idempotency-Key)`; a reused key replays the first
answer (or is a conflict while it runs). The final row is written once by the gateway's
`finish` step. A failed request frees its idempotency key, so the client may retry with it.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from rigpool.coordinator.tables import RequestRecord
from rigpool.gateway.request import IdempotentReplay, Outcome, RequestSpec


def _utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class SqlRequestStore:
    """`RequestStore` over SQLAlchemy (SQLite or PostgreSQL)."""

    def __init__(self, db: sessionmaker[Session]) -> None:
        self.db = db

    def admit(self, spec: RequestSpec) -> None:
        try:
            with self.db.begin() as session:
                session.add(
                    RequestRecord(
                        id=spec.request_id,
                        api_key_id=spec.api_key_id,
                        idempotency_key=spec.idempotency_key,
                        endpoint=spec.endpoint,
                        model=spec.model.name,
                        stream=spec.stream,
                        prompt_tokens=spec.prompt_tokens,
                        created=_utcnow(),
                    )
                )
        except IntegrityError:
            with self.db() as session:
                prior = session.scalar(
                    select(RequestRecord).where(
                        RequestRecord.api_key_id == spec.api_key_id,
                        RequestRecord.idempotency_key == spec.idempotency_key,
                    )
                )
            raise IdempotentReplay(prior.response if prior is not None else None) from None

    def finish(
        self,
        spec: RequestSpec,
        outcome: Outcome,
        *,
        status: str,
        error: str | None,
        response: dict[str, Any] | None,
    ) -> None:
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
        with self.db.begin() as session:
            session.execute(
                update(RequestRecord).where(RequestRecord.id == spec.request_id).values(**values)
            )

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
