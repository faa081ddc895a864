"""Placement: demand met when possible, pipelines for big models, greedy close to the MILP."""

from __future__ import annotations

import statistics

import pytest

from rigpool.core.errors import BadRequest, NotFound
from rigpool.scheduler.placement import (
    Host,
    ModelDemand,
    RttMatrix,
    compare,
    evaluate,
    place_exact,
    place_greedy,
    random_small_instance,
)


def test_greedy_meets_demand_when_the_fleet_can() -> None:
    # Prepare: 40 consumer cards, two small models
    hosts = [Host(f"h{i}", ("RTX 3090", "RTX 4090", "RTX 3060")[i % 3]) for i in range(40)]
    demands = [ModelDemand("llama-3-8b", 8.0), ModelDemand("mistral-7b", 4.0)]
    # Execute
    placement = place_greedy(hosts, demands)
    # Assert
    assert placement.score.unmet_rps == 0.0 and placement.unmet_rps == {}
    served = {m: sum(r.capacity_rps for r in rs) for m, rs in placement.by_model().items()}
    assert served["llama-3-8b"] >= 8.0 and served["mistral-7b"] >= 4.0
    agents = [a for r in placement.replicas for a in r.agents]
    assert len(agents) == len(set(agents))  # one replica per host


def test_fastest_cards_serve_first() -> None:
    hosts = [Host("slow", "RTX 3060"), Host("fast", "RTX 4090")]
    placement = place_greedy(hosts, [ModelDemand("llama-3-8b", 0.1)])
    assert [r.agents for r in placement.replicas] == [("fast",)]


def test_70b_is_pipelined_over_24gb_cards() -> None:
    # Prepare: no card holds Llama 3 70B alone
    hosts = [Host(f"h{i}", "RTX 3090", region="eu-west") for i in range(6)]
    # Execute
    placement = place_greedy(hosts, [ModelDemand("llama-3-70b", 0.1, context=2048)])
    # Assert: one chain covering all 80 layers, contiguous, over 2-3 cards at q4_k_m
    (rep,) = placement.replicas
    assert rep.kind == "pipeline" and rep.quant == "q4_k_m"
    assert 2 <= len(rep.spans) <= 3
    assert rep.spans[0].first_layer == 0 and rep.spans[-1].end_layer == 80
    for a, b in zip(rep.spans, rep.spans[1:], strict=False):
        assert a.end_layer == b.first_layer
    hops = len(rep.spans) - 1
    assert rep.tpot_s > hops * 0.020  # each hop pays a round trip per token


def test_pipelines_stay_in_one_region_when_they_can() -> None:
    hosts = [Host(f"e{i}", "RTX 4090", region="eu-west") for i in range(3)] + [
        Host(f"u{i}", "RTX 4090", region="us-east") for i in range(1)
    ]
    rtt = RttMatrix({("eu-west", "us-east"): 0.090})
    placement = place_greedy(hosts, [ModelDemand("llama-3-70b", 0.05, context=2048)], rtt)
    (rep,) = placement.replicas
    assert {s.region for s in rep.spans} == {"eu-west"}


def test_unmet_demand_is_reported_not_hidden() -> None:
    placement = place_greedy([Host("h", "RTX 3060")], [ModelDemand("llama-3-8b", 50.0)])
    assert placement.unmet_rps["llama-3-8b"] > 45.0
    assert placement.score.unmet_rps == pytest.approx(placement.unmet_rps["llama-3-8b"])


def test_greedy_is_close_to_the_milp_optimum_on_small_instances() -> None:
    unmet_gaps, latency_gaps = [], []
    for seed in range(12):
        hosts, demands, rtt = random_small_instance(seed)
        greedy = place_greedy(hosts, demands, rtt, max_spans=3)
        exact = place_exact(hosts, demands, rtt, max_spans=3)
        # The MILP is a true optimum: the greedy can never beat it on the first objective.
        assert exact.score.unmet_rps <= greedy.score.unmet_rps + 1e-6
        gap = compare(greedy.score, exact.score)
        unmet_gaps.append(gap.unmet_rps / sum(d.requests_per_s for d in demands))
        if gap.latency is not None:
            assert gap.latency >= -1e-6
            latency_gaps.append(gap.latency)
    assert max(unmet_gaps) <= 0.05
    assert statistics.fmean(unmet_gaps) <= 0.01
    assert statistics.fmean(latency_gaps) <= 0.03


def test_exact_and_evaluate_agree() -> None:
    hosts, demands, rtt = random_small_instance(3)
    exact = place_exact(hosts, demands, rtt, max_spans=3)
    assert evaluate(demands, exact.replicas) == exact.score


def test_unknown_model_and_gpu_are_clear_errors() -> None:
    with pytest.raises(NotFound, match="did you mean"):
        place_greedy([Host("h", "RTX 4090")], [ModelDemand("llama-3-8c", 1.0)])
    with pytest.raises(NotFound, match="unknown GPU 'RTX 4099'"):
        place_greedy([Host("h", "RTX 4099")], [ModelDemand("llama-3-8b", 1.0)])


def test_bad_demand_is_refused() -> None:
    with pytest.raises(BadRequest, match="exceeds its maximum"):
        place_greedy([Host("h", "RTX 4090")], [ModelDemand("llama-2-7b", 1.0, context=100_000)])
    with pytest.raises(BadRequest, match="once"):
        place_greedy([], [ModelDemand("llama-3-8b", 1.0), ModelDemand("llama-3-8b", 2.0)])
    with pytest.raises(BadRequest, match="listed twice"):
        place_greedy([Host("h", "RTX 4090"), Host("h", "RTX 3090")], [])


def test_host_from_mixed_gpus_counts_its_smallest_card() -> None:
    host = Host.from_gpus("h", ["RTX 4090", "RTX 3060"], "eu-west")
    assert (host.gpu, host.n_gpus) == ("RTX 3060 12GB", 2)
