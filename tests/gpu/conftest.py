"""The GPU subset (`pytest -m gpu`, run by benchmarks/gpu/check.sh on a GPU
machine) and the CUDA flavour's CPU fallback.  Tests marked `gpu` skip where
ggml lists no GPU; `cuda_flavour` skips in the CPU flavour, naming why."""
from __future__ import annotations

import pytest

from runtime.native import build_info, list_devices


def is_cuda_build() -> bool:
    return "cuda=1" in build_info().split()


def gpus() -> list:
    return [d for d in list_devices() if d.type in ("gpu", "igpu")]


@pytest.fixture
def cuda_flavour() -> None:
    if not is_cuda_build():
        pytest.skip("the CPU flavour: this checks the CUDA build (make setup CUDA=1)")


@pytest.fixture
def gpu() -> None:
    if not gpus():
        pytest.skip("ggml lists no GPU here (benchmarks/gpu/check.sh runs these on one)")
