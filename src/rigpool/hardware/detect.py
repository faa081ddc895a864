"""Detecting this machine's NVIDIA GPUs through NVML (the `nvidia-ml-py` bindings).

NVML ships with the driver, so detection needs neither CUDA nor PyTorch: an agent can say what it
has before loading any model. Where there is no driver, `detect_gpus` says why in one line.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DetectedGpu:
    index: int
    name: str
    vram_mb: int
    uuid: str
    driver: str


def detect_gpus() -> tuple[list[DetectedGpu], str]:
    """Return (GPUs, message). An empty list comes with the reason none were found."""
    try:
        import pynvml
    except ImportError:
        return [], "nvidia-ml-py is not installed; running without GPUs"
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return [], f"no NVIDIA driver found ({exc}); running on CPU"
    try:
        driver = _text(pynvml.nvmlSystemGetDriverVersion())
        gpus = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            gpus.append(
                DetectedGpu(
                    index=index,
                    name=_text(pynvml.nvmlDeviceGetName(handle)),
                    vram_mb=int(memory.total) // (1024 * 1024),
                    uuid=_text(pynvml.nvmlDeviceGetUUID(handle)),
                    driver=driver,
                )
            )
    except pynvml.NVMLError as exc:
        return [], f"NVML failed while listing GPUs ({exc}); running on CPU"
    finally:
        pynvml.nvmlShutdown()
    if not gpus:
        return [], "NVIDIA driver present but no GPU visible; running on CPU"
    names = ", ".join(f"{g.name} ({g.vram_mb} MiB)" for g in gpus)
    return gpus, f"found {len(gpus)} NVIDIA GPU(s): {names} (driver {driver})"


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value
