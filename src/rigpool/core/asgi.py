"""A small ASGI helper shared by the middlewares that read a request before the app does."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]


def replay(first: Message, receive: Receive) -> Receive:
    """`receive` with a message already taken from it given back first.

    A middleware that read the body (or its first message) hands the app this instead of the
    server's `receive`: the app sees the message once, then whatever the server has next.
    """
    delivered = False

    async def replayed() -> Message:
        nonlocal delivered
        if delivered:
            return await receive()
        delivered = True
        return first

    return replayed
