"""Fixtures for the trainer tests: the tiny gemma3 model, and the engine
run that the trainer's forward pass is checked against."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from runtime.native import EngineParams, NativeEngine, RequestParams, Sampling
from tests.federation.train.tiny_gemma import write_tiny_gemma
from tests.native.helpers import wait_ready


@pytest.fixture(scope="session")
def tiny_gemma(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_gemma(tmp_path_factory.mktemp("models") / "tiny-gemma.gguf")


@dataclass
class Generation:
    prompt: list[int]
    tokens: list[int]
    # Per generated token: (token, its logprob, the top 20 (token, logprob)).
    logprobs: list[tuple[int, float, tuple[tuple[int, float], ...]]]


def engine_generate(model: Path, prompt_text: str, adapter: bytes | None,
                    n_tokens: int = 16) -> Generation:
    """Greedy generation with logprobs=20 through the Hearth engine.  The KV
    cache is f32 and flash attention off so that the engine's own rounding
    is that of float32 (an f16 cache alone moves tiny-model logprobs by
    0.08); the trainer's forward pass is float32 throughout."""
    engine = NativeEngine(EngineParams(
        model_path=str(model), n_ctx=512, n_parallel=1, n_threads=2, n_threads_batch=2,
        cache_type_k="f32", cache_type_v="f32", flash_attn=0))
    try:
        adapter_id = 0
        if adapter is not None:
            fd = os.memfd_create("lora", os.MFD_CLOEXEC)
            try:
                os.write(fd, adapter)
                adapter_id = engine.load_adapter(fd=fd)
            finally:
                os.close(fd)
        prompt = engine.tokenize(prompt_text)
        request = engine.submit(RequestParams(
            prompt=prompt, max_tokens=n_tokens, sampling=Sampling(temperature=0.0),
            ignore_eos=True, logprobs=20, adapter=adapter_id))
        out = Generation(prompt, [], [])
        try:
            finished = False
            while not finished:
                if request.id not in wait_ready(engine, 60.0):
                    continue
                chunk = request.take()
                out.tokens += chunk.tokens
                out.logprobs += [(lp.token, lp.logprob, lp.top) for lp in chunk.logprobs]
                finished = chunk.finished
        finally:
            request.free()
        assert len(out.tokens) == len(out.logprobs) == n_tokens
        return out
    finally:
        engine.close()


def logprob_gaps(gen: Generation, rows: np.ndarray) -> np.ndarray:
    """|engine - trainer| for every logprob the engine reported (the chosen
    token's and the top 20's), given the trainer's log-softmax rows for
    prompt + generated tokens."""
    start = len(gen.prompt) - 1          # the row that predicts generated token 0
    gaps = []
    for i, (token, logprob, top) in enumerate(gen.logprobs):
        row = rows[start + i]
        gaps.append(abs(row[token] - logprob))
        gaps += [abs(row[t] - v) for t, v in top]
    return np.asarray(gaps)
