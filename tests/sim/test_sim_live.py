"""The simulator against the live tail benchmark (bench/results/tail.json, not rerun)."""

from __future__ import annotations

from pathlib import Path

from rigpool.sim.live import CONFIGS, compare

TAIL = Path(__file__).resolve().parents[2] / "bench" / "results" / "tail.json"

#: Tolerance, stated: with one per-request overhead fitted on "ideal" (the live HTTP /
#: coordinator / WebSocket time the simulator does not model), every configuration's p50 within
#: 40 % of the live p50 and p99 within 70 %. The raw simulator is faster than live everywhere.
P50_TOL, P99_TOL = 0.40, 0.70


def test_simulated_tail_bench_is_close_to_the_live_one():
    # Execute
    res = compare(TAIL, requests=1_500)
    rows = res["configs"]
    # Assert
    assert set(rows) == set(CONFIGS)
    assert 0 < res["live_overhead_ms_fitted_on_ideal_p50"] < 400
    for name, r in rows.items():
        assert r["sim_p50_ms"] < r["live_p50_ms"], name  # no live overheads in the simulator
        assert abs(r["p50_error_plus_overhead"]) <= P50_TOL, (name, r)
        assert abs(r["p99_error_plus_overhead"]) <= P99_TOL, (name, r)
    # stragglers hurt the naive policies' tails, hedging cuts them, as live
    assert rows["round-robin"]["sim_p99_ms"] > 2 * rows["ideal"]["sim_p99_ms"]
    assert rows["rigpool+hedge"]["sim_p99_ms"] < rows["round-robin"]["sim_p99_ms"]
