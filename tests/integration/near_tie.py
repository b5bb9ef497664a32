"""Comparing greedy outputs across engines or batch shapes.

Floating-point sums come out differently when llama.cpp runs a different
batch size, cache layout or attention kernel, so two correct greedy decoders
can part ways where the top two logits (almost) tie.  assert_same_greedy
accepts a divergence only there: everything before it must be identical and
the reference's top-two gap at that position must be below `tie`.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def top2_gap(model: Path, tokens: Sequence[int]) -> float:
    import numpy as np
    from llama_cpp import Llama

    llm = Llama(model_path=str(model), n_ctx=1024, n_threads=2, verbose=False)
    llm.eval(list(tokens))
    logits = np.sort(np.asarray(llm.scores[llm.n_tokens - 1]))
    return float(logits[-1] - logits[-2])


def assert_same_greedy(model: Path, prompt: Sequence[int], ours: Sequence[int],
                       reference: Sequence[int], tie: float) -> None:
    assert len(ours) == len(reference)
    k = next((i for i, (a, b) in enumerate(zip(ours, reference, strict=True)) if a != b), None)
    if k is None:
        return
    gap = top2_gap(model, [*prompt, *reference[:k]])
    assert gap < tie, f"outputs diverge at token {k} where the top-2 gap is {gap:.4f} (>= {tie})"
