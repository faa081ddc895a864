from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import jinja2
import pytest
from tokenizers import Tokenizer

from rigpool.devnet import toymodel
from rigpool.devnet.toymodel import (
    BOS_TOKEN,
    EOS_TOKEN,
    MARKER_FILE,
    TOY_MODEL_NAME,
    build_toy_model,
    ensure_toy_model,
    is_complete,
)


def _hashes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_corpus_is_bundled_and_sizeable() -> None:
    assert len(toymodel.corpus_text().encode()) > 25_000


def test_build_is_deterministic(toy_model_dir: Path, tmp_path: Path) -> None:
    again = build_toy_model(tmp_path / "again" / TOY_MODEL_NAME, seed=0)
    first, second = _hashes(toy_model_dir), _hashes(again)
    assert first == second
    for name in ("model.safetensors", "tokenizer.json", "config.json", "tokenizer_config.json"):
        assert name in first
    other = build_toy_model(tmp_path / "other", seed=1)
    assert _hashes(other)["model.safetensors"] != first["model.safetensors"]
    assert _hashes(other)["tokenizer.json"] == first["tokenizer.json"]


def test_config_names_the_model_untrained(toy_model_dir: Path) -> None:
    config = json.loads((toy_model_dir / "config.json").read_text())
    assert config["_name_or_path"] == TOY_MODEL_NAME
    assert config["max_position_embeddings"] == 2048
    assert config["vocab_size"] == 1024
    assert is_complete(toy_model_dir)


def test_loads_with_transformers(toy_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(toy_model_dir), local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(str(toy_model_dir), local_files_only=True)
    assert model.config.model_type == "llama"
    assert len(tokenizer) == model.config.vocab_size
    assert tokenizer.eos_token == EOS_TOKEN
    assert tokenizer.bos_token == BOS_TOKEN
    assert tokenizer.pad_token_id is not None
    messages = [{"role": "user", "content": "hi"}]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered == "<|bos|><|user|>\nhi<|eos|>\n<|assistant|>\n"


@pytest.mark.parametrize(
    "text",
    [
        "The keeper climbed the tower.",
        "  leading spaces, trailing\ttabs\t and\nnewlines\n",
        "Zürich, São Paulo, naïve façade: 你好, こんにちは, привет, καλημέρα, 🙂🚀 €5",
        "<|bos|> literal special token text",
    ],
)
def test_tokenizer_json_alone_round_trips(toy_model_dir: Path, text: str) -> None:
    tokenizer = Tokenizer.from_file(str(toy_model_dir / "tokenizer.json"))
    encoding = tokenizer.encode(text)
    assert tokenizer.decode(encoding.ids, skip_special_tokens=False) == text
    assert tokenizer.get_vocab_size() == 1024


def test_tokenizer_adds_no_bos_and_compresses_english(toy_model_dir: Path) -> None:
    tokenizer = Tokenizer.from_file(str(toy_model_dir / "tokenizer.json"))
    bos = tokenizer.token_to_id(BOS_TOKEN)
    text = "The keeper climbed the tower and lit the lamp."
    ids = tokenizer.encode(text).ids
    assert bos not in ids
    assert len(ids) < len(text) / 2.5  # real merges, not one token per byte
    assert tokenizer.token_to_id("<|assistant|>") is not None


def test_chat_template_renders_with_plain_jinja(toy_model_dir: Path) -> None:
    config = json.loads((toy_model_dir / "tokenizer_config.json").read_text())
    template = jinja2.Environment().from_string(config["chat_template"])
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello?"},
        {"role": "assistant", "content": "Hi."},
        {"role": "user", "content": "Bye."},
    ]
    rendered = template.render(
        messages=messages,
        add_generation_prompt=True,
        bos_token=config["bos_token"],
        eos_token=config["eos_token"],
    )
    assert rendered == (
        "<|bos|><|system|>\nBe brief.<|eos|>\n<|user|>\nHello?<|eos|>\n"
        "<|assistant|>\nHi.<|eos|>\n<|user|>\nBye.<|eos|>\n<|assistant|>\n"
    )
    no_prompt = template.render(
        messages=messages[:1], add_generation_prompt=False, bos_token="<|bos|>", eos_token="E"
    )
    assert no_prompt == "<|bos|><|system|>\nBe brief.E\n"
    # role markers and bos/eos are single tokens for tokenizer.json users (the gateway)
    tokenizer = Tokenizer.from_file(str(toy_model_dir / "tokenizer.json"))
    ids = tokenizer.encode(rendered).ids
    assert ids[0] == tokenizer.token_to_id(BOS_TOKEN)
    assert ids[1] == tokenizer.token_to_id("<|system|>")


def test_ensure_toy_model_caches_and_reuses(tmp_path: Path) -> None:
    path = ensure_toy_model(tmp_path)
    assert path == tmp_path / "models" / TOY_MODEL_NAME
    assert (path / MARKER_FILE).exists()
    marker_mtime = (path / MARKER_FILE).stat().st_mtime_ns
    assert ensure_toy_model(tmp_path) == path
    assert (path / MARKER_FILE).stat().st_mtime_ns == marker_mtime  # reused, not rebuilt
    leftovers = [p.name for p in (tmp_path / "models").iterdir() if p.name != TOY_MODEL_NAME]
    assert leftovers == []


def test_ensure_toy_model_env_override_and_incomplete_rebuild(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RIGPOOL_CACHE", str(tmp_path))
    broken = tmp_path / "models" / TOY_MODEL_NAME
    broken.mkdir(parents=True)
    (broken / "config.json").write_text("{half a build")
    path = ensure_toy_model()
    assert path == broken
    assert is_complete(path)
    assert json.loads((path / "config.json").read_text())["_name_or_path"] == TOY_MODEL_NAME


def test_ensure_toy_model_concurrent_callers(tmp_path: Path, toy_model_dir: Path) -> None:
    results: list[Path] = []
    errors: list[BaseException] = []

    def call() -> None:
        try:
            results.append(ensure_toy_model(tmp_path))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(set(results)) == 1
    assert is_complete(results[0])
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == [TOY_MODEL_NAME]
    assert _hashes(results[0]) == _hashes(toy_model_dir)
