"""Federated LoRA training: what a site runs on its own text.

A site fine-tunes a low-rank adapter (LoRA) for the base model it serves and
sends only the adapter's parameters, as one flat vector, into the federated
round (clipped, noised and securely summed by `runtime.federation`).  The
coordinator turns the averaged vector back into a llama.cpp LoRA GGUF that
every site's engine loads.

* `adapter` - `LoraSpec`, the layout of the adapted tensors, and the
  conversions vector <-> adapter GGUF bytes.  numpy only: the coordinator
  imports this package without torch.
* `hparams` - the model's hyperparameters from its GGUF header, as llama.cpp
  reads them.
* `weights`, `forward` - the frozen base model in PyTorch, computing what
  llama.cpp computes from the same file (llama and gemma3).
* `optim` - AdamW, written out (torch.optim costs 4 s of imports).
* `trainer` - `LoraTrainer`: tokenize with the engine, train, measure
  perplexity, export the adapter.  Imported on first use, since it needs
  torch.

    spec = LoraSpec(rank=8, scheme="ffa", seed=federation_seed)
    layout = lora_layout(model_path, spec)               # numpy only
    trainer = LoraTrainer(model_path, spec)
    trainer.set_trainable(global_vector)
    trainer.train(texts, steps=50, learning_rate=1e-3, batch_tokens=256, seed=round_seed)
    update = trainer.get_trainable() - global_vector     # what the round sums
    ...
    adapter = adapter_from_trainable(layout, spec, new_global_vector)
    # GGUF bytes: put them in a memfd for NativeEngine.load_adapter(fd=...)
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from runtime.federation.train.adapter import (
    LoraLayout,
    LoraSite,
    LoraSpec,
    adapter_from_trainable,
    initial_a,
    lora_layout,
    trainable_from_adapter,
    trainable_size,
)

if TYPE_CHECKING:
    from runtime.federation.train.trainer import LoraTrainer, TrainResult

__all__ = [
    "LoraLayout",
    "LoraSite",
    "LoraSpec",
    "LoraTrainer",
    "TrainResult",
    "adapter_from_trainable",
    "initial_a",
    "lora_layout",
    "trainable_from_adapter",
    "trainable_size",
]


def __getattr__(name: str) -> Any:
    # The trainer needs torch; the vector <-> adapter part must not.
    if name in ("LoraTrainer", "TrainResult"):
        from runtime.federation.train import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
