"""The trainable vector <-> llama.cpp LoRA GGUF conversions (numpy only)."""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest

from runtime import errors
from runtime.federation.train import (
    LoraSpec,
    adapter_from_trainable,
    initial_a,
    lora_layout,
    trainable_from_adapter,
    trainable_size,
)

# The tiny model: 2 layers, 64 wide, 4 heads of 16 with 2 key/value heads, FFN 128.
IN_OUT = {"attn_q": (64, 64), "attn_k": (64, 32), "attn_v": (64, 32),
          "attn_output": (64, 64), "ffn_gate": (64, 128), "ffn_up": (64, 128),
          "ffn_down": (128, 64)}


def read_adapter(data: bytes, tmp_path: Path) -> tuple[dict[str, object], dict[str, np.ndarray]]:
    """The metadata and tensors of adapter bytes, read by the gguf package
    (an independent reader) from a file in the test's directory."""
    path = tmp_path / "adapter.gguf"
    path.write_bytes(data)
    reader = gguf.GGUFReader(path)
    meta = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    tensors = {t.name: np.array(t.data).reshape([int(d) for d in reversed(t.shape)])
               for t in reader.tensors}
    return meta, tensors


def random_vector(layout: object, spec: LoraSpec, seed: int = 5) -> np.ndarray:
    size = trainable_size(layout, spec)  # type: ignore[arg-type]
    return np.random.default_rng(seed).standard_normal(size).astype(np.float32)


def test_layout_lists_targets_block_by_block(tiny_model: Path) -> None:
    spec = LoraSpec()
    layout = lora_layout(tiny_model, spec)
    assert layout.arch == "llama"
    assert [(s.block, s.target) for s in layout.sites] == [
        (b, t) for b in range(2) for t in spec.targets]
    for s in layout.sites:
        assert s.tensor == f"blk.{s.block}.{s.target}.weight"
        assert (s.in_dim, s.out_dim) == IN_OUT[s.target]
    assert trainable_size(layout, spec) == 2 * 8 * sum(o for _, o in IN_OUT.values())
    fedavg = LoraSpec(scheme="fedavg")
    assert trainable_size(layout, fedavg) == 2 * 8 * sum(i + o for i, o in IN_OUT.values())


def test_initial_a_is_pinned_to_the_seed(tiny_model: Path) -> None:
    """Every site must draw the same A from the seed, whatever machine and
    numpy version: these values pin numpy's PCG64 normal stream."""
    spec = LoraSpec(rank=2, targets=("attn_q",), seed=0)
    a = initial_a(lora_layout(tiny_model, spec), spec)
    assert [x.shape for x in a] == [(2, 64), (2, 64)]
    assert all(x.dtype == np.float32 for x in a)
    np.testing.assert_allclose(a[0][0, :3] * 8, [0.12573022, -0.13210486, 0.64042265],
                               rtol=1e-6)
    again = initial_a(lora_layout(tiny_model, spec), spec)
    assert all(np.array_equal(x, y) for x, y in zip(a, again, strict=True))
    other = initial_a(lora_layout(tiny_model, spec), dataclasses.replace(spec, seed=1))
    assert not np.array_equal(a[0], other[0])


@pytest.mark.parametrize("scheme", ["ffa", "fedavg"])
def test_round_trip_and_the_file_llama_cpp_reads(tiny_model: Path, tmp_path: Path,
                                                 scheme: str) -> None:
    spec = LoraSpec(rank=4, alpha=8.0, scheme=scheme, seed=2)
    layout = lora_layout(tiny_model, spec)
    v = random_vector(layout, spec)
    data = adapter_from_trainable(layout, spec, v)
    assert np.array_equal(trainable_from_adapter(layout, spec, data), v)

    meta, tensors = read_adapter(data, tmp_path)
    assert meta["general.type"] == "adapter" and meta["adapter.type"] == "lora"
    assert meta["general.architecture"] == "llama"
    assert meta["adapter.lora.alpha"] == pytest.approx(8.0)
    assert len(tensors) == 2 * len(layout.sites)
    # The vector's order: per site, (A if trained, then) B, row-major.
    first = layout.sites[0]
    a = tensors[f"{first.tensor}.lora_a"]
    b = tensors[f"{first.tensor}.lora_b"]
    assert a.shape == (4, first.in_dim) and b.shape == (first.out_dim, 4)
    if scheme == "ffa":
        assert np.array_equal(a, initial_a(layout, spec)[0])
        assert np.array_equal(b.ravel(), v[:b.size])
    else:
        assert np.array_equal(a.ravel(), v[:a.size])
        assert np.array_equal(b.ravel(), v[a.size:a.size + b.size])


def test_adapters_that_do_not_match_are_refused(tiny_model: Path) -> None:
    spec = LoraSpec(rank=4, alpha=8.0, seed=2)
    layout = lora_layout(tiny_model, spec)
    good = adapter_from_trainable(layout, spec, random_vector(layout, spec))

    def refused(data: bytes, match: str, as_spec: LoraSpec = spec) -> None:
        with pytest.raises(errors.InvalidArgument, match=match):
            trainable_from_adapter(lora_layout(tiny_model, as_spec), as_spec, data)

    refused(b"GGUF" + os.urandom(100), "GGUF")
    refused(good[:len(good) // 2], "GGUF")
    refused(good, "alpha", dataclasses.replace(spec, alpha=16.0))
    refused(good, "tensors do not match", dataclasses.replace(spec, targets=("attn_q",)))
    refused(good, "expected F32", dataclasses.replace(spec, rank=8))
    refused(good, "shared A of seed 3", dataclasses.replace(spec, seed=3))
    fedavg = dataclasses.replace(spec, scheme="fedavg")
    assert trainable_from_adapter(layout, fedavg, good).size == trainable_size(layout, fedavg)
    model_file = tiny_model.read_bytes()
    refused(model_file, "general.type")


def test_bad_vectors_and_specs_are_refused(tiny_model: Path) -> None:
    spec = LoraSpec()
    layout = lora_layout(tiny_model, spec)
    v = random_vector(layout, spec)
    for bad, match in ((v[:-1], "shape"), (v.reshape(2, -1), "shape"),
                       (np.where(np.arange(v.size) == 7, np.nan, v), "non-finite"),
                       (np.full(v.size, np.inf), "non-finite")):
        with pytest.raises(errors.InvalidArgument, match=match):
            adapter_from_trainable(layout, spec, bad)
    with pytest.raises(errors.InvalidArgument, match="layout adapts"):
        adapter_from_trainable(layout, LoraSpec(targets=("attn_q",)), v)
    for kwargs in ({"rank": 0}, {"alpha": 0.0}, {"alpha": float("nan")}, {"scheme": "sgd"},
                   {"targets": ()}, {"targets": ("attn_q", "attn_q")}, {"targets": ("lm",)},
                   {"seed": -1}):
        with pytest.raises(errors.InvalidArgument):
            LoraSpec(**kwargs)  # type: ignore[arg-type]


def test_other_architectures_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "qwen.gguf"
    w = gguf.GGUFWriter(str(path), "qwen2")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(errors.InvalidArgument, match="'qwen2' architecture"):
        lora_layout(path, LoraSpec())


def test_the_vector_part_imports_without_torch(tiny_model: Path) -> None:
    """The coordinator builds adapters on machines without torch."""
    code = ("import sys; sys.modules['torch'] = None\n"
            "from runtime.federation.train import LoraSpec, lora_layout, trainable_size, "
            "adapter_from_trainable\n"
            "import numpy as np\n"
            "spec = LoraSpec(); layout = lora_layout(sys.argv[1], spec)\n"
            "data = adapter_from_trainable(layout, spec, np.zeros(trainable_size(layout, spec)))\n"
            "assert data[:4] == b'GGUF'\n"
            "try:\n"
            "    from runtime.federation.train import LoraTrainer\n"
            "except ImportError:\n"
            "    print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code, str(tiny_model)], capture_output=True,
                         text=True, timeout=60, check=False)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
