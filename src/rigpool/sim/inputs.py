"""Simulation inputs: traces, regions and round trips, the GPU mix — read from package data.

Everything a policy sees is generated here from the seed, before any policy runs, so that every
policy is compared on identical inputs (`Workload` and `FleetSpec` are plain arrays).

Sources (see data/sim_inputs/build_sim_data.py and each data/ folder's PROVENANCE.md):
* traces: Azure LLM inference 2023 (`code`, `conv`; CC BY 4.0) and Mooncake's conversation
  trace (Apache-2.0), sizes and arrival times only;
* regions: ten regions, user and host weights an assumption; RTT between them the mean of both
  directions of Azure's measured inter-region P95 matrix (July 2026);
* GPU mix: home PCs from the Steam Hardware Survey (April 2026, desktop NVIDIA cards known to the
  catalog), marketplace hosts from the 64 vast.ai offers (card type and count).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

import numpy as np

from rigpool.core.errors import BadRequest
from rigpool.sim.config import SimConfig

TRACE_FILES = {
    "azure-conv": "trace_azure_conv.csv",
    "azure-code": "trace_azure_code.csv",
    "mooncake-conv": "trace_mooncake_conv.csv",
}


def _data_path(name: str) -> Path:
    return Path(str(resources.files("rigpool.sim") / "data" / name))


# --- traces ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Trace:
    """A request trace: arrival seconds from its start (sorted), prompt and output tokens."""

    name: str
    t: np.ndarray
    prompt: np.ndarray
    output: np.ndarray
    span_s: float

    @property
    def rate(self) -> float:
        """Mean requests per second over the trace's span."""
        return len(self.t) / self.span_s


def read_trace_csv(path: Path, name: str | None = None) -> Trace:
    """Read a trace file (`t_s,prompt_tokens,output_tokens`), checking every row.

    Raises:
        BadRequest: missing columns, a non-numeric or negative value, output < 1, no rows.

    """
    ts: list[float] = []
    ps: list[int] = []
    os_: list[int] = []
    with path.open() as f:
        reader = csv.DictReader(f)
        need = {"t_s", "prompt_tokens", "output_tokens"}
        if reader.fieldnames is None or not need <= set(reader.fieldnames):
            raise BadRequest(
                f"trace {path}: expected columns {', '.join(sorted(need))}, got "
                f"{', '.join(reader.fieldnames or [])}",
                param="trace",
            )
        for line, row in enumerate(reader, start=2):
            try:
                t, p, o = float(row["t_s"]), int(row["prompt_tokens"]), int(row["output_tokens"])
            except (TypeError, ValueError):
                raise BadRequest(
                    f"trace {path}, line {line}: not a number", param="trace"
                ) from None
            if not math.isfinite(t) or t < 0 or p < 0 or o < 1:
                raise BadRequest(
                    f"trace {path}, line {line}: need t >= 0, prompt >= 0, output >= 1",
                    param="trace",
                )
            ts.append(t)
            ps.append(p)
            os_.append(o)
    if not ts:
        raise BadRequest(f"trace {path} has no requests", param="trace")
    t_arr = np.asarray(ts)
    order = np.argsort(t_arr, kind="stable")
    t_arr = t_arr[order] - t_arr[order][0]
    # The span closes one mean gap after the last request, so a looped trace keeps its rate.
    span = float(t_arr[-1]) * len(t_arr) / max(1, len(t_arr) - 1) if len(t_arr) > 1 else 1.0
    return Trace(
        name or path.stem,
        t_arr,
        np.asarray(ps, dtype=np.int64)[order],
        np.asarray(os_, dtype=np.int64)[order],
        max(span, 1e-3),
    )


@cache
def load_trace(name: str) -> Trace:
    """A packaged trace by name ("azure-conv", "azure-code", "mooncake-conv")."""
    if name not in TRACE_FILES:
        raise BadRequest(
            f"unknown trace {name!r}; choose one of {', '.join(TRACE_FILES)}", param="trace"
        )
    return read_trace_csv(_data_path(TRACE_FILES[name]), name)


@dataclass(frozen=True)
class Workload:
    """The requests of one run, identical for every policy (arrays indexed by request).

    `straggle` has one column per attempt (first try, hedge, retries): a request's k-th attempt
    straggles by `straggle[i, min(k, 3)]` wherever it runs (1.0 = on time); the per-segment
    probability is applied through `straggle_u` (uniform draws), so data-center and home hosts
    share the same random numbers.
    """

    t: np.ndarray
    prompt: np.ndarray
    output: np.ndarray
    user_region: np.ndarray
    access_rtt_s: np.ndarray
    jitter: np.ndarray
    straggle_u: np.ndarray
    straggle_x: np.ndarray
    rate_factor: float
    trace_rate: float

    def __len__(self) -> int:
        return len(self.t)


def scale_arrivals(
    trace: Trace,
    target_rps: float,
    duration_s: float,
    rng: np.random.Generator,
    *,
    scaling: str = "superpose",
    offset_s: float = 0.0,
    shard: tuple[int, int] | None = None,
) -> np.ndarray:
    """Indices into `trace` and arrival times for `duration_s` seconds at `target_rps`.

    Returns an (n, 2) float array: column 0 the arrival time in [0, duration_s), column 1
    the trace row the request copies its token counts from.

    * "compress": time runs `target_rps / trace.rate` times faster; the trace loops.
    * "superpose": `target_rps / trace.rate` copies of the trace, each circularly shifted by a
      uniform offset (the fractional copy thinned at random); the window starts at `offset_s`.

    `shard` (k, j): only the copies c with c mod k == j (superpose only) — shard j's part of
    the full stream. The shifts of all copies are drawn first, so the k shards' parts are a
    partition of exactly the stream that `shard=None` returns.
    """
    factor = target_rps / trace.rate
    span = trace.span_s
    idx = np.arange(len(trace.t))
    if scaling == "compress":
        span_c = span / factor
        loops = math.ceil((duration_s + offset_s / factor) / span_c) + 1
        times = (trace.t[None, :] / factor + span_c * np.arange(loops)[:, None]).ravel()
        rows = np.tile(idx, loops)
        times = times - offset_s / factor
        keep = (times >= 0) & (times < duration_s)
        return np.column_stack([times[keep], rows[keep]])
    if scaling != "superpose":
        raise BadRequest(f"unknown scaling {scaling!r}", param="scaling")
    k, j = shard if shard is not None else (1, 0)
    copies = math.floor(factor)
    frac = factor - copies
    n_copies = copies + (1 if frac > 0 else 0)
    shifts = rng.uniform(0.0, span, size=n_copies)
    parts_t: list[np.ndarray] = []
    parts_i: list[np.ndarray] = []
    loops = math.ceil(duration_s / span) + 1
    start = offset_s % span
    for c in range(n_copies):
        if c % k != j:
            continue
        # copy c: request j arrives at (t_j + shift_c) mod span, repeated every span
        # np.fmod on non-negative values equals %, but does not go through numpy's floor-mod
        # path, which was seen to raise a spurious "invalid value" FP flag (left set by other
        # native code in the same process) on perfectly finite inputs.
        base = np.fmod(trace.t + shifts[c], span) - start
        base = np.where(base < 0, base + span, base)
        if loops == 1:
            sel = base < duration_s
            t_c, i_c = base[sel], idx[sel]
        else:
            t_all = (base[None, :] + span * np.arange(loops)[:, None]).ravel()
            i_all = np.tile(idx, loops)
            sel = t_all < duration_s
            t_c, i_c = t_all[sel], i_all[sel]
        if c == copies:  # the fractional copy
            keep = np.random.default_rng([int(shifts[c] * 1e9), 17]).random(len(t_c)) < frac
            t_c, i_c = t_c[keep], i_c[keep]
        parts_t.append(t_c)
        parts_i.append(i_c)
    times = np.concatenate(parts_t) if parts_t else np.zeros(0)
    rows = np.concatenate(parts_i) if parts_i else np.zeros(0, dtype=np.int64)
    return np.column_stack([times, rows])


def build_workload(
    cfg: SimConfig, trace: Trace, target_rps: float, region_weights: np.ndarray
) -> Workload:
    """The run's requests: arrivals, sizes, user regions and per-request random draws."""
    rng = np.random.default_rng([cfg.seed, 1])
    arr = scale_arrivals(
        trace, target_rps, cfg.duration_s, rng, scaling=cfg.scaling, offset_s=cfg.trace_offset_s
    )
    return _requests(cfg, trace, arr, rng, target_rps, region_weights)


def build_shard_workload(
    cfg: SimConfig,
    trace: Trace,
    target_rps: float,
    region_weights: np.ndarray,
    shards: int,
    shard: int,
) -> Workload:
    """Shard `shard` of `shards`: its copies of the superposed trace at the full `target_rps`.

    The union of the k shards' workloads (`merge_workloads`) is the full fleet's stream, with
    the same per-request draws: the full run and the sharded run see identical requests.

    Raises:
        BadRequest: `scaling` is not "superpose" (compressed time has no copies to split).

    """
    if cfg.scaling != "superpose":
        raise BadRequest("sharding needs scaling 'superpose'", param="scaling")
    rng = np.random.default_rng([cfg.seed, 1])
    arr = scale_arrivals(
        trace, target_rps, cfg.duration_s, rng, scaling=cfg.scaling, offset_s=cfg.trace_offset_s,
        shard=(shards, shard),
    )  # fmt: skip
    wl = _requests(cfg, trace, arr, np.random.default_rng([cfg.seed, 1, shard]), target_rps,
                   region_weights)  # fmt: skip
    return wl


def merge_workloads(parts: list[Workload]) -> Workload:
    """One workload from several (shards'), sorted by arrival time."""
    t = np.concatenate([w.t for w in parts])
    order = np.argsort(t, kind="stable")

    def cat(name: str) -> np.ndarray:
        return np.concatenate([getattr(w, name) for w in parts])[order]

    return Workload(
        t=t[order], prompt=cat("prompt"), output=cat("output"), user_region=cat("user_region"),
        access_rtt_s=cat("access_rtt_s"), jitter=cat("jitter"), straggle_u=cat("straggle_u"),
        straggle_x=cat("straggle_x"), rate_factor=parts[0].rate_factor,
        trace_rate=parts[0].trace_rate,
    )  # fmt: skip


def _requests(
    cfg: SimConfig,
    trace: Trace,
    arr: np.ndarray,
    rng: np.random.Generator,
    target_rps: float,
    region_weights: np.ndarray,
) -> Workload:
    order = np.argsort(arr[:, 0], kind="stable")
    arr = arr[order]
    rows = arr[:, 1].astype(np.int64)
    n = len(arr)
    p = region_weights / region_weights.sum()
    u = rng.random((n, 4))
    pareto = cfg.straggle_min * (1.0 - rng.random((n, 4))) ** (-1.0 / cfg.straggle_alpha)
    return Workload(
        t=arr[:, 0],
        prompt=trace.prompt[rows],
        output=trace.output[rows],
        user_region=rng.choice(len(p), size=n, p=p),
        access_rtt_s=cfg.access_median_ms
        / 1000.0
        * np.exp(cfg.access_sigma * rng.standard_normal(n)),
        jitter=np.exp(cfg.jitter_sigma * rng.standard_normal(n)),
        straggle_u=u,
        straggle_x=np.minimum(pareto, cfg.straggle_cap),
        rate_factor=target_rps / trace.rate,
        trace_rate=trace.rate,
    )


# --- regions -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Regions:
    """Region ids, weights (users and hosts) and the inter-region RTT matrix in seconds."""

    names: tuple[str, ...]
    weights: np.ndarray
    rtt_s: np.ndarray  # diagonal 0: same-region RTT is a config parameter
    azure: tuple[str, ...]

    def index(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise BadRequest(
                f"unknown region {name!r}; choose one of {', '.join(self.names)}", param="region"
            ) from None


@cache
def load_regions() -> Regions:
    with _data_path("regions.csv").open() as f:
        rows = list(csv.DictReader(f))
    names = tuple(r["region"] for r in rows)
    rtt = np.zeros((len(names), len(names)))
    for i, r in enumerate(rows):
        for j, b in enumerate(names):
            if i != j:
                rtt[i, j] = float(r[b]) / 1000.0
    return Regions(
        names,
        np.asarray([float(r["weight"]) for r in rows]),
        rtt,
        tuple(r["azure_region"] for r in rows),
    )


# --- GPU mix -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class GpuMix:
    """Host types and weights: (gpu, n_gpus) for home PCs and for marketplace hosts."""

    consumer: list[tuple[str, int]]
    consumer_w: np.ndarray
    market: list[tuple[str, int]]
    market_w: np.ndarray


@cache
def load_gpu_mix() -> GpuMix:
    cons: list[tuple[str, int]] = []
    cw: list[float] = []
    mk: list[tuple[str, int]] = []
    mw: list[float] = []
    with _data_path("gpu_mix.csv").open() as f:
        for r in csv.DictReader(f):
            key = (r["gpu"], int(r["n_gpus"]))
            if r["source"] == "steam":
                cons.append(key)
                cw.append(float(r["weight"]))
            else:
                mk.append(key)
                mw.append(float(r["weight"]))
    return GpuMix(cons, np.asarray(cw) / sum(cw), mk, np.asarray(mw) / sum(mw))
