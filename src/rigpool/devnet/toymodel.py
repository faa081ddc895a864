"""A tiny, untrained, but *real* Hugging Face model that is built locally instead of downloaded.

Why it exists: the agent's `transformers` backend, the gateway's token counting and chat
templating, and the whole devnet all need a real model folder (config, safetensors weights,
tokenizer.json, chat template) to be exercised honestly, but tests and laptops must not download
gigabytes or reach the network. So we build one from scratch, in a fraction of a second once
torch and transformers are imported:

* a byte-level BPE tokenizer (~1024 pieces) trained with the `tokenizers` library on a bundled
  original English text (`corpus.txt`), so token counts behave like a real tokenizer's;
* a 2-layer Llama with random weights (seeded), so the tensors, KV cache and sampling code paths are
  the real ones. Its output is gibberish by design, hence the unmistakable name
  ``rigpool-toy-untrained``.

The build is deterministic: the same seed gives byte-identical files (with the same torch,
transformers and tokenizers versions; config.json records the transformers version), so a hash of
the folder can identify "the same model" on every machine of a devnet.

Consumers that avoid transformers (the gateway) read only ``tokenizer.json`` with `tokenizers` and
``chat_template`` from ``tokenizer_config.json`` with plain jinja2; both are written with that in
mind (ByteLevel pre-tokenizer + decoder, no automatic BOS, template uses only standard Jinja).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import threading
from importlib import resources
from pathlib import Path
from typing import Any

#: folder name and `_name_or_path` of the toy model; chosen so nobody mistakes it for a real LLM
TOY_MODEL_NAME = "rigpool-toy-untrained"
#: bumped whenever the build recipe changes, so stale caches are rebuilt
TOY_FORMAT_VERSION = 1
#: written last by `build_toy_model`; its presence (with the right version) means "complete"
MARKER_FILE = "rigpool-toy.json"

_RNG_LOCK = threading.Lock()

BOS_TOKEN = "<|bos|>"
EOS_TOKEN = "<|eos|>"
PAD_TOKEN = "<|pad|>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
SPECIAL_TOKENS = (BOS_TOKEN, EOS_TOKEN, PAD_TOKEN, *ROLE_TOKENS)

VOCAB_SIZE = 1024
CONTEXT_LENGTH = 2048

#: Plain Jinja only (no HF extensions such as `raise_exception`), so the gateway can render it with
#: jinja2 directly. Every turn ends with the EOS token, so a model that learned this format would
#: stop after its answer; the generation prompt opens an assistant turn.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}{{ eos_token }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def corpus_text() -> str:
    """The bundled training text for the tokenizer (original prose, see the file's header)."""
    return resources.files("rigpool.devnet").joinpath("corpus.txt").read_text(encoding="utf-8")


def _train_tokenizer() -> Any:
    """Train the byte-level BPE tokenizer on the bundled corpus (deterministic)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    # ByteLevel on both ends: every byte is a base piece, so any text (any language, emoji)
    # encodes and decodes losslessly with tokenizer.json alone.
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus_text().splitlines(), trainer=trainer)
    return tokenizer


def _save_tokenizer(tokenizer: Any, path: Path) -> int:
    """Wrap as a transformers fast tokenizer, save it, and return the vocabulary size."""
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        chat_template=CHAT_TEMPLATE,
        model_max_length=CONTEXT_LENGTH,
    )
    fast.save_pretrained(str(path))
    # Recent transformers moves the template to chat_template.jinja; the gateway reads it from
    # tokenizer_config.json, so keep it there too (identical text, so both readers agree).
    # "PreTrainedTokenizerFast" is the class name every transformers version understands.
    config_path = path / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["chat_template"] = CHAT_TEMPLATE
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config["model_max_length"] = CONTEXT_LENGTH
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return len(fast)


def _save_model(path: Path, *, vocab_size: int, token_ids: dict[str, int], seed: int) -> None:
    """Create the tiny Llama with seeded random weights and save it as safetensors."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=CONTEXT_LENGTH,
        tie_word_embeddings=True,
        bos_token_id=token_ids[BOS_TOKEN],
        eos_token_id=token_ids[EOS_TOKEN],
        pad_token_id=token_ids[PAD_TOKEN],
    )
    config._name_or_path = TOY_MODEL_NAME
    # fork_rng: seed a private copy of the CPU RNG so building never disturbs the caller's RNG.
    # The RNG is process-global, so concurrent builds (threads) must take turns or their random
    # draws would interleave and the weights would no longer depend on the seed alone.
    with _RNG_LOCK, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.eval()
    model.save_pretrained(str(path), safe_serialization=True)
    # Not every transformers version writes `_name_or_path`; make sure the name travels.
    config_path = path / "config.json"
    saved = json.loads(config_path.read_text(encoding="utf-8"))
    saved["_name_or_path"] = TOY_MODEL_NAME
    config_path.write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _marker_content(seed: int) -> str:
    return json.dumps({"name": TOY_MODEL_NAME, "format": TOY_FORMAT_VERSION, "seed": seed}) + "\n"


def build_toy_model(path: Path, seed: int = 0) -> Path:
    """Build the toy model into folder `path` (created if needed) and return `path`.

    Name the folder `TOY_MODEL_NAME` if the folder name matters to you (backends serve a model under
    its folder name by default). The same `seed` gives byte-identical files. The marker file is
    written last, so a folder without it is an interrupted build.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / MARKER_FILE).unlink(missing_ok=True)
    tokenizer = _train_tokenizer()
    from rigpool.agent.backends.transformers_backend import quiet_progress

    with quiet_progress():
        vocab_size = _save_tokenizer(tokenizer, path)
        token_ids = {tok: tokenizer.token_to_id(tok) for tok in (BOS_TOKEN, EOS_TOKEN, PAD_TOKEN)}
        _save_model(path, vocab_size=vocab_size, token_ids=token_ids, seed=seed)
    (path / MARKER_FILE).write_text(_marker_content(seed), encoding="utf-8")
    return path


def is_complete(path: Path, seed: int = 0) -> bool:
    """Whether `path` holds a finished build of the current recipe with this seed."""
    try:
        return (Path(path) / MARKER_FILE).read_text(encoding="utf-8") == _marker_content(seed)
    except OSError:
        return False


def default_cache_root() -> Path:
    """The rigpool cache root: ``$RIGPOOL_CACHE`` or ``~/.cache/rigpool``."""
    env = os.environ.get("RIGPOOL_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "rigpool"


def ensure_toy_model(cache_dir: Path | None = None) -> Path:
    """Return the cached toy model folder, building it once if it is missing or incomplete.

    `cache_dir` is the rigpool cache root (default `default_cache_root()`); the model lives in
    ``<cache_dir>/models/rigpool-toy-untrained``. The build goes into a temporary sibling folder
    that is renamed into place only when complete, so concurrent callers (several agents of a
    devnet starting at once) never see half a folder; a loser of the race uses the winner's build.
    """
    root = Path(cache_dir) if cache_dir is not None else default_cache_root()
    models_dir = root / "models"
    final = models_dir / TOY_MODEL_NAME
    if is_complete(final):
        return final
    models_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{TOY_MODEL_NAME}.", dir=models_dir))
    try:
        build_toy_model(tmp)
        if is_complete(final):  # someone else finished while we were building
            return final
        if final.exists():  # a stale or interrupted build: move it aside, then take its place
            stale = Path(tempfile.mkdtemp(prefix=f".{TOY_MODEL_NAME}.stale.", dir=models_dir))
            with contextlib.suppress(OSError):
                os.replace(final, stale / "old")
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.replace(tmp, final)
        except OSError:
            if not is_complete(final):
                raise
        return final
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
