"""`GET /v1/providers`: the fleet view — every known agent, its GPUs, models, state and load."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request

from rigpool.coordinator.registry import list_providers
from rigpool.coordinator.state import CoordinatorState

router = APIRouter()


def fleet_view(state: CoordinatorState) -> list[dict[str, Any]]:
    out = []
    for row in list_providers(state.db):
        live = state.hub.sessions.get(row.id)
        stats = state.router.stats(row.id)
        attested = state.attestations.get(row.id)
        indexed = state.fleet.get(row.id)
        out.append(
            {
                "id": row.id,
                # "attesting": connected, not routable until its attestation passes
                "state": ("online" if live.admitted else "attesting") if live else "offline",
                "backend": row.backend,
                "emulated": row.emulated,
                "region": row.region,
                "gpus": row.gpus,
                "models": [m["name"] for m in row.models],
                "last_heartbeat": (
                    datetime.fromtimestamp(live.last_heartbeat, UTC).isoformat()
                    if live
                    else row.last_seen.replace(tzinfo=UTC).isoformat()
                ),
                "load": {
                    "active": live.active if live else 0,
                    "reported_active": live.reported_active if live else 0,
                    "max_concurrency": live.capabilities.max_concurrency if live else 0,
                },
                # what the router reads (consensus of the validators), and each validator's score
                "reputation": indexed.reputation if indexed else None,
                "validator_scores": state.validators.scores_for(row.id),
                "served": stats.completed,
                "failed": stats.failures,
                "agent_version": row.agent_version,
                "attestation": attested.view() if attested else None,
            }
        )
    return out


@router.get("/v1/providers")
async def providers(request: Request) -> dict[str, Any]:
    """Public by design: providers are public keys and hardware, nothing secret."""
    state: CoordinatorState = request.app.state.coordinator
    return {"object": "list", "data": await asyncio.to_thread(fleet_view, state)}
