"""Write a run's report folder: report.json, PNG plots and summary.md.

Plots need matplotlib (`pip install 'matplotlib>=3.8,<4'`); without it the JSON and the summary
are still written and the summary says the plots are missing.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from rigpool.sim.engine import RunResult

COLORS = {
    "random": "#d62728",
    "round-robin": "#ff7f0e",
    "least-loaded": "#9467bd",
    "rigpool": "#2ca02c",
    "centralized": "#1f77b4",
}


def _fmt(x: float | None, unit: str = "s") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    if unit == "s":
        return f"{x * 1000:.0f} ms" if x < 1 else f"{x:.2f} s"
    if unit == "x":
        return f"{x:.2f}x"
    if unit == "$":
        return f"${x:.3f}"
    if unit == "%":
        return f"{100 * x:.1f} %"
    return f"{x:g}"


def write_plots(report: dict[str, Any], out: Path) -> list[str]:
    """Latency CDFs, utilization over time and cost per million tokens; returns file names."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - depends on the environment
        return []
    results: dict[str, RunResult] = report["_results"]
    files = []
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for ax, attr, title in zip(
        axes, ("ttft", "tpot", "e2e"), ("time to first token", "time per output token",
                                         "end to end"), strict=True,
    ):  # fmt: skip
        for name, r in results.items():
            x = getattr(r, attr)[(r.status == 0)]
            x = np.sort(x[np.isfinite(x) & (x > 0)])
            if not len(x):
                continue
            y = np.arange(1, len(x) + 1) / len(x)
            ax.plot(x, y, label=name, color=COLORS.get(name))
        ax.set_xscale("log")
        ax.set_xlabel("seconds (log)")
        ax.set_ylabel("share of completed requests")
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(out / "latency_cdf.png", dpi=110)
    plt.close(fig)
    files.append("latency_cdf.png")

    # tail zoom: 1 - CDF on log-log, where p99 and p99.9 live
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, r in results.items():
        x = r.e2e[(r.status == 0)]
        x = np.sort(x[np.isfinite(x) & (x > 0)])
        if len(x):
            ax.plot(x, 1 - np.arange(len(x)) / len(x), label=name, color=COLORS.get(name))
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("end-to-end seconds (log)")
    ax.set_ylabel("share of requests slower (log)")
    ax.set_title("end-to-end latency tail")
    ax.grid(True, alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "latency_tail.png", dpi=110)
    plt.close(fig)
    files.append("latency_tail.png")

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for name, r in results.items():
        axes[0].plot(r.util_t, r.util_slots, label=name, color=COLORS.get(name))
        axes[1].plot(r.util_t, r.util_busy, label=name, color=COLORS.get(name))
    axes[0].set_title("batch slots in use / slots online")
    axes[1].set_title("agents with at least one request / agents online")
    for ax in axes:
        ax.set_xlabel("simulated seconds")
        ax.set_ylim(0, 1.05)
        ax.grid(True, alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(out / "utilization.png", dpi=110)
    plt.close(fig)
    files.append("utilization.png")

    pol = report["policies"]
    names = list(pol)
    fig, ax = plt.subplots(figsize=(8, 4.2))
    xs = np.arange(len(names))
    rent = [pol[n]["gpu_cost_per_mtok_usd"] for n in names]
    paid = [pol[n].get("client_cost_per_mtok_usd", pol[n]["gpu_cost_per_mtok_usd"]) for n in names]
    ax.bar(xs - 0.2, rent, 0.4, label="GPU rent of serving hosts / tokens")
    ax.bar(xs + 0.2, paid, 0.4, label="paid to providers per token (centralized: rent)")
    ax.set_xticks(xs, names)
    ax.set_ylabel("USD per million output tokens")
    ax.set_title("cost per million output tokens")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "cost_per_mtok.png", dpi=110)
    plt.close(fig)
    files.append("cost_per_mtok.png")
    return files


def summary_markdown(report: dict[str, Any], plots: list[str]) -> str:
    cfg = report["config"]
    inp = report["inputs"]
    pol = report["policies"]
    lines = [
        "# rigpool fleet simulation",
        "",
        f"Trace `{cfg['trace']}` scaled x{inp['load']['rate_factor_vs_trace']:.1f} "
        f"({cfg['scaling']}) to {inp['load']['offered_rps']:.1f} req/s for "
        f"{cfg['duration_s']:g} simulated s ({inp['load']['requests']:,} requests), model "
        f"`{cfg['model']}`, seed {cfg['seed']}. Decentralized fleet: {cfg['gpus']:,} GPUs sampled "
        f"({int(cfg['consumer_share'] * 100)} % home PCs), "
        f"{inp['decentralized_fleet']['gpus_placed']:,} GPUs on "
        f"{inp['decentralized_fleet']['hosts_placed']:,} hosts placed; load "
        f"{cfg['load']:.0%} of the capable fleet's capacity.",
    ]
    sh = report.get("sharding")
    if sh:
        lines.append(
            f"Sharded: {sh['shards']} cells, {len(sh['sampled'])} simulated "
            f"({sh['sampled_requests']:,} requests); percentiles from their requests, totals "
            f"x{sh['extrapolation_factor']:g}; fleet counts below are the simulated cells'. "
            f"Assumption: {sh['assumption']}"
        )
    c = inp.get("centralized_fleet")
    if c:
        lines.append(
            f"Centralized: {c['gpus']} x {c['gpu']} in {c['region']} at "
            f"${c['usd_per_gpu_hour']:.2f}/GPU-hour ({c['price_basis']}), sized by the same "
            "placement code for the same load."
        )
    lines += [
        "",
        "| policy | TTFT p50 | TTFT p99 | TPOT p50 | TPOT p99 | E2E p50 | E2E p99 | E2E p99.9 "
        "| goodput | failed | $/M tok (rent) | $/M tok (paid) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, m in pol.items():
        lines.append(
            f"| {name} | {_fmt(m['ttft_s']['p50'])} | {_fmt(m['ttft_s']['p99'])} | "
            f"{_fmt(m['tpot_s']['p50'])} | {_fmt(m['tpot_s']['p99'])} | "
            f"{_fmt(m['e2e_s']['p50'])} | {_fmt(m['e2e_s']['p99'])} | "
            f"{_fmt(m['e2e_s']['p99.9'])} | {_fmt(m['goodput_share'], '%')} | "
            f"{m['failed']:,} | {_fmt(m['gpu_cost_per_mtok_usd'], '$')} | "
            f"{_fmt(m.get('client_cost_per_mtok_usd'), '$')} |"
        )
    head = report.get("headline") or {}
    if head:
        lines += [
            "",
            "## Headline: decentralized / centralized",
            "",
            "| policy | TTFT p99 ratio | E2E p99 ratio | TPOT p99 ratio | cost ratio (paid) "
            "| cost ratio (rent) |",
            "|---|---|---|---|---|---|",
        ]
        for name, h in head.items():
            lines.append(
                f"| {name} | {_fmt(h['ttft_p99_ratio'], 'x')} | {_fmt(h['e2e_p99_ratio'], 'x')} | "
                f"{_fmt(h['tpot_p99_ratio'], 'x')} | {_fmt(h['cost_ratio_client_price'], 'x')} | "
                f"{_fmt(h['cost_ratio_gpu_rent'], 'x')} |"
            )
        sens = inp.get("central_batch_sensitivity")
        if sens:
            lines.append(
                f"\nIf the centralized replicas batched {sens['batch']:.0f} sequences instead of "
                f"placement's 16, each would carry {sens['capacity_ratio']:.2f}x the load "
                "(cost ratios above multiply by that factor)."
            )
    lines += [
        "",
        "## Assumptions (all in report.json `config`)",
        f"- SLO for goodput: TTFT <= {cfg['slo_ttft_s']} s and TPOT <= {cfg['slo_tpot_s']} s.",
        f"- Churn: Weibull(shape {cfg['session_shape']}) sessions, median "
        f"{cfg['session_median_h']} h (home) / {cfg['dc_session_median_h']} h (marketplace), "
        f"offline median {cfg['offline_median_h']} h; {cfg['graceful_share']:.0%} of departures "
        f"drain, the rest vanish (noticed after {cfg['detect_s']} s); crashes every "
        f"{cfg['crash_mtbf_h']} h (home) / {cfg['dc_crash_mtbf_h']} h (data center) on average.",
        f"- Stragglers: {cfg['straggle_p']:.0%} of attempts on home hosts, "
        f"{cfg['dc_straggle_p']:.0%} in data centers, slowed by Pareto(alpha "
        f"{cfg['straggle_alpha']}, min {cfg['straggle_min']}x, cap {cfg['straggle_cap']}x); "
        f"{cfg['slow_host_share']:.0%} of home hosts persistently "
        f"{cfg['slow_host_range'][0]}-{cfg['slow_host_range'][1]}x slower.",
        f"- Network: Azure inter-region P95 RTTs; {cfg['same_region_ms']} ms inside a region; "
        f"home last mile lognormal median {cfg['last_mile_median_ms']} ms; user access median "
        f"{cfg['access_median_ms']} ms (same for every policy); gateways in each user's region "
        f"(centralized: in {cfg['central_region']}).",
        "- GPU timing: the performance model (hardware/perf.py), continuous batching with "
        "prefill priority, at most 16 sequences per replica (placement's serving batch).",
        "",
        "Plots: "
        + (", ".join(f"`{p}`" for p in plots) if plots else "not written (matplotlib missing)"),
    ]
    return "\n".join(lines) + "\n"


def _clean(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items() if not str(k).startswith("_")}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, (np.floating, float)):
        f = float(x)
        return f if math.isfinite(f) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


def write_report(report: dict[str, Any], out: Path) -> dict[str, Path]:
    """Write report.json, the plots and summary.md into `out` (created if needed)."""
    out.mkdir(parents=True, exist_ok=True)
    # A policy with no finished request plots NaN: matplotlib's tick arithmetic then warns
    # ("invalid value encountered in remainder"). The plot is still right; don't fail on it.
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        plots = write_plots(report, out)
    (out / "report.json").write_text(json.dumps(_clean(report), indent=1))
    (out / "summary.md").write_text(summary_markdown(report, plots))
    paths = {"report": out / "report.json", "summary": out / "summary.md"}
    for p in plots:
        paths[p] = out / p
    return paths
