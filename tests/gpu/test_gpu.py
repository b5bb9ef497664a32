"""The engine on a GPU: `pytest -m gpu`, run by benchmarks/gpu/check.sh.

Each test skips where ggml lists no GPU, so none of them can pass here on
the CPU; they were written against the CPU tests they mirror
(tests/native/test_engine.py, test_adapters.py, test_speculative.py) and
run only on a GPU machine.  Every one fails if the engine silently stays on
the CPU: they check ggml's free memory dropping, or the offload count."""
from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.models.gguf_file import inspect_gguf
from runtime.models.gpu_fit import fit_gpu_layers
from runtime.models.tiny import write_tiny_lora, write_tiny_model
from runtime.native import (
    EngineParams,
    NativeEngine,
    RequestParams,
    Sampling,
    list_devices,
)
from tests.native.helpers import collect

pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("gpu")]
GREEDY = Sampling(temperature=0.0)
PROMPTS = ["the patient", "a quiet morning", "seven rivers", "under the bridge"]


def gpu_free() -> int:
    return sum(d.free_bytes for d in list_devices() if d.type in ("gpu", "igpu"))


def engine(model: Path | None = None, fd: int = -1, **kw: object) -> NativeEngine:
    params = {"n_ctx": 4096, "n_parallel": 4, "n_threads": 4, "n_threads_batch": 4,
              "n_gpu_layers": -1, **kw}
    return NativeEngine(EngineParams(model_path=str(model) if model else None, model_fd=fd,
                                     **params))  # type: ignore[arg-type]


def greedy(e: NativeEngine, prompts: list[str] = PROMPTS, n: int = 32, **kw: object) -> list:
    reqs = [e.submit(RequestParams(prompt=e.tokenize(p), max_tokens=n, sampling=GREEDY,
                                   ignore_eos=True, **kw))  # type: ignore[arg-type]
            for p in prompts]
    try:
        res = collect(e, reqs)
        return [res[r.id] for r in reqs]
    finally:
        for r in reqs:
            r.free()


@pytest.fixture
def on_gpu(tiny_model: Path) -> Iterator[NativeEngine]:
    e = engine(tiny_model)
    yield e
    e.close()


def test_all_layers_offload_and_generate(tiny_model: Path) -> None:
    before = gpu_free()
    e = engine(tiny_model, n_ctx=32768)
    try:
        assert e.info.n_gpu_layers != 0
        assert gpu_free() < before            # the KV cache and weights are on the GPU
        out = greedy(e)
        assert all(len(tokens) == 32 for tokens, _, _ in out)
    finally:
        e.close()


def test_gpu_and_cpu_agree_on_the_first_tokens(on_gpu: NativeEngine, tiny_model: Path) -> None:
    """Same model, same prompts: the GPU's first greedy tokens are the CPU's
    (later ones may part at float near-ties)."""
    cpu = engine(tiny_model, n_gpu_layers=0)
    try:
        want = greedy(cpu, n=4)
    finally:
        cpu.close()
    got = greedy(on_gpu, n=4)
    agree = sum(a[0][:2] == b[0][:2] for a, b in zip(want, got, strict=True))
    assert agree >= len(PROMPTS) - 1


def test_auto_fits_the_real_free_memory(tmp_path: Path) -> None:
    """n_gpu_layers=auto from what the GPU has free now: with most of the
    memory taken by another allocation (PyTorch's, where it is installed),
    only some layers are planned, and the engine loads them without running
    out of memory."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("PyTorch sees no GPU: cannot take memory away from ggml")
    model = write_tiny_model(tmp_path / "wide.gguf", n_layer=8, n_embd=1024, n_ff=4096)
    info = inspect_gguf(model)
    full = fit_gpu_layers(list_devices(), info, 4096)
    assert full.n_gpu_layers == -1, full.reason
    gpu = next(d for d in list_devices() if d.type in ("gpu", "igpu"))
    layer = model.stat().st_size // 8
    keep = max(768 << 20, gpu.total_bytes // 20) + int(3.5 * layer)
    ballast = torch.empty(max(0, gpu.free_bytes - keep), dtype=torch.uint8, device="cuda")
    try:
        plan = fit_gpu_layers(list_devices(), info, 4096)
        assert 0 < plan.n_gpu_layers < 8, plan.reason
        e = engine(model, n_gpu_layers=plan.n_gpu_layers, n_parallel=1)
        try:
            assert e.info.n_gpu_layers == plan.n_gpu_layers
            assert len(greedy(e, PROMPTS[:1], n=8)[0][0]) == 8
        finally:
            e.close()
    finally:
        del ballast
        torch.cuda.empty_cache()


def test_sealed_memfd_loads_onto_the_gpu(tiny_model: Path) -> None:
    """The sealed store's path: the weights only in a sealed memfd."""
    fd = os.memfd_create("hearth-model", os.MFD_ALLOW_SEALING | os.MFD_CLOEXEC)
    try:
        os.write(fd, tiny_model.read_bytes())
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS,
                    fcntl.F_SEAL_WRITE | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK)
        before = gpu_free()
        e = engine(fd=fd)
    finally:
        os.close(fd)
    try:
        assert e.info.n_gpu_layers != 0 and gpu_free() < before
        assert all(len(tokens) == 32 for tokens, _, _ in greedy(e))
    finally:
        e.close()


def test_adapter_on_the_gpu(on_gpu: NativeEngine, tmp_path: Path) -> None:
    lora = write_tiny_lora(tmp_path / "a.gguf", seed=1)
    base = greedy(on_gpu, PROMPTS[:1])[0][0]
    aid = on_gpu.load_adapter(str(lora))
    assert greedy(on_gpu, PROMPTS[:1], adapter=aid)[0][0] != base
    assert greedy(on_gpu, PROMPTS[:1])[0][0] == base
    on_gpu.unload_adapter(aid)


def test_speculative_decoding_on_the_gpu(on_gpu: NativeEngine, tiny_model: Path,
                                         tmp_path: Path) -> None:
    """A draft on the GPU too: output identical to decoding without it."""
    sibling = write_tiny_model(tmp_path / "draft.gguf", n_layer=1)
    expected = greedy(on_gpu, n=64)
    e = engine(tiny_model, draft_path=str(sibling), draft_n_gpu_layers=-1)
    try:
        got = greedy(e, n=64)
    finally:
        e.close()
    for (tokens, _, _), (spec, _, out) in zip(expected, got, strict=True):
        assert spec == tokens
        assert out.n_drafted > 0
