"""`rigpool simulate --quick` writes the whole report folder."""

from __future__ import annotations

import json
import traceback
from pathlib import Path

import typer
from typer.testing import CliRunner

from rigpool.cli.simulate import simulate_command


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command("simulate")(simulate_command)

    @app.command("noop")
    def noop() -> None:  # a second command keeps "simulate" a subcommand
        return None

    return app


def test_quick_run_writes_report_plots_and_summary(tmp_path: Path):
    # Execute
    result = CliRunner().invoke(_app(), ["simulate", "--quick", "--out", str(tmp_path)])
    # Assert
    assert result.exit_code == 0, result.output + "".join(
        traceback.format_exception(*result.exc_info) if result.exc_info else []
    )
    report = json.loads((tmp_path / "report.json").read_text())
    assert set(report["policies"]) == {"random", "round-robin", "least-loaded", "rigpool",
                                       "centralized"}  # fmt: skip
    assert report["config"]["seed"] == 7
    for png in ("latency_cdf.png", "utilization.png", "cost_per_mtok.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"
    assert "Headline" in (tmp_path / "summary.md").read_text()


def test_unknown_policy_exits_2_before_work(tmp_path: Path):
    result = CliRunner().invoke(
        _app(), ["simulate", "--quick", "--policy", "magic", "--out", str(tmp_path)]
    )
    assert result.exit_code == 2
    assert "unknown policy" in result.output
    assert not (tmp_path / "report.json").exists()


def test_sharded_run_writes_a_report_with_its_plan(tmp_path: Path):
    result = CliRunner().invoke(
        _app(),
        ["simulate", "--gpus", "2000", "--duration", "3", "--policy", "rigpool", "--shards",
         "2", "--sample-shards", "1", "--workers", "1", "--out", str(tmp_path)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["sharding"]["shards"] == 2 and len(report["sharding"]["sampled"]) == 1
    assert "Sharded: 2 cells" in (tmp_path / "summary.md").read_text()


def test_bad_shard_plan_exits_2(tmp_path: Path):
    result = CliRunner().invoke(
        _app(), ["simulate", "--quick", "--shards", "3", "--sample-shards", "5",
                 "--out", str(tmp_path)],
    )  # fmt: skip
    assert result.exit_code == 2
    assert "sample-shards" in result.output
