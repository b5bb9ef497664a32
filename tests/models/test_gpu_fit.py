"""n_gpu_layers=auto, with device lists made up for the test."""
from __future__ import annotations

from runtime.models.gguf_file import GGUFInfo, TensorInfo
from runtime.models.gpu_fit import fit_gpu_layers, kv_bytes_per_layer, layer_sizes
from runtime.native import DeviceInfo

GIB = 1 << 30
MIB = 1 << 20


def model(n_layer: int = 10, layer_mib: int = 100, output_mib: int = 50) -> GGUFInfo:
    info = GGUFInfo(path="m", version=3, size=0, alignment=32, data_offset=0, metadata={
        "general.architecture": "llama", "llama.block_count": n_layer,
        "llama.embedding_length": 1024, "llama.attention.head_count": 8,
        "llama.attention.head_count_kv": 8})
    for i in range(n_layer):
        info.tensors.append(TensorInfo(f"blk.{i}.ffn_up.weight", "F16", (1,), 0, layer_mib * MIB))
    info.tensors.append(TensorInfo("output.weight", "F16", (1,), 0, output_mib * MIB))
    info.tensors.append(TensorInfo("token_embd.weight", "F16", (1,), 0, 999 * MIB))
    return info


def gpu(free_gib: float, total_gib: float = 80.0, index: int = 1) -> DeviceInfo:
    return DeviceInfo(index, f"CUDA{index}", "test gpu", "gpu", int(free_gib * GIB),
                      int(total_gib * GIB))


CPU = DeviceInfo(0, "CPU", "cpu", "cpu", 64 * GIB, 64 * GIB)


def test_cpu_only_offloads_nothing() -> None:
    plan = fit_gpu_layers([CPU], model(), n_ctx=4096)
    assert plan.n_gpu_layers == 0 and "no GPU" in plan.reason


def test_everything_fits_on_a_big_gpu() -> None:
    plan = fit_gpu_layers([CPU, gpu(70)], model(), n_ctx=4096)
    assert plan.n_gpu_layers == -1
    assert plan.tensor_split == ()


def test_partial_fit_counts_layers_and_kv() -> None:
    info = model(n_layer=10, layer_mib=100)
    kv = kv_bytes_per_layer(info, 4096)
    assert kv == 4096 * 8 * (128 + 128) * 2
    # A 768 MiB reserve on 1.5 GiB free leaves 768 MiB: 6 layers of 100 MiB
    # plus 16 MiB of KV each fit, 7 do not.
    plan = fit_gpu_layers([gpu(1.5, total_gib=8.0)], info, n_ctx=4096)
    assert plan.n_gpu_layers == 6 == (768 * MIB) // (100 * MIB + kv)


def test_two_gpus_split_by_free_memory() -> None:
    plan = fit_gpu_layers([gpu(30, index=1), gpu(10, index=2)], model(), n_ctx=4096)
    assert plan.n_gpu_layers == -1
    assert len(plan.tensor_split) == 2
    assert plan.tensor_split[0] > plan.tensor_split[1]
    assert abs(sum(plan.tensor_split) - 1.0) < 1e-9


def test_no_free_memory_offloads_nothing() -> None:
    plan = fit_gpu_layers([gpu(0.5)], model(), n_ctx=4096)
    assert plan.n_gpu_layers == 0


def test_layer_sizes_skip_token_embedding() -> None:
    layers, output = layer_sizes(model(n_layer=3, layer_mib=10, output_mib=5))
    assert layers == [10 * MIB] * 3
    assert output == 5 * MIB
