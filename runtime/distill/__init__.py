"""Distilled drafts for speculative decoding, made from the served model.

`hearth distill` trains a LoRA on an early-exit draft (the model's first K
blocks, its final norm and output head) so that its next-token distribution
matches the full model's, on local text from the sealed store, and writes a
draft GGUF that `draft =` / `--draft` loads.  The engine applies no adapter
to a draft, so the LoRA is merged into the draft's weights.

* `early_exit` - writes the draft GGUF (numpy and gguf only; the benchmarks
  import it too): the first K blocks, optionally with merged weights.
* `trainer` - `DistillTrainer`: teacher, student and the chunked
  KL(teacher || student) loss, on the federated LoRA trainer's forward pass
  and optimiser (needs torch; imported on use).
* `job` - one distillation from texts to a draft file, with its figures.
"""
