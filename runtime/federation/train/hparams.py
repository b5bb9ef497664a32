"""The hyperparameters of a base model, read from its GGUF header the way
llama.cpp reads them, so that the trainer computes what the engine computes.

Pure Python: the coordinator needs the tensor shapes without torch.  The
defaults below are llama.cpp's (src/llama-model.cpp, src/llama-hparams.h and
the per-architecture files in src/models/), for the version Hearth builds.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime.errors import InvalidArgument
from runtime.models.gguf_file import GGUFInfo, inspect_gguf

SUPPORTED_ARCHS = ("llama", "gemma3")

# llama.cpp rotates adjacent pairs (x0, x1) for llama ("NORM") and pairs half
# a head apart (x0, x_{n/2}) for gemma3 ("NEOX"); the GGUF converter permutes
# llama's q/k rows so that NORM is right for the file as stored.
ROPE_NORM, ROPE_NEOX = "norm", "neox"
_ROPE_TYPE = {"llama": ROPE_NORM, "gemma3": ROPE_NEOX}


@dataclass(frozen=True)
class ModelHParams:
    arch: str
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim_k: int
    head_dim_v: int
    n_rot: int                   # leading dimensions of each head that RoPE rotates
    n_ff: int
    n_vocab: int
    n_ctx_train: int
    rms_eps: float
    rope_type: str
    rope_base: float
    rope_scale: float            # positions are multiplied by this (1/linear factor)
    rope_base_swa: float         # local (sliding-window) layers use their own base
    rope_scale_swa: float
    n_swa: int                   # 0: no sliding window
    swa_layers: tuple[bool, ...]
    attn_scale: float            # multiplies q.k
    embed_scale: float           # multiplies the token embeddings
    logit_softcap: float         # 0: none

    def layer_rope(self, layer: int) -> tuple[float, float]:
        """(base, position scale) of RoPE in `layer`."""
        if self.swa_layers[layer]:
            return self.rope_base_swa, self.rope_scale_swa
        return self.rope_base, self.rope_scale


def read_hparams(path: str | Path) -> tuple[ModelHParams, GGUFInfo]:
    """Reads and checks a model's header (Hearth's strict reader: 0.2 s for
    Gemma, where gguf.GGUFReader spends 20 s decoding the vocabulary)."""
    info = inspect_gguf(path)
    return hparams_from_info(info), info


def hparams_from_info(info: GGUFInfo) -> ModelHParams:
    arch = info.architecture
    if arch not in SUPPORTED_ARCHS:
        raise InvalidArgument(f"the LoRA trainer does not support the {arch!r} architecture "
                              f"(supported: {', '.join(SUPPORTED_ARCHS)})")
    meta = info.metadata
    dims = {t.name: t.dims for t in info.tensors}

    def get(key: str, kind: type, default: Any = None) -> Any:
        value = meta.get(f"{arch}.{key}", default)
        if value is None:
            raise InvalidArgument(f"model metadata lacks {arch}.{key}")
        # Per-layer arrays (a head count per layer) come back as lists.
        if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise InvalidArgument(f"{arch}.{key} = {value!r}: expected one integer")
        if kind is float and not isinstance(value, int | float):
            raise InvalidArgument(f"{arch}.{key} = {value!r}: expected a number")
        return kind(value)

    n_layer = get("block_count", int)
    n_embd = get("embedding_length", int)
    n_head = get("attention.head_count", int)
    n_head_kv = get("attention.head_count_kv", int, n_head)
    head_dim_k = get("attention.key_length", int, n_embd // max(n_head, 1))
    head_dim_v = get("attention.value_length", int, n_embd // max(n_head, 1))
    n_rot = get("rope.dimension_count", int, head_dim_k)
    if min(n_layer, n_embd, n_head, n_head_kv, head_dim_k, head_dim_v) <= 0 \
            or n_head % n_head_kv or n_rot % 2 or not 0 < n_rot <= head_dim_k:
        raise InvalidArgument(f"model hyperparameters are inconsistent: {n_layer} layers, "
                              f"{n_embd} wide, {n_head}/{n_head_kv} heads, head dims "
                              f"{head_dim_k}/{head_dim_v}, {n_rot} rotated")

    scaling = str(meta.get(f"{arch}.rope.scaling.type", "linear"))
    if scaling not in ("none", "linear"):
        raise InvalidArgument(f"RoPE scaling {scaling!r} is not supported by the LoRA trainer")
    factor = get("rope.scaling.factor", float, meta.get(f"{arch}.rope.scale_linear", 0.0))
    rope_scale = 1.0 if factor == 0.0 or scaling == "none" else 1.0 / factor

    n_swa, swa_layers = 0, (False,) * n_layer
    if arch == "gemma3":
        n_swa = get("attention.sliding_window", int, 0)
        if n_swa > 0:
            swa_layers = _swa_layers(meta.get(f"{arch}.attention.sliding_window_pattern", 6),
                                     n_layer)
        # llama.cpp's gemma3 scale: the 27B model (62 layers) uses the model
        # width per head, the others the stored key length.
        attn_scale = 1.0 / math.sqrt(n_embd / n_head if n_layer == 62 else head_dim_k)
        embed_scale = math.sqrt(n_embd)
        softcap = get("final_logit_softcapping", float, 0.0)
    else:
        attn_scale, embed_scale, softcap = 1.0 / math.sqrt(head_dim_k), 1.0, 0.0

    embd = dims.get("token_embd.weight")
    if embd is None or len(embd) != 2 or embd[0] != n_embd:
        raise InvalidArgument(f"token_embd.weight has dimensions {embd}, expected "
                              f"({n_embd}, n_vocab)")
    ff_gate = dims.get("blk.0.ffn_gate.weight")
    n_ff = get("feed_forward_length", int, ff_gate[1] if ff_gate else None)
    return ModelHParams(
        arch=arch, n_layer=n_layer, n_embd=n_embd, n_head=n_head, n_head_kv=n_head_kv,
        head_dim_k=head_dim_k, head_dim_v=head_dim_v, n_rot=n_rot, n_ff=n_ff,
        n_vocab=int(embd[1]), n_ctx_train=get("context_length", int, 2048),
        rms_eps=get("attention.layer_norm_rms_epsilon", float),
        rope_type=_ROPE_TYPE[arch], rope_base=get("rope.freq_base", float, 10000.0),
        rope_scale=rope_scale,
        # llama.cpp gives local layers base 10000 and no scaling unless the file says.
        rope_base_swa=get("rope.freq_base_swa", float, 10000.0), rope_scale_swa=1.0,
        n_swa=n_swa, swa_layers=swa_layers, attn_scale=attn_scale, embed_scale=embed_scale,
        logit_softcap=softcap)


def _swa_layers(pattern: object, n_layer: int) -> tuple[bool, ...]:
    """Which layers slide: an explicit per-layer list, or every layer but the
    last of each group of `pattern` (gemma3: five local, then one global)."""
    if isinstance(pattern, list):
        if len(pattern) != n_layer:
            raise InvalidArgument(f"sliding_window_pattern has {len(pattern)} entries for "
                                  f"{n_layer} layers")
        return tuple(bool(v) for v in pattern)
    if not isinstance(pattern, int) or isinstance(pattern, bool) or pattern < 0:
        raise InvalidArgument(f"sliding_window_pattern {pattern!r} is not a layer count")
    return tuple(pattern == 0 or i % pattern < pattern - 1 for i in range(n_layer))
