"""DistillTrainer: a LoRA on an early-exit draft, trained to match the full model.

The teacher is the served model, frozen; the student is its first K blocks,
the same final norm and output head, and a LoRA on those K blocks.  Both run
on the one dequantized copy of the weights (`runtime.federation.train`: the
forward pass llama.cpp computes, the AdamW, the packing of texts into rows).

The loss is KL(teacher || student) of the next-token distribution at every
position of the training text, on the logits as they are (no softening):

    sum_v p_teacher(v) (log p_teacher(v) - log p_student(v))

computed exactly, over the whole vocabulary, in chunks of positions.  Gemma
3's vocabulary is 262,144 tokens, so one position's logits take 1 MiB in
float32; a chunk of `KL_CHUNK` positions bounds what exists at once.  The
student's final hidden states are cut from the graph, each chunk's KL is
back-propagated into them on its own (its logits then freed), and the
summed gradient flows once through the K blocks.  A truncated teacher (its
top-k plus the remaining mass) would save little here: the student still
needs its full log-sum-exp, and the teacher is recomputed per batch, which
costs less than storing its distributions for a data set read once or twice.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from runtime.errors import InvalidArgument
from runtime.federation.train.adapter import LoraSpec, initial_a, layout_from_info
from runtime.federation.train.forward import Forward, PackedRow, pack
from runtime.federation.train.hparams import read_hparams
from runtime.federation.train.optim import AdamW
from runtime.federation.train.trainer import MAX_SEQUENCE, batches, default_threads, packed
from runtime.federation.train.weights import BaseWeights, load_weights

# Positions whose full-vocabulary distributions exist at once (teacher and
# student: 2 x 32 x 1 MiB for Gemma, plus the softmax temporaries).
KL_CHUNK = 32


@dataclass(frozen=True)
class DistillResult:
    steps: int
    tokens: int           # positions trained on, summed over the steps
    kl_first: float       # mean KL of the first batch, before its update
    kl_last: float        # mean KL of the last batch, before its update


def segments_all(token_lists: list[list[int]], length: int) -> list[list[int]]:
    """Texts cut into pieces of at most `length` tokens, each token in one
    piece: every position has a teacher distribution to match, so (unlike
    next-token training) no token needs to be shared between pieces."""
    return [tokens[i:i + length] for tokens in token_lists for i in range(0, len(tokens), length)]


class DistillTrainer:
    """The teacher, the student and the student's LoRA.  Loading dequantizes
    the whole model to float32 (Gemma 3 270M: 1.1 GB)."""

    def __init__(self, model_path: str | Path, draft_layers: int, rank: int = 8,
                 alpha: float = 16.0, seed: int = 0, threads: int | None = None) -> None:
        if threads is not None and threads < 1:
            raise InvalidArgument(f"threads must be positive, not {threads}")
        self.model_path = str(model_path)
        hp, info = read_hparams(self.model_path)
        if isinstance(draft_layers, bool) or not isinstance(draft_layers, int) \
                or not 1 <= draft_layers <= hp.n_layer:
            raise InvalidArgument(f"draft layers must be from 1 to {hp.n_layer}, "
                                  f"not {draft_layers!r}")
        self.hparams = hp
        self.draft_layers = draft_layers
        self.threads = threads or default_threads(hp)
        torch.set_num_threads(self.threads)
        # "fedavg" is the trainer's name for training both A and B.
        self.spec = LoraSpec(rank=rank, alpha=alpha, scheme="fedavg", seed=seed)
        layout = layout_from_info(info, self.spec)
        weights = load_weights(info, hp)
        self.weights = weights
        self.teacher = Forward(hp, weights, self.spec.scale)
        student_hp = replace(hp, n_layer=draft_layers, swa_layers=hp.swa_layers[:draft_layers])
        student_weights = BaseWeights(token_embd=weights.token_embd,
                                      output_norm=weights.output_norm, output=weights.output,
                                      rope_freqs=weights.rope_freqs,
                                      blocks=weights.blocks[:draft_layers])
        self.student = Forward(student_hp, student_weights, self.spec.scale)
        kept = [(i, s) for i, s in enumerate(layout.sites) if s.block < draft_layers]
        all_a = initial_a(layout, self.spec)
        self.sites = [s for _, s in kept]
        # B = 0: the student starts as the plain early-exit draft.
        self.a = [torch.tensor(all_a[i]).requires_grad_(True) for i, _ in kept]
        self.b = [torch.zeros((s.out_dim, rank), dtype=torch.float32).requires_grad_(True)
                  for s in self.sites]
        self.max_sequence = min(hp.n_ctx_train, MAX_SEQUENCE)

    def lora(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        return {s.tensor: (a, b) for s, a, b in zip(self.sites, self.a, self.b, strict=True)}

    # --- the loss ------------------------------------------------------------

    def _kl(self, row: PackedRow, train: bool, scale: float = 1.0) -> float:
        """Summed KL over the row's positions; with `train`, the gradient of
        scale x that sum is accumulated into the LoRA."""
        with torch.no_grad():
            teacher_hidden = self.teacher.hidden(row, {})
        if train:
            student_hidden = self.student.hidden(row, self.lora())
            cut = student_hidden.detach().requires_grad_(True)
        else:
            with torch.no_grad():
                cut = self.student.hidden(row, self.lora())
        total = 0.0
        for start in range(0, len(row.tokens), KL_CHUNK):
            part = slice(start, start + KL_CHUNK)
            with torch.no_grad():
                t_logp = F.log_softmax(self.teacher.logits(teacher_hidden[part]), dim=-1)
            with torch.set_grad_enabled(train):
                s_logp = F.log_softmax(self.student.logits(cut[part]), dim=-1)
                kl = F.kl_div(s_logp, t_logp, log_target=True, reduction="sum")
                if train:
                    (kl * scale).backward()
            total += float(kl.detach())
        if train:
            student_hidden.backward(cut.grad)
        return total

    def kl(self, token_lists: list[list[int]]) -> float:
        """Mean KL(teacher || student) per position over the texts, each
        cut into pieces of at most `max_sequence` tokens."""
        self._check_ids(token_lists)
        pieces = segments_all(token_lists, self.max_sequence)
        count = sum(len(p) for p in pieces)
        if not count:
            raise InvalidArgument("the texts hold no token")
        total = sum(self._kl(pack(batch), train=False)
                    for batch in packed(pieces, self.max_sequence))
        return total / count

    def train(self, token_lists: list[list[int]], steps: int, learning_rate: float,
              batch_tokens: int, seed: int = 0, max_seconds: float | None = None
              ) -> DistillResult:
        """At most `steps` AdamW steps; with `max_seconds`, fewer if that
        much time has passed (the result says how many ran)."""
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise InvalidArgument(f"steps must be a positive integer, not {steps!r}")
        if not (math.isfinite(learning_rate) and learning_rate > 0):
            raise InvalidArgument(f"learning rate must be positive, not {learning_rate!r}")
        if isinstance(batch_tokens, bool) or not isinstance(batch_tokens, int) \
                or batch_tokens < 2:
            raise InvalidArgument(f"batch tokens must be an integer of at least 2, not "
                                  f"{batch_tokens!r}")
        self._check_ids(token_lists)
        # `batches` counts a piece of n tokens as n - 1 predicted ones.
        pieces = segments_all(token_lists, min(batch_tokens, self.max_sequence))
        pieces = [p for p in pieces if len(p) > 1]
        if not pieces:
            raise InvalidArgument("the texts hold no token to train on")
        optimizer = AdamW(self.a + self.b, lr=learning_rate, weight_decay=0.0)
        feed = batches(pieces, batch_tokens, np.random.default_rng(seed))
        losses: list[float] = []
        tokens = 0
        started = time.monotonic()
        for _ in range(steps):
            if max_seconds is not None and losses and time.monotonic() - started > max_seconds:
                break
            batch = next(feed)
            count = sum(len(p) for p in batch)
            optimizer.zero_grad()
            losses.append(self._kl(pack(batch), train=True, scale=1.0 / count) / count)
            optimizer.step()
            tokens += count
        if not all(math.isfinite(x) for x in losses):
            raise InvalidArgument("distillation diverged (non-finite loss): lower the "
                                  "learning rate")
        return DistillResult(steps=len(losses), tokens=tokens, kl_first=losses[0],
                             kl_last=losses[-1])

    def student_logprobs(self, tokens: list[int]) -> np.ndarray:
        """[len(tokens), n_vocab] log-softmax of the draft with its LoRA: row
        i is its distribution of the token after tokens[i]."""
        self._check_ids([tokens])
        with torch.no_grad():
            hidden = self.student.hidden(pack([list(tokens)]), self.lora())
            return F.log_softmax(self.student.logits(hidden), dim=-1).numpy()

    # --- export --------------------------------------------------------------

    def merged_weights(self) -> dict[str, np.ndarray]:
        """Each adapted weight of the K blocks with its LoRA merged in:
        W + (alpha / rank) B A, numpy shape out x in, float32."""
        out = {}
        with torch.no_grad():
            for s, a, b in zip(self.sites, self.a, self.b, strict=True):
                base = self.weights.blocks[s.block][s.target]
                out[s.tensor] = (base + self.spec.scale * (b @ a)).numpy()
        return out

    def _check_ids(self, token_lists: list[list[int]]) -> None:
        bad = [t for tokens in token_lists for t in tokens
               if not 0 <= t < self.hparams.n_vocab]
        if bad:
            raise InvalidArgument(f"token ids {bad[:3]} are outside the vocabulary of "
                                  f"{self.hparams.n_vocab}")
