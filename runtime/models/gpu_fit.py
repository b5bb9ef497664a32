"""n_gpu_layers = "auto": how many layers, and their KV, fit on the GPUs.

A pure function of the device list (free memory as ggml's backend device API
reports it) and the model's tensor sizes (from its GGUF header), so it is
tested without a GPU.  Layers are offloaded from the last one backwards, as
llama.cpp does; when all of them fit together with the output layer, the
answer is -1 (everything).  Several GPUs share the layers in proportion to
their free memory.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from runtime.models.gguf_file import GGUFInfo
from runtime.native import DeviceInfo

_BLOCK = re.compile(r"^blk\.(\d+)\.")
# Room left on each device for compute buffers and the CUDA context.
RESERVE_MIN = 768 << 20


@dataclass(frozen=True)
class GpuPlan:
    n_gpu_layers: int
    tensor_split: tuple[float, ...]
    reason: str


def kv_bytes_per_layer(info: GGUFInfo, n_ctx: int, bytes_per_value: float = 2.0) -> int:
    n_embd = info.arch_int("embedding_length")
    n_head = max(1, info.arch_int("attention.head_count", 1))
    n_head_kv = info.arch_int("attention.head_count_kv", n_head) or n_head
    k_len = info.arch_int("attention.key_length", n_embd // n_head)
    v_len = info.arch_int("attention.value_length", n_embd // n_head)
    return int(n_ctx * n_head_kv * (k_len + v_len) * bytes_per_value)


def layer_sizes(info: GGUFInfo) -> tuple[list[int], int]:
    """Bytes of each repeating layer, and of the output tensors (the token
    embedding stays in host memory, so it is not counted)."""
    n_layer = info.arch_int("block_count")
    layers = [0] * n_layer
    output = 0
    for t in info.tensors:
        m = _BLOCK.match(t.name)
        if m and int(m.group(1)) < n_layer:
            layers[int(m.group(1))] += t.nbytes
        elif not t.name.startswith("token_embd"):
            output += t.nbytes
    return layers, output


def fit_gpu_layers(devices: Sequence[DeviceInfo], info: GGUFInfo, n_ctx: int,
                   kv_bytes_per_value: float = 2.0) -> GpuPlan:
    gpus = [d for d in devices if d.type in ("gpu", "igpu")]
    if not gpus:
        return GpuPlan(0, (), "no GPU visible to ggml: running on the CPU")
    usable = [max(0, d.free_bytes - max(RESERVE_MIN, d.total_bytes // 20)) for d in gpus]
    budget = sum(usable)
    layers, output = layer_sizes(info)
    kv = kv_bytes_per_layer(info, n_ctx, kv_bytes_per_value)
    used = 0
    n = 0
    for size in reversed(layers):
        if used + size + kv > budget:
            break
        used += size + kv
        n += 1
    split = tuple(u / budget for u in usable) if len(gpus) > 1 and budget > 0 else ()
    gib = 1 << 30
    if n == len(layers) and used + output <= budget:
        return GpuPlan(-1, split, f"all {n} layers and the output fit in "
                                  f"{budget / gib:.1f} GiB of free GPU memory")
    return GpuPlan(n, split, f"{n} of {len(layers)} layers fit in {budget / gib:.1f} GiB of "
                             "free GPU memory")
