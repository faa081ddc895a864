"""A lean ASGI route for the two completion endpoints, in front of FastAPI's router.

`POST /v1/chat/completions` and `POST /v1/completions` are the hot path. Through FastAPI each
request pays for path matching over every route, dependency solving (`solve_dependencies`,
`request_params_to_args`), two exit stacks and its exception middleware. This middleware
answers those two (exact path, POST, a JSON body) itself, with the same code FastAPI would run:

1. the body as JSON (`json.loads`, what Starlette uses; orjson first when it accepts the body);
2. `require_api_key` (FastAPI runs dependencies before it validates parameters);
3. the `Idempotency-Key` header (at most 128 characters) and the body model, their errors
   collected into one `RequestValidationError` shaped as FastAPI's (`("header", ...)`,
   `("body", ...)` locations, header errors first);
4. the endpoint function of `chat/router.py` or `completions/router.py`.

Exceptions go to the handlers the app registered (`gateway/errors.py`), found the way
Starlette's exception middleware finds them; anything without one propagates to the server
error middleware (the 500) just as it would from a route. Everything else is handed to FastAPI
unchanged, its body replayed: other paths and methods, a body that is not `application/json`,
an empty body, one neither JSON parser accepts, JSON that is not an object. The routes stay
declared in FastAPI, so the OpenAPI document and /docs do not change.

It must run inside `coordinator/body_limit.py` (which reads the whole body first) and outside
FastAPI's exception middleware (so it is added to the app before `BodyLimit`).
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from rigpool.core.asgi import replay
from rigpool.gateway.auth import Caller, require_api_key
from rigpool.gateway.chat.router import chat_completions
from rigpool.gateway.chat.schemas import ChatCompletionRequest
from rigpool.gateway.completions.router import completions
from rigpool.gateway.completions.schemas import CompletionRequest

#: what FastAPI's `Header(max_length=128)` allows for `Idempotency-Key`
IDEMPOTENCY_KEY_MAX = 128

Endpoint = Callable[[Any, Request, Caller, str | None], Awaitable[Response]]

#: path -> (body model, endpoint function): the routes this middleware answers (POST only)
ROUTES: dict[str, tuple[type[BaseModel], Endpoint]] = {
    "/v1/chat/completions": (ChatCompletionRequest, chat_completions),
    "/v1/completions": (CompletionRequest, completions),
}

_NOT_JSON = object()


class LeanRoutes:
    """ASGI middleware: the completion endpoints without FastAPI's routing and injection."""

    def __init__(self, app: ASGIApp) -> None:
        """Wrap `app` (the rest of FastAPI's stack), which gets every request not taken here."""
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer a completion request, or hand the request on unchanged."""
        route = ROUTES.get(scope["path"]) if scope["type"] == "http" else None
        if route is None or scope["method"] != "POST" or scope.get("root_path"):
            await self.app(scope, receive, send)
            return
        if not _is_json(scope):
            await self.app(scope, receive, send)
            return
        first = await receive()
        body: bytes = first.get("body", b"")
        data = _NOT_JSON
        if first["type"] == "http.request" and not first.get("more_body", False) and body:
            data = _parse(body)
        if not isinstance(data, dict):
            await self.app(scope, replay(first, receive), send)
            return
        model, endpoint = route
        request = Request(scope, receive)  # the body is read: only a disconnect can follow
        try:
            response = await _run(request, data, model, endpoint)
        except Exception as exc:
            handler = _handler_for(scope["app"].exception_handlers, exc)
            if handler is None:
                raise  # the server error middleware's 500, as from a route
            answer = handler(request, exc)
            response = await answer if inspect.isawaitable(answer) else answer
        await response(scope, receive, send)


async def _run(
    request: Request, data: dict[str, Any], model: type[BaseModel], endpoint: Endpoint
) -> Response:
    """What FastAPI does for the route, in its order: dependency, parameters, endpoint."""
    caller = await require_api_key(request)
    idempotency_key = request.headers.get("idempotency-key")
    errors: list[Any] = []
    if idempotency_key is not None and len(idempotency_key) > IDEMPOTENCY_KEY_MAX:
        errors.append(
            {
                "type": "string_too_long",
                "loc": ("header", "idempotency-key"),
                "msg": f"String should have at most {IDEMPOTENCY_KEY_MAX} characters",
                "input": idempotency_key,
                "ctx": {"max_length": IDEMPOTENCY_KEY_MAX},
            }
        )
    body = None
    try:
        body = model.model_validate(data, from_attributes=True)
    except ValidationError as exc:
        errors.extend(
            {**error, "loc": ("body", *error["loc"])} for error in exc.errors(include_url=False)
        )
    if errors:
        raise RequestValidationError(errors, body=data)
    return await endpoint(body, request, caller, idempotency_key)


def _is_json(scope: Scope) -> bool:
    """Whether the request's (first) Content-Type is `application/json`, parameters aside."""
    for name, value in scope["headers"]:
        if name == b"content-type":
            return bool(value.split(b";", 1)[0].strip().lower() == b"application/json")
    return False


def _parse(body: bytes) -> Any:
    """The body as Starlette's `request.json()` reads it; `_NOT_JSON` if that would raise."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    # orjson is stricter (lone surrogates, non-UTF-8 encodings, huge numbers): what it refuses
    # is read as Starlette would, and what that refuses too is FastAPI's to answer.
    try:
        return json.loads(body)
    except Exception:
        return _NOT_JSON


def _handler_for(handlers: Mapping[Any, Any], exc: Exception) -> Any:
    """The app's handler for `exc` as Starlette's exception middleware picks it, or None.

    Handlers for `Exception` and 500 belong to the server error middleware, outside this one:
    such exceptions propagate to it.
    """
    status = exc.status_code if isinstance(exc, StarletteHTTPException) else None
    if status is not None and status != 500 and status in handlers:
        return handlers[status]
    for cls in type(exc).__mro__:
        if cls is Exception:
            return None
        if cls in handlers:
            return handlers[cls]
    return None
