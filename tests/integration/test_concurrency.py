"""16 concurrent streams: each greedy output equals the same prompt run alone.

llama.cpp's CPU kernels may round differently at different batch sizes.  If
an output diverges, the divergence must sit at a near-tie of the top two
logits of the reference sequence (recomputed here with llama-cpp-python on
the same model); everything before it must match exactly.  In practice the
tiny model's logits are well separated and the outputs match entirely.
"""
from __future__ import annotations

import asyncio
from pathlib import Path

from runtime.client import AsyncHearthClient
from tests.integration.conftest import Daemon

PROMPTS = [f"the patient {w} has a {x} and the doctor" for w in
           ("north", "south", "east", "west") for x in ("fever", "report", "plan", "visit")]
NEAR_TIE = 1e-3


def top2_gap(model: Path, tokens: list[int]) -> float:
    """Gap between the two largest logits after `tokens`."""
    import numpy as np
    from llama_cpp import Llama

    llm = Llama(model_path=str(model), n_ctx=1024, logits_all=False, verbose=False)
    llm.eval(tokens)
    logits = np.sort(np.asarray(llm.scores[llm.n_tokens - 1]))
    return float(logits[-1] - logits[-2])


async def _run_all(addr: str, concurrent: bool) -> list[list[int]]:
    async with AsyncHearthClient(addr) as c:
        if concurrent:
            results = await asyncio.gather(*(c.complete(p, max_tokens=48, temperature=0.0,
                                                        ignore_eos=True) for p in PROMPTS))
        else:
            results = [await c.complete(p, max_tokens=48, temperature=0.0, ignore_eos=True)
                       for p in PROMPTS]
    return [tokens for _, tokens, _ in results]


def test_sixteen_concurrent_streams_match_single_runs(tiny_daemon: Daemon,
                                                      tiny_model: Path) -> None:
    alone = asyncio.run(_run_all(tiny_daemon.tcp, concurrent=False))
    together = asyncio.run(_run_all(tiny_daemon.tcp, concurrent=True))
    assert len(together) == 16
    with tiny_daemon.client() as c:
        prompt_tokens = [c.tokenize(p) for p in PROMPTS]
    for i, (a, b) in enumerate(zip(alone, together, strict=True)):
        assert len(a) == len(b) == 48
        if a == b:
            continue
        k = next(j for j in range(48) if a[j] != b[j])
        gap = top2_gap(tiny_model, prompt_tokens[i] + a[:k])
        assert gap < NEAR_TIE, f"stream {i} diverged at token {k} without a near-tie ({gap})"
