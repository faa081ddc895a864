"""The simulator: deterministic, fair to every policy, honest about every request."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from rigpool.core.errors import BadRequest, NotFound
from rigpool.sim.config import SimConfig
from rigpool.sim.engine import FAILED, OK, R_UNFINISHED
from rigpool.sim.inputs import load_trace, read_trace_csv, scale_arrivals
from rigpool.sim.runner import prepare, run_experiment, run_one

TINY = SimConfig(gpus=150, duration_s=20.0, drain_limit_s=200.0, samples=10, seed=11)


@pytest.fixture(scope="module")
def tiny_report():
    return run_experiment(TINY)


def test_same_seed_same_figures(tiny_report):
    # Execute
    again = run_experiment(TINY)
    # Assert
    for name in TINY.policies:
        a, b = tiny_report["_results"][name], again["_results"][name]
        assert np.array_equal(a.status, b.status)
        assert np.allclose(a.ttft, b.ttft, equal_nan=True)
        assert np.allclose(a.e2e, b.e2e, equal_nan=True)
        assert tiny_report["policies"][name]["events"] == again["policies"][name]["events"]


def test_other_seed_other_run():
    a = prepare(TINY)
    b = prepare(replace(TINY, seed=12))
    assert len(a.workload) != len(b.workload) or not np.array_equal(a.workload.t, b.workload.t)


def test_policies_see_identical_inputs():
    # Prepare: the same seed with different policy lists
    one = prepare(replace(TINY, policies=("random",)))
    all_ = prepare(TINY)
    # Assert: the same requests, users, draws and the same decentralized fleet and churn
    for field in ("t", "prompt", "output", "user_region", "access_rtt_s", "straggle_u",
                  "straggle_x", "jitter"):  # fmt: skip
        assert np.array_equal(getattr(one.workload, field), getattr(all_.workload, field))
    assert one.fleet.agent_ids == all_.fleet.agent_ids
    assert np.array_equal(one.fleet.events_t, all_.fleet.events_t)
    # and running a policy does not change them
    before = all_.workload.t.copy()
    run_one(all_, "rigpool")
    assert np.array_equal(before, all_.workload.t)


def test_centralized_cluster_is_sized_for_the_load():
    prep = prepare(TINY)
    assert prep.central is not None
    cap = prep.central.info["capacity_rps_per_gpu_at_util_1"] * TINY.placement_utilization
    n = prep.central.info["gpus"]
    target = prep.sizing.target_rps
    assert n * cap >= target  # carries the load at the placement utilization
    assert (n - 1) * cap < target  # and not a replica more


def test_every_request_ends_completed_or_failed_with_reason():
    # Prepare: heavy churn and frequent crashes so that failures happen
    cfg = replace(TINY, session_median_h=0.02, offline_median_h=0.01, crash_mtbf_h=0.05,
                  graceful_share=0.3, dc_session_median_h=0.05, drain_limit_s=120.0)  # fmt: skip
    # Execute
    report = run_experiment(cfg)
    # Assert
    for name, res in report["_results"].items():
        assert set(np.unique(res.status)) <= {OK, FAILED}, name
        assert np.all((res.reason == 0) == (res.status == OK)), name
        m = report["policies"][name]
        assert m["completed"] + m["failed"] == m["requests"]
        assert sum(m["failed_by_reason"].values()) == m["failed"]
        done = res.status == OK
        assert np.all(np.isfinite(res.ttft[done])) and np.all(res.e2e[done] >= res.ttft[done])
    naive = report["policies"]["random"]
    rig = report["policies"]["rigpool"]
    assert naive["retries"] > 0 or naive["failed"] > 0  # the churn was felt
    assert rig["failed_by_reason"]["agent_lost_mid_stream"] == 0  # rigpool fails over instead
    assert rig["failovers"] >= 0


def test_unfinished_requests_are_reported_not_dropped():
    cfg = replace(TINY, load=1.0, drain_limit_s=1.0, policies=("random",))
    res = run_experiment(cfg)["_results"]["random"]
    assert np.all(res.status != 2)
    assert (res.reason == R_UNFINISHED).sum() > 0


def test_superposed_trace_reaches_the_target_rate():
    trace = load_trace("azure-conv")
    rng = np.random.default_rng(0)
    arr = scale_arrivals(trace, trace.rate * 40, 300.0, rng)
    assert len(arr) / 300.0 == pytest.approx(trace.rate * 40, rel=0.1)
    assert arr[:, 0].min() >= 0 and arr[:, 0].max() < 300.0


def test_compressed_trace_runs_faster_by_the_factor():
    trace = load_trace("azure-conv")
    rng = np.random.default_rng(0)
    arr = scale_arrivals(trace, trace.rate * 10, 60.0, rng, scaling="compress")
    times = np.sort(arr[:, 0])
    first = trace.t[trace.t < 600.0]  # the first 10 minutes, compressed to 60 s
    assert len(times) == len(first)
    assert np.allclose(times, first / 10.0)
    # token counts come from the same rows
    assert np.array_equal(trace.output[arr[np.argsort(arr[:, 0]), 1].astype(int)],
                          trace.output[: len(first)])  # fmt: skip


def test_fractional_rates_thin_one_copy():
    trace = load_trace("azure-code")
    arr = scale_arrivals(trace, trace.rate * 2.5, trace.span_s, np.random.default_rng(1))
    assert len(arr) / len(trace.t) == pytest.approx(2.5, rel=0.05)


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [({"trace": "nope"}, "trace"), ({"policies": ("random", "magic")}, "policy"),
     ({"load": 0.0}, "load")],
)  # fmt: skip
def test_bad_config_is_refused_before_work(kwargs, param):
    with pytest.raises(BadRequest) as err:
        SimConfig(**kwargs)
    assert err.value.param == param


def test_fleet_too_small_for_the_model_is_a_clear_error():
    with pytest.raises(BadRequest, match="can hold model"):
        prepare(SimConfig(gpus=1, model="llama-3-70b", consumer_share=1.0))


def test_unknown_model_is_not_found():
    with pytest.raises(NotFound):
        prepare(SimConfig(gpus=20, model="llama-9-1t"))


def test_malformed_trace_file_names_the_line(tmp_path: Path):
    bad = tmp_path / "t.csv"
    bad.write_text("t_s,prompt_tokens,output_tokens\n0.0,10,5\n1.0,abc,5\n")
    with pytest.raises(BadRequest, match="line 3"):
        read_trace_csv(bad)
    bad.write_text("time,prompt\n0,1\n")
    with pytest.raises(BadRequest, match="expected columns"):
        read_trace_csv(bad)


def test_report_has_headline_ratios(tiny_report):
    head = tiny_report["headline"]
    assert set(head) == {"random", "round-robin", "least-loaded", "rigpool"}
    for row in head.values():
        assert row["ttft_p99_ratio"] > 0 and math.isfinite(row["cost_ratio_client_price"])
    assert tiny_report["policies"]["centralized"]["completed"] > 0
