import json
from pathlib import Path

import typer
from typer.testing import CliRunner

from rigpool.cli.fit import fit_command


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command("fit")(fit_command)

    @app.callback()
    def main() -> None:
        """Test app."""

    return app


runner = CliRunner()


def test_fit_lists_cards_for_a_small_model() -> None:
    result = runner.invoke(_app(), ["fit", "llama-3.1-8b"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "RTX 4090" in result.output and "$/M out tok" in result.output


def test_fit_json_is_machine_readable() -> None:
    result = runner.invoke(_app(), ["fit", "mistral-7b", "--json", "--quant", "q4_k_m"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["model"] == "mistral-7b"
    assert data["single_gpu"] and all(o["quant"] == "q4_k_m" for o in data["single_gpu"])
    assert data["multi_gpu_plan"] is None


def test_fit_falls_back_to_a_multi_card_plan() -> None:
    result = runner.invoke(_app(), ["fit", "llama-3.1-70b", "--quant", "fp16", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["single_gpu"] == [] or data["single_gpu"][0]["gpu"] == "B200"
    if not data["single_gpu"]:
        assert data["multi_gpu_plan"]["n_gpus"] >= 2
        assert "needs" in data["no_single_gpu_reason"]


def test_fit_explains_when_nothing_fits_alone() -> None:
    result = runner.invoke(
        _app(),
        ["fit", "qwen2.5-72b", "--quant", "fp32", "--context", "32768"],
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == 0, result.output
    assert "No single card" in result.output and "needs" in result.output
    assert "Cheapest plan" in result.output


def test_fit_reads_a_config_folder(tmp_path: Path) -> None:
    config = {
        "model_type": "llama",
        "hidden_size": 2048,
        "intermediate_size": 5632,
        "num_attention_heads": 32,
        "num_hidden_layers": 22,
        "num_key_value_heads": 4,
        "vocab_size": 32000,
        "max_position_embeddings": 2048,
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    result = runner.invoke(_app(), ["fit", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["single_gpu"]


def test_fit_bad_names_exit_2_with_suggestions() -> None:
    result = runner.invoke(_app(), ["fit", "lama-3.1-8b"])
    assert result.exit_code == 2
    assert "llama-3.1-8b" in result.output
    result = runner.invoke(_app(), ["fit", "llama-3.1-8b", "--quant", "q9"])
    assert result.exit_code == 2 and "known" in result.output
