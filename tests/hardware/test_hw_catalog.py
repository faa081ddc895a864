import pytest

from rigpool.core.errors import NotFound
from rigpool.hardware.catalog import cpu_spec, find_gpu, gpu_catalog, match_nvml_name

REQUIRED = [
    "RTX 2070",
    "RTX 2080",
    "RTX 3060 8GB",
    "RTX 3060 12GB",
    "RTX 3060 Ti",
    "RTX 3070",
    "RTX 3090",
    "RTX 4060",
    "RTX 4090",
    "RTX 5090",
    "T4",
    "A10",
    "L4",
    "L40S",
    "V100 16GB",
    "A100 40GB",
    "A100 80GB",
    "H100 SXM",
    "H200",
]


@pytest.mark.parametrize("name", REQUIRED)
def test_catalog_covers_required_cards(name: str) -> None:
    spec = gpu_catalog()[name]
    assert spec.vram_gb > 0 and spec.mem_bandwidth_gbs > 0 and spec.fp16_tflops > 0


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("rtx3060", "RTX 3060 12GB"),
        ("NVIDIA GeForce RTX 3060", "RTX 3060 12GB"),
        ("rtx-3060-8gb", "RTX 3060 8GB"),
        ("a100-80gb", "A100 80GB"),
        ("A100", "A100 80GB"),
        ("H100", "H100 SXM"),
        ("h100 pcie", "H100 PCIe"),
        ("Tesla T4", "T4"),
        ("geforce rtx 4090", "RTX 4090"),
    ],
)
def test_find_gpu_accepts_loose_names(query: str, expected: str) -> None:
    assert find_gpu(query).name == expected


def test_find_gpu_unknown_lists_close_matches() -> None:
    with pytest.raises(NotFound) as info:
        find_gpu("RTX 4900")
    assert "RTX 4090" in info.value.message


def test_find_gpu_cpu_returns_stand_in() -> None:
    assert find_gpu("cpu") == cpu_spec()
    assert cpu_spec().mem_bandwidth_gbs == 20.0


@pytest.mark.parametrize(
    ("nvml", "mib", "expected"),
    [
        ("NVIDIA GeForce RTX 3060", 12288, "RTX 3060 12GB"),
        ("NVIDIA GeForce RTX 3060", 8192, "RTX 3060 8GB"),
        ("NVIDIA GeForce RTX 4090", 24564, "RTX 4090"),
        ("NVIDIA GeForce RTX 4060 Ti", 16380, "RTX 4060 Ti 16GB"),
        ("NVIDIA A100-SXM4-80GB", 81920, "A100 80GB"),
        ("NVIDIA A100-SXM4-40GB", 40960, "A100 40GB"),
        ("NVIDIA A100-PCIE-40GB", 40960, "A100 PCIe 40GB"),
        ("NVIDIA H100 80GB HBM3", 81559, "H100 SXM"),
        ("NVIDIA H100 PCIe", 81559, "H100 PCIe"),
        ("NVIDIA H200", 143771, "H200"),
        ("Tesla T4", 15360, "T4"),
        ("Tesla V100-SXM2-16GB", 16384, "V100 16GB"),
        ("NVIDIA L40S", 46068, "L40S"),
    ],
)
def test_match_nvml_name(nvml: str, mib: int, expected: str) -> None:
    spec = match_nvml_name(nvml, mib)
    assert spec is not None and spec.name == expected


def test_match_nvml_name_rejects_laptops_and_unknowns() -> None:
    assert match_nvml_name("NVIDIA GeForce RTX 4090 Laptop GPU", 16376) is None
    assert match_nvml_name("Matrox G200", 16) is None
    assert match_nvml_name("NVIDIA GeForce RTX 4090", 2048) is None  # memory far off


def test_prices_come_from_the_price_lists() -> None:
    # vast.ai median for one RTX 4090 and the cheapest cloud instance for an H100 SXM.
    assert gpu_catalog()["RTX 4090"].market_usd_per_hour == pytest.approx(0.386, abs=0.01)
    assert gpu_catalog()["H100 SXM"].cloud_usd_per_hour is not None
    assert gpu_catalog()["RTX 2070"].usd_per_hour is None
