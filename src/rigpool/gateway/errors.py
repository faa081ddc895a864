"""OpenAI-shaped errors: `{"error": {"message", "type", "param", "code"}}` with OpenAI's statuses.

All the ways a request can fail end up here, so clients of the official SDK get the exception
class they expect (BadRequestError, AuthenticationError, NotFoundError, ...).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from rigpool.core.errors import RigpoolError

log = logging.getLogger(__name__)

_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    408: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_exceeded",
}


def error_body(
    message: str, type_: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def error_response(
    status: int,
    message: str,
    *,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    type_ = _TYPES.get(status, "server_error")
    return JSONResponse(
        error_body(message, type_, param, code), status_code=status, headers=headers
    )


def rigpool_error_response(exc: RigpoolError) -> JSONResponse:
    headers = None
    retry_after = getattr(exc, "retry_after_s", None)
    if retry_after is not None:
        headers = {"Retry-After": str(max(1, math.ceil(retry_after)))}
    return JSONResponse(
        error_body(exc.message, exc.error_type, exc.param, exc.code),
        status_code=exc.status_code,
        headers=headers,
    )


#: pydantic's names for the types of a union's branches, as they appear in an error's `loc`
_TYPE_NAMES = frozenset({"str", "int", "float", "bool", "bytes", "none", "list", "dict"})
_ABSENT = object()


def _looks_like_a_type(part: str) -> bool:
    return part in _TYPE_NAMES or "[" in part or "(" in part


def openai_param(loc: Sequence[int | str], body: Any = _ABSENT) -> str | None:
    """An error location as OpenAI spells a parameter: `messages[0].content`, `stop[1]`.

    pydantic puts the branch of a union it tried into the location (`content` ->
    `function-after[...]` or `list[TextPart]`); those are not parameters and are dropped. With the
    request body at hand, a part is a parameter when the body has it there; without it (or for a
    missing field, which the body cannot have) a part that reads like a type name is dropped.
    """
    node = body
    out = ""
    for i, part in enumerate(loc):
        if isinstance(part, int):
            out += f"[{part}]"
            in_list = isinstance(node, list) and -len(node) <= part < len(node)
            node = node[part] if in_list else _ABSENT
            continue
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif _looks_like_a_type(part):
            continue
        elif node is not _ABSENT and (not isinstance(node, dict) or i < len(loc) - 1):
            continue  # a branch tag: nothing in the body has this name here
        else:
            node = _ABSENT
        out += f".{part}" if out else part
    return out or None


def _most_specific(errors: Sequence[Any]) -> Any:
    # A value tried against each branch of a union fails "wrong type" on all but the branch of
    # its own shape; the error from that branch is the one that says what is wrong.
    for error in errors:
        if not str(error.get("type", "")).endswith("_type"):
            return error
    return errors[0]


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    if not errors:
        return "invalid request body", None
    first = _most_specific(errors)
    if first.get("type") == "json_invalid":
        return "request body is not valid JSON", None
    loc = list(first.get("loc", ()))
    in_body = bool(loc) and loc[0] == "body"
    param = openai_param(loc[1:], exc.body) if in_body else openai_param(loc)
    if first.get("type") == "missing":
        return f"missing required parameter: '{param}'", param
    msg = first.get("msg", "invalid value")
    return (f"invalid value for '{param}': {msg}" if param else msg), param


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RigpoolError)
    async def _rigpool(_request: Request, exc: RigpoolError) -> JSONResponse:
        return rigpool_error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        return error_response(400, message, param=param)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(
            exc.status_code, str(exc.detail), headers=dict(exc.headers) if exc.headers else None
        )

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return error_response(500, "internal error; it has been logged")
