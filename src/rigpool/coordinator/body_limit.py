"""Read request bodies under a size limit (413) and a deadline (408), before the app sees them.

A pure ASGI middleware rather than FastAPI's `@app.middleware("http")`: that one
(BaseHTTPMiddleware) wraps every response, streaming ones included, in an extra task and
channel, which costs per-event overhead on SSE and has a history of cutting streams short.

The body is read here, whole, and handed to the app as one message. Reading it lazily inside
the app does not work: FastAPI turns any exception raised while it reads a body into its own
400 ("There was an error parsing the body"), so a chunked body over the limit used to get 400,
and nothing bounded how slowly a body could arrive. The app would read the whole body before
doing anything anyway (auth and validation come after it), so this costs no extra copy.

- A `Content-Length` over the limit is refused before any of the body is read; a body without
  one (`Transfer-Encoding: chunked`) is counted as it arrives and refused as soon as it passes
  the limit. Either way: 413 in OpenAI's error shape, and the connection is closed (what is left
  of the body is never read).
- The whole body must arrive within `read_timeout_s` of the request's headers (the deadline
  covers all of it, not each packet, so a client cannot reset it by dribbling a byte at a
  time); otherwise 408 with code `request_timeout`, and the connection is closed.
- Header reading is not covered here: the app only runs once the headers are in. See
  docs/architecture.md ("Request path") for what bounds it.
"""

from __future__ import annotations

import asyncio
import json

from starlette.types import ASGIApp, Receive, Scope, Send

from rigpool.core.asgi import replay

#: the default deadline for a body (Settings.body_read_timeout_s)
DEFAULT_READ_TIMEOUT_S = 30.0


class BodyLimit:
    """ASGI middleware: the body of every HTTP request, read whole under a size and time limit."""

    def __init__(
        self, app: ASGIApp, limit: int, read_timeout_s: float = DEFAULT_READ_TIMEOUT_S
    ) -> None:
        self.app = app
        self.limit = limit
        self.read_timeout_s = read_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers") or ():
            if name == b"content-length":
                if not value.isdigit() or int(value) > self.limit:
                    await self._too_large(send)
                    return
                break
        try:
            async with asyncio.timeout(self.read_timeout_s):
                body = await self._read(receive)
        except TimeoutError:
            await _refuse(
                send,
                408,
                f"request body not received within {self.read_timeout_s:g} s",
                "request_timeout",
            )
            return
        except _TooLarge:
            await self._too_large(send)
            return
        if body is None:  # the client left before its body was complete: nobody to answer
            return
        # The body once, as one message; then whatever the server has next (disconnect).
        whole = {"type": "http.request", "body": body, "more_body": False}
        await self.app(scope, replay(whole, receive), send)

    async def _read(self, receive: Receive) -> bytes | None:
        """The whole body (None if the client disconnected first); _TooLarge past the limit."""
        message = await receive()
        if message["type"] != "http.request":
            return None
        body: bytes = message.get("body", b"")
        if not message.get("more_body", False):  # the common case: one message
            if len(body) > self.limit:
                raise _TooLarge
            return body
        parts = [body]
        size = len(body)
        while True:
            if size > self.limit:
                raise _TooLarge
            message = await receive()
            if message["type"] != "http.request":
                return None
            chunk = message.get("body", b"")
            parts.append(chunk)
            size += len(chunk)
            if not message.get("more_body", False):
                break
        if size > self.limit:
            raise _TooLarge
        return b"".join(parts)

    async def _too_large(self, send: Send) -> None:
        await _refuse(send, 413, f"request body exceeds {self.limit} bytes", None)


async def _refuse(send: Send, status: int, message: str, code: str | None) -> None:
    """OpenAI's error body; the connection closes after it (the rest of the body is unread)."""
    payload = json.dumps(
        {
            "error": {
                "message": message,
                "type": "invalid_request_error",
                "param": None,
                "code": code,
            }
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


class _TooLarge(Exception):
    pass
