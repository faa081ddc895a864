"""Everything a running coordinator holds, in one object hung on the FastAPI app."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from sqlalchemy.orm import Session, sessionmaker

from rigpool.coordinator.attest_records import AttestBook
from rigpool.coordinator.hub import AgentSession, Hub
from rigpool.coordinator.models import list_models
from rigpool.coordinator.settings import Settings
from rigpool.coordinator.tables import Model
from rigpool.coordinator.trust_link import ServiceBook
from rigpool.coordinator.validators import ValidatorBoard
from rigpool.coordinator.verify_link import Verifier
from rigpool.gateway.billing import Billing, units
from rigpool.gateway.ratelimit import RateLimiter
from rigpool.hardware.catalog import match_nvml_name
from rigpool.ledger import Ledger, Price
from rigpool.ledger.audit import slashes
from rigpool.protocol.signing import Identity, load_or_create_identity
from rigpool.scheduler.baselines import LeastLoaded, RandomChoice, RoundRobin
from rigpool.scheduler.fleet import AgentRecord, FleetIndex
from rigpool.scheduler.hedging import HedgePolicy
from rigpool.scheduler.routing import Constraints, NoCandidate, Route, Router
from rigpool.trust.evidence import SlashPolicy
from rigpool.trust.live import VERIFIABLE_BACKENDS
from rigpool.trust.sampling import SamplingPolicy


@dataclass
class CoordinatorState:
    settings: Settings
    db: sessionmaker[Session]
    hub: Hub = field(default_factory=Hub)
    fleet: FleetIndex = field(default_factory=FleetIndex)
    router: Router = field(default_factory=Router)
    hedge: HedgePolicy = field(default_factory=HedgePolicy)
    round_robin: RoundRobin = field(default_factory=RoundRobin)
    least_loaded: LeastLoaded = field(default_factory=LeastLoaded)
    random_choice: RandomChoice = field(default_factory=RandomChoice)
    limiter: RateLimiter = field(default_factory=lambda: RateLimiter(1, 1))
    billing: Billing | None = None
    identity: Identity | None = None
    service: ServiceBook = field(default_factory=ServiceBook)
    verifier: Verifier | None = None
    #: providers refused at hello, with the reason (slashed for fraud)
    banned: dict[str, str] = field(default_factory=dict)
    validators: ValidatorBoard = field(init=False)
    #: (agent, model) -> posted price in base units per million tokens
    prices: dict[tuple[str, str], Price] = field(default_factory=dict)
    #: agent -> its last attestation (coordinator/attest_link.py); in memory only
    attestations: AttestBook = field(default_factory=AttestBook)
    _models: dict[str, Model] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.hedge = HedgePolicy(share=self.settings.hedge_share)
        self.service = ServiceBook(ttft_slo_s=self.settings.ttft_slo_s)
        self.validators = ValidatorBoard.from_settings(self.settings, self.service)
        if self.settings.billing:
            self.billing = Billing(Ledger(self.db), self.settings.network_fee_bps)
            # A slash is an expulsion: it outlives restarts (the ledger is the record).
            self.banned.update(
                (row["provider"], row["reason"]) for row in slashes(self.billing.ledger)
            )
        if self.settings.billing or self.settings.verification:
            # signs receipts and evidence records; owns the vault
            self.identity, _ = load_or_create_identity(self.settings.identity_path)
        if self.settings.verification:
            self.verifier = Verifier(
                self.db,
                self.identity,
                self.billing.ledger if self.billing is not None else None,
                dtype=self.settings.verification_dtype,
                policy=SamplingPolicy(
                    floor=self.settings.check_rate_floor,
                    cap=max(self.settings.check_rate_cap, self.settings.check_rate_floor),
                ),
                slash_policy=SlashPolicy(min_records=self.settings.slash_records()),
                queue_size=self.settings.verification_queue,
                token_window=self.settings.token_test_window,
            )
            self.verifier.on_checked = lambda agent, ok: self.observed(agent, ok=True, check=ok)
            self.verifier.on_slashed = self.expel
            # Slashes a crash interrupted are finished before any agent may say hello.
            self.banned.update(self.verifier.finish_pending())
            self.verifier.expelled.update(self.banned)
        self.limiter = RateLimiter(
            self.settings.rate_limit_per_min,
            self.settings.rate_limit_burst,
            self.settings.daily_token_quota,
        )

    # --- models --------------------------------------------------------------------------

    def refresh_models(self) -> None:
        self._models = {m.name: m for m in list_models(self.db)}

    def model_names(self) -> set[str]:
        return set(self._models)

    def model(self, name: str) -> Model | None:
        return self._models.get(name)

    def models(self) -> list[Model]:
        return list(self._models.values())

    # --- the scheduler's view of live agents ---------------------------------------------

    def agent_joined(self, session: AgentSession) -> None:
        caps = session.capabilities
        names = []
        for gpu in caps.gpus:
            spec = match_nvml_name(gpu.name, gpu.vram_mb)
            names.append(spec.name if spec else gpu.name)
        offers = {m.name: m.price_out_per_mtok for m in caps.models if m.name in session.models}
        for m in caps.models:
            if m.name in session.models:
                self.prices[(session.agent_id, m.name)] = Price(
                    units(m.price_in_per_mtok), units(m.price_out_per_mtok)
                )
        self.fleet.join(
            AgentRecord(
                agent_id=session.agent_id,
                gpus=tuple(names),
                vram_gb=sum(g.vram_mb for g in caps.gpus) / 1024,
                region=caps.region,
                models=frozenset(session.models),
                model_prices=offers,
                max_concurrency=caps.max_concurrency,
                reputation=self.reputation(session.agent_id),
                last_seen=time.monotonic(),
            )
        )
        self.service.joined(session.agent_id)
        if self.verifier is not None and caps.backend in VERIFIABLE_BACKENDS:
            for name in session.models:
                model = self.model(name)
                if model is not None:
                    self.verifier.warm(name, model.path)

    def agent_heartbeat(self, session: AgentSession) -> None:
        if session.agent_id in self.fleet:
            self.fleet.heartbeat(
                session.agent_id,
                time.monotonic(),
                outstanding=session.reported_active,
                healthy=not (session.draining or session.attesting),
            )

    def observed(
        self, agent_id: str, *, ok: bool, ttft_s: float | None = None, check: bool | None = None
    ) -> None:
        """Feed one outcome into the provider's record and its reputation in the fleet index."""
        if check is None:
            self.service.served(agent_id, ok=ok, ttft_s=ttft_s)
        else:
            self.service.checked(agent_id, passed=check)
        if agent_id in self.fleet:
            self.fleet.heartbeat(agent_id, time.monotonic(), reputation=self.reputation(agent_id))

    def reputation(self, agent_id: str) -> float:
        """The provider's reputation in [0, 1], as the router reads it from the fleet index."""
        return self.validators.consensus(agent_id)

    async def expel(self, agent_id: str, reason: str) -> None:
        """Take a provider off the network (slashed): no new work, its session closed."""
        self.banned[agent_id] = reason
        if agent_id in self.fleet:
            self.fleet.leave(agent_id)
        session = self.hub.sessions.get(agent_id)
        if session is not None:
            self.hub.remove(session, f"provider expelled: {reason}")
            await session.close()

    def agent_left(self, agent_id: str) -> None:
        """Out of routing, unless the agent's current session is (still) admitted."""
        current = self.hub.sessions.get(agent_id)
        if current is None or not current.admitted:
            self.service.left(agent_id)
            self.fleet.leave(agent_id)
            self.hedge.forget(agent_id)
            for key in [k for k in self.prices if k[0] == agent_id]:
                del self.prices[key]

    def price(self, agent_id: str, model: str) -> Price:
        return self.prices.get((agent_id, model), Price(0, 0))

    def price_cap(self, model: str, constraints: Constraints) -> Price:
        """The highest price an eligible provider asks: what a hold must cover."""
        highest_in = highest_out = 0
        for agent_id in self.fleet.serving(model).items:
            record = self.fleet.get(agent_id)
            if record is None or not constraints.admits(record, model):
                continue
            p = self.price(agent_id, model)
            highest_in = max(highest_in, p.input_per_million)
            highest_out = max(highest_out, p.output_per_million)
        return Price(highest_in, highest_out)

    def pick_agent(
        self, model: str, constraints: Constraints, exclude: set[str]
    ) -> str | NoCandidate:
        """One agent for `model` under `constraints`, by the configured policy."""
        policy = self.settings.routing_policy
        if policy == "rigpool":
            route = self.router.route(self.fleet, model, constraints, exclude)
            return route.agent_id if isinstance(route, Route) else route
        # Naive policies (for comparison) still honour the request's constraints.
        admitted = exclude | {
            a
            for a in self.fleet.serving(model).items
            if (r := self.fleet.get(a)) is not None and not constraints.admits(r, model)
        }
        if policy == "round-robin":
            agent = self.round_robin.pick(self.fleet, model, admitted)
        elif policy == "least-loaded":
            outstanding = {a: s.active for a, s in self.hub.sessions.items()}
            agent = self.least_loaded.pick(self.fleet, model, outstanding, admitted)
        else:
            agent = self.random_choice.pick(self.fleet, model, admitted)
        if agent is None:  # let the router explain why nobody qualifies
            route = self.router.route(self.fleet, model, constraints, exclude)
            return route.agent_id if isinstance(route, Route) else route
        return agent
