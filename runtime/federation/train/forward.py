"""The forward pass of a llama or gemma3 model with LoRA, as llama.cpp runs it.

Everything follows llama.cpp's graph for the architecture (src/models/
llama.cpp and gemma3.cpp) on the GGUF tensors as stored, so that the logits
here are the engine's logits: the test proves it against the engine.

One call computes a "packed" row: several sequences laid end to end, each
with its own positions, which attend only within themselves.  Training
packs short texts into one row this way without letting them see each other.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from runtime.federation.train.hparams import ROPE_NORM, ModelHParams
from runtime.federation.train.weights import BaseWeights

# Site tensor name ("blk.3.attn_q.weight") -> (A rank x in, B out x rank).
LoraWeights = Mapping[str, tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class PackedRow:
    tokens: torch.Tensor       # [T] int64
    positions: np.ndarray      # [T] each token's position in its own sequence
    sequence: torch.Tensor     # [T] which sequence each token belongs to


def pack(sequences: list[list[int]]) -> PackedRow:
    tokens = [t for seq in sequences for t in seq]
    positions = np.concatenate([np.arange(len(seq)) for seq in sequences])
    ids = np.concatenate([np.full(len(seq), i) for i, seq in enumerate(sequences)])
    return PackedRow(torch.tensor(tokens, dtype=torch.int64), positions, torch.from_numpy(ids))


def rope_tables(positions: np.ndarray, n_rot: int, base: float, scale: float,
                freq_factors: np.ndarray | None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin [T, n_rot/2] of each rotated pair's angle.  llama.cpp
    (ggml_rope_cache_init) reaches the angle of pair i by multiplying the
    position by base^(-2/n_rot) i times in float32; doing the same rounding
    here keeps long positions in step with the engine."""
    step = np.float32(base) ** np.float32(-2.0 / n_rot)
    theta = np.empty((len(positions), n_rot // 2), np.float32)
    current = positions.astype(np.float32)
    for i in range(n_rot // 2):
        theta[:, i] = current
        current = current * step
    if freq_factors is not None:
        theta /= freq_factors.astype(np.float32)
    theta *= np.float32(scale)
    return (torch.from_numpy(np.cos(theta.astype(np.float64)).astype(np.float32)),
            torch.from_numpy(np.sin(theta.astype(np.float64)).astype(np.float32)))


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rope_type: str
               ) -> torch.Tensor:
    """x [T, heads, head_dim]: rotates the first n_rot dimensions of each head.
    NORM pairs adjacent values (2i, 2i+1); NEOX pairs i with i + n_rot/2."""
    n_rot = 2 * cos.shape[-1]
    rotated, rest = x[..., :n_rot], x[..., n_rot:]
    cos, sin = cos[:, None, :], sin[:, None, :]
    if rope_type == ROPE_NORM:
        x0, x1 = rotated[..., 0::2], rotated[..., 1::2]
        out = torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1).flatten(-2)
    else:
        x0, x1 = rotated[..., :n_rot // 2], rotated[..., n_rot // 2:]
        out = torch.cat((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1)
    return torch.cat((out, rest), dim=-1) if rest.shape[-1] else out


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    # Gemma's GGUF stores 1 + w already (the converter adds it), so every
    # architecture multiplies by the weight as stored.
    return x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps) * weight


class Forward:
    """Logits for packed rows, given the frozen weights and the LoRA."""

    def __init__(self, hp: ModelHParams, weights: BaseWeights, lora_scale: float) -> None:
        self.hp = hp
        self.w = weights
        self.lora_scale = lora_scale

    def _linear(self, x: torch.Tensor, layer: int, name: str, lora: LoraWeights
                ) -> torch.Tensor:
        y = F.linear(x, self.w.blocks[layer][name])
        pair = lora.get(f"blk.{layer}.{name}.weight")
        if pair is not None:
            a, b = pair
            y = y + F.linear(F.linear(x, a), b) * self.lora_scale
        return y

    def _masks(self, row: PackedRow) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Which keys each query may see: earlier tokens of its own sequence,
        and on sliding-window layers only the last n_swa positions (llama.cpp
        masks a key when query position - key position >= n_swa)."""
        same = row.sequence[:, None] == row.sequence[None, :]
        pos = torch.from_numpy(row.positions)
        delta = pos[:, None] - pos[None, :]
        full = same & (delta >= 0)
        local = full & (delta < self.hp.n_swa) if self.hp.n_swa > 0 else None
        return full, local

    def hidden(self, row: PackedRow, lora: LoraWeights) -> torch.Tensor:
        """The final normalised hidden states [T, n_embd]."""
        hp, w = self.hp, self.w
        x = w.token_embd[row.tokens]
        if hp.embed_scale != 1.0:
            x = x * hp.embed_scale
        full_mask, local_mask = self._masks(row)
        tables: dict[tuple[float, float], tuple[torch.Tensor, torch.Tensor]] = {}
        n_tokens = len(row.tokens)
        for layer in range(hp.n_layer):
            blk = w.blocks[layer]
            rope = hp.layer_rope(layer)
            if rope not in tables:
                tables[rope] = rope_tables(row.positions, hp.n_rot, rope[0], rope[1],
                                           w.rope_freqs)
            cos, sin = tables[rope]

            h = rms_norm(x, blk["attn_norm"], hp.rms_eps)
            q = self._linear(h, layer, "attn_q", lora).view(n_tokens, hp.n_head, hp.head_dim_k)
            k = self._linear(h, layer, "attn_k", lora).view(n_tokens, hp.n_head_kv,
                                                            hp.head_dim_k)
            v = self._linear(h, layer, "attn_v", lora).view(n_tokens, hp.n_head_kv,
                                                            hp.head_dim_v)
            if hp.arch == "gemma3":
                q = rms_norm(q, blk["attn_q_norm"], hp.rms_eps)
                k = rms_norm(k, blk["attn_k_norm"], hp.rms_eps)
            q = apply_rope(q, cos, sin, hp.rope_type)
            k = apply_rope(k, cos, sin, hp.rope_type)
            mask = local_mask if hp.swa_layers[layer] and local_mask is not None else full_mask
            # Heads first; enable_gqa lets query head h read key/value head
            # h // (n_head / n_head_kv), as ggml's broadcasting does.
            attn = F.scaled_dot_product_attention(
                q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), attn_mask=mask,
                scale=hp.attn_scale, enable_gqa=hp.n_head != hp.n_head_kv)
            attn = attn.transpose(0, 1).reshape(n_tokens, hp.n_head * hp.head_dim_v)
            out = self._linear(attn, layer, "attn_output", lora)
            if hp.arch == "gemma3":
                out = rms_norm(out, blk["post_attention_norm"], hp.rms_eps)
            x = x + out

            h = rms_norm(x, blk["ffn_norm"], hp.rms_eps)
            gate = self._linear(h, layer, "ffn_gate", lora)
            up = self._linear(h, layer, "ffn_up", lora)
            # gemma3: GELU, tanh form.  llama.cpp reads GELU from an fp16
            # table (about 1e-3 relative); the exact function is the one the
            # model was trained with and has clean gradients.
            act = F.gelu(gate, approximate="tanh") if hp.arch == "gemma3" else F.silu(gate)
            out = self._linear(act * up, layer, "ffn_down", lora)
            if hp.arch == "gemma3":
                out = rms_norm(out, blk["post_ffw_norm"], hp.rms_eps)
            x = x + out
        return rms_norm(x, w.output_norm, hp.rms_eps)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        out = F.linear(hidden, self.w.output)
        if self.hp.logit_softcap:
            cap = self.hp.logit_softcap
            out = torch.tanh(out / cap) * cap
        return out
