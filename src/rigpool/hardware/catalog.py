"""GPU catalog: what each card can hold, how fast it reads memory and multiplies, what it costs.

Every other part of rigpool that reasons about hardware (memory-fit, the performance model,
attestation budgets, the emulated backend, the simulator's fleet) starts from a `GpuSpec`, so the
numbers live in one table: `hardware/data/gpus.csv`, built from public spec sheets and price lists
by `data/gpu_catalog/build_gpus_csv.py` (see `data/gpu_catalog/README.md` for provenance).

Names are matched loosely because they come from people ("rtx3060", "a100-80gb") and from drivers
("NVIDIA GeForce RTX 3060" with 12288 MiB): both are reduced to the same key, and cards sold in
several memory sizes are told apart by the memory that NVML reports.
"""

from __future__ import annotations

import csv
import difflib
import io
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Literal

from rigpool.core.errors import NotFound

Segment = Literal["consumer", "workstation", "datacenter", "cpu"]

_BYTES_PER_GIB = 2**30


@dataclass(frozen=True)
class GpuSpec:
    """One accelerator model as the rest of rigpool sees it.

    Attributes:
        name: Canonical name, e.g. "RTX 4090", "A100 80GB", "H100 SXM".
        vendor: "NVIDIA" for every GPU today; "generic" for the CPU stand-in.
        vram_gb: Memory as marketed. GPU memory is sold in binary gigabytes (NVML reports
            24564 MiB for a "24 GB" RTX 4090), so `vram_bytes` converts with 2**30.
        mem_bandwidth_gbs: Peak memory bandwidth in GB/s (1e9 bytes/s); bounds decode speed.
        fp16_tflops: Peak dense FP16/BF16 tensor TFLOPS as published; bounds prefill speed.
            GeForce figures are the FP16-accumulate rate (twice the FP32-accumulate rate);
            the performance model's fitted compute efficiency absorbs the difference.
        tdp_w: Board power in watts, None if unknown.
        segment: "consumer" (GeForce), "workstation" (RTX A/Ada pro cards), "datacenter",
            or "cpu" for the CPU stand-in.
        cloud_usd_per_hour: On-demand price of one GPU at a major cloud, None if none sells it.
        market_usd_per_hour: Median price of one GPU on a marketplace (vast.ai), None if unseen.
        source: Where the spec values come from.
        architecture: GPU generation, e.g. "Ampere".
        aliases: Other names accepted by `find_gpu`.

    """

    name: str
    vendor: str
    vram_gb: float
    mem_bandwidth_gbs: float
    fp16_tflops: float
    tdp_w: float | None
    segment: Segment
    cloud_usd_per_hour: float | None
    market_usd_per_hour: float | None
    source: str
    architecture: str = ""
    aliases: tuple[str, ...] = ()

    @property
    def vram_bytes(self) -> float:
        """Capacity in bytes (marketed GB are GiB)."""
        return self.vram_gb * _BYTES_PER_GIB

    @property
    def usd_per_hour(self) -> float | None:
        """The price a buyer would pay per GPU-hour: the marketplace price, else the cloud's."""
        if self.market_usd_per_hour is not None:
            return self.market_usd_per_hour
        return self.cloud_usd_per_hour


def _opt_float(text: str) -> float | None:
    return float(text) if text.strip() else None


def _parse_segment(text: str) -> Segment:
    if text in ("consumer", "workstation", "datacenter", "cpu"):
        return text  # type: ignore[return-value]
    raise ValueError(f"unknown GPU segment {text!r}")


def _read_rows() -> list[dict[str, str]]:
    text = resources.files("rigpool.hardware").joinpath("data/gpus.csv").read_text("utf-8")
    return list(csv.DictReader(io.StringIO(text)))


@cache
def gpu_catalog() -> dict[str, GpuSpec]:
    """All catalog GPUs keyed by canonical name, in table order (read once, then cached)."""
    out: dict[str, GpuSpec] = {}
    for row in _read_rows():
        aliases = tuple(a for a in row["aliases"].split(";") if a)
        spec = GpuSpec(
            name=row["name"],
            vendor=row["vendor"],
            vram_gb=float(row["vram_gb"]),
            mem_bandwidth_gbs=float(row["mem_bandwidth_gbs"]),
            fp16_tflops=float(row["fp16_tflops"]),
            tdp_w=_opt_float(row["tdp_w"]),
            segment=_parse_segment(row["segment"]),
            cloud_usd_per_hour=_opt_float(row["cloud_usd_per_hour"]),
            market_usd_per_hour=_opt_float(row["market_usd_per_hour"]),
            source=row["source"],
            architecture=row["architecture"],
            aliases=(row["gpu_id"], *aliases),
        )
        out[spec.name] = spec
    return out


def cpu_spec(ram_gb: float = 16.0) -> GpuSpec:
    """A CPU stand-in so that CPU and emulated agents run through the same models.

    The figures describe a typical desktop: dual-channel DDR4/DDR5 sustains roughly 20-40 GB/s
    of the ~50-90 GB/s peak, and AVX2/AVX-512 matrix code reaches about half a TFLOPS. They are
    assumptions, not measurements of any machine; `ram_gb` is what the model may occupy.
    """
    return GpuSpec(
        name="CPU",
        vendor="generic",
        vram_gb=ram_gb,
        mem_bandwidth_gbs=20.0,
        fp16_tflops=0.5,
        tdp_w=None,
        segment="cpu",
        cloud_usd_per_hour=None,
        market_usd_per_hour=None,
        source="assumption: typical desktop CPU (dual-channel DRAM, AVX2)",
        architecture="x86-64",
        aliases=("cpu",),
    )


# Words that vendors and drivers add but that never tell two cards apart.
_NOISE = re.compile(r"nvidia|geforce|tesla|graphics|\bgpu\b")
_MEMORY = re.compile(r"\b\d+\s*gb\b|\bhbm\w*|\bgddr\w*")


def _key(name: str) -> str:
    """Reduce a GPU name to lowercase letters and digits without vendor noise."""
    lowered = _NOISE.sub(" ", name.lower())
    return re.sub(r"[^a-z0-9]", "", lowered)


def _family(name: str) -> str:
    """The key of a name without memory size and type: 'A100-SXM4-80GB' -> 'a100sxm4'.

    Memory tokens are removed while word boundaries still exist ("RTX 3060 8GB" must not lose
    the "3060").
    """
    return _key(_MEMORY.sub(" ", name.lower()))


@cache
def _index() -> tuple[dict[str, GpuSpec], dict[str, list[GpuSpec]]]:
    exact: dict[str, GpuSpec] = {}
    family: dict[str, list[GpuSpec]] = {}
    for spec in gpu_catalog().values():
        for name in (spec.name, *spec.aliases):
            exact.setdefault(_key(name), spec)
            members = family.setdefault(_family(name), [])
            if spec not in members:
                members.append(spec)
    return exact, family


def _close_matches(name: str) -> list[str]:
    names = list(gpu_catalog())
    by_key = {_key(n): n for n in names}
    keys = difflib.get_close_matches(_key(name), list(by_key), n=5, cutoff=0.5)
    return [by_key[k] for k in keys]


def find_gpu(name: str) -> GpuSpec:
    """Look a GPU up by a loose name: "rtx3060", "NVIDIA GeForce RTX 3060", "a100-80gb", "H100".

    Exact aliases win; a family name without a memory size ("RTX 3060") resolves to the default
    card listed for it. "cpu" returns `cpu_spec()`.

    Raises:
        NotFound: the name matches no card; the message lists close matches.

    """
    key = _key(name)
    if key == "cpu":
        return cpu_spec()
    exact, family = _index()
    if key in exact:
        return exact[key]
    members = family.get(_family(name), [])
    if len(members) == 1:
        return members[0]
    close = _close_matches(name)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise NotFound(f"unknown GPU {name!r}{hint}", param="gpu")


def match_nvml_name(nvml_name: str, vram_mb: int) -> GpuSpec | None:
    """Map what NVML reports (device name, total memory in MiB) to a catalog entry.

    The memory decides between cards that share a name ("NVIDIA GeForce RTX 3060" exists with
    8 and 12 GB; "NVIDIA A100-SXM4-80GB" and "...-40GB"): among the cards of the same family,
    the one whose capacity is closest to `vram_mb` wins, if within 25 %. Laptop parts return
    None: their clocks and bandwidth differ from the desktop card of the same name.
    """
    lowered = nvml_name.lower()
    if "laptop" in lowered or "mobile" in lowered or "max-q" in lowered:
        return None
    key = _key(nvml_name)
    exact, family = _index()
    candidates = list(family.get(_family(nvml_name), []))
    if key in exact and exact[key] not in candidates:
        candidates.append(exact[key])
    if not candidates:
        return None
    reported = vram_mb * 2**20

    def distance(spec: GpuSpec) -> float:
        return abs(spec.vram_bytes / reported - 1.0)

    # An exact name match wins ties (e.g. two 8 GB RTX 3060 Ti variants).
    best = min(candidates, key=lambda s: (distance(s), exact.get(key) is not s))
    return best if distance(best) <= 0.25 else None
