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
from tests.integration.near_tie import assert_same_greedy

PROMPTS = [f"the patient {w} has a {x} and the doctor" for w in
           ("north", "south", "east", "west") for x in ("fever", "report", "plan", "visit")]
NEAR_TIE = 1e-3


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
        assert_same_greedy(tiny_model, prompt_tokens[i], b, a, tie=NEAR_TIE)
