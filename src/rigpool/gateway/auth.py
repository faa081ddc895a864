"""Bearer API-key authentication for the OpenAI endpoints."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from fastapi import Request

from rigpool.coordinator.keys import authenticate
from rigpool.coordinator.state import CoordinatorState
from rigpool.core.errors import Unauthorized


@dataclass(frozen=True)
class Caller:
    """Who is calling: the API key's id and the ledger account it spends from."""

    key_id: int
    consumer: str


async def require_api_key(request: Request) -> Caller:
    """FastAPI dependency: the authenticated caller, or 401 in OpenAI's words."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized(
            "You didn't provide an API key. Send it as 'Authorization: Bearer YOUR_KEY'."
        )
    state: CoordinatorState = request.app.state.coordinator
    found = await asyncio.to_thread(authenticate, state.db, token.strip())
    if found is None:
        raise Unauthorized("Incorrect API key provided.")
    caller = Caller(*found)
    state.limiter.admit(caller.key_id)
    if state.limiter.daily_token_quota is not None:
        await asyncio.to_thread(state.limiter.check_quota, state.db, caller.key_id)
    return caller
