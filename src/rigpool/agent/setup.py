"""Turning `rigpool provide` options into a running agent: identity, GPUs, backend, offer."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from rigpool import __version__
from rigpool.agent.backends.base import Backend
from rigpool.hardware.detect import detect_gpus
from rigpool.protocol.messages import Capabilities, GpuInfo, ModelOffer


def default_identity_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "rigpool" / "provider-keypair.json"


@dataclass
class ProvideOptions:
    backend: str  # "auto" | "transformers" | "openai-proxy" | "emulated"
    model: str | None = None
    served_name: str | None = None
    proxy_url: str | None = None
    emulate: str | None = None
    timing_model: str = "llama-3.1-8b"
    context_length: int = 2048
    device: str = "auto"
    dtype: str = "auto"
    region: str = "local"
    price_in: float = 0.05
    price_out: float = 0.10
    max_concurrency: int = 4


def resolve_backend_kind(opts: ProvideOptions) -> str:
    if opts.backend != "auto":
        return opts.backend
    if opts.emulate:
        return "emulated"
    if opts.proxy_url:
        return "openai-proxy"
    return "transformers"


def build_backend(opts: ProvideOptions) -> Backend:
    """Create the backend the options ask for; raise ValueError with what is missing."""
    kind = resolve_backend_kind(opts)
    if kind == "emulated":
        if not opts.emulate:
            raise ValueError("--backend emulated needs --emulate GPU-NAME (e.g. 'RTX 4090')")
        from rigpool.agent.backends.emulated import EmulatedBackend

        folder = Path(opts.model) if opts.model and Path(opts.model).is_dir() else None
        return EmulatedBackend(
            opts.emulate,
            served_name=opts.served_name or (folder.name if folder else opts.model) or "emulated",
            context_length=opts.context_length,
            timing_model=opts.timing_model,
            tokenizer_dir=folder,
        )
    if kind == "openai-proxy":
        if not opts.proxy_url or not opts.model:
            raise ValueError("--backend openai-proxy needs --proxy-url URL and --model NAME")
        from rigpool.agent.backends.openai_proxy import OpenAIProxyBackend

        return OpenAIProxyBackend(
            opts.proxy_url,
            opts.model,
            context_length=opts.context_length,
            served_name=opts.served_name,
        )
    if kind == "transformers":
        if not opts.model:
            raise ValueError("--backend transformers needs --model PATH-OR-HUB-ID")
        try:
            from rigpool.agent.backends.transformers_backend import TransformersBackend
        except ImportError as exc:
            raise ValueError(
                "the transformers backend needs the torch extra: "
                f"pip install 'rigpool[torch]' ({exc})"
            ) from exc
        return TransformersBackend(
            opts.model, device=opts.device, dtype=opts.dtype, served_name=opts.served_name
        )
    raise ValueError(f"unknown backend {kind!r}: choose transformers, openai-proxy or emulated")


def capabilities_for(backend: Backend, opts: ProvideOptions) -> tuple[Capabilities, str]:
    """What the agent offers, plus a one-line note on how its GPUs were found."""
    if backend.emulated:
        from rigpool.agent.backends.emulated import EmulatedBackend

        assert isinstance(backend, EmulatedBackend)
        gpus = [
            GpuInfo(name=backend.gpu.name, vram_mb=int(backend.gpu.vram_gb * 1024), emulated=True)
        ]
        note = f"emulating one {backend.gpu.name} (no real GPU work is done)"
    else:
        found, note = detect_gpus()
        gpus = [GpuInfo(name=g.name, vram_mb=g.vram_mb, index=g.index, uuid=g.uuid) for g in found]
    caps = Capabilities(
        gpus=gpus,
        backend=backend.kind,
        emulated=backend.emulated,
        models=[
            ModelOffer(
                name=m.name,
                context_length=m.context_length,
                price_in_per_mtok=opts.price_in,
                price_out_per_mtok=opts.price_out,
            )
            for m in backend.models()
        ],
        region=opts.region,
        max_concurrency=opts.max_concurrency,
        agent_version=__version__,
    )
    return caps, note
