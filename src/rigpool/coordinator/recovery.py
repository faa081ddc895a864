"""Start-up recovery: requests that were in flight when the coordinator stopped.

No request survives a coordinator restart (its client connection died with the process), so at
start-up every `running` row ends as a retryable error, its idempotency key is freed (a client
retrying with the same key is served, not told 409), and every active escrow hold is released:
a failed request costs nothing. This assumes one coordinator per database; with replicas, each
would recover only the rows it owned (a `coordinator_id` column; see docs/reliability.md).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from rigpool.coordinator.tables import RequestRecord
from rigpool.ledger import Ledger
from rigpool.ledger.tables import Hold

log = logging.getLogger(__name__)

INTERRUPTED = "interrupted by a coordinator restart; retry the request"


def recover_interrupted(db: sessionmaker[Session]) -> tuple[int, int]:
    """Close interrupted requests and release their holds; returns (requests, holds)."""
    now = datetime.now(UTC).replace(tzinfo=None)
    with db.begin() as session:
        result = session.execute(
            update(RequestRecord)
            .where(RequestRecord.status == "running")
            .values(
                status="error",
                error=INTERRUPTED,
                finished=now,
                idempotency_key=func.substr(
                    RequestRecord.idempotency_key + ":interrupted:" + RequestRecord.id, 1, 128
                ),
            )
        )
        requests = int(getattr(result, "rowcount", 0) or 0)
    with db() as session:
        active = list(session.scalars(select(Hold.id).where(Hold.state == "active")))
    ledger = Ledger(db)
    for hold_id in active:
        ledger.release(hold_id, key=f"restart-release:{hold_id}")
    if requests or active:
        log.warning(
            "recovered %d interrupted request(s), released %d hold(s)", requests, len(active)
        )
    return requests, len(active)
