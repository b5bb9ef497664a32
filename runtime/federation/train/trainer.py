"""LoraTrainer: trains a site's LoRA on local text and measures it.

The trainer holds the frozen base model (dequantized from the GGUF the
engine serves) and the adapter's A and B matrices as torch parameters.  Text
is tokenized by the engine itself, so training sees the tokens serving sees.
Training is AdamW on the LoRA parameters only, over "packed" rows: short
texts laid end to end up to `batch_tokens` predicted tokens, each attending
only to itself.  Everything is deterministic for a given seed on one
machine: the only randomness is the numpy generator that orders the texts.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from runtime.errors import InvalidArgument
from runtime.federation.train.adapter import (
    LoraSpec,
    adapter_from_trainable,
    initial_trainable,
    layout_from_info,
    matrices_from_trainable,
    trainable_from_matrices,
)
from runtime.federation.train.forward import Forward, pack
from runtime.federation.train.hparams import ModelHParams, read_hparams
from runtime.federation.train.optim import AdamW
from runtime.federation.train.weights import load_weights

# Longest sequence the trainer evaluates in one piece; longer texts are cut.
MAX_SEQUENCE = 512
# Tokenized texts kept for reuse, at most.
MAX_REMEMBERED_TEXTS = 100_000


@dataclass(frozen=True)
class TrainResult:
    tokens: int          # predicted tokens trained on, summed over the steps
    loss_first: float    # mean loss of the first step's batch, before its update
    loss_last: float     # mean loss of the last step's batch, before its update


def segments(token_lists: list[list[int]], max_predicted: int) -> list[list[int]]:
    """Cuts each text into pieces that predict at most `max_predicted`
    tokens; consecutive pieces share one token so that every token after
    the first is predicted exactly once."""
    out = []
    for tokens in token_lists:
        for start in range(0, max(len(tokens) - 1, 0), max_predicted):
            out.append(tokens[start:start + max_predicted + 1])
    return out


def packed(pieces: list[list[int]], budget: int) -> Iterator[list[list[int]]]:
    """Groups whole pieces, in order, into batches of at most `budget`
    predicted tokens (a piece longer than that goes alone)."""
    batch: list[list[int]] = []
    used = 0
    for piece in pieces:
        if batch and used + len(piece) - 1 > budget:
            yield batch
            batch, used = [], 0
        batch.append(piece)
        used += len(piece) - 1
    if batch:
        yield batch


def batches(pieces: list[list[int]], budget: int, rng: np.random.Generator
            ) -> Iterator[list[list[int]]]:
    """Endless training batches: the pieces in a fresh random order every epoch."""
    while True:
        yield from packed([pieces[i] for i in rng.permutation(len(pieces))], budget)


def default_threads(hp: ModelHParams) -> int:
    """Two threads, except for very narrow models: there a matrix product
    takes microseconds and splitting it costs more than it saves (the tiny
    test model trains 7x slower on two threads than on one when the other
    core is busy)."""
    return 1 if hp.n_embd < 256 else 2


class LoraTrainer:
    """One model's LoRA under training.  Loading dequantizes the whole model
    to float32 (Gemma 3 270M: 4 s, 1.1 GB)."""

    def __init__(self, model_path: str | Path, spec: LoraSpec, threads: int | None = None
                 ) -> None:
        if threads is not None and threads < 1:
            raise InvalidArgument(f"threads must be positive, not {threads}")
        self.model_path = str(model_path)
        self.spec = spec
        self.hparams, info = read_hparams(self.model_path)
        self.threads = threads or default_threads(self.hparams)
        torch.set_num_threads(self.threads)
        self.layout = layout_from_info(info, spec)
        self._forward = Forward(self.hparams, load_weights(info, self.hparams), spec.scale)
        self.max_sequence = min(self.hparams.n_ctx_train, MAX_SEQUENCE)
        self._tokens: dict[str, list[int]] = {}
        self._a: list[torch.Tensor] = []
        self._b: list[torch.Tensor] = []
        self.set_trainable(initial_trainable(self.layout, spec))

    # --- the trainable vector ---------------------------------------------

    @property
    def trainable_size(self) -> int:
        return sum(b.numel() for b in self._b) + (
            sum(a.numel() for a in self._a) if self.spec.scheme == "fedavg" else 0)

    def get_trainable(self) -> np.ndarray:
        pairs = [(a.detach().numpy(), b.detach().numpy())
                 for a, b in zip(self._a, self._b, strict=True)]
        return trainable_from_matrices(self.spec, pairs)

    def set_trainable(self, v: np.ndarray) -> None:
        pairs = matrices_from_trainable(self.layout, self.spec, v)
        train_a = self.spec.scheme == "fedavg"
        self._a = [torch.tensor(a, dtype=torch.float32).requires_grad_(train_a)
                   for a, _ in pairs]
        self._b = [torch.tensor(b, dtype=torch.float32).requires_grad_(True) for _, b in pairs]

    def export_adapter(self) -> bytes:
        return adapter_from_trainable(self.layout, self.spec, self.get_trainable())

    def _lora(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        return {site.tensor: (a, b)
                for site, a, b in zip(self.layout.sites, self._a, self._b, strict=True)}

    # --- text --------------------------------------------------------------

    def tokenize(self, text: str) -> list[int]:
        return self.tokenize_many([text])[0]

    def tokenize_many(self, texts: list[str]) -> list[list[int]]:
        """The engine's own tokenizer (with BOS, as a request gets it): the
        only sure way to train on the tokens that serving will see.  An
        engine is loaded for the texts not seen before and closed at once
        (for Gemma that costs over a second, so results are remembered: a
        round tokenizes the same texts for perplexity, counting and
        training)."""
        fresh: dict[str, list[int]] = {}
        missing = list(dict.fromkeys(t for t in texts if t not in self._tokens))
        if missing:
            from runtime.native.engine import EngineParams, NativeEngine

            engine = NativeEngine(EngineParams(
                model_path=self.model_path, n_ctx=256, n_parallel=1, n_batch=64, n_ubatch=64,
                prefill_chunk=64, n_threads=self.threads, n_threads_batch=self.threads,
                enable_embeddings=False, repack_weights=False))
            try:
                fresh = {t: engine.tokenize(t, add_special=True, parse_special=False)
                         for t in missing}
            finally:
                engine.close()
        result = [list(fresh[t] if t in fresh else self._tokens[t]) for t in texts]
        if len(self._tokens) + len(fresh) > MAX_REMEMBERED_TEXTS:
            self._tokens.clear()
        self._tokens.update(fresh)
        return result

    # --- training and evaluation -------------------------------------------

    def _nll(self, sequences: list[list[int]]) -> tuple[torch.Tensor, int]:
        """Summed negative log-likelihood of every token after the first of
        each sequence, and how many tokens that is."""
        row = pack(sequences)
        # Every position but the last of each sequence predicts the next token.
        last = np.cumsum([len(s) for s in sequences]) - 1
        predicting = torch.from_numpy(np.setdiff1d(np.arange(last[-1] + 1), last))
        hidden = self._forward.hidden(row, self._lora())
        logits = self._forward.logits(hidden[predicting])
        targets = row.tokens[predicting + 1]
        return F.cross_entropy(logits, targets, reduction="sum"), len(predicting)

    def train(self, texts: list[str], steps: int, learning_rate: float, batch_tokens: int,
              seed: int) -> TrainResult:
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise InvalidArgument(f"steps must be a positive integer, not {steps!r}")
        if not (math.isfinite(learning_rate) and learning_rate > 0):
            raise InvalidArgument(f"learning_rate must be positive, not {learning_rate!r}")
        if isinstance(batch_tokens, bool) or not isinstance(batch_tokens, int) \
                or batch_tokens < 1:
            raise InvalidArgument(f"batch_tokens must be a positive integer, not "
                                  f"{batch_tokens!r}")
        pieces = segments(self._checked_tokens(texts),
                          min(batch_tokens, self.max_sequence - 1))
        if not pieces:
            raise InvalidArgument("the texts hold no token to predict")
        params = self._b + (self._a if self.spec.scheme == "fedavg" else [])
        optimizer = AdamW(params, lr=learning_rate)
        feed = batches(pieces, batch_tokens, np.random.default_rng(seed))
        losses: list[float] = []
        tokens = 0
        for _ in range(steps):
            total, count = self._nll(next(feed))
            loss = total / count
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            tokens += count
        if not all(math.isfinite(x) for x in losses):
            raise InvalidArgument("training diverged (non-finite loss): lower the learning rate")
        return TrainResult(tokens=tokens, loss_first=losses[0], loss_last=losses[-1])

    def perplexity(self, texts: list[str]) -> float:
        """exp(mean NLL over all predicted tokens), each text its own sequence
        (cut into pieces of at most `max_sequence` tokens)."""
        pieces = segments(self._checked_tokens(texts), self.max_sequence - 1)
        if not pieces:
            raise InvalidArgument("the texts hold no token to predict")
        total, count = 0.0, 0
        with torch.no_grad():
            for batch in packed(pieces, self.max_sequence):
                nll, n = self._nll(batch)
                total, count = total + float(nll), count + n
        return math.exp(total / count)

    def logprobs(self, tokens: list[int]) -> np.ndarray:
        """[len(tokens), n_vocab] log-softmax with the current adapter: row i
        is the distribution of the token after tokens[i]."""
        if not 0 < len(tokens) <= self.hparams.n_ctx_train:
            raise InvalidArgument(f"logprobs needs 1..{self.hparams.n_ctx_train} tokens, "
                                  f"not {len(tokens)}")
        self._check_ids(tokens)
        with torch.no_grad():
            hidden = self._forward.hidden(pack([list(tokens)]), self._lora())
            return F.log_softmax(self._forward.logits(hidden), dim=-1).numpy()

    def _checked_tokens(self, texts: list[str]) -> list[list[int]]:
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise InvalidArgument("texts must be a list of strings")
        return self.tokenize_many(list(texts)) if texts else []

    def _check_ids(self, tokens: list[int]) -> None:
        bad = [t for t in tokens if not 0 <= t < self.hparams.n_vocab]
        if bad:
            raise InvalidArgument(f"token ids {bad[:3]} are outside the vocabulary of "
                                  f"{self.hparams.n_vocab}")
