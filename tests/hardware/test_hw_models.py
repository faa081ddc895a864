import json
from pathlib import Path

import pytest

from rigpool.core.errors import BadRequest, NotFound
from rigpool.hardware.models import (
    arch_from_hf_config,
    estimate_params,
    find_model,
    load_model_arch,
    model_catalog,
)

LLAMA31_8B_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "max_position_embeddings": 131072,
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 8,
    "tie_word_embeddings": False,
    "vocab_size": 128256,
    "torch_dtype": "bfloat16",
}
MIXTRAL_CONFIG = {
    "model_type": "mixtral",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "max_position_embeddings": 32768,
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 8,
    "num_local_experts": 8,
    "num_experts_per_tok": 2,
    "vocab_size": 32000,
}
GEMMA2_9B_CONFIG = {
    "model_type": "gemma2",
    "head_dim": 256,
    "hidden_size": 3584,
    "intermediate_size": 14336,
    "max_position_embeddings": 8192,
    "num_attention_heads": 16,
    "num_hidden_layers": 42,
    "num_key_value_heads": 8,
    "vocab_size": 256000,
    "tie_word_embeddings": True,
}


def test_catalog_has_required_models() -> None:
    for name in [
        "llama-2-7b",
        "llama-2-13b",
        "llama-2-70b",
        "llama-3.1-8b",
        "llama-3.1-70b",
        "mistral-7b",
        "mixtral-8x7b",
        "qwen2.5-7b",
        "qwen2.5-14b",
        "qwen2.5-32b",
        "qwen2.5-72b",
        "phi-3-mini",
        "phi-3-medium",
        "gemma-2-9b",
        "gemma-2-27b",
    ]:
        assert name in model_catalog()


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("Meta-Llama-3-8B-Instruct", "llama-3-8b"),
        ("mixtral", "mixtral-8x7b"),
        ("meta-llama/Llama-3.1-8B", "llama-3.1-8b"),
        ("LLAMA2-7B", "llama-2-7b"),
    ],
)
def test_find_model_aliases(query: str, expected: str) -> None:
    assert find_model(query).name == expected


def test_find_model_unknown_lists_close_matches() -> None:
    with pytest.raises(NotFound) as info:
        find_model("llama-3.1-9b")
    assert "llama-3.1-8b" in info.value.message


@pytest.mark.parametrize("model", list(model_catalog().values()), ids=lambda m: m.name)
def test_shape_estimate_reproduces_published_param_counts(model) -> None:  # type: ignore[no-untyped-def]
    # Catalog counts are the safetensors totals shown on each Hugging Face model page.
    total, active = estimate_params(
        n_layers=model.n_layers,
        hidden_size=model.hidden_size,
        n_heads=model.n_heads,
        n_kv_heads=model.n_kv_heads,
        head_dim=model.head_dim,
        vocab_size=model.vocab_size,
        intermediate_size=model.intermediate_size,
        n_experts=model.n_experts,
        experts_per_token=model.experts_per_token,
        tie_word_embeddings=model.name.startswith("gemma"),
        attention_bias=model.name.startswith("qwen"),
    )
    assert total == pytest.approx(model.n_params, rel=0.01)
    assert active == pytest.approx(model.n_active_params, rel=0.01)


def test_arch_from_hf_config_llama() -> None:
    arch = arch_from_hf_config(LLAMA31_8B_CONFIG, "my-llama")
    assert (arch.n_layers, arch.n_kv_heads, arch.head_dim) == (32, 8, 128)
    assert arch.n_params == pytest.approx(8.03e9, rel=0.01)
    assert arch.max_context == 131072


def test_arch_from_hf_config_moe_and_gemma() -> None:
    moe = arch_from_hf_config(MIXTRAL_CONFIG, "mixtral")
    assert moe.n_params == pytest.approx(46.7e9, rel=0.01)
    assert moe.n_active_params == pytest.approx(12.9e9, rel=0.01)
    gemma = arch_from_hf_config(GEMMA2_9B_CONFIG, "gemma")
    assert gemma.head_dim == 256 and gemma.n_params == pytest.approx(9.24e9, rel=0.01)


def test_arch_from_hf_config_names_missing_fields() -> None:
    broken = {k: v for k, v in LLAMA31_8B_CONFIG.items() if k not in ("hidden_size", "vocab_size")}
    with pytest.raises(BadRequest) as info:
        arch_from_hf_config(broken, "broken")
    assert "hidden_size" in info.value.message and "vocab_size" in info.value.message


def test_arch_from_hf_config_rejects_bad_values() -> None:
    with pytest.raises(BadRequest, match="num_hidden_layers"):
        arch_from_hf_config({**LLAMA31_8B_CONFIG, "num_hidden_layers": "32"}, "bad")


def test_load_model_arch_from_folder(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(LLAMA31_8B_CONFIG))
    assert load_model_arch(str(tmp_path)).n_layers == 32
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(BadRequest):
        load_model_arch(str(tmp_path))
