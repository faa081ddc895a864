"""Build the simulator's package data (src/rigpool/sim/data/) from the documented copies in data/.

Run from the repository root: .venv/bin/python data/sim_inputs/build_sim_data.py
Every output is derived, row for row, from a folder of data/ whose PROVENANCE.md names its source.
"""

from __future__ import annotations

import csv
from datetime import datetime
from pathlib import Path

from rigpool.hardware.catalog import find_gpu

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "data"
OUT = ROOT / "src" / "rigpool" / "sim" / "data"

# Fleet and user regions: id -> (weight, Azure region used for the round-trip matrix).
# The weights are an assumption (roughly Steam users and vast.ai hosts by continent), the same
# ten regions as bench/scheduler.py.
REGIONS = {
    "us-east": (0.16, "East US"),
    "us-west": (0.10, "West US 2"),
    "us-central": (0.06, "Central US"),
    "eu-west": (0.14, "West Europe"),
    "eu-central": (0.12, "Germany West Central"),
    "eu-north": (0.05, "Sweden Central"),
    "ap-northeast": (0.10, "Japan East"),
    "ap-southeast": (0.10, "Southeast Asia"),
    "ap-south": (0.07, "Central India"),
    "sa-east": (0.10, "Brazil South"),
}


def traces() -> None:
    for kind in ("code", "conv"):
        src = DATA / "azure_llm_inference_2023" / f"AzureLLMInferenceTrace_{kind}.csv"
        with src.open() as f:
            rows = list(csv.DictReader(f))
        t0 = datetime.fromisoformat(rows[0]["TIMESTAMP"][:26])
        with (OUT / f"trace_azure_{kind}.csv").open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["t_s", "prompt_tokens", "output_tokens"])
            for r in rows:
                t = (datetime.fromisoformat(r["TIMESTAMP"][:26]) - t0).total_seconds()
                w.writerow([f"{t:.4f}", r["ContextTokens"], r["GeneratedTokens"]])
    src = DATA / "mooncake_traces" / "conversation_trace_sizes.csv"
    with src.open() as f, (OUT / "trace_mooncake_conv.csv").open("w", newline="") as g:
        w = csv.writer(g)
        w.writerow(["t_s", "prompt_tokens", "output_tokens"])
        for r in csv.DictReader(f):
            w.writerow(
                [f"{int(r['timestamp_ms']) / 1000:.3f}", r["input_length"], r["output_length"]]
            )


def gpu_mix() -> None:
    steam: dict[str, float] = {}
    path = DATA / "steam_hw_survey_gpu_mix" / "steam_hw_survey_gpu_vram_2024-05_to_2026-04.csv"
    with path.open() as f:
        for row in csv.DictReader(f):
            if row["date"] != "2026-04-01" or row["category"] != "Video Card Description":
                continue
            name = row["name"]
            if "NVIDIA" not in name or "Laptop" in name:
                continue
            try:
                spec = find_gpu(name)
            except Exception:
                continue
            steam[spec.name] = steam.get(spec.name, 0.0) + float(row["percentage"])
    vast: dict[tuple[str, int], int] = {}
    with (DATA / "cloud_gpu_prices" / "vast_gpu_offers.csv").open() as f:
        for row in csv.DictReader(f):
            try:
                spec = find_gpu(row["AcceleratorName"])
            except Exception:
                continue
            key = (spec.name, int(float(row["AcceleratorCount"])))
            vast[key] = vast.get(key, 0) + 1
    with (OUT / "gpu_mix.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["source", "gpu", "n_gpus", "weight"])
        total = sum(steam.values())
        for name, share in sorted(steam.items()):
            w.writerow(["steam", name, 1, f"{share / total:.6f}"])
        n = sum(vast.values())
        for (name, count), k in sorted(vast.items()):
            w.writerow(["vast", name, count, f"{k / n:.6f}"])


def regions() -> None:
    path = DATA / "network_latency" / "azure_region_rtt_p95_ms_2026-07.csv"
    with path.open() as f:
        rows = {r["Source"]: r for r in csv.DictReader(f)}
    with (OUT / "regions.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["region", "weight", "azure_region", *REGIONS])
        for a, (weight, az_a) in REGIONS.items():
            cells = []
            for b, (_, az_b) in REGIONS.items():
                if a == b:
                    cells.append("")
                else:  # the matrix is not symmetric: use the mean of both directions
                    ab, ba = rows[az_a][az_b], rows[az_b][az_a]
                    cells.append(f"{(float(ab) + float(ba)) / 2:.1f}")
            w.writerow([a, weight, az_a, *cells])


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    traces()
    gpu_mix()
    regions()
    for p in sorted(OUT.iterdir()):
        print(f"{p.relative_to(ROOT)}: {p.stat().st_size:,} bytes")
