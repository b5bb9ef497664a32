"""Draft models for the speculative-decoding benchmark, made offline.

No smaller Gemma 3 than 270M exists to pair with it, so the benchmark makes
an early-exit draft instead: the model's own first layers, its final norm
and its output head (self-speculation in the LayerSkip manner).  The writer
lives in the runtime (`hearth distill` exports its drafts with it); this
module keeps the benchmarks' import path.
"""
from __future__ import annotations

from runtime.distill.early_exit import early_exit_draft

__all__ = ["early_exit_draft"]
