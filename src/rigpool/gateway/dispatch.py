"""Dispatch: route one request to agents, hedge a slow start, fail over, stream its tokens.

Depends on two ports only, `Routing` (who serves) and `AgentLink` (the hub), plus the limits.
Retry rule: before the first token a slow agent is hedged (a copy to a second agent after about
its p95 time to first token, within the hedge budget) and a failed one replaced; after it, a
failed agent's stream is continued on another agent from the prompt plus the text already
delivered, so the client sees one stream without gaps or repeats. Every wait is bounded by the
first-token, inter-token and request timeouts: nothing hangs.

Every dispatch to an agent is closed exactly once, with a verdict for its record: `ok`, `failed`
(the provider is to blame), or `neutral` (the client hung up or sent what the agent refused, or
the request's own deadline ran out): no client input ever counts against a provider.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass

from rigpool.core.errors import BackendError, BadRequest, NoCapacity, RigpoolError
from rigpool.gateway.ports import AgentLink, Frame, Limits, Routing, Verdict
from rigpool.gateway.request import Outcome, RequestSpec
from rigpool.protocol.messages import Done, Error, Generate, Token
from rigpool.scheduler.routing import NoCandidate

log = logging.getLogger(__name__)

#: how long to wait for the agent's `done` after the token budget is spent (its token claim,
#: for the metering check); the answer is complete either way
DONE_GRACE_S = 0.5


class DeadlinePassed(TimeoutError):
    """The request's own deadline ran out: the network's budget, not one agent's fault."""


@dataclass
class _Attempt:
    """One dispatch of (part of) a request to one agent."""

    agent_id: str
    frames: AsyncGenerator[list[Frame], None]
    started: float
    attempt_id: str
    offset: int = 0
    next_batch: asyncio.Task[list[Frame]] | None = None
    closed: bool = False

    def pull(self) -> asyncio.Task[list[Frame]]:
        if self.next_batch is None:
            self.next_batch = asyncio.ensure_future(anext(self.frames))
        return self.next_batch

    async def abandon(self) -> None:
        """Stop listening; the hub sends `cancel` to the agent."""
        if self.next_batch is not None and not self.next_batch.done():
            self.next_batch.cancel()
            with contextlib.suppress(BaseException):
                await self.next_batch
        with contextlib.suppress(Exception):
            await self.frames.aclose()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, DeadlinePassed):
        return "the request deadline passed"
    if isinstance(exc, TimeoutError):
        return "no token within the timeout"
    if isinstance(exc, StopAsyncIteration):
        return "stream ended without done"
    return str(exc) or type(exc).__name__


class Dispatcher:
    """Routing, hedging and failover for one request. Every failure ends in a RigpoolError."""

    def __init__(
        self,
        routing: Routing,
        agents: AgentLink,
        limits: Limits,
        spec: RequestSpec,
        outcome: Outcome,
    ) -> None:
        self.routing = routing
        self.agents = agents
        self.limits = limits
        self.spec = spec
        self.out = outcome
        self.deadline = spec.created + limits.request_timeout_s
        self.tried: set[str] = set()
        self.last_error = ""

    def _remaining(self) -> float:
        return self.deadline - time.time()

    # --- one attempt -----------------------------------------------------------------------

    def _start(self) -> _Attempt:
        """Route and dispatch one attempt, continuing from whatever was already delivered."""
        spec, out = self.spec, self.out
        while True:
            if out.attempts >= self.limits.max_attempts or self._remaining() <= 0:
                raise self._gave_up()
            pick = self.routing.pick(spec.model.name, spec.constraints, self.tried)
            if isinstance(pick, NoCandidate):
                if out.attempts:
                    raise self._gave_up()
                raise pick.to_error()
            self.tried.add(pick)
            if self.agents.connected(pick):  # else it left between the index and now
                break
        out.attempts += 1
        delivered = len(out.tokens)
        request = self._request(delivered)
        self.routing.on_dispatch(pick)
        return _Attempt(
            pick,
            self.agents.stream(pick, request),
            time.monotonic(),
            request.request_id,
            offset=delivered,
        )

    def _request(self, delivered: int) -> Generate:
        """The `generate` frame of the next attempt (a continuation after `delivered` tokens)."""
        spec, out = self.spec, self.out
        continuing = delivered > 0
        return Generate(
            request_id=f"{spec.request_id}.{out.attempts}",
            model=spec.model.name,
            # Failover continues from the prompt plus the text the client already has.
            prompt=spec.prompt + out.output if continuing else spec.prompt,
            messages=None if continuing or spec.messages is None else list(spec.messages),
            sampling=spec.sampling.model_copy(
                update={"max_tokens": spec.sampling.max_tokens - delivered}
            ),
            deadline=self.deadline,
        )

    async def _close(self, attempt: _Attempt, verdict: Verdict) -> None:
        """End a dispatch once: tell the router how it went, cancel it on the agent."""
        if not attempt.closed:
            attempt.closed = True
            self.routing.on_end(attempt.agent_id, verdict)
        await attempt.abandon()

    async def _failed(self, attempt: _Attempt, exc: BaseException) -> None:
        """A dispatch that ended badly: who is to blame decides how it counts."""
        self.last_error = _describe(exc)
        refused = isinstance(exc, BackendError) and not exc.retryable
        blameless = refused or isinstance(exc, DeadlinePassed)
        log.warning(
            "request %s failed on agent %s: %s",
            self.spec.request_id,
            attempt.agent_id,
            self.last_error,
        )
        await self._close(attempt, "neutral" if blameless else "failed")
        if refused:
            # The agent says the request itself is invalid: the client's input, not the
            # provider's fault, and no other agent would do better.
            raise BadRequest(f"the provider refused the request: {self.last_error}") from None

    def _gave_up(self) -> RigpoolError:
        where = "mid-stream " if self.out.tokens else ""
        return NoCapacity(
            f"The request failed {where}on {self.out.attempts} provider(s) "
            f"(last: {self.last_error or 'none available'}); retry later.",
        )

    # --- the first frame: hedge and replace ------------------------------------------------

    async def _first_batch(self) -> tuple[_Attempt, list[Frame]]:
        """Race for the first frame: hedge a slow agent, replace failed ones.

        Returns the winning attempt and its first frames (the first a Token 0 or a Done);
        losers are cancelled.
        """
        limits = self.limits
        racing = [self._start()]
        hedged = not limits.hedging or bool(self.out.tokens)  # never hedge a continuation
        hedge_at = 0.0
        try:
            while True:
                now = time.monotonic()
                limits_s = [a.started + limits.first_token_timeout_s - now for a in racing]
                wait = min([*limits_s, self._remaining()])
                if not hedged:
                    hedge_at = racing[0].started + self.routing.hedge_delay_s(racing[0].agent_id)
                    wait = min(wait, hedge_at - now)
                done, _ = await asyncio.wait(
                    [a.pull() for a in racing],
                    timeout=max(0.0, wait),
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if not done:
                    now = time.monotonic()
                    if not hedged and now >= hedge_at - 1e-3:
                        hedged = True
                        if self.routing.try_take_hedge():
                            # Nobody to hedge to: keep waiting on the first agent.
                            with contextlib.suppress(RigpoolError):
                                racing.append(self._start())
                        continue
                    expired = [a for a in racing if now >= a.started + limits.first_token_timeout_s]
                    out_of_time = self._remaining() <= 0
                    for attempt in racing if out_of_time else expired:
                        racing.remove(attempt)
                        await self._failed(
                            attempt, DeadlinePassed() if out_of_time else TimeoutError()
                        )
                    if not racing:
                        racing.append(self._start())
                    continue
                for attempt in list(racing):
                    task = attempt.next_batch
                    if task is None or task not in done:
                        continue
                    attempt.next_batch = None
                    try:
                        batch = task.result()
                        frame = batch[0]
                        if isinstance(frame, Error):
                            raise BackendError(frame.message, retryable=frame.retryable)
                        if isinstance(frame, Token) and frame.index != 0:
                            raise BackendError(f"agent sent token {frame.index} first")
                    except (BackendError, ConnectionError, StopAsyncIteration) as exc:
                        racing.remove(attempt)
                        await self._failed(attempt, exc)
                        if not racing:
                            racing.append(self._start())
                        continue
                    except RigpoolError:  # the request itself (the hub could not send it)
                        racing.remove(attempt)
                        await self._close(attempt, "neutral")
                        raise
                    racing.remove(attempt)
                    return attempt, batch
        finally:
            for loser in racing:
                self.routing.on_lost_race(loser.agent_id, time.monotonic() - loser.started)
                loser.closed = True  # on_lost_race closed it in the router's books
                await loser.abandon()

    # --- the stream ------------------------------------------------------------------------

    def _claim(self, done: Done) -> None:
        out = self.out
        out.done = done
        out.claimed_tokens = (out.claimed_tokens or 0) + done.completion_tokens_claimed

    async def _next(self, attempt: _Attempt) -> list[Frame]:
        remaining = self._remaining()
        if remaining <= 0:
            raise DeadlinePassed()
        wait = min(self.limits.inter_token_timeout_s, remaining)
        try:
            async with asyncio.timeout(wait):
                return await anext(attempt.frames)
        except TimeoutError:
            if wait >= remaining:
                raise DeadlinePassed() from None
            raise

    async def _late_done(self, attempt: _Attempt) -> None:
        """The budget is spent: the agent's Done (its token claim) should follow at once."""
        with contextlib.suppress(Exception):
            async with asyncio.timeout(DONE_GRACE_S):
                batch = await anext(attempt.frames)
            if isinstance(batch[0], Done):
                self._claim(batch[0])

    async def run(self) -> AsyncGenerator[list[Token], None]:
        """Yield the request's tokens in order, as they arrive together (recording them)."""
        spec, out = self.spec, self.out
        budget = spec.sampling.max_tokens
        self.routing.on_request()
        while True:
            attempt, batch = await self._first_batch()
            out.provider_id = attempt.agent_id
            out.attempt_id = attempt.attempt_id
            out.attempt_offset = attempt.offset
            self.routing.on_first_token(attempt.agent_id, time.monotonic() - attempt.started)
            if out.ttft_s is None:
                out.ttft_s = time.time() - spec.created
            expected = 0
            verdict: Verdict = "neutral"  # unless it ends well or by the agent's fault
            try:
                while True:
                    tokens: list[Token] = []
                    problem: BackendError | None = None
                    done: Done | None = None
                    spent = False
                    for i, frame in enumerate(batch):
                        if isinstance(frame, Done):
                            done = frame
                            out.finish_reason = frame.finish_reason
                            break
                        if isinstance(frame, Error):
                            problem = BackendError(frame.message, retryable=frame.retryable)
                            break
                        if frame.index != expected:
                            problem = BackendError(
                                f"agent sent token {frame.index}, expected {expected}"
                            )
                            break
                        expected += 1
                        out.add(frame)
                        tokens.append(frame)
                        if len(out.tokens) >= budget:
                            # The budget is spent: the answer is complete whatever follows.
                            out.finish_reason, spent = "length", True
                            done = next((f for f in batch[i + 1 :] if isinstance(f, Done)), None)
                            break
                    if tokens:  # what arrived before a failure still reaches the client
                        yield tokens
                    if problem is not None:
                        raise problem
                    if done is not None or spent:
                        verdict = "ok"
                        if done is not None:
                            self._claim(done)
                        else:
                            await self._late_done(attempt)
                        return
                    batch = await self._next(attempt)
            except (BackendError, TimeoutError, ConnectionError, StopAsyncIteration) as exc:
                await self._failed(attempt, exc)
                # Failover: the loop continues the stream on another agent.
            finally:
                await self._close(attempt, verdict)
