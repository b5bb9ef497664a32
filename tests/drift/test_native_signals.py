"""The drift signals the engine computes (native/src/signals.c), checked
against an independent computation: llama-cpp-python on the same tiny model,
with every prompt position's logits, reduced in numpy."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from runtime.native import EngineParams, NativeEngine, RequestParams
from tests.native.helpers import collect

PROMPT = "the quick brown fox jumps over"


def reference(model: Path, tokens: list[int], lora: Path | None = None
              ) -> tuple[float, float, np.ndarray]:
    """(mean prompt NLL, first-token entropy, per-position NLL) from llama-cpp-python."""
    llama_cpp = pytest.importorskip("llama_cpp")
    llm = llama_cpp.Llama(str(model), logits_all=True, verbose=False, n_ctx=256,
                          lora_path=str(lora) if lora else None)
    llm.eval(tokens)
    logits = np.array(llm.scores[:len(tokens)], dtype=np.float64)
    top = logits.max(axis=1, keepdims=True)
    lse = (np.log(np.exp(logits - top).sum(axis=1, keepdims=True)) + top)[:, 0]
    per_position = np.array([lse[i] - logits[i, tokens[i + 1]]
                             for i in range(len(tokens) - 1)])
    logp = logits[-1] - lse[-1]
    entropy = float(-(np.exp(logp) * logp).sum())
    llm.close()
    return float(per_position.mean()), entropy, per_position


def run_one(engine: NativeEngine, tokens: list[int], **kw: object):  # type: ignore[no-untyped-def]
    req = engine.submit(RequestParams(prompt=tokens, max_tokens=3, **kw))  # type: ignore[arg-type]
    (_, _, out), = collect(engine, [req]).values()
    req.free()
    return out


@pytest.fixture(scope="module")
def engine(tiny_model: Path):  # type: ignore[no-untyped-def]
    # 4 slots (the default) share 128 rows: 32 positions per prompt.
    e = NativeEngine(EngineParams(model_path=str(tiny_model), drift_rows=128))
    yield e
    e.close()


def test_prompt_nll_and_entropy_match_an_independent_computation(
        engine: NativeEngine, tiny_model: Path) -> None:
    """Fails when a row is scored against the wrong target (checked: with
    signals.c's target `prompt.data[pos + 1]` changed to `prompt.data[pos]`
    the mean came out 25.93 against 26.69) or when the entropy reads
    another row's logits."""
    tokens = engine.tokenize(PROMPT, True, False)
    assert len(tokens) - 1 <= 32          # every position scored: the mean is exact
    out = run_one(engine, tokens, drift_signals=True)
    want_nll, want_entropy, _ = reference(tiny_model, tokens)
    assert out.drift is not None
    assert out.drift.nll_positions == len(tokens) - 1
    assert out.drift.prompt_nll == pytest.approx(want_nll, rel=2e-3)
    assert out.drift.first_token_entropy == pytest.approx(want_entropy, rel=2e-3, abs=2e-3)


def test_prompt_nll_is_under_the_requests_adapter(engine: NativeEngine, tiny_model: Path,
                                                  tmp_path: Path) -> None:
    """Base plus the active adapter: a request naming a LoRA is scored under
    it (llama-cpp-python with the same LoRA agrees), one without under the
    base.  Fails if the signal were computed on another context than the
    request's step (the two NLLs below differ by far more than the tolerance)."""
    from runtime.models.tiny import write_tiny_lora

    lora = write_tiny_lora(tmp_path / "a.gguf", seed=1, scale=4.0)
    adapter = engine.load_adapter(str(lora))
    try:
        tokens = engine.tokenize("a different prompt for the adapter", True, False)
        with_lora = run_one(engine, tokens, drift_signals=True, adapter=adapter)
        base = run_one(engine, tokens, drift_signals=True)
    finally:
        engine.unload_adapter(adapter)
    want_lora, _, _ = reference(tiny_model, tokens, lora)
    want_base, _, _ = reference(tiny_model, tokens)
    assert abs(want_lora - want_base) > 0.05
    assert with_lora.drift is not None and base.drift is not None
    assert with_lora.drift.prompt_nll == pytest.approx(want_lora, rel=2e-3)
    assert base.drift.prompt_nll == pytest.approx(want_base, rel=2e-3)


def test_long_prompt_is_scored_on_a_bounded_stride(engine: NativeEngine,
                                                   tiny_model: Path) -> None:
    """A prompt longer than drift_rows is scored every stride-th position,
    never more than drift_rows positions: the logits buffer does not grow
    with the prompt.  The prefix the KV cache holds (the earlier test's
    prompt, a prefix of this one) is recomputed, so every stride-th position
    counts.  Fails if the stride is dropped (nll_positions would be len - 1)
    or if the cached prefix is reused (checked: without the
    hearth_drift_admitted hook, 27 positions were scored, not 32)."""
    tokens = engine.tokenize(" ".join([PROMPT] * 8), True, False)
    n = len(tokens) - 1
    assert n > 64
    out = run_one(engine, tokens, drift_signals=True)
    stride = math.ceil(n / 32)
    scored = list(range(0, n, stride))
    assert out.n_cached == 0
    assert out.drift is not None and out.drift.prompt_nll is not None
    assert out.drift.nll_positions == len(scored) <= 32
    _, _, per_position = reference(tiny_model, tokens)
    assert out.drift.prompt_nll == pytest.approx(per_position[scored].mean(), rel=2e-3)


def test_pooled_prompt_embedding_is_the_mean_input_embedding(engine: NativeEngine,
                                                             tiny_model: Path) -> None:
    """The pool is the mean of token_embd rows over the prompt, read from the
    GGUF independently with the gguf package.  Fails if a row is misaddressed."""
    gguf = pytest.importorskip("gguf")
    tokens = engine.tokenize(PROMPT, True, False)
    out = run_one(engine, tokens, drift_signals=True)
    reader = gguf.GGUFReader(str(tiny_model))
    tensor = next(t for t in reader.tensors if t.name == "token_embd.weight")
    table = gguf.quants.dequantize(tensor.data, tensor.tensor_type).reshape(-1, engine.info.n_embd)
    want = table[tokens].mean(axis=0)
    assert out.drift is not None and out.drift.prompt_pool is not None
    np.testing.assert_allclose(np.array(out.drift.prompt_pool), want, rtol=1e-4, atol=1e-5)


def test_signals_are_absent_unless_asked(engine: NativeEngine, tiny_model: Path) -> None:
    """No drift_signals: nothing is computed or published.  And an engine
    without drift_rows still gives entropy and the pool, but no NLL."""
    tokens = engine.tokenize(PROMPT, True, False)
    assert run_one(engine, tokens).drift is None
    bare = NativeEngine(EngineParams(model_path=str(tiny_model)))
    try:
        out = run_one(bare, tokens, drift_signals=True)
    finally:
        bare.close()
    assert out.drift is not None
    assert out.drift.prompt_nll is None and out.drift.nll_positions == 0
    assert out.drift.first_token_entropy is not None and out.drift.prompt_pool is not None
