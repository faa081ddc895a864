"""Bearer API-key authentication for the OpenAI endpoints."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from fastapi import Request

from rigpool.core.errors import Unauthorized
from rigpool.gateway.ports import GatewayPorts


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
    ports: GatewayPorts = request.app.state.gateway
    token = token.strip()
    found = ports.keys.cached(token) or await asyncio.to_thread(ports.keys.authenticate, token)
    if found is None:
        raise Unauthorized("Incorrect API key provided.")
    caller = Caller(*found)
    ports.limiter.admit(caller.key_id)
    if ports.limiter.daily_token_quota is not None:
        await asyncio.to_thread(
            ports.limiter.check_quota, ports.keys.tokens_used_today, caller.key_id
        )
    return caller
