"""Why a CUDA build serves on the CPU: no driver, no device, or too little memory.

The CUDA flavour's libraries load without a driver (they are built without
VMM, so they do not link libcuda), and ggml then lists no GPU: the models run
on the CPU.  The daemon says so in one log line at start and `hearth doctor`
in one finding, with the reason from `fallback_reason`, a pure function of
what `probe` gathers (so it is tested without a GPU).
"""
from __future__ import annotations

import ctypes
import glob
import os
from dataclasses import dataclass
from pathlib import Path

from runtime.models.gpu_fit import RESERVE_MIN

GIB = 1 << 30


@dataclass(frozen=True)
class GpuProbe:
    cuda_build: bool                 # the core says "cuda=1"
    driver: bool                     # the NVIDIA driver library loads
    device_nodes: int                # /dev/nvidia0, /dev/nvidia1, ...
    gpu_free_bytes: tuple[int, ...]  # per GPU that ggml lists


def fallback_reason(p: GpuProbe) -> str | None:
    """None when nothing falls back: a CPU build, or a usable GPU."""
    if not p.cuda_build:
        return None
    if p.gpu_free_bytes:
        if max(p.gpu_free_bytes) > RESERVE_MIN:
            return None
        return (f"too little free GPU memory ({max(p.gpu_free_bytes) / GIB:.2f} GiB free, "
                f"{RESERVE_MIN / GIB:.2f} GiB kept for the CUDA context)")
    if not p.driver:
        return "no NVIDIA driver (libcuda.so.1 does not load)"
    if not p.device_nodes:
        return "no NVIDIA device (/dev/nvidia0 and so on are absent)"
    return "the NVIDIA driver lists no device CUDA can use (a driver older than CUDA 13?)"


def _driver_loads() -> bool:
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return True


def probe() -> GpuProbe:
    from runtime.native import build_info, list_devices

    nodes = [p for p in glob.glob("/dev/nvidia[0-9]*") if not os.path.isdir(p)]
    gpus = tuple(d.free_bytes for d in list_devices() if d.type in ("gpu", "igpu"))
    cuda = "cuda=1" in build_info().split()
    return GpuProbe(cuda, cuda and (_driver_loads() or Path("/proc/driver/nvidia").exists()),
                    len(nodes), gpus)


def cpu_fallback() -> str | None:
    """The line to log when this CUDA build serves on the CPU, else None."""
    reason = fallback_reason(probe())
    return f"CUDA build, but {reason}: models run on the CPU" if reason else None
