"""Training on the tiny model: it learns, FFA keeps A, runs repeat exactly."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from runtime import errors
from runtime.federation.train import LoraSpec, LoraTrainer, initial_a, trainable_from_adapter
from runtime.federation.train.optim import AdamW

TEXTS = [
    "the patient had a fever and the doctor wrote a note in the report",
    "hello world the model answer question",
    "bank account note report dose blood heart lung pain",
    "the nurse at the clinic saw the patient in the morning",
]


def train(trainer: LoraTrainer, seed: int = 0, steps: int = 30) -> object:
    return trainer.train(TEXTS, steps=steps, learning_rate=1e-2, batch_tokens=32, seed=seed)


def test_training_lowers_the_perplexity_of_its_text(tiny_model: Path) -> None:
    trainer = LoraTrainer(tiny_model, LoraSpec())
    before = trainer.perplexity(TEXTS)
    result = train(trainer)
    after = trainer.perplexity(TEXTS)
    # The tiny model's random weights give enormous perplexities (~4e10
    # here); a rank-8 adapter learns these four texts nearly by heart.
    assert after < before / 1000 and after < 10
    assert result.loss_last < result.loss_first / 5
    # 30 steps of at most 32 predicted tokens; the texts hold 45.
    assert 30 * 10 <= result.tokens <= 30 * 32


def test_perplexity_is_the_exp_of_the_mean_token_loss(tiny_model: Path) -> None:
    trainer = LoraTrainer(tiny_model, LoraSpec())
    tokens = trainer.tokenize(TEXTS[0])
    assert tokens[0] == 1 and len(tokens) > 5          # BOS, as a request gets it
    texts = [TEXTS[1], TEXTS[0], TEXTS[1]]
    assert trainer.tokenize_many(texts) == [trainer.tokenize(t) for t in texts]
    rows = trainer.logprobs(tokens)
    nll = -np.mean([rows[i, tokens[i + 1]] for i in range(len(tokens) - 1)])
    assert trainer.perplexity([TEXTS[0]]) == pytest.approx(math.exp(nll), rel=1e-4)


def test_ffa_trains_b_only_and_fedavg_trains_a_too(tiny_model: Path) -> None:
    ffa = LoraSpec(rank=4, scheme="ffa", seed=9)
    trainer = LoraTrainer(tiny_model, ffa)
    assert not trainer.get_trainable().any()          # B starts at zero
    train(trainer, steps=5)
    assert trainer.get_trainable().any()
    # trainable_from_adapter refuses an ffa adapter whose A is not the seed's.
    assert np.array_equal(trainable_from_adapter(trainer.layout, ffa, trainer.export_adapter()),
                          trainer.get_trainable())

    fedavg = LoraSpec(rank=4, scheme="fedavg", seed=9)
    trainer = LoraTrainer(tiny_model, fedavg)
    a0 = np.concatenate([a.ravel() for a in initial_a(trainer.layout, fedavg)])
    assert trainer.trainable_size == trainer.get_trainable().size > a0.size
    train(trainer, steps=5)
    v = trainer.get_trainable()
    first = trainer.layout.sites[0]
    a_size = 4 * first.in_dim
    assert not np.array_equal(v[:a_size], a0[:a_size])


def test_same_seed_same_result_other_seed_other_result(tiny_model: Path) -> None:
    spec = LoraSpec(rank=4, scheme="fedavg")
    runs = []
    for seed in (3, 3, 4):
        trainer = LoraTrainer(tiny_model, spec)
        result = train(trainer, seed=seed, steps=10)
        runs.append((trainer.get_trainable(), result))
    assert np.array_equal(runs[0][0], runs[1][0]) and runs[0][1] == runs[1][1]
    assert not np.array_equal(runs[0][0], runs[2][0])


def test_training_continues_from_a_set_vector(tiny_model: Path) -> None:
    """A site starts each round from the global vector it was sent."""
    spec = LoraSpec(rank=4)
    first = LoraTrainer(tiny_model, spec)
    train(first, steps=10)
    start = first.get_trainable()
    second = LoraTrainer(tiny_model, spec)
    second.set_trainable(start)
    assert second.perplexity(TEXTS) == pytest.approx(first.perplexity(TEXTS), rel=1e-5)
    assert second.export_adapter() == first.export_adapter()


def test_bad_input_is_refused(tiny_model: Path) -> None:
    trainer = LoraTrainer(tiny_model, LoraSpec(rank=2))
    v = trainer.get_trainable()
    for bad in (v[1:], np.full_like(v, np.nan)):
        with pytest.raises(errors.InvalidArgument):
            trainer.set_trainable(bad)
    for kwargs in ({"steps": 0}, {"learning_rate": float("nan")}, {"batch_tokens": 0}):
        args = {"steps": 1, "learning_rate": 1e-3, "batch_tokens": 8, "seed": 0} | kwargs
        with pytest.raises(errors.InvalidArgument):
            trainer.train(TEXTS, **args)  # type: ignore[arg-type]
    with pytest.raises(errors.InvalidArgument, match="no token"):
        trainer.train([""], steps=1, learning_rate=1e-3, batch_tokens=8, seed=0)
    with pytest.raises(errors.InvalidArgument, match="outside the vocabulary"):
        trainer.logprobs([1, 10**6])
    with pytest.raises(errors.InvalidArgument, match="list of strings"):
        trainer.perplexity("one text, not a list")  # type: ignore[arg-type]


def test_adamw_makes_torchs_updates() -> None:
    """The trainer's AdamW (written out to avoid importing torch._dynamo)
    against torch.optim.AdamW on the same gradients."""
    gen = torch.Generator().manual_seed(0)
    ours = [torch.randn(5, 3, generator=gen, requires_grad=True)]
    theirs = [ours[0].detach().clone().requires_grad_(True)]
    opt_ours, opt_theirs = AdamW(ours, lr=0.05), torch.optim.AdamW(theirs, lr=0.05)
    for _ in range(20):
        target = torch.randn(5, 3, generator=gen)
        for params, opt in ((ours, opt_ours), (theirs, opt_theirs)):
            opt.zero_grad()
            ((params[0] - target) ** 3).abs().sum().backward()
            opt.step()
    torch.testing.assert_close(ours[0], theirs[0], rtol=1e-5, atol=1e-6)
