"""Many emulated agents in one process: load, tail and chaos tests on one CPU.

Each agent is a full `Agent` (own identity, own WebSocket, own signed hello) exactly as
`rigpool provide --emulate` runs it; sharing one event loop only saves the per-process cost of
Python, so a 2-core machine can hold a hundred "GPUs". Timing comes from the performance model.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
from dataclasses import dataclass
from pathlib import Path

from rigpool import __version__
from rigpool.agent.backends.emulated import EmulatedBackend
from rigpool.agent.daemon import FLUSH_WINDOW_S, Agent
from rigpool.protocol.messages import Capabilities, GpuInfo, ModelOffer
from rigpool.protocol.signing import Identity

DEFAULT_GPUS = ("RTX 3060 8GB", "RTX 3090", "RTX 4090", "L4", "A100 80GB", "H100 SXM")


@dataclass(frozen=True)
class SwarmSpec:
    agents: int
    model_dir: Path
    served_name: str
    gpus: tuple[str, ...] = DEFAULT_GPUS
    region: str = "local"
    time_scale: float = 1.0
    straggler_share: float = 0.0  # share of agents that straggle at all
    straggle_prob: float = 0.05  # per request, on a straggling agent
    straggle_factor: float = 10.0
    max_concurrency: int = 8
    seed: int = 0
    #: every agent's posted prices, USD per million tokens (0: free; receipts need a price)
    price_in_per_mtok: float = 0.0
    price_out_per_mtok: float = 0.0
    #: the agents' token flush window (s); 0 sends every token as its own message (as 1.4 did)
    flush_window_s: float = FLUSH_WINDOW_S


def build_agents(coordinator: str, spec: SwarmSpec) -> list[Agent]:
    rng = random.Random(spec.seed)
    stragglers = set(rng.sample(range(spec.agents), round(spec.agents * spec.straggler_share)))
    agents = []
    for i in range(spec.agents):
        gpu = spec.gpus[i % len(spec.gpus)]
        backend = EmulatedBackend(
            gpu,
            spec.served_name,
            time_scale=spec.time_scale,
            tokenizer_dir=spec.model_dir,
            straggle_prob=spec.straggle_prob if i in stragglers else 0.0,
            straggle_factor=spec.straggle_factor,
            seed=spec.seed * 100_003 + i,
        )
        caps = Capabilities(
            gpus=[
                GpuInfo(
                    name=backend.gpu.name, vram_mb=int(backend.gpu.vram_gb * 1024), emulated=True
                )
            ],
            backend=backend.kind,
            emulated=True,
            models=[
                ModelOffer(
                    name=m.name,
                    context_length=m.context_length,
                    price_in_per_mtok=spec.price_in_per_mtok,
                    price_out_per_mtok=spec.price_out_per_mtok,
                )
                for m in backend.models()
            ],
            region=spec.region,
            max_concurrency=spec.max_concurrency,
            agent_version=__version__,
        )
        agents.append(
            Agent(
                coordinator,
                Identity.generate(),
                backend,
                caps,
                on_status=lambda _m: None,
                flush_window_s=spec.flush_window_s,
            )
        )
    return agents


async def run_swarm(coordinator: str, spec: SwarmSpec) -> None:
    """Run every agent until SIGTERM/SIGINT, then drain them all."""
    agents = build_agents(coordinator, spec)
    loop = asyncio.get_running_loop()

    def stop_all() -> None:
        for agent in agents:
            agent.stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop_all)
    await asyncio.gather(*(a.run_forever() for a in agents))
