"""Router.route over a FleetIndex: constraints, reasons for refusals, load balance, price."""

from __future__ import annotations

import random

import pytest

from rigpool.core.errors import NoCapacity
from rigpool.scheduler.fleet import AgentRecord, FleetIndex
from rigpool.scheduler.routing import Candidate, Constraints, NoCandidate, Route, Router

REGIONS = ["eu-west", "eu-central", "eu-north", "us-east", "us-west", "ap-south"]


def make_fleet(n: int = 600, seed: int = 0) -> FleetIndex:
    rng = random.Random(seed)
    fleet = FleetIndex()
    for i in range(n):
        fleet.join(
            AgentRecord(
                agent_id=f"a{i}",
                gpus=("RTX 3090",),
                vram_gb=24,
                region=rng.choice(REGIONS),
                models=frozenset({"llama-3-8b"} | ({"mistral-7b"} if i % 3 == 0 else set())),
                price_out_per_mtok=round(rng.uniform(0.1, 2.0), 2),
                reputation=round(rng.random(), 2),
            )
        )
    return fleet


def test_eu_only_never_routes_outside_the_eu() -> None:
    fleet, router = make_fleet(), Router(seed=1)
    eu = Constraints.of("eu")
    for _ in range(2000):
        res = router.route(fleet, "llama-3-8b", eu)
        assert isinstance(res, Route)
        assert res.record.region.startswith("eu-")


def test_explicit_region_set_is_respected() -> None:
    fleet, router = make_fleet(), Router(seed=2)
    c = Constraints.of({"eu-west", "us-east"})
    seen = {router.route(fleet, "llama-3-8b", c).record.region for _ in range(500)}  # type: ignore[union-attr]
    assert seen == {"eu-west", "us-east"}


def test_max_price_and_min_reputation_hold_for_every_choice() -> None:
    fleet, router = make_fleet(), Router(seed=3)
    c = Constraints.of(None, max_price_per_mtok=0.5, min_reputation=0.8)
    for _ in range(2000):
        res = router.route(fleet, "llama-3-8b", c)
        assert isinstance(res, Route)
        assert res.record.price_for("llama-3-8b") <= 0.5
        assert res.record.reputation >= 0.8


def test_selective_constraints_fall_back_to_an_exact_scan() -> None:
    # Prepare: exactly one agent qualifies among hundreds
    fleet, router = make_fleet(), Router(seed=4)
    fleet.join(AgentRecord("gold", ("H100",), 80, "eu-west", frozenset({"llama-3-8b"}),
                           price_out_per_mtok=0.01, reputation=1.0))  # fmt: skip
    c = Constraints.of("eu", max_price_per_mtok=0.05, min_reputation=0.999)
    # Execute / Assert
    for _ in range(20):
        res = router.route(fleet, "llama-3-8b", c)
        assert isinstance(res, Route) and res.agent_id == "gold"


@pytest.mark.parametrize(
    ("model", "constraints", "reason", "text"),
    [
        ("qwen2.5-72b", None, "model", "no agent serves model 'qwen2.5-72b'"),
        ("mistral-7b", Constraints.of("sa"), "region", "no agent in region sa serves model"),
        ("llama-3-8b", Constraints.of("eu", max_price_per_mtok=0.01), "price", "cheapest"),
        ("llama-3-8b", Constraints.of(None, min_reputation=1.01), "reputation", "best:"),
    ],
)
def test_no_candidate_names_the_constraint_that_emptied_the_pool(
    model: str, constraints: Constraints | None, reason: str, text: str
) -> None:
    res = Router(seed=5).route(make_fleet(), model, constraints)
    assert isinstance(res, NoCandidate)
    assert res.reason == reason
    assert text in res.message
    err = res.to_error()
    assert isinstance(err, NoCapacity) and err.status_code == 503 and err.message == res.message


def test_no_candidate_when_all_serving_agents_are_unhealthy_or_tried() -> None:
    fleet = FleetIndex()
    fleet.join(AgentRecord("a", ("RTX 4090",), 24, "eu-west", frozenset({"m"})))
    fleet.join(AgentRecord("b", ("RTX 4090",), 24, "eu-west", frozenset({"m"})))
    router = Router(seed=6)
    tried = router.route(fleet, "m", exclude={"a", "b"})
    assert isinstance(tried, NoCandidate) and tried.reason == "excluded"
    assert "already tried" in tried.message
    fleet.set_health("a", False)
    fleet.heartbeat("b", 1.0, healthy=False)
    sick = router.route(fleet, "m")
    assert isinstance(sick, NoCandidate) and sick.reason == "unhealthy"
    assert "none is healthy" in sick.message


def test_exclude_skips_failed_agents() -> None:
    fleet, router = make_fleet(30), Router(seed=7)
    failed = {f"a{i}" for i in range(25)}
    for _ in range(200):
        res = router.route(fleet, "llama-3-8b", exclude=failed)
        assert isinstance(res, Route) and res.agent_id not in failed


def test_power_of_two_choices_prefers_less_loaded_agents() -> None:
    # Prepare: two identical agents, one with 10 requests in flight
    fleet = FleetIndex()
    for name in ("busy", "idle"):
        fleet.join(AgentRecord(name, ("RTX 4090",), 24, "eu-west", frozenset({"m"})))
    router = Router(seed=8, price_weight=0.0)
    for _ in range(10):
        router.on_dispatch("busy")
    # Execute
    picks = [router.route(fleet, "m") for _ in range(200)]
    # Assert
    assert all(isinstance(p, Route) and p.agent_id == "idle" for p in picks)


def test_load_spreads_evenly_across_a_large_pool() -> None:
    fleet, router = make_fleet(200), Router(seed=9, price_weight=0.0)
    for _ in range(2000):  # requests that stay in flight
        res = router.route(fleet, "llama-3-8b")
        assert isinstance(res, Route)
        router.on_dispatch(res.agent_id)
    loads = [router.stats(f"a{i}").outstanding for i in range(200)]
    assert max(loads) <= 14  # mean 10; random choice alone gives ~20 on the worst agent


def test_heartbeat_load_counts_when_the_router_has_no_record() -> None:
    fleet = FleetIndex()
    for name in ("a", "b"):
        fleet.join(AgentRecord(name, ("RTX 4090",), 24, "eu-west", frozenset({"m"})))
    fleet.heartbeat("a", 1.0, outstanding=8)
    router = Router(seed=10, price_weight=0.0)
    assert all(router.route(fleet, "m").agent_id == "b" for _ in range(50))  # type: ignore[union-attr]


def test_price_weight_makes_cheaper_agents_win_at_equal_latency() -> None:
    fleet = FleetIndex()
    fleet.join(AgentRecord("cheap", ("RTX 4090",), 24, "eu-west", frozenset({"m"}),
                           price_out_per_mtok=0.1))  # fmt: skip
    fleet.join(AgentRecord("dear", ("RTX 4090",), 24, "eu-west", frozenset({"m"}),
                           price_out_per_mtok=0.4))  # fmt: skip
    router = Router(seed=11, price_weight=0.5)
    # cost ratio dear/cheap = (0.4/0.1)**0.5 = 2: cheap wins until it has 1 more in flight
    assert router.route(fleet, "m").agent_id == "cheap"  # type: ignore[union-attr]
    router.on_dispatch("cheap")
    router.on_dispatch("cheap")
    assert router.route(fleet, "m").agent_id == "dear"  # type: ignore[union-attr]


def test_full_agents_are_used_only_when_all_are_full() -> None:
    fleet = FleetIndex()
    fleet.join(AgentRecord("full", ("RTX 4090",), 24, "eu-west", frozenset({"m"}),
                           max_concurrency=1, outstanding=1))  # fmt: skip
    fleet.join(AgentRecord("slow", ("RTX 4090",), 24, "eu-west", frozenset({"m"})))
    router = Router(seed=12)
    router.on_first_token("slow", 3.0, now=0.0)
    assert all(router.route(fleet, "m").agent_id == "slow" for _ in range(30))  # type: ignore[union-attr]


def test_choose_keeps_working_on_candidate_lists() -> None:
    router = Router(seed=13)
    cands = [Candidate("a"), Candidate("b")]
    for _ in range(5):
        router.on_dispatch("a")
    assert router.choose(cands).agent_id == "b"  # type: ignore[union-attr]
    assert router.choose(cands, exclude=["b"]).agent_id == "a"  # type: ignore[union-attr]
    assert router.choose(cands, exclude=["a", "b"]) is None


def test_a_late_joiner_gets_traffic_on_an_idle_fleet() -> None:
    """An agent with no first token yet is assumed as fast as the fleet's typical one, so it
    wins some pairings and gets measured (a fixed pessimistic default starved it for ever)."""
    fleet, router = FleetIndex(), Router(seed=5)
    for i in range(6):
        fleet.join(AgentRecord(agent_id=f"old{i}", gpus=("RTX 4090",), vram_gb=24, region="eu-west",
                               models=frozenset({"m"}), price_out_per_mtok=0.1))  # fmt: skip
    now = 0.0
    for _ in range(300):  # the old agents are measured, one request at a time (idle fleet)
        pick = router.route(fleet, "m", Constraints())
        assert isinstance(pick, Route)
        router.on_dispatch(pick.agent_id)
        router.on_first_token(pick.agent_id, 0.05, now)
        router.on_end(pick.agent_id, ok=True, now=now)
        now += 0.1
    fleet.join(AgentRecord(agent_id="new", gpus=("RTX 4090",), vram_gb=24, region="eu-west",
                           models=frozenset({"m"}), price_out_per_mtok=0.1))  # fmt: skip
    assert router.unmeasured_ttft_s == pytest.approx(0.05)
    picks = []
    for _ in range(60):
        pick = router.route(fleet, "m", Constraints())
        assert isinstance(pick, Route)
        picks.append(pick.agent_id)
        router.on_dispatch(pick.agent_id)
        router.on_first_token(pick.agent_id, 0.05, now)
        router.on_end(pick.agent_id, ok=True, now=now)
        now += 0.1
    assert "new" in picks  # it was tried, and once measured it competes like the others
