"""Wiring: the FastAPI application of the coordinator (gateway + agent link + fleet view)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from rigpool import __version__
from rigpool.coordinator import agent_link, fleet, validator_api, verify_link
from rigpool.coordinator.body_limit import BodyLimit
from rigpool.coordinator.db import open_database
from rigpool.coordinator.models import register_model
from rigpool.coordinator.recovery import recover_interrupted
from rigpool.coordinator.registry import mark_all_offline
from rigpool.coordinator.settings import Settings
from rigpool.coordinator.state import CoordinatorState
from rigpool.coordinator.wiring import gateway_ports, shared_writer
from rigpool.gateway import models_router
from rigpool.gateway.chat import router as chat_router
from rigpool.gateway.completions import router as completions_router
from rigpool.gateway.errors import install_error_handlers
from rigpool.gateway.finish import drain_background
from rigpool.gateway.lean import LeanRoutes

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    state = CoordinatorState(settings=settings, db=open_database(settings.database_url))
    for folder in settings.model_dirs:
        register_model(state.db, folder)
    mark_all_offline(state.db)
    recover_interrupted(state.db)
    state.refresh_models()

    writer = shared_writer(state)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        log.info("coordinator up; models: %s", sorted(state.model_names()) or "none")
        yield
        if state.verifier is not None:
            await state.verifier.close()
        for session in list(state.hub.sessions.values()):
            state.hub.remove(session, "coordinator shutting down")
            await session.close()
        await drain_background()  # requests' finish steps still queueing their writes
        # Commit what is queued, then stop the writer: nothing acknowledged is lost.
        await asyncio.to_thread(writer.close)
        if state.billing is not None:
            await asyncio.to_thread(state.billing.close)

    app = FastAPI(title="rigpool coordinator", version=__version__, lifespan=lifespan)
    app.state.coordinator = state
    app.state.gateway = gateway_ports(state, writer)  # all the gateway sees of the coordinator
    install_error_handlers(app)

    if settings.lean_routes:  # added first: it runs inside BodyLimit, which reads the body
        app.add_middleware(LeanRoutes)
    app.add_middleware(
        BodyLimit, limit=settings.max_body_bytes, read_timeout_s=settings.body_read_timeout_s
    )

    @app.get("/healthz")
    async def healthz() -> dict[str, object]:
        return {
            "ok": True,
            "version": __version__,
            "agents": len(state.hub.sessions),
            "routing": {
                "policy": settings.routing_policy,
                "hedging": settings.hedging,
                "requests": state.hedge.requests,
                "hedges": state.hedge.hedges,
            },
        }

    app.include_router(models_router.router)
    app.include_router(chat_router.router)
    app.include_router(completions_router.router)
    app.include_router(fleet.router)
    app.include_router(verify_link.router)
    app.include_router(validator_api.router)
    app.include_router(agent_link.router)
    return app
