"""The frozen base weights of a GGUF model as float32 torch tensors.

Every tensor is dequantized once with the gguf package and kept in its GGUF
layout (a weight is out x in, rows as stored), so the forward pass computes
exactly what llama.cpp computes from the same file: no q/k permutation, no
renaming.  A tensor the forward pass would not use is refused rather than
ignored, since ignoring it would silently compute a different model.
"""
from __future__ import annotations

from dataclasses import dataclass

import gguf
import numpy as np
import torch

from runtime.errors import InvalidArgument
from runtime.federation.train.hparams import ModelHParams
from runtime.models.gguf_file import GGUFInfo

# Per-block tensors each architecture's graph reads (src/models/*.cpp).
_BLOCK_TENSORS = {
    "llama": ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm",
              "ffn_gate", "ffn_up", "ffn_down"),
    "gemma3": ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_q_norm", "attn_k_norm",
               "attn_output", "post_attention_norm", "ffn_norm", "ffn_gate", "ffn_up",
               "ffn_down", "post_ffw_norm"),
}
_OPTIONAL = {
    "llama": ("output.weight", "rope_freqs.weight"),   # tied head; llama 3 rope factors
    "gemma3": ("output.weight",),
}


@dataclass
class BaseWeights:
    token_embd: torch.Tensor            # n_vocab x n_embd
    output_norm: torch.Tensor
    output: torch.Tensor                # the same tensor as token_embd when tied
    rope_freqs: np.ndarray | None       # divides the RoPE angles (llama 3)
    blocks: list[dict[str, torch.Tensor]]


def _expected(hp: ModelHParams) -> tuple[set[str], set[str]]:
    required = {"token_embd.weight", "output_norm.weight"}
    required |= {f"blk.{i}.{name}.weight" for i in range(hp.n_layer)
                 for name in _BLOCK_TENSORS[hp.arch]}
    return required, set(_OPTIONAL[hp.arch])


def load_weights(info: GGUFInfo, hp: ModelHParams) -> BaseWeights:
    required, optional = _expected(hp)
    present = {t.name for t in info.tensors}
    missing = sorted(required - present)
    unknown = sorted(present - required - optional)
    if missing or unknown:
        raise InvalidArgument(f"the {hp.arch} model does not have the tensors the LoRA trainer "
                              f"implements (missing: {missing[:3]}, not implemented: "
                              f"{unknown[:3]})")
    raw = np.memmap(info.path, dtype=np.uint8, mode="r")
    tensors: dict[str, np.ndarray] = {}
    for t in info.tensors:
        start = info.data_offset + t.offset
        try:
            qtype = gguf.GGMLQuantizationType[t.type_name]
            values = gguf.quants.dequantize(raw[start:start + t.nbytes], qtype)
        except (KeyError, NotImplementedError) as exc:
            raise InvalidArgument(f"tensor {t.name} has type {t.type_name}, which the LoRA "
                                  "trainer cannot dequantize") from exc
        # F32 tensors come back as views of the read-only file mapping; the
        # others are fresh arrays that need no second copy.
        shared = np.may_share_memory(values, raw)
        values = np.array(values, dtype=np.float32, copy=True if shared else None)
        # GGUF dimensions run innermost first; numpy's outermost first.
        tensors[t.name] = values.reshape(t.dims[::-1])
    del raw

    def tensor(name: str) -> torch.Tensor:
        return torch.from_numpy(tensors.pop(name))

    token_embd = tensor("token_embd.weight")
    blocks = [{name: tensor(f"blk.{i}.{name}.weight") for name in _BLOCK_TENSORS[hp.arch]}
              for i in range(hp.n_layer)]
    for i, block in enumerate(blocks):
        _check_block_shapes(hp, i, block)
    output = tensor("output.weight") if "output.weight" in tensors else token_embd
    if output.shape != token_embd.shape:
        raise InvalidArgument(f"output.weight has shape {tuple(output.shape)}, expected "
                              f"{tuple(token_embd.shape)}")
    rope_freqs = tensors.pop("rope_freqs.weight", None)
    if rope_freqs is not None and rope_freqs.shape != (hp.n_rot // 2,):
        raise InvalidArgument(f"rope_freqs.weight has shape {rope_freqs.shape}, expected "
                              f"({hp.n_rot // 2},)")
    return BaseWeights(token_embd=token_embd, output_norm=tensor("output_norm.weight"),
                       output=output, rope_freqs=rope_freqs, blocks=blocks)


def _check_block_shapes(hp: ModelHParams, i: int, block: dict[str, torch.Tensor]) -> None:
    q_dim, k_dim, v_dim = (hp.n_head * hp.head_dim_k, hp.n_head_kv * hp.head_dim_k,
                           hp.n_head_kv * hp.head_dim_v)
    shapes = {
        "attn_q": (q_dim, hp.n_embd), "attn_k": (k_dim, hp.n_embd),
        "attn_v": (v_dim, hp.n_embd), "attn_output": (hp.n_embd, hp.n_head * hp.head_dim_v),
        "ffn_gate": (hp.n_ff, hp.n_embd), "ffn_up": (hp.n_ff, hp.n_embd),
        "ffn_down": (hp.n_embd, hp.n_ff),
        "attn_q_norm": (hp.head_dim_k,), "attn_k_norm": (hp.head_dim_k,),
    }
    for name, value in block.items():
        expected = shapes.get(name, (hp.n_embd,))
        if tuple(value.shape) != expected:
            raise InvalidArgument(f"blk.{i}.{name}.weight has shape {tuple(value.shape)}, "
                                  f"expected {expected}")
