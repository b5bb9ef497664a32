"""A site's part of a round, with no I/O: start from the global adapter,
measure held-out perplexity, train, clip, add noise, and lay out what the
transport sends (coordinator.py documents the layout).

The trainer is injected (runtime.federation.train.LoraTrainer in practice),
so this logic is tested with the real trainer and the tiny model.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from runtime.errors import InvalidArgument
from runtime.federation.coordinator import SiteEval
from runtime.federation.dp import clip, gaussian_noise
from runtime.federation.plan import RoundPlan, site_noise_std


class TrainResultLike(Protocol):
    tokens: int


class Trainer(Protocol):
    layout: Any          # runtime.federation.train.LoraLayout
    spec: Any            # runtime.federation.train.LoraSpec

    @property
    def trainable_size(self) -> int: ...
    def get_trainable(self) -> np.ndarray: ...
    def set_trainable(self, v: np.ndarray) -> None: ...
    def tokenize(self, text: str) -> list[int]: ...
    def perplexity(self, texts: list[str]) -> float: ...
    def train(self, texts: list[str], steps: int, learning_rate: float, batch_tokens: int,
              seed: int) -> TrainResultLike: ...


@dataclass(frozen=True)
class LocalUpdate:
    delta: np.ndarray          # clipped (and noised, with DP on)
    tokens: int                # training tokens
    eval: SiteEval             # held-out NLL of the round's starting adapter
    ppl_start: float           # the same, as perplexity
    ppl_local: float           # held-out perplexity after local training
    norm: float                # the update's norm before clipping


def split_notes(text: str) -> list[str]:
    """A data set's notes: blank-line separated paragraphs, or lines when
    there are no blank lines."""
    blocks = [b.strip() for b in text.replace("\r\n", "\n").split("\n\n")]
    if len(blocks) == 1:
        blocks = [line.strip() for line in text.splitlines()]
    return [b for b in blocks if b]


def heldout_split(notes: list[str], fraction: float = 0.1) -> tuple[list[str], list[str]]:
    """(train, held-out): every k-th note held out, so both see the whole
    data set's spread."""
    if len(notes) < 2:
        raise InvalidArgument(f"data: {len(notes)} notes; training needs at least 2 "
                              "(one is held out)")
    k = max(2, round(1 / fraction))
    held_idx = set(range(k - 1, len(notes), k)) or {len(notes) - 1}
    train = [n for i, n in enumerate(notes) if i not in held_idx]
    held = [notes[i] for i in sorted(held_idx)]
    return train, held


def evaluate(trainer: Trainer, texts: list[str]) -> tuple[float, SiteEval]:
    ppl = trainer.perplexity(texts)
    tokens = sum(max(0, len(trainer.tokenize(t)) - 1) for t in texts)
    return ppl, SiteEval(math.log(ppl) * tokens, float(tokens))


def local_update(plan: RoundPlan, trainer: Trainer, start: np.ndarray, train_texts: list[str],
                 heldout_texts: list[str], rng: np.random.Generator) -> LocalUpdate:
    if start.shape != (trainer.trainable_size,):
        raise InvalidArgument(f"global adapter: {start.size} values, the trainer has "
                              f"{trainer.trainable_size}")
    trainer.set_trainable(start)
    ppl_start, ev = evaluate(trainer, heldout_texts)
    t = plan.trainer
    result = trainer.train(train_texts, t.steps, t.learning_rate, t.batch_tokens,
                           seed=int(rng.integers(2**31)))
    ppl_local = trainer.perplexity(heldout_texts)
    delta = trainer.get_trainable().astype(np.float64) - start
    clipped, norm = clip(delta, plan.clip_norm)
    std = site_noise_std(plan)
    if std > 0:
        clipped = clipped + gaussian_noise(clipped.shape, std, rng)
    trainer.set_trainable(start)
    return LocalUpdate(clipped.astype(np.float32), int(result.tokens), ev, ppl_start,
                       ppl_local, norm)


def plain_payload(u: LocalUpdate) -> np.ndarray:
    """delta ‖ [nll_sum, eval_tokens]: the vector of a hearth-update/1 file."""
    return np.concatenate([u.delta, np.array([u.eval.nll_sum, u.eval.tokens], np.float32)])


def secagg_payload(u: LocalUpdate, plan: RoundPlan) -> np.ndarray:
    """w·delta ‖ [w, nll_sum, eval_tokens], masked before it leaves the site."""
    w = 1.0 if plan.noise_multiplier > 0 else float(u.tokens)
    return np.concatenate([u.delta.astype(np.float64) * w,
                           np.array([w, u.eval.nll_sum, u.eval.tokens])])
