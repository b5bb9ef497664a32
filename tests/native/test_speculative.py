"""Speculative decoding with a draft model: output unchanged, proposals
accepted, tokenizer mismatches refused at load."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime import errors
from runtime.models.tiny import write_tiny_model
from runtime.native import EngineParams, NativeEngine, RequestParams, Sampling
from tests.native.helpers import collect

PROMPTS = ("the patient", "hello world", "bank account note", "the doctor said")
GREEDY = Sampling(temperature=0.0)
SEEDED = Sampling(temperature=0.9, top_k=40, top_p=0.95, min_p=0.05, seed=11)


@pytest.fixture(scope="module")
def sibling(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One layer instead of two, same seed: shares embeddings, head and the
    first layer with the tiny model, so it agrees with it often, not always."""
    return write_tiny_model(tmp_path_factory.mktemp("draft") / "draft.gguf", n_layer=1)


def engine(model: Path, draft: Path | None = None, n_draft: int = 4) -> NativeEngine:
    return NativeEngine(EngineParams(model_path=str(model), n_ctx=4096, n_parallel=4,
                                     n_threads=2, n_threads_batch=2,
                                     draft_path=str(draft) if draft else None, n_draft=n_draft))


def run_all(e: NativeEngine, sampling: Sampling, **kw: object) -> list:
    reqs = [e.submit(RequestParams(prompt=e.tokenize(p), max_tokens=120, sampling=sampling,
                                   **kw)) for p in PROMPTS]  # type: ignore[arg-type]
    try:
        res = collect(e, reqs)
        return [res[r.id] for r in reqs]
    finally:
        for r in reqs:
            r.free()


@pytest.fixture(scope="module")
def plain(tiny_model: Path) -> Iterator[NativeEngine]:
    e = engine(tiny_model)
    yield e
    e.close()


@pytest.mark.parametrize("which", ["self", "sibling"])
def test_greedy_output_is_identical_with_a_draft(plain: NativeEngine, tiny_model: Path,
                                                 sibling: Path, which: str) -> None:
    draft = tiny_model if which == "self" else sibling
    expected = run_all(plain, GREEDY, ignore_eos=True)
    e = engine(tiny_model, draft)
    try:
        got = run_all(e, GREEDY, ignore_eos=True)
    finally:
        e.close()
    for (tokens, text, _), (spec_tokens, spec_text, out) in zip(expected, got, strict=True):
        assert spec_tokens == tokens and spec_text == text
        assert out.n_drafted > 0
        assert 0 <= out.n_draft_accepted <= out.n_drafted
    accepted = sum(o.n_draft_accepted for _, _, o in got)
    drafted = sum(o.n_drafted for _, _, o in got)
    if which == "self":
        # The model agrees with itself, up to float near-ties between the
        # draft's one-token decodes and the batched verification.
        assert accepted >= 0.97 * drafted
    else:
        assert 0 < accepted < drafted


def test_sampled_tokens_are_the_models_own_draws(tiny_model: Path, sibling: Path) -> None:
    """Every emitted token is drawn by the request's sampler from the
    model's distribution: with top_k=5 each one is among the model's five
    most likely tokens at its position, whatever the draft proposed.  The
    same seed gives the same text.  (Token-for-token equality with a run
    without a draft holds only up to float differences between batch
    shapes, which can flip a draw that lands on a boundary.)"""
    sampling = Sampling(temperature=1.5, top_k=5, top_p=1.0, min_p=0.0, seed=5)
    e = engine(tiny_model, sibling)
    try:
        first = run_all(e, sampling, ignore_eos=True, logprobs=5)
        again = run_all(e, sampling, ignore_eos=True, logprobs=5)
    finally:
        e.close()
    for (tokens, text, out), (tokens2, text2, _) in zip(first, again, strict=True):
        assert (tokens, text) == (tokens2, text2)
        assert out.n_drafted > 0
    r = None
    e = engine(tiny_model, sibling)
    try:
        r = e.submit(RequestParams(prompt=e.tokenize(PROMPTS[0]), max_tokens=120,
                                   sampling=sampling, ignore_eos=True, logprobs=5))
        from tests.native.helpers import wait_ready
        lps: list = []
        done = False
        while not done:
            for rid in wait_ready(e):
                if rid == r.id:
                    out = r.take()
                    lps += out.logprobs
                    done = out.finished
        assert out.n_draft_accepted > 0 and len(lps) == 120
        for lp in lps:
            assert lp.token in [t for t, _ in lp.top]
    finally:
        if r is not None:
            r.free()
        e.close()


def test_fewer_target_steps_with_a_good_draft(tiny_model: Path) -> None:
    e = engine(tiny_model, tiny_model, n_draft=8)
    try:
        run_all(e, GREEDY, ignore_eos=True)
        steps = e.stats().decode_steps
    finally:
        e.close()
    # 4 requests x 120 tokens: without a draft one step per token (120+).
    assert steps <= 120 // 9 + 4


def test_logprobs_and_stops_under_speculation(plain: NativeEngine, tiny_model: Path,
                                              sibling: Path) -> None:
    text = run_all(plain, GREEDY, ignore_eos=True)[0][1]
    stop = text[20:24]
    kw = dict(ignore_eos=True, logprobs=3, stop=(stop,))
    expected = run_all(plain, GREEDY, **kw)
    e = engine(tiny_model, sibling)
    try:
        got = run_all(e, GREEDY, **kw)
    finally:
        e.close()
    for (tokens, text, out), (spec_tokens, spec_text, spec_out) in zip(expected, got,
                                                                       strict=True):
        assert (spec_tokens, spec_text) == (tokens, text)
        assert spec_out.finish_reason == out.finish_reason
        assert spec_out.stop_index == out.stop_index


def test_grammar_requests_run_without_proposals(tiny_model: Path) -> None:
    e = engine(tiny_model, tiny_model)
    try:
        r = e.submit(RequestParams(prompt=e.tokenize("x"), max_tokens=20, sampling=GREEDY,
                                   grammar='root ::= "ok " [0-9]+'))
        _, text, out = collect(e, [r])[r.id]
        r.free()
        assert text.startswith("ok ") and out.n_drafted == 0
        r = e.submit(RequestParams(prompt=e.tokenize("x"), max_tokens=20, sampling=GREEDY,
                                   speculate=False, ignore_eos=True))
        assert collect(e, [r])[r.id][2].n_drafted == 0
        r.free()
    finally:
        e.close()


@pytest.mark.parametrize("variant", [dict(extra_tokens=3), dict(rename_tokens={300: "zzz"})],
                         ids=["size", "piece"])
def test_a_draft_with_another_tokenizer_is_refused(tiny_model: Path, tmp_path: Path,
                                                   variant: dict) -> None:
    other = write_tiny_model(tmp_path / "other.gguf", n_layer=1, **variant)
    with pytest.raises(errors.InvalidArgument, match=r"draft model: .*tokenizer"):
        engine(tiny_model, other)


def test_a_missing_draft_is_a_load_error(tiny_model: Path, tmp_path: Path) -> None:
    with pytest.raises(errors.ModelLoadError, match="draft"):
        engine(tiny_model, tmp_path / "nope.gguf")


@pytest.mark.gemma
def test_gemma_greedy_output_is_bit_identical_with_a_draft(gemma_model: Path,
                                                           tmp_path: Path) -> None:
    """On Gemma's quantized weights too, with repacking off (draft_exact,
    the default when a model has a draft): ggml's repacked CPU kernels give
    a row slightly different results depending on how many rows share the
    matmul, which can flip a near-tied greedy choice."""
    from benchmarks.draft_models import early_exit_draft

    prompts = ["The patient, a 64-year-old man, was admitted with chest pain. The doctor",
               "def fibonacci(n):", "Question: What is the capital of France?\nAnswer:"]

    def generate(draft: Path | None) -> list[list[int]]:
        e = NativeEngine(EngineParams(model_path=str(gemma_model), n_ctx=4096, n_parallel=2,
                                      n_threads=2, n_threads_batch=2, repack_weights=False,
                                      draft_path=str(draft) if draft else None))
        try:
            out = []
            for p in prompts:
                r = e.submit(RequestParams(prompt=e.tokenize(p), max_tokens=40,
                                           sampling=GREEDY, ignore_eos=True))
                out.append(collect(e, [r])[r.id][0])
                r.free()
            return out
        finally:
            e.close()

    expected = generate(None)
    assert generate(gemma_model) == expected
    assert generate(early_exit_draft(gemma_model, tmp_path / "first6.gguf", 6)) == expected
