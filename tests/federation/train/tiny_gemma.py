"""A tiny random gemma3 GGUF: every gemma3 feature the trainer implements
(q/k norms, post-attention and post-FFN norms, GELU, NEOX RoPE with a local
base, a sliding window short enough for a test prompt to outgrow, scaled
embeddings, a tied output head, logit soft-capping) at F32, so the engine
and the trainer must agree to float32 rounding.  The real Gemma's window is
512 tokens and its weights quantized, which makes both checks slow or loose.
"""
from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

from runtime.models.tiny import add_tiny_tokenizer

N_SWA = 8


def write_tiny_gemma(path: Path, *, n_layer: int = 3, n_embd: int = 64, n_head: int = 4,
                     n_head_kv: int = 2, head_dim: int = 32, n_ff: int = 128) -> Path:
    rng = np.random.default_rng(7)

    def mat(rows: int, cols: int) -> np.ndarray:
        return (rng.standard_normal((rows, cols)) / np.sqrt(cols)).astype(np.float32)

    def norm(n: int) -> np.ndarray:
        return (1.0 + 0.2 * rng.standard_normal(n)).astype(np.float32)

    w = gguf.GGUFWriter(str(path), "gemma3")
    w.add_context_length(4096)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(1_000_000.0)          # global layers; local ones default to 10000
    w.add_sliding_window(N_SWA)
    w.add_uint32("gemma3.attention.sliding_window_pattern", 2)   # local, global, local
    w.add_float32("gemma3.final_logit_softcapping", 10.0)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    n_vocab = add_tiny_tokenizer(w)

    w.add_tensor("token_embd.weight", mat(n_vocab, n_embd))
    w.add_tensor("output_norm.weight", norm(n_embd))
    for i in range(n_layer):
        w.add_tensor(f"blk.{i}.attn_norm.weight", norm(n_embd))
        w.add_tensor(f"blk.{i}.attn_q.weight", mat(n_head * head_dim, n_embd))
        w.add_tensor(f"blk.{i}.attn_k.weight", mat(n_head_kv * head_dim, n_embd))
        w.add_tensor(f"blk.{i}.attn_v.weight", mat(n_head_kv * head_dim, n_embd))
        w.add_tensor(f"blk.{i}.attn_q_norm.weight", norm(head_dim))
        w.add_tensor(f"blk.{i}.attn_k_norm.weight", norm(head_dim))
        w.add_tensor(f"blk.{i}.attn_output.weight", mat(n_embd, n_head * head_dim))
        w.add_tensor(f"blk.{i}.post_attention_norm.weight", norm(n_embd))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", norm(n_embd))
        w.add_tensor(f"blk.{i}.ffn_gate.weight", mat(n_ff, n_embd))
        w.add_tensor(f"blk.{i}.ffn_up.weight", mat(n_ff, n_embd))
        w.add_tensor(f"blk.{i}.ffn_down.weight", mat(n_embd, n_ff))
        w.add_tensor(f"blk.{i}.post_ffw_norm.weight", norm(n_embd))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
