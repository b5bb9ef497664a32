"""One distillation, from texts to a draft GGUF: what `hearth distill` runs
once the command line has opened the model and read the data sets.

No store and no argument parsing here: the caller passes a readable model
path and the texts, and gets the draft written to `out` and the figures.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from runtime.distill.early_exit import MERGED_TYPES, check_draft_layers, early_exit_draft
from runtime.errors import InvalidArgument
from runtime.federation.train.hparams import read_hparams


@dataclass(frozen=True)
class DistillSettings:
    draft_layers: int
    steps: int = 200
    rank: int = 8
    learning_rate: float = 2e-3
    batch_tokens: int = 128
    seed: int = 0
    threads: int | None = None
    merged_type: str = "q8_0"
    max_seconds: float | None = None     # stop training early after this long

    def check(self, model_layers: int) -> None:
        check_draft_layers(self.draft_layers, model_layers)
        if self.merged_type not in MERGED_TYPES:
            raise InvalidArgument(f"merged tensor type {self.merged_type!r} is not one of "
                                  f"{', '.join(MERGED_TYPES)}")


@dataclass(frozen=True)
class DistillReport:
    draft_layers: int
    model_layers: int
    steps: int
    tokens: int
    train_kl_first: float
    train_kl_last: float
    heldout_kl_before: float    # mean KL(teacher || draft) per held-out position
    heldout_kl_after: float
    train_seconds: float


def tokenize_texts(model_path: str, texts: list[str], threads: int) -> list[list[int]]:
    """The engine's own tokenizer (with BOS, as a request gets it), so the
    draft learns on the tokens serving will see."""
    from runtime.native.engine import EngineParams, NativeEngine

    engine = NativeEngine(EngineParams(
        model_path=model_path, n_ctx=256, n_parallel=1, n_batch=64, n_ubatch=64,
        prefill_chunk=64, n_threads=threads, n_threads_batch=threads,
        enable_embeddings=False, repack_weights=False))
    try:
        return [engine.tokenize(t, add_special=True, parse_special=False) for t in texts]
    finally:
        engine.close()


def distill(model_path: str, train_texts: list[str], heldout_texts: list[str],
            settings: DistillSettings, out: str | Path,
            progress: Callable[[str], None] = lambda _: None) -> DistillReport:
    """Trains the draft's LoRA, writes the draft (LoRA merged) to `out`."""
    from runtime.distill.trainer import DistillTrainer

    hp, _ = read_hparams(model_path)
    settings.check(hp.n_layer)
    if not train_texts or not heldout_texts:
        raise InvalidArgument("data: distillation needs training and held-out texts")
    progress(f"loading {model_path} (teacher {hp.n_layer} blocks, draft "
             f"{settings.draft_layers})")
    trainer = DistillTrainer(model_path, settings.draft_layers, rank=settings.rank,
                             seed=settings.seed, threads=settings.threads)
    train_tokens = tokenize_texts(model_path, train_texts, trainer.threads)
    heldout_tokens = tokenize_texts(model_path, heldout_texts, trainer.threads)
    before = trainer.kl(heldout_tokens)
    progress(f"held-out KL(teacher || draft) before: {before:.4f}")
    started = time.monotonic()
    result = trainer.train(train_tokens, settings.steps, settings.learning_rate,
                           settings.batch_tokens, settings.seed, settings.max_seconds)
    seconds = time.monotonic() - started
    after = trainer.kl(heldout_tokens)
    progress(f"{result.steps} steps in {seconds:.0f} s; held-out KL after: {after:.4f}")
    early_exit_draft(model_path, out, settings.draft_layers, trainer.merged_weights(),
                     settings.merged_type)
    return DistillReport(draft_layers=settings.draft_layers, model_layers=hp.n_layer,
                         steps=result.steps, tokens=result.tokens,
                         train_kl_first=result.kl_first, train_kl_last=result.kl_last,
                         heldout_kl_before=before, heldout_kl_after=after,
                         train_seconds=seconds)
