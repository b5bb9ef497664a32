"""The proof that the trainer trains the model the engine serves: with the
same adapter, the trainer's forward pass gives the log-probabilities that
Hearth's engine (llama.cpp) reports while generating.

Each test generates greedily through the engine with logprobs=20 and checks
every reported value (the chosen token's and the top 20's, at every
position) against `LoraTrainer.logprobs(prompt + generated)`.  Each also
checks that the adapter moved those values by far more than the tolerance,
so a trainer or engine that ignored the adapter would fail.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from runtime.federation.train import LoraSpec, LoraTrainer
from tests.federation.train.conftest import engine_generate, logprob_gaps

PROMPT = "the patient had a fever and the doctor went home to see the nurse at the clinic"
SPEC = LoraSpec(rank=4, alpha=8.0, seed=3)


def random_adapter(trainer: LoraTrainer, scale: float) -> np.ndarray:
    v = np.random.default_rng(11).standard_normal(trainer.trainable_size) * scale
    return v.astype(np.float32)


@dataclass
class Agreement:
    base_gaps: np.ndarray      # |engine - trainer|, neither with an adapter
    gaps: np.ndarray           # |engine - trainer|, both with the adapter
    changes: np.ndarray        # |engine with adapter - trainer without|: the adapter's effect
    tokens_changed: bool       # the adapter changed the greedy continuation


def compare(trainer: LoraTrainer, model: Path, v: np.ndarray) -> Agreement:
    trainer.set_trainable(np.zeros(trainer.trainable_size, np.float32))
    base = engine_generate(model, PROMPT, adapter=None)
    assert trainer.tokenize(PROMPT) == base.prompt
    base_gaps = logprob_gaps(base, trainer.logprobs(base.prompt + base.tokens))

    trainer.set_trainable(v)
    tuned = engine_generate(model, PROMPT, adapter=trainer.export_adapter())
    gaps = logprob_gaps(tuned, trainer.logprobs(tuned.prompt + tuned.tokens))

    trainer.set_trainable(np.zeros(trainer.trainable_size, np.float32))
    changes = logprob_gaps(tuned, trainer.logprobs(tuned.prompt + tuned.tokens))
    return Agreement(base_gaps, gaps, changes, tuned.tokens != base.tokens)


def test_tiny_llama_engine_and_trainer_agree(tiny_model: Path) -> None:
    trainer = LoraTrainer(tiny_model, SPEC)
    result = compare(trainer, tiny_model, random_adapter(trainer, 0.05))
    # Measured: max gap 5e-5 with and without the adapter (float32 summed
    # in another order); the adapter moves the values by up to 17.
    assert result.base_gaps.max() <= 3e-4
    assert result.gaps.max() <= 3e-4
    assert result.changes.max() > 1.0 and result.tokens_changed


def test_tiny_gemma3_engine_and_trainer_agree(tiny_gemma: Path) -> None:
    """Every gemma3 feature at F32, with a sliding window (8) that the
    prompt outgrows.  Measured max gap 1e-3: llama.cpp's CPU backend looks
    GELU up in an fp16 table (emulating the table in the trainer brings the
    gap to 5e-5; the trainer keeps the exact GELU, which is what GPUs and
    the model's training compute).  For scale, a window off by one moves
    values by 0.65, the global RoPE base on local layers by 0.64, and a
    missing soft-cap by 0.5."""
    trainer = LoraTrainer(tiny_gemma, SPEC)
    result = compare(trainer, tiny_gemma, random_adapter(trainer, 0.05))
    assert result.base_gaps.max() <= 2.5e-3
    assert result.gaps.max() <= 2.5e-3
    assert result.changes.max() > 0.5 and result.tokens_changed


@pytest.mark.gemma
def test_gemma_engine_and_trainer_agree(gemma_model: Path) -> None:
    """The default model, Q4_K_M.  The trainer dequantizes the weights
    exactly, but llama.cpp also quantizes the activations to 8 bits (Q8_0 or
    Q8_K blocks) for every quantized matmul, and Gemma's activations have
    outliers that make 8-bit blocks coarse: measured max gap 0.52, mean
    0.09 without the adapter, 0.52 and 0.12 with it.  The same comparison on
    an F32 copy of this model (no activation quantization) measured 3e-3, so
    the loose bound is quantization, not a difference in the computation.
    The adapter's effect (mean 1.1) must stand well clear of that noise."""
    trainer = LoraTrainer(gemma_model, SPEC)
    result = compare(trainer, gemma_model, random_adapter(trainer, 0.03))
    for gaps in (result.base_gaps, result.gaps):
        assert gaps.max() <= 1.0 and gaps.mean() <= 0.2
    assert result.changes.mean() > 4 * result.gaps.mean() and result.tokens_changed
