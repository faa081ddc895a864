"""Build `src/rigpool/hardware/data/gpus.csv`, the GPU catalog rigpool reads at run time.

Why a build step: the runtime must not parse four cloud price lists (with their quirks) on every
start, and every number it uses must be traceable. This script is the trace: it joins the curated
spec table (`data/gpu_specs/gpu_specs.csv`) with per-GPU prices derived from
`data/cloud_gpu_prices/`, adds the few spec values that table leaves empty (each with its public
source), and writes one row per catalog GPU. Run from the repository root:

    .venv/bin/python data/gpu_catalog/build_gpus_csv.py

Price rules (USD per GPU-hour):
- cloud_usd_per_hour: for each instance type of AWS, Azure and Lambda, the median over regions
  of `price / gpu_count` (whole GPUs only); then the cheapest instance type. That is what a buyer
  who picks the smallest suitable instance pays in a typical region.
  GCP is left out: its GPU rows price the accelerator without the host VM.
- market_usd_per_hour: median of `price / gpu_count` over the vast.ai offers for that GPU.
"""

from __future__ import annotations

import csv
import statistics
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SPECS = ROOT / "data" / "gpu_specs" / "gpu_specs.csv"
PRICES = ROOT / "data" / "cloud_gpu_prices"
OUT = ROOT / "src" / "rigpool" / "hardware" / "data" / "gpus.csv"

# gpu_id in gpu_specs.csv -> (canonical name, aliases). The first alias of a family without a
# memory size is the default for that family (e.g. "RTX 3060" means the common 12 GB card).
NAMES: dict[str, tuple[str, list[str]]] = {
    "gtx-1070": ("GTX 1070", []),
    "gtx-1080": ("GTX 1080", []),
    "gtx-1080-ti": ("GTX 1080 Ti", []),
    "rtx-2060": ("RTX 2060", ["RTX 2060 6GB"]),
    "rtx-2060-12gb": ("RTX 2060 12GB", []),
    "rtx-2060-super": ("RTX 2060 Super", ["RTX 2060S"]),
    "rtx-2070": ("RTX 2070", []),
    "rtx-2070-super": ("RTX 2070 Super", ["RTX 2070S"]),
    "rtx-2080": ("RTX 2080", []),
    "rtx-2080-super": ("RTX 2080 Super", ["RTX 2080S"]),
    "rtx-2080-ti": ("RTX 2080 Ti", []),
    "rtx-3050-8gb": ("RTX 3050", ["RTX 3050 8GB"]),
    "rtx-3060-12gb": ("RTX 3060 12GB", ["RTX 3060"]),
    "rtx-3060-8gb": ("RTX 3060 8GB", []),
    "rtx-3060-ti": ("RTX 3060 Ti", ["RTX 3060 Ti 8GB"]),
    "rtx-3060-ti-gddr6x": ("RTX 3060 Ti GDDR6X", []),
    "rtx-3070": ("RTX 3070", ["RTX 3070 8GB"]),
    "rtx-3070-ti": ("RTX 3070 Ti", []),
    "rtx-3080-10gb": ("RTX 3080 10GB", ["RTX 3080"]),
    "rtx-3080-12gb": ("RTX 3080 12GB", []),
    "rtx-3080-ti": ("RTX 3080 Ti", []),
    "rtx-3090": ("RTX 3090", ["RTX 3090 24GB"]),
    "rtx-3090-ti": ("RTX 3090 Ti", []),
    "rtx-4060": ("RTX 4060", ["RTX 4060 8GB"]),
    "rtx-4060-ti-8gb": ("RTX 4060 Ti 8GB", ["RTX 4060 Ti"]),
    "rtx-4060-ti-16gb": ("RTX 4060 Ti 16GB", []),
    "rtx-4070": ("RTX 4070", []),
    "rtx-4070-super": ("RTX 4070 Super", []),
    "rtx-4070-ti": ("RTX 4070 Ti", []),
    "rtx-4070-ti-super": ("RTX 4070 Ti Super", []),
    "rtx-4080": ("RTX 4080", ["RTX 4080 16GB"]),
    "rtx-4080-super": ("RTX 4080 Super", []),
    "rtx-4090": ("RTX 4090", ["RTX 4090 24GB"]),
    "rtx-5060": ("RTX 5060", []),
    "rtx-5060-ti-8gb": ("RTX 5060 Ti 8GB", []),
    "rtx-5060-ti-16gb": ("RTX 5060 Ti 16GB", ["RTX 5060 Ti"]),
    "rtx-5070": ("RTX 5070", []),
    "rtx-5070-ti": ("RTX 5070 Ti", []),
    "rtx-5080": ("RTX 5080", []),
    "rtx-5090": ("RTX 5090", ["RTX 5090 32GB"]),
    "rtx-a4000": ("RTX A4000", ["A4000"]),
    "rtx-a5000": ("RTX A5000", ["A5000"]),
    "rtx-a6000": ("RTX A6000", ["A6000"]),
    "rtx-6000-ada": ("RTX 6000 Ada", ["RTX 6000 Ada Generation"]),
    "v100-pcie-16gb": ("V100 PCIe 16GB", ["V100 PCIe"]),
    "v100-pcie-32gb": ("V100 PCIe 32GB", []),
    "v100-sxm2-16gb": ("V100 16GB", ["V100", "V100 SXM2 16GB", "V100 SXM2"]),
    "v100-sxm2-32gb": ("V100 32GB", ["V100 SXM2 32GB"]),
    "t4": ("T4", ["Tesla T4"]),
    "a10": ("A10", ["A10 PCIe", "A10 24GB"]),
    "a40": ("A40", []),
    "a100-pcie-40gb": ("A100 PCIe 40GB", ["A100 PCIe"]),
    "a100-pcie-80gb": ("A100 PCIe 80GB", []),
    "a100-sxm4-40gb": ("A100 40GB", ["A100 SXM4 40GB", "A100 SXM 40GB"]),
    "a100-sxm4-80gb": ("A100 80GB", ["A100", "A100 SXM4 80GB", "A100 SXM 80GB", "A100 SXM4"]),
    "l4": ("L4", []),
    "l40": ("L40", []),
    "l40s": ("L40S", []),
    "h100-pcie": ("H100 PCIe", ["H100 PCIe 80GB"]),
    "h100-sxm": (
        "H100 SXM",
        ["H100", "H100 SXM5", "H100 80GB", "H100 SXM5 80GB", "H100 80GB HBM3"],
    ),
    "h100-nvl": ("H100 NVL", ["H100 NVL 94GB"]),
    "h200-sxm": ("H200", ["H200 SXM", "H200 SXM 141GB", "H200 141GB"]),
    "b200": ("B200", []),
}
# a10g: left out; no retrieved source gives its FP16 tensor rate.

# Gap fills: gpu_id -> (fp16 dense tensor TFLOPS, why). Turing GeForce tensor FP16 (FP16 accumulate)
# is 8 x the FP32 rate (check: RTX 2060 6.451 x 8 = 51.61, RTX 2070 7.465 x 8 = 59.72, both as
# listed). Pascal has no tensor cores: its FP32 rate stands in (llama.cpp computes in FP32 there).
FILLS: dict[str, tuple[float, str]] = {
    "gtx-1070": (6.463, "no tensor cores; fp16_tflops = fp32 rate (6.463)"),
    "gtx-1080": (8.873, "no tensor cores; fp16_tflops = fp32 rate (8.873)"),
    "gtx-1080-ti": (11.34, "no tensor cores; fp16_tflops = fp32 rate (11.34)"),
    "rtx-2060-12gb": (57.44, "Turing rule fp16 tensor = 8 x fp32 (7.18 x 8)"),
    "rtx-a4000": (76.7, "NVIDIA RTX A4000 datasheet: 153.4 TFLOPS tensor (sparse) / 2"),
    "rtx-a5000": (111.1, "NVIDIA RTX A5000 datasheet: 222.2 TFLOPS tensor (sparse) / 2"),
    "rtx-a6000": (154.8, "NVIDIA RTX A6000 datasheet: 309.7 TFLOPS tensor (sparse) / 2"),
    "rtx-6000-ada": (364.2, "NVIDIA RTX 6000 Ada datasheet: 1457 TFLOPS FP8 sparse / 4"),
}

# Cloud and vast.ai names -> gpu_id. vast rows are told apart by the instance type, since its
# AcceleratorName folds e.g. the 3060 Ti into "RTX3060"; A100 SXM4 by per-GPU memory.
AWS = {
    "NVIDIA T4": "t4",
    "NVIDIA L4": "l4",
    "NVIDIA L40S": "l40s",
    "NVIDIA V100": "v100-sxm2-16gb",
    "NVIDIA A100": "a100-sxm4-40gb",
    "NVIDIA H100": "h100-sxm",
    "NVIDIA H200": "h200-sxm",
    "NVIDIA B200 Blackwell": "b200",
}
AZURE = {
    "T4": "t4",
    "A10": "a10",
    "V100": "v100-pcie-16gb",
    "A100": "a100-sxm4-40gb",
    "A100-80GB": "a100-sxm4-80gb",
    "H100": "h100-sxm",
    "H200": "h200-sxm",
}
LAMBDA = {
    "A10": "a10",
    "A100": "a100-sxm4-40gb",
    "A100-80GB": "a100-sxm4-80gb",
    "A6000": "rtx-a6000",
    "H100": "h100-sxm",
    "B200": "b200",
    "V100": "v100-sxm2-16gb",
}
VAST = {
    "RTX_5090": "rtx-5090",
    "H200": "h200-sxm",
    "H100_SXM": "h100-sxm",
    "H100_NVL": "h100-nvl",
    "RTX_4090": "rtx-4090",
    "RTX_3090": "rtx-3090",
    "RTX_5070": "rtx-5070",
    "RTX_A5000": "rtx-a5000",
    "RTX_A6000": "rtx-a6000",
    "RTX_4070S_Ti": "rtx-4070-ti-super",
    "RTX_4060_Ti": "rtx-4060-ti-16gb",
    "RTX_3060": "rtx-3060-12gb",
    "RTX_3060_Ti": "rtx-3060-ti",
    "RTX_6000Ada": "rtx-6000-ada",
    "Tesla_V100": "v100-sxm2-16gb",
    "L40S": "l40s",
    "A100_PCIE": "a100-pcie-40gb",
}


def _read(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _per_gpu(price: str, count: str) -> float | None:
    n = float(count)
    if n < 1:  # fractional GPUs (Azure A10 slices, AWS g6f) are not a whole card
        return None
    return float(price) / n


def cloud_prices() -> dict[str, float]:
    by_type: dict[str, dict[str, list[float]]] = {}
    specs = [
        ("aws", "aws_gpu_instances.csv", AWS, "gpu_model", "gpu_count", "on_demand_usd_per_hour"),
        ("azure", "azure_gpu_vms.csv", AZURE, "AcceleratorName", "AcceleratorCount", "Price"),
        ("lambda", "lambda_gpu_vms.csv", LAMBDA, "AcceleratorName", "AcceleratorCount", "Price"),
    ]
    for provider, fname, mapping, name_col, count_col, price_col in specs:
        type_col = "instance_type" if provider == "aws" else "InstanceType"
        for row in _read(PRICES / fname):
            gid = mapping.get(row[name_col])
            if gid is None or not row[price_col]:
                continue
            p = _per_gpu(row[price_col], row[count_col])
            if p is not None and p > 0:
                key = f"{provider}:{row[type_col]}"
                by_type.setdefault(gid, {}).setdefault(key, []).append(p)
    return {
        gid: round(min(statistics.median(v) for v in types.values()), 3)
        for gid, types in by_type.items()
    }


def market_prices() -> dict[str, float]:
    found: dict[str, list[float]] = {}
    for row in _read(PRICES / "vast_gpu_offers.csv"):
        kind = row["InstanceType"].split("-", 1)[1].rsplit("-", 2)[0]
        gid = VAST.get(kind)
        if kind == "A100_SXM4":
            per_gpu_mib = float(row["GpuInfo"].split("'SizeInMiB': ")[1].split("}")[0])
            per_gpu_mib /= float(row["AcceleratorCount"])
            gid = "a100-sxm4-80gb" if per_gpu_mib > 60000 else "a100-sxm4-40gb"
        if gid is None:
            continue
        p = _per_gpu(row["Price"], row["AcceleratorCount"])
        if p is not None:
            found.setdefault(gid, []).append(p)
    return {gid: round(statistics.median(v), 3) for gid, v in found.items()}


def main() -> None:
    cloud, market = cloud_prices(), market_prices()
    rows = []
    for spec in _read(SPECS):
        gid = spec["gpu_id"]
        if gid not in NAMES:
            continue
        name, aliases = NAMES[gid]
        notes = [spec["notes"]] if spec["notes"] else []
        fp16 = spec["fp16_tensor_tflops_dense"]
        if gid in FILLS:
            fp16, why = str(FILLS[gid][0]), FILLS[gid][1]
            notes.append(f"fp16 gap fill: {why}")
        accumulate = spec["fp16_tensor_accumulate"] or "fp32"
        if spec["architecture"] == "Pascal":
            accumulate = "none"
        elif gid.startswith("rtx-2"):
            accumulate = "fp16"
        segment = spec["segment"]
        rows.append(
            {
                "gpu_id": gid,
                "name": name,
                "aliases": ";".join(aliases),
                "vendor": spec["vendor"],
                "segment": segment,
                "architecture": spec["architecture"],
                "vram_gb": spec["vram_gb"],
                "mem_bandwidth_gbs": spec["mem_bw_gbps"],
                "fp16_tflops": fp16,
                "fp16_accumulate": accumulate,
                "tdp_w": spec["tdp_w"],
                "cloud_usd_per_hour": cloud.get(gid, ""),
                "market_usd_per_hour": market.get(gid, ""),
                "source": spec["source"] + (" + gap fill (see notes)" if gid in FILLS else ""),
                "notes": " | ".join(notes),
            }
        )
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with OUT.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {len(rows)} GPUs to {OUT}")


if __name__ == "__main__":
    main()
