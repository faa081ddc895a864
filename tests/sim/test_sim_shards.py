"""Cell sharding: a partition of the same hosts and requests, close to the unsharded run."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import numpy as np
import pytest

from rigpool.core.errors import BadRequest
from rigpool.sim.config import SimConfig
from rigpool.sim.fleet import partition
from rigpool.sim.inputs import load_trace, scale_arrivals
from rigpool.sim.runner import run_experiment
from rigpool.sim.shards import (
    _pool,
    check_shards,
    prepare_shard,
    prepare_union,
    run_sharded,
    sampled_shards,
)

CFG = SimConfig(
    gpus=3_000,
    duration_s=4.0,
    drain_limit_s=60.0,
    samples=4,
    seed=5,
    policies=("rigpool", "centralized"),
)


def test_shards_partition_the_superposed_stream():
    trace = load_trace("azure-conv")
    full = scale_arrivals(trace, trace.rate * 12.4, 200.0, np.random.default_rng(3))
    parts = [
        scale_arrivals(trace, trace.rate * 12.4, 200.0, np.random.default_rng(3), shard=(4, j))
        for j in range(4)
    ]
    assert sum(len(p) for p in parts) == len(full)
    assert np.allclose(np.sort(full[:, 0]), np.sort(np.concatenate([p[:, 0] for p in parts])))


def test_partition_is_stratified_and_complete():
    pool = _pool(CFG, 1000, 200)
    shards = partition(pool, 4, CFG.seed)
    allm = np.concatenate(shards)
    assert len(allm) == len(pool) and len(np.unique(allm)) == len(pool)
    whole = Counter(zip(pool.hosts, pool.region.tolist(), strict=True))
    for s in shards:
        part = Counter(zip([pool.hosts[i] for i in s], pool.region[s].tolist(), strict=True))
        for key, n in whole.items():
            assert abs(part.get(key, 0) - n / 4) <= 1.0  # every stratum split evenly


def test_union_has_every_shards_requests():
    union = prepare_union(CFG, 3)
    shard_n = [len(prepare_shard(CFG, 3, j)[0].workload) for j in range(3)]
    assert len(union.workload) == sum(shard_n)
    assert np.all(np.diff(union.workload.t) >= 0)


def test_sharded_estimate_is_close_to_the_full_run():
    # Execute: the same hosts and requests, as one fleet and as 3 cells
    full = run_experiment(CFG, prepared=prepare_union(CFG, 3))["policies"]
    sharded = run_sharded(CFG, 3, 3, workers=1)
    # Assert
    assert sharded["sharding"]["extrapolation_factor"] == 1
    for name in CFG.policies:
        a, b = sharded["policies"][name], full[name]
        assert a["requests"] == b["requests"]
        assert a["e2e_s"]["p50"] == pytest.approx(b["e2e_s"]["p50"], rel=0.15)
        assert a["ttft_s"]["p50"] == pytest.approx(b["ttft_s"]["p50"], rel=0.15)
        assert a["gpu_cost_per_mtok_usd"] == pytest.approx(b["gpu_cost_per_mtok_usd"], rel=0.1)
        assert a["utilization_slots_mean"] == pytest.approx(b["utilization_slots_mean"], rel=0.1)


def test_sampled_shards_extrapolate_totals():
    rep = run_sharded(replace(CFG, policies=("rigpool",)), 3, 1, workers=1)
    sh = rep["sharding"]
    assert sh["extrapolation_factor"] == 3 and len(sh["sampled"]) == 1
    m = rep["policies"]["rigpool"]
    assert m["requests"] == pytest.approx(3 * m["sampled_requests"], abs=2)
    assert rep["inputs"]["load"]["requests"] == pytest.approx(3 * sh["sampled_requests"], abs=2)


def test_parallel_workers_give_the_same_figures():
    cfg = replace(CFG, policies=("random",))
    one = run_sharded(cfg, 2, 2, workers=1)["policies"]["random"]
    two = run_sharded(cfg, 2, 2, workers=2)["policies"]["random"]
    assert one["e2e_s"] == two["e2e_s"] and one["events"] == two["events"]


def test_bad_shard_plans_are_refused():
    with pytest.raises(BadRequest):
        check_shards(CFG, 0, 1)
    with pytest.raises(BadRequest):
        check_shards(CFG, 4, 5)
    with pytest.raises(BadRequest, match="superpose"):
        check_shards(replace(CFG, scaling="compress"), 4, 1)
    with pytest.raises(BadRequest, match="copies of the trace"):
        prepare_shard(replace(CFG, gpus=300), 200, 0)
    assert sampled_shards(CFG, 10, 3) == sampled_shards(CFG, 10, 3)
    assert len(set(sampled_shards(CFG, 10, 3))) == 3
