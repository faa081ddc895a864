"""FleetIndex: the incremental indexes always equal a brute-force scan of the records."""

from __future__ import annotations

import random

import pytest

from rigpool.core.errors import BadRequest, NotFound
from rigpool.scheduler.fleet import AgentRecord, FleetIndex, IndexedSet, region_matches

MODELS = ["m1", "m2", "m3", "m4"]
REGIONS = ["eu-west", "eu-central", "us-east", "ap-south"]


def brute_force(fleet: FleetIndex) -> tuple[dict[str, set[str]], dict[tuple[str, str], set[str]]]:
    by_model: dict[str, set[str]] = {}
    by_pair: dict[tuple[str, str], set[str]] = {}
    for r in fleet:
        if not r.healthy:
            continue
        for m in r.models:
            by_model.setdefault(m, set()).add(r.agent_id)
            by_pair.setdefault((m, r.region), set()).add(r.agent_id)
    return by_model, by_pair


def assert_consistent(fleet: FleetIndex) -> None:
    by_model, by_pair = brute_force(fleet)
    for m in MODELS:
        assert set(fleet.serving(m)) == by_model.get(m, set())
        assert dict(fleet.regions_of(m)) == {
            reg: len(ids) for (mm, reg), ids in by_pair.items() if mm == m
        }
        assert fleet.unhealthy_count(m) == sum(1 for r in fleet if not r.healthy and m in r.models)
        for reg in REGIONS:
            assert set(fleet.serving_in(m, reg)) == by_pair.get((m, reg), set())
    assert sorted(fleet.models()) == sorted(by_model)


def random_record(rng: random.Random, i: int) -> AgentRecord:
    return AgentRecord(
        agent_id=f"a{i}",
        gpus=("RTX 4090",),
        vram_gb=24,
        region=rng.choice(REGIONS),
        models=frozenset(rng.sample(MODELS, rng.randint(0, 2))),
        reputation=rng.random(),
        healthy=rng.random() > 0.2,
    )


@pytest.mark.parametrize("seed", range(5))
def test_index_matches_brute_force_under_random_churn(seed: int) -> None:
    # Prepare
    rng = random.Random(seed)
    fleet = FleetIndex()
    # Execute: joins, re-joins, departures, heartbeats, health flips and model changes
    for step in range(3000):
        op = rng.random()
        ids = [r.agent_id for r in fleet]
        if op < 0.35 or not ids:
            fleet.join(random_record(rng, rng.randint(0, 120)))
        elif op < 0.5:
            fleet.leave(rng.choice(ids))
        elif op < 0.8:
            fleet.heartbeat(
                rng.choice(ids), float(step), outstanding=rng.randint(0, 9),
                healthy=rng.random() > 0.2,
            )  # fmt: skip
        elif op < 0.9:
            fleet.set_models(rng.choice(ids), rng.sample(MODELS, rng.randint(0, 3)))
        else:
            fleet.set_health(rng.choice(ids), rng.random() > 0.5)
        if step % 100 == 0:
            assert_consistent(fleet)
    # Assert
    assert_consistent(fleet)


def test_indexed_set_add_discard_choice() -> None:
    s = IndexedSet(["a", "b", "c"])
    s.discard("a")
    s.discard("zz")
    s.add("b")
    assert sorted(s) == ["b", "c"] and len(s) == 2 and "a" not in s
    rng = random.Random(0)
    assert {s.choice(rng) for _ in range(50)} == {"b", "c"}


def test_region_prefix_must_end_at_a_hyphen() -> None:
    assert region_matches("eu-west", ["eu"])
    assert region_matches("eu-west", ["eu-west"])
    assert not region_matches("europa", ["eu"])
    assert not region_matches("us-east", ["eu", "ap"])


def test_heartbeat_for_unknown_agent_is_a_clear_error() -> None:
    with pytest.raises(NotFound, match="join before heartbeating"):
        FleetIndex().heartbeat("ghost", 0.0)


def test_reputation_outside_unit_interval_is_refused() -> None:
    with pytest.raises(BadRequest, match="reputation"):
        FleetIndex().join(AgentRecord("a", ("RTX 4090",), 24, "eu-west", reputation=1.5))


def test_expired_lists_agents_not_heard_from() -> None:
    fleet = FleetIndex()
    fleet.join(AgentRecord("old", ("RTX 4090",), 24, "eu-west", last_seen=0.0))
    fleet.join(AgentRecord("new", ("RTX 4090",), 24, "eu-west", last_seen=0.0))
    fleet.heartbeat("new", 50.0)
    assert fleet.expired(now=60.0, timeout_s=30.0) == ["old"]
