"""A tiny random llama-architecture GGUF model, written with the `gguf` package.

Tests and the federation demo need a real model that loads in milliseconds
and needs no download.  This one has a SentencePiece-style vocabulary (control
tokens, 256 byte tokens, and a few hundred letters, syllables and words, so
ordinary English tokenizes into real pieces), a ChatML template with its
<|im_start|>/<|im_end|> tokens, and random F32 weights from a fixed seed, so
every run writes the same bytes.  Its output is fluent nonsense, which is all
a test of the serving machinery needs.

Needs numpy and gguf (the `test` extra).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

_WORDS = (
    "the of and to in is was for on that with as by at from his her this be are an it or "
    "had not but which have one were all their there been has more when who will would "
    "patient doctor nurse clinic hospital bank account note report dose blood heart lung "
    "pain fever test result normal history care plan visit follow day week year time "
    "capital france paris city river north south east west water light night morning "
    "hello world model token stream server engine batch cache prompt answer question "
).split()


def _vocab(extra_tokens: int = 0, rename: dict[int, str] | None = None
           ) -> tuple[list[str], list[float], list[int]]:
    import gguf

    tokens = ["<unk>", "<s>", "</s>"]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [gguf.TokenType.BYTE] * 256
    pieces: list[str] = ["▁"]
    pieces += [chr(c) for c in range(ord("a"), ord("z") + 1)]
    pieces += [chr(c) for c in range(ord("A"), ord("Z") + 1)]
    pieces += list("0123456789.,;:!?'-()\"") + ["\n"]
    pieces += ["▁" + chr(c) for c in range(ord("a"), ord("z") + 1)]
    pieces += ["th", "he", "in", "er", "an", "re", "on", "at", "en", "nd", "ti", "es", "or",
               "te", "of", "ed", "is", "it", "al", "ar", "st", "to", "nt", "ng", "se", "ha"]
    # Every prefix of a word too: SentencePiece reaches a word only through
    # pieces that exist, so "▁hello" needs "▁he", "▁hel" and "▁hell".
    pieces += ["▁" + w[:i] for w in _WORDS for i in range(2, len(w) + 1)]
    pieces += ["é", "ü", "ß", "中", "文", "😀"]
    seen: set[str] = set()
    unique = [p for p in pieces if not (p in seen or seen.add(p))]  # type: ignore[func-returns-value]
    tokens += unique
    types += [gguf.TokenType.NORMAL] * len(unique)
    # SentencePiece merges the pair whose result has the highest score:
    # longer pieces score higher so whole words win over letters.
    scores = [0.0] * 259 + [float(len(p)) - i * 1e-4 for i, p in enumerate(unique)]
    tokens += ["<|im_start|>", "<|im_end|>"]
    types += [gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    scores += [0.0, 0.0]
    # Variants for tests of tokenizer checks (a draft model must match).
    tokens += [f"<|extra_{i}|>" for i in range(extra_tokens)]
    types += [gguf.TokenType.CONTROL] * extra_tokens
    scores += [0.0] * extra_tokens
    for index, text in (rename or {}).items():
        tokens[index] = text
    return tokens, scores, [int(t) for t in types]


def add_tiny_tokenizer(w: Any, extra_tokens: int = 0,
                       rename_tokens: dict[int, str] | None = None,
                       chat_template: str | None = CHATML_TEMPLATE) -> int:
    """The tiny models' tokenizer (byte pieces, words, ChatML markers) into a
    GGUFWriter; returns the vocabulary size.  `chat_template=None` leaves
    the template out, as base models do."""
    tokens, scores, types = _vocab(extra_tokens, rename_tokens)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    if chat_template is not None:
        w.add_chat_template(chat_template)
    return len(tokens)


def write_tiny_model(path: str | Path, *, seed: int = 0, n_layer: int = 2, n_embd: int = 64,
                     n_head: int = 4, n_head_kv: int = 2, n_ff: int = 128,
                     n_ctx_train: int = 4096, weight_scale: float = 0.5,
                     extra_tokens: int = 0, rename_tokens: dict[int, str] | None = None,
                     output_scale: float = 2.0,
                     chat_template: str | None = CHATML_TEMPLATE) -> Path:
    """Writes the model to `path` and returns the path.  The same seed with
    fewer layers gives a smaller sibling that shares the embeddings, the
    output head and the first layers: a draft model for speculative tests.
    A small `output_scale` gives near-uniform predictions (perplexity near
    the vocabulary size) that training can visibly improve; the default's
    confident, random predictions make greedy tests sharper."""
    import gguf
    import numpy as np

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    head_dim = n_embd // n_head
    rng = np.random.default_rng(seed)

    def mat(rows: int, cols: int, scale: float = weight_scale) -> np.ndarray:
        return (rng.standard_normal((rows, cols)) * scale / np.sqrt(cols) * 4).astype(np.float32)

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("hearth-tiny")
    w.add_context_length(n_ctx_train)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_rope_dimension_count(head_dim)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    n_vocab = add_tiny_tokenizer(w, extra_tokens, rename_tokens, chat_template)

    w.add_tensor("token_embd.weight", mat(n_vocab, n_embd, 1.0))
    w.add_tensor("output_norm.weight", np.ones(n_embd, dtype=np.float32))
    w.add_tensor("output.weight", mat(n_vocab, n_embd, output_scale))
    for i in range(n_layer):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(n_embd, dtype=np.float32))
        w.add_tensor(f"blk.{i}.attn_q.weight", mat(n_embd, n_embd))
        w.add_tensor(f"blk.{i}.attn_k.weight", mat(n_head_kv * head_dim, n_embd))
        w.add_tensor(f"blk.{i}.attn_v.weight", mat(n_head_kv * head_dim, n_embd))
        w.add_tensor(f"blk.{i}.attn_output.weight", mat(n_embd, n_embd))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(n_embd, dtype=np.float32))
        w.add_tensor(f"blk.{i}.ffn_gate.weight", mat(n_ff, n_embd))
        w.add_tensor(f"blk.{i}.ffn_up.weight", mat(n_ff, n_embd))
        w.add_tensor(f"blk.{i}.ffn_down.weight", mat(n_embd, n_ff))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def write_tiny_lora(path: str | Path, *, seed: int = 1, n_layer: int = 2, n_embd: int = 64,
                    n_ff: int = 128, rank: int = 4, alpha: float = 8.0, scale: float = 1.0
                    ) -> Path:
    """A LoRA adapter GGUF for the tiny model (same n_layer/n_embd/n_ff):
    low-rank A (rank x in) and B (out x rank) on every layer's attention
    query and feed-forward up projections.  Its effect grows with `scale`."""
    import gguf
    import numpy as np

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_string("general.type", "adapter")
    w.add_string("adapter.type", "lora")
    w.add_float32("adapter.lora.alpha", alpha)
    for i in range(n_layer):
        for name, out_dim in (("attn_q", n_embd), ("ffn_up", n_ff)):
            a = (rng.standard_normal((rank, n_embd)) / np.sqrt(n_embd)).astype(np.float32)
            b = (rng.standard_normal((out_dim, rank)) * scale).astype(np.float32)
            w.add_tensor(f"blk.{i}.{name}.weight.lora_a", a)
            w.add_tensor(f"blk.{i}.{name}.weight.lora_b", b)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
