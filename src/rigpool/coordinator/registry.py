"""Durable provider registry and the hello replay guard."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from rigpool.coordinator.tables import AgentNonce, Provider
from rigpool.protocol.messages import Capabilities


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def remember_nonce(
    db: sessionmaker[Session], agent_id: str, nonce: str, timestamp: float, window_s: float
) -> bool:
    """Store a hello's nonce; False when it was seen before (a replay).

    Nonces older than the timestamp window are pruned: a hello that old is refused by its
    timestamp anyway, so it need not be remembered.
    """
    try:
        with db.begin() as session:
            session.execute(
                delete(AgentNonce).where(AgentNonce.timestamp < timestamp - 2 * window_s)
            )
            session.add(AgentNonce(agent_id=agent_id, nonce=nonce, timestamp=timestamp))
    except IntegrityError:
        return False
    return True


def provider_online(
    db: sessionmaker[Session], agent_id: str, caps: Capabilities, models: list[str]
) -> None:
    now = _now()
    offered = [m.model_dump() for m in caps.models if m.name in models]
    with db.begin() as session:
        row = session.get(Provider, agent_id)
        if row is None:
            row = Provider(id=agent_id, first_seen=now)
            session.add(row)
        row.state = "online"
        row.backend = caps.backend
        row.emulated = caps.emulated
        row.region = caps.region
        row.gpus = [g.model_dump() for g in caps.gpus]
        row.models = offered
        row.agent_version = caps.agent_version
        row.last_seen = now


def provider_offline(db: sessionmaker[Session], agent_id: str) -> None:
    with db.begin() as session:
        session.execute(
            update(Provider)
            .where(Provider.id == agent_id)
            .values(state="offline", last_seen=_now())
        )


def mark_all_offline(db: sessionmaker[Session]) -> None:
    """At start-up no agent is connected yet, whatever the database remembers."""
    with db.begin() as session:
        session.execute(update(Provider).values(state="offline"))


def list_providers(db: sessionmaker[Session]) -> list[Provider]:
    with db() as session:
        return list(session.scalars(select(Provider).order_by(Provider.first_seen)))
