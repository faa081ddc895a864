"""The chaos suite's short form (`make chaos` runs the full size): faults under load, then checks.

100 emulated agents in four swarm processes plus three rogue agents serve a few hundred streamed
completions while one swarm is SIGKILLed, one is SIGSTOPped and resumed, one straggles, the
rogues corrupt their streams, and the coordinator is SIGKILLed and started again on the same port
and database. See `rigpool.devnet.chaos` for what is checked afterwards.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest

from rigpool.devnet.chaos import ChaosSpec, run_chaos

SHORT = ChaosSpec(
    agents=100, swarms=4, rogues=3, streams=300, concurrency=100, max_tokens=16, time_scale=8.0
)


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_chaos_short_form_loses_nothing_and_charges_once(tmp_path: Path) -> None:
    # Execute
    report = run_chaos(SHORT, tmp_path / "chaos.json", verbose=False)

    # Assert: every fault was injected ...
    assert report.agent_kills == 1 and report.agents_killed == 25
    assert report.suspensions == 1 and report.agents_suspended == 25
    assert report.slowed_agents > 0 and report.rogue_agents == 3
    assert report.coordinator_restarts == 1
    # ... and every request ended, cleanly accounted for.
    assert report.completed + report.failed_with_error == SHORT.streams
    assert report.lost == 0 and report.hung == 0
    assert report.duplicates == 0 and report.missing_tokens == 0 and report.corrupted == 0
    assert report.double_charges == 0 and report.charged_failures == 0
    assert report.problems == [], asdict(report)
    written = json.loads((tmp_path / "chaos.json").read_text())
    assert written["metrics"]["lost"] == 0 and all(written["goals"].values())
