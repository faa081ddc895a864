"""Bearer API-key authentication for the OpenAI endpoints."""

from __future__ import annotations

import asyncio

from fastapi import Request

from rigpool.coordinator.keys import authenticate
from rigpool.coordinator.state import CoordinatorState
from rigpool.core.errors import Unauthorized


async def require_api_key(request: Request) -> int:
    """FastAPI dependency: the id of the caller's API key, or 401 in OpenAI's words."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized(
            "You didn't provide an API key. Send it as 'Authorization: Bearer YOUR_KEY'."
        )
    state: CoordinatorState = request.app.state.coordinator
    key_id = await asyncio.to_thread(authenticate, state.db, token.strip())
    if key_id is None:
        raise Unauthorized("Incorrect API key provided.")
    state.limiter.admit(key_id)
    if state.limiter.daily_token_quota is not None:
        await asyncio.to_thread(state.limiter.check_quota, state.db, key_id)
    return key_id
