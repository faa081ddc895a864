"""The gateway's ports, implemented over the coordinator's parts (the composition root's half).

`gateway_ports(state)` builds the one `GatewayPorts` the app hangs on `app.state.gateway`. Each
adapter is thin: it translates a port's question into calls on the hub, the router, the
database, the ledger or the verifier, so that the gateway never sees `CoordinatorState`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import Future
from typing import Any

from rigpool.coordinator import receipt_link
from rigpool.coordinator.keys import authenticate
from rigpool.coordinator.request_store import SqlRequestStore
from rigpool.coordinator.state import CoordinatorState
from rigpool.coordinator.verify_link import evidence_unit
from rigpool.gateway.billing import Billing, Hold
from rigpool.gateway.ports import Frame, GatewayPorts, Limits, Verdict
from rigpool.gateway.request import ModelInfo, Outcome, RequestSpec
from rigpool.gateway.tokenization import ModelTokenizer, load_tokenizer
from rigpool.ledger import Price
from rigpool.ledger.group_commit import GroupCommit
from rigpool.ledger.receipts import CheckedReceipt, SignedReceipt
from rigpool.protocol.messages import Generate, ReceiptSignature
from rigpool.protocol.signing import Identity
from rigpool.scheduler.routing import Constraints, NoCandidate
from rigpool.trust.evidence import EvidenceRecord
from rigpool.trust.live import LiveClaim

#: how long an authenticated API key is trusted without asking the database again; a revoked
#: key stops working within this time (a per-request query would cost every request a
#: database round trip for an event that happens almost never)
KEY_CACHE_S = 5.0
#: keys remembered at most (bounds memory whatever clients send)
KEY_CACHE_SIZE = 10_000


class StateRouting:
    """`Routing` over the router, the hedging budget and the providers' service records."""

    def __init__(self, state: CoordinatorState) -> None:
        self.state = state

    def on_request(self) -> None:
        self.state.hedge.on_request(time.monotonic())

    def pick(self, model: str, constraints: Constraints, exclude: set[str]) -> str | NoCandidate:
        return self.state.pick_agent(model, constraints, exclude)

    def on_dispatch(self, agent_id: str) -> None:
        self.state.router.on_dispatch(agent_id)

    def on_first_token(self, agent_id: str, seconds: float) -> None:
        now = time.monotonic()
        self.state.router.on_first_token(agent_id, seconds, now)
        self.state.hedge.observe_ttft(agent_id, seconds, now)
        self.state.observed(agent_id, ok=True, ttft_s=seconds)

    def on_lost_race(self, agent_id: str, elapsed_s: float) -> None:
        now = time.monotonic()
        self.state.router.on_first_token(agent_id, elapsed_s, now)
        self.state.router.on_end(agent_id, ok=True, now=now)

    def on_end(self, agent_id: str, verdict: Verdict) -> None:
        failed = verdict == "failed"
        self.state.router.on_end(agent_id, ok=not failed, now=time.monotonic())
        if failed:
            self.state.observed(agent_id, ok=False)

    def hedge_delay_s(self, agent_id: str) -> float:
        return self.state.hedge.hedge_delay_s(agent_id)

    def try_take_hedge(self) -> bool:
        return self.state.hedge.try_take_hedge(time.monotonic())


class HubLink:
    """`AgentLink` over the hub's sessions."""

    def __init__(self, state: CoordinatorState) -> None:
        self.hub = state.hub

    def connected(self, agent_id: str) -> bool:
        return agent_id in self.hub.sessions

    def stream(self, agent_id: str, request: Generate) -> AsyncGenerator[list[Frame], None]:
        session = self.hub.sessions.get(agent_id)
        if session is None:
            return _unreachable(agent_id)
        return self.hub.stream_batches(session, request)  # no wrapper: it runs per batch

    async def sign_receipt(self, agent_id: str, attempt_id: str, body: str) -> ReceiptSignature:
        session = self.hub.sessions.get(agent_id)
        if session is None:
            raise ConnectionError(f"agent {agent_id} is not connected")
        return await self.hub.sign_receipt(session, attempt_id, body)

    def backend_of(self, agent_id: str) -> str:
        session = self.hub.sessions.get(agent_id)
        return session.capabilities.backend if session is not None else ""

    async def hand_receipt(self, agent_id: str, attempt_id: str, receipt: dict[str, Any]) -> None:
        session = self.hub.sessions.get(agent_id)
        if session is not None:
            await receipt_link.hand_receipt(session, attempt_id, receipt)

    def receipt_durable(self, agent_id: str, request_id: str) -> None:
        session = self.hub.sessions.get(agent_id)
        if session is not None:
            receipt_link.ack_later(session, request_id)


async def _unreachable(agent_id: str) -> AsyncGenerator[list[Frame], None]:
    raise ConnectionError(f"agent {agent_id} is not connected")
    yield  # an async generator that fails on its first step


#: captures remembered at most while their receipt is collected (see `LedgerEscrow`)
PENDING_CAPTURES = 100_000


class LedgerEscrow:
    """`Escrow` over `Billing`'s group-committed face and the providers' posted prices.

    A capture is remembered from `settle` until it is committed (or, if it fails, until its
    receipt is recorded), so that `record_receipt` returns only once the receipt *and* the
    capture it proves are durable: only then may the agent forget its copy.
    """

    def __init__(self, state: CoordinatorState, billing: Billing) -> None:
        self.state = state
        self.billing = billing
        self._captures: dict[str, Future[Any]] = {}

    async def hold(self, spec: RequestSpec) -> Hold | None:
        cap = self.state.price_cap(spec.model.name, spec.constraints)
        return await self.billing.hold_async(
            spec.consumer, spec.request_id, cap, spec.prompt_tokens, spec.sampling.max_tokens
        )

    def settle(
        self, spec: RequestSpec, outcome: Outcome, hold: Any, *, billable: int
    ) -> asyncio.Future[Any] | None:
        if hold is None:
            return None
        provider = outcome.provider_id if billable else None
        price = self.state.price(provider, spec.model.name) if provider else Price(0, 0)
        settled = self.billing.settle(
            hold, spec.request_id, price, spec.prompt_tokens, billable, provider
        )
        outcome.charged, outcome.fee = settled.capture.charged, settled.capture.fee
        if outcome.charged:
            self._remember(spec.request_id, settled.durable)
        return asyncio.wrap_future(settled.durable)

    def _remember(self, request_id: str, durable: Future[Any]) -> None:
        captures = self._captures
        if len(captures) >= PENDING_CAPTURES:  # failed captures whose receipt never came
            captures.pop(next(iter(captures)), None)
        captures[request_id] = durable

        def committed(done: Future[Any]) -> None:  # on the writer's thread
            if not done.cancelled() and done.exception() is None:
                captures.pop(request_id, None)

        durable.add_done_callback(committed)

    def receipt_terms(self, agent_id: str, model: str) -> tuple[int, int]:
        price = self.state.price(agent_id, model)
        return price.input_per_million, price.output_per_million

    async def record_receipt(self, signed: SignedReceipt | CheckedReceipt) -> None:
        await self.billing.record_receipt_async(signed)
        body = signed.receipt.body if isinstance(signed, CheckedReceipt) else signed.body
        capture = self._captures.pop(body.request_id, None)
        if capture is not None:  # not committed yet, or failed (then this raises)
            await asyncio.wrap_future(capture)


class StateTrust:
    """`Trust` over the providers' records, the evidence table and the verifier."""

    def __init__(self, state: CoordinatorState, writer: GroupCommit) -> None:
        self.state = state
        self.writer = writer

    @property
    def identity(self) -> Identity | None:
        return self.state.identity

    def metering_checked(self, agent_id: str, *, passed: bool) -> None:
        self.state.observed(agent_id, ok=True, check=passed)

    def store_evidence(self, record: EvidenceRecord) -> asyncio.Future[None]:
        return self.writer.submit_async(evidence_unit(record))

    def offer(
        self,
        agent_id: str,
        claim: Callable[[], LiveClaim | None],
        *,
        metering_evidence: str | None,
    ) -> None:
        if self.state.verifier is not None:
            self.state.verifier.consider(agent_id, claim, metering_evidence=metering_evidence)


class StateCatalog:
    """`Catalog` over the registered models (refreshed by the state) and their tokenizers."""

    def __init__(self, state: CoordinatorState) -> None:
        self.state = state

    def model(self, name: str) -> ModelInfo | None:
        row = self.state.model(name)
        if row is None:
            return None
        return ModelInfo(row.name, row.path, row.context_length, row.created.timestamp())

    def names(self) -> set[str]:
        return self.state.model_names()

    def all(self) -> list[ModelInfo]:
        return [m for name in sorted(self.names()) if (m := self.model(name)) is not None]

    def providers(self, name: str) -> int:
        return len(self.state.hub.serving(name))

    def tokenizer(self, model: ModelInfo) -> ModelTokenizer:
        return load_tokenizer(model.path)


class CachedKeys:
    """`Keys` over the api_keys table, with authenticated keys remembered for `KEY_CACHE_S`."""

    def __init__(self, state: CoordinatorState, store: SqlRequestStore) -> None:
        self.db = state.db
        self.store = store
        self._known: dict[str, tuple[float, tuple[int, str]]] = {}

    def cached(self, token: str) -> tuple[int, str] | None:
        hit = self._known.get(token)
        if hit is None or hit[0] < time.monotonic():
            return None
        return hit[1]

    def authenticate(self, token: str) -> tuple[int, str] | None:
        found = authenticate(self.db, token)
        if found is not None:
            if len(self._known) >= KEY_CACHE_SIZE:
                self._known.clear()  # rare; simpler and as safe as an LRU
            self._known[token] = (time.monotonic() + KEY_CACHE_S, found)
        else:
            self._known.pop(token, None)
        return found

    def tokens_used_today(self, key_id: int) -> int:
        return self.store.tokens_used_today(key_id)


def shared_writer(state: CoordinatorState) -> GroupCommit:
    """The coordinator's one group-commit writer: the ledger's when billing is on.

    One writer per database, because SQLite has one writer at a time anyway and because a
    request's final row and its capture then usually commit in the same transaction.
    """
    if state.billing is not None:
        return state.billing.writer.group
    return GroupCommit(state.db, name="rigpool-requests")


def gateway_ports(state: CoordinatorState, writer: GroupCommit) -> GatewayPorts:
    """The gateway's view of this coordinator."""
    settings = state.settings
    store = SqlRequestStore(state.db, writer)
    return GatewayPorts(
        limits=Limits(
            request_timeout_s=settings.request_timeout_s,
            first_token_timeout_s=settings.first_token_timeout_s,
            inter_token_timeout_s=settings.inter_token_timeout_s,
            max_attempts=settings.max_attempts,
            hedging=settings.hedging,
            max_messages=settings.max_messages,
        ),
        routing=StateRouting(state),
        agents=HubLink(state),
        store=store,
        escrow=LedgerEscrow(state, state.billing) if state.billing is not None else None,
        trust=StateTrust(state, writer),
        catalog=StateCatalog(state),
        keys=CachedKeys(state, store),
        limiter=state.limiter,
    )
