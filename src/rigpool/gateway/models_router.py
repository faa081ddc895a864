"""`GET /v1/models`: the models the gateway can meter, with how many providers serve each now."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request

from rigpool.coordinator.state import CoordinatorState
from rigpool.gateway.auth import Caller, require_api_key
from rigpool.gateway.generation import resolve_model

router = APIRouter()


def _model_card(state: CoordinatorState, name: str) -> dict[str, Any]:
    model = state.model(name)
    assert model is not None
    return {
        "id": model.name,
        "object": "model",
        "created": int(model.created.timestamp()),
        "owned_by": "rigpool",
        # Extensions (ignored by OpenAI clients): what the network can do for this model now.
        "context_length": model.context_length,
        "providers": len(state.hub.serving(model.name)),
    }


@router.get("/v1/models")
async def list_models(
    request: Request, _caller: Caller = Depends(require_api_key)
) -> dict[str, Any]:
    state: CoordinatorState = request.app.state.coordinator
    return {"object": "list", "data": [_model_card(state, m.name) for m in state.models()]}


@router.get("/v1/models/{model:path}")
async def get_model(
    model: str, request: Request, _caller: Caller = Depends(require_api_key)
) -> dict[str, Any]:
    state: CoordinatorState = request.app.state.coordinator
    resolve_model(state, model)
    return _model_card(state, model)
