"""The coordinator's CPU per streamed request on the agent link alone, in-process (no sockets).

For each request the agent's messages are prepared beforehand, exactly as this tree's daemon
writes them for a fast stream (protocol 1.5: the first token alone, then one `batch` with the
other tokens and the `done`; with --per-frame: one sealed message per frame, as 1.4 agents
send). Timed (process CPU time): the coordinator's receive path for each message (envelope,
MAC, frame decode, delivery to the request's mailbox) and the request's reader taking every
frame through `Hub.stream`, the reader waking once per message as it would on a socket.
WebSocket framing and uvicorn's own work per message come on top (bench/load.py measures
the whole process). An older tree that predates the fast paths is measured with its own
code (`PYTHONPATH=<its checkout>/src`), including the `wait_for` task per message its
receive loop used.

    .venv/bin/python bench/link.py [--requests N] [--tokens T] [--per-frame]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from typing import Any

from rigpool.coordinator.hub import AgentSession, Hub
from rigpool.protocol import messages as m
from rigpool.protocol.channel import Opener, Sealer

#: this tree has the 1.5 fast paths (otherwise: measure the old code as it was)
FAST = hasattr(m, "decode_sealed")


def wire_messages(rid: str, sealer: Sealer, tokens: int, batched: bool) -> list[str]:
    """What an agent sends for one fast stream of `tokens` tokens."""
    toks = [m.Token(request_id=rid, index=i, text=f" w{i}") for i in range(tokens)]
    done = m.Done(request_id=rid, finish_reason="length", completion_tokens_claimed=tokens)
    if not FAST:
        return [sealer.seal(m.encode(f)) for f in [*toks, done]]
    if not batched:
        return [sealer.seal(m.encode_token(t)) for t in toks] + [sealer.seal(m.encode(done))]
    rest = m.encode_batch([m.encode_token(t) for t in toks[1:]] + [m.encode(done)])
    return [sealer.seal(m.encode_token(toks[0])), sealer.seal(rest)]


async def measure(requests: int, tokens: int, batched: bool) -> float:
    """CPU microseconds per request."""
    hub = Hub()

    async def send_text(_text: str) -> None:
        return None

    async def close() -> None:
        return None

    caps = m.Capabilities(backend="emulated")
    session = AgentSession(agent_id="a" * 32, capabilities=caps, send_text=send_text, close=close)
    hub.add(session)
    key = os.urandom(32)
    sealer, opener = Sealer(key), Opener(key)
    wires = [wire_messages(f"r{i}.1", sealer, tokens, batched) for i in range(requests)]
    loop = asyncio.get_running_loop()

    def receive(raw: str) -> None:
        if FAST:
            parts = m.decode_sealed(raw)
            assert parts is not None
            body = opener.open_parts(*parts)
        else:
            sealed = m.decode_agent_frame(raw)
            assert isinstance(sealed, m.Sealed)
            body = opener.open(sealed)
        msg: Any = m.decode_agent_frame(body)
        if FAST and isinstance(msg, m.Batch):
            hub.deliver_many(session, msg.frames)
        else:
            hub.deliver(session, msg)

    async def arrive(raw: str) -> str:
        return raw

    async def feed(i: int) -> None:
        for raw in wires[i]:
            if not FAST:  # the old receive loop: asyncio.wait_for (a new task) per message
                raw = await asyncio.wait_for(arrive(raw), 8.0)
            receive(raw)
            await asyncio.sleep(0)  # the next message comes in a later turn of the loop

    start = time.process_time()
    for i in range(requests):
        request = m.Generate(request_id=f"r{i}.1", model="m", prompt="p")
        feeder = loop.create_task(feed(i))
        frames = 0
        async for _frame in hub.stream(session, request):
            frames += 1
        await feeder
        assert frames == tokens + 1
    return (time.process_time() - start) / requests * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--per-frame", action="store_true", help="one message per frame")
    args = parser.parse_args()
    batched = FAST and not args.per_frame
    us = asyncio.run(measure(args.requests, args.tokens, batched))
    how = "batched" if batched else "one message per frame"
    label = f"protocol {m.PROTOCOL_VERSION} code, {how}"
    print(f"{label}: {us:.0f} CPU-us per {args.tokens}-token request (agent link, in-process)")


if __name__ == "__main__":
    main()
