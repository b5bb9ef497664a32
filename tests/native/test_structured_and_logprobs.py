"""Grammar-constrained sampling and per-token log-probabilities, in C, on the
tiny model."""
from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from runtime import errors
from runtime.core.grammar import schema_to_gbnf
from runtime.native import EngineParams, FinishReason, NativeEngine, RequestParams, Sampling
from tests.native.helpers import collect

GREEDY = Sampling(temperature=0.0)
SAMPLED = Sampling(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=7)
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer"},
        "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 3},
    },
    "required": ["name", "age", "tags"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def engine(tiny_model: Path) -> Iterator[NativeEngine]:
    e = NativeEngine(EngineParams(model_path=str(tiny_model), n_ctx=4096, n_parallel=4,
                                  n_threads=2, n_threads_batch=2, max_queue=8))
    yield e
    e.close()


def run(engine: NativeEngine, prompt: list[int], **kw: object) -> tuple[list[int], str, object]:
    r = engine.submit(RequestParams(prompt=prompt, **kw))  # type: ignore[arg-type]
    try:
        return collect(engine, [r])[r.id]
    finally:
        r.free()


@pytest.mark.parametrize("sampling", [GREEDY, SAMPLED], ids=["greedy", "sampled"])
def test_json_schema_output_parses_and_validates(engine: NativeEngine, sampling: Sampling
                                                 ) -> None:
    grammar = schema_to_gbnf(json.dumps(PERSON))
    prompt = engine.tokenize("the patient record:")
    _, text, out = run(engine, prompt, max_tokens=400, sampling=sampling, grammar=grammar)
    assert out.finish_reason is FinishReason.STOP, (text, out)
    jsonschema.validate(json.loads(text), PERSON)


def test_without_a_grammar_the_same_prompt_is_not_json(engine: NativeEngine) -> None:
    """The control: the constraint, not the model, makes the output JSON."""
    _, text, _ = run(engine, engine.tokenize("the patient record:"), max_tokens=40,
                     sampling=GREEDY, ignore_eos=True)
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)


def test_gbnf_alternatives_are_enforced(engine: NativeEngine) -> None:
    for seed in range(6):
        _, text, out = run(engine, engine.tokenize("hello"), max_tokens=20,
                           sampling=Sampling(temperature=1.5, seed=seed),
                           grammar='root ::= ("yes" | "no") " " [0-9]{2}')
        assert out.finish_reason is FinishReason.STOP
        assert text.split(" ")[0] in ("yes", "no") and text[-2:].isdigit() and len(text) <= 6


def test_a_grammar_llama_cpp_rejects_is_invalid_argument(engine: NativeEngine) -> None:
    # Syntax llama.cpp accepts but whose left recursion it refuses at init.
    with pytest.raises(errors.InvalidArgument, match="grammar"):
        engine.submit(RequestParams(prompt=[1, 2], max_tokens=4, grammar="root ::= root \"a\""))
    with pytest.raises(errors.InvalidArgument, match="ignore_eos"):
        engine.submit(RequestParams(prompt=[1, 2], max_tokens=4, grammar='root ::= "a"',
                                    ignore_eos=True))


def test_logprobs_range_is_checked(engine: NativeEngine) -> None:
    for bad in (-2, 21):
        with pytest.raises(errors.InvalidArgument, match="logprobs"):
            engine.submit(RequestParams(prompt=[1, 2], max_tokens=4, logprobs=bad))


def _collect_logprobs(engine: NativeEngine, prompt: list[int], **kw: object) -> tuple[
        list[int], list]:
    r = engine.submit(RequestParams(prompt=prompt, **kw))  # type: ignore[arg-type]
    tokens: list[int] = []
    lps: list = []
    try:
        by_id = {r.id: r}
        done = False
        from tests.native.helpers import wait_ready
        while not done:
            for rid in wait_ready(engine):
                if rid not in by_id:
                    continue
                out = r.take()
                assert len(out.logprobs) == len(out.tokens)
                tokens += out.tokens
                lps += out.logprobs
                done = out.finished
    finally:
        r.free()
    return tokens, lps


@pytest.mark.parametrize("sampling", [GREEDY, SAMPLED], ids=["greedy", "sampled"])
def test_logprobs_are_probabilities(engine: NativeEngine, sampling: Sampling) -> None:
    tokens, lps = _collect_logprobs(engine, engine.tokenize("the doctor"), max_tokens=24,
                                    sampling=sampling, logprobs=5, ignore_eos=True)
    assert len(tokens) == len(lps) == 24
    for tok, lp in zip(tokens, lps, strict=True):
        assert lp.token == tok
        assert lp.logprob <= 0.0
        assert len(lp.top) == 5
        values = [v for _, v in lp.top]
        assert values == sorted(values, reverse=True) and all(v <= 0 for v in values)
        assert sum(math.exp(v) for v in values) <= 1.0 + 1e-5
        if sampling is GREEDY:
            assert lp.top[0] == (tok, pytest.approx(lp.logprob))
        elif tok in dict(lp.top):
            assert dict(lp.top)[tok] == pytest.approx(lp.logprob)


def test_logprobs_zero_gives_the_chosen_token_only(engine: NativeEngine) -> None:
    _, lps = _collect_logprobs(engine, engine.tokenize("the doctor"), max_tokens=4,
                               sampling=GREEDY, logprobs=0, ignore_eos=True)
    assert len(lps) == 4 and all(lp.top == () and lp.logprob <= 0 for lp in lps)


def test_logprobs_match_a_recomputation_from_the_full_logits(engine: NativeEngine,
                                                             tiny_model: Path) -> None:
    """llama-cpp-python, in this process, recomputes every position's full
    logits row; its log-softmax must agree with what the engine reported."""
    from llama_cpp import Llama

    from runtime import logs

    prompt = engine.tokenize("the nurse")
    tokens, lps = _collect_logprobs(engine, prompt, max_tokens=16, sampling=SAMPLED,
                                    logprobs=20, ignore_eos=True)
    # One token per decode and flash attention, as the engine computed the
    # generated positions: both change the order floats are summed in.
    ref = Llama(model_path=str(tiny_model), n_ctx=256, n_batch=1, n_ubatch=1,
                logits_all=True, verbose=False, n_threads=2, flash_attn=True)
    logs.reapply_native_logging()
    try:
        ref.eval(prompt + tokens[:-1])
        rows = np.asarray(ref.scores[len(prompt) - 1:len(prompt) - 1 + len(tokens)],
                          dtype=np.float64)
    finally:
        ref.close()
    mx = rows.max(axis=1, keepdims=True)
    log_softmax = rows - mx - np.log(np.exp(rows - mx).sum(axis=1, keepdims=True))
    for i, (tok, lp) in enumerate(zip(tokens, lps, strict=True)):
        assert lp.logprob == pytest.approx(log_softmax[i, tok], rel=2e-3, abs=2e-3)
        expected_top = np.argsort(-log_softmax[i], kind="stable")[:20]
        assert [t for t, _ in lp.top][:5] == list(expected_top[:5])
        for t, v in lp.top:
            assert v == pytest.approx(log_softmax[i, t], rel=2e-3, abs=2e-3)
