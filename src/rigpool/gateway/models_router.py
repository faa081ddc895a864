"""`GET /v1/models`: the models the gateway can meter, with how many providers serve each now."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request

from rigpool.gateway.auth import Caller, require_api_key
from rigpool.gateway.ports import Catalog
from rigpool.gateway.request import ModelInfo
from rigpool.gateway.serving import ports_of, resolve_model

router = APIRouter()


def _model_card(catalog: Catalog, model: ModelInfo) -> dict[str, Any]:
    return {
        "id": model.name,
        "object": "model",
        "created": int(model.created),
        "owned_by": "rigpool",
        # Extensions (ignored by OpenAI clients): what the network can do for this model now.
        "context_length": model.context_length,
        "providers": catalog.providers(model.name),
    }


@router.get("/v1/models")
async def list_models(
    request: Request, _caller: Caller = Depends(require_api_key)
) -> dict[str, Any]:
    catalog = ports_of(request).catalog
    return {"object": "list", "data": [_model_card(catalog, m) for m in catalog.all()]}


@router.get("/v1/models/{model:path}")
async def get_model(
    model: str, request: Request, _caller: Caller = Depends(require_api_key)
) -> dict[str, Any]:
    ports = ports_of(request)
    found, _tokenizer = resolve_model(ports, model)
    return _model_card(ports.catalog, found)
