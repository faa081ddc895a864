"""The gateway's ports: the narrow interfaces through which a request reaches the rest.

The gateway never imports the coordinator. The composition root (`coordinator/wiring.py`)
implements these over the hub, the router, the database, the ledger and the verifier, and hangs
one `GatewayPorts` on the app. Each port is what one step of a request needs and no more, so a
newcomer can see from a signature what a step may touch, and tests can supply real parts one
seam at a time.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from rigpool.gateway.ratelimit import RateLimiter
from rigpool.gateway.request import ModelInfo, Outcome, RequestSpec
from rigpool.protocol.messages import Done, Error, Generate, ReceiptSignature, Token
from rigpool.protocol.signing import Identity
from rigpool.scheduler.routing import Constraints, NoCandidate
from rigpool.trust.evidence import EvidenceRecord
from rigpool.trust.live import LiveClaim

Frame = Token | Done | Error

#: how a dispatch to one agent ended, as the router and the provider's record should count it:
#: "failed" only when the provider is to blame; "neutral" when the client or the network's own
#: deadline ended it (a client's bad input or hang-up never counts against a provider)
Verdict = Literal["ok", "failed", "neutral"]


class Routing(Protocol):
    """Who serves: the router, the hedging budget and the providers' service records."""

    def on_request(self) -> None: ...
    def pick(self, model: str, constraints: Constraints, exclude: set[str]) -> str | NoCandidate:
        """One agent for the model under the constraints, not in `exclude`."""
        ...

    def on_dispatch(self, agent_id: str) -> None: ...
    def on_first_token(self, agent_id: str, seconds: float) -> None: ...
    def on_lost_race(self, agent_id: str, elapsed_s: float) -> None:
        """A hedged twin that lost: its elapsed time is a lower bound on its TTFT."""
        ...

    def on_end(self, agent_id: str, verdict: Verdict) -> None: ...
    def hedge_delay_s(self, agent_id: str) -> float: ...
    def try_take_hedge(self) -> bool: ...


class AgentLink(Protocol):
    """The live agents' connections (the hub)."""

    def connected(self, agent_id: str) -> bool: ...
    def stream(self, agent_id: str, request: Generate) -> AsyncGenerator[list[Frame], None]:
        """Send `request` and yield the agent's frames, in order, as they arrive together.

        Each list is non-empty; the last ends with the Done or Error. Leaving early cancels the
        request on the agent. Raises ConnectionError (on the first `anext`) when the agent
        cannot be reached.
        """
        ...

    async def sign_receipt(self, agent_id: str, attempt_id: str, body: str) -> ReceiptSignature:
        """The agent's signature on a receipt body; TimeoutError/ConnectionError/RuntimeError."""
        ...

    def backend_of(self, agent_id: str) -> str: ...
    async def hand_receipt(self, agent_id: str, attempt_id: str, receipt: dict[str, Any]) -> None:
        """Give the agent its countersigned receipt (JSON object); best effort, never raises."""
        ...

    def receipt_durable(self, agent_id: str, request_id: str) -> None:
        """Tell the agent its receipt and the capture it proves are durable (best effort)."""
        ...


class RequestStore(Protocol):
    """The `requests` table: admission (idempotency) and each request's final row.

    Writes are group-committed (many requests per transaction): `admit` returns once the row
    is durable; `finish` queues the final row and returns a future that resolves once it is.
    """

    async def admit(self, spec: RequestSpec) -> None:
        """Record the request; raises IdempotentReplay for a key used before."""
        ...

    def finish(
        self,
        spec: RequestSpec,
        outcome: Outcome,
        *,
        status: str,
        error: str | None,
        response: dict[str, Any] | None,
    ) -> Awaitable[None]: ...


class Escrow(Protocol):
    """Money for one request: the worst case held at admission, settled once at the end."""

    async def hold(self, spec: RequestSpec) -> Any:
        """Hold the worst case, durably (None when free); raises InsufficientBalance."""
        ...

    def settle(
        self, spec: RequestSpec, outcome: Outcome, hold: Any, *, billable: int
    ) -> Awaitable[Any] | None:
        """Capture `billable` tokens at the serving provider's price, release the rest.

        `billable == 0` (or no provider) releases everything. Sets `outcome.charged`/`fee` at
        once; the returned awaitable resolves when the settlement is durable.
        """
        ...

    def receipt_terms(self, agent_id: str, model: str) -> tuple[int, int]:
        """The provider's posted (input, output) prices per million tokens, base units."""
        ...

    async def record_receipt(self, signed: Any) -> None:
        """Store a receipt signed by the agent and countersigned by the coordinator.

        `signed` is a `SignedReceipt` (both signatures are checked) or the `CheckedReceipt`
        that `countersign_checked` returned (checked there; not checked again).

        Returns once the receipt and the capture it proves are both durable; raises when
        either failed (the agent then keeps its copy and presents it later).
        """
        ...


class Trust(Protocol):
    """The provider checks: metering outcomes, evidence records and the sampling verifier."""

    @property
    def identity(self) -> Identity | None: ...
    def metering_checked(self, agent_id: str, *, passed: bool) -> None: ...
    def store_evidence(self, record: EvidenceRecord) -> Awaitable[None]:
        """Keep an evidence record; resolves once it is durable."""
        ...

    def offer(
        self,
        agent_id: str,
        claim: Callable[[], LiveClaim | None],
        *,
        metering_evidence: str | None,
    ) -> None:
        """Offer a served request to the verifier, which samples it (no-op without one)."""
        ...


class Catalog(Protocol):
    """The registered models and their tokenizers."""

    def model(self, name: str) -> ModelInfo | None: ...
    def names(self) -> set[str]: ...
    def all(self) -> list[ModelInfo]: ...
    def tokenizer(self, model: ModelInfo) -> Any: ...
    def providers(self, name: str) -> int:
        """How many connected, routable agents serve the model now."""
        ...


class Keys(Protocol):
    """API keys (hashed in the database)."""

    def cached(self, token: str) -> tuple[int, str] | None:
        """A recent `authenticate` answer for this key, without blocking (None: ask)."""
        ...

    def authenticate(self, token: str) -> tuple[int, str] | None:
        """(key id, consumer) for a valid key, else None. May block: call off the loop."""
        ...

    def tokens_used_today(self, key_id: int) -> int: ...


@dataclass(frozen=True)
class Limits:
    """The settings the request path reads (from the coordinator's Settings)."""

    request_timeout_s: float
    first_token_timeout_s: float
    inter_token_timeout_s: float
    max_attempts: int
    hedging: bool
    max_messages: int


@dataclass(frozen=True)
class GatewayPorts:
    """Everything a request may reach, hung on the app as `app.state.gateway`."""

    limits: Limits
    routing: Routing
    agents: AgentLink
    store: RequestStore
    escrow: Escrow | None
    trust: Trust
    catalog: Catalog
    keys: Keys
    limiter: RateLimiter
