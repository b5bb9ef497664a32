"""A grammar request never holds the other requests of its model
(SECURITY-CASES 25), on the tiny model.

The tiny model rarely picks a token the grammar below allows (only "x" and
"y" are), so the engine masks the vocabulary for it, as a job spread over
steps; `grammar_budget_us=1` makes every step advance each job by a single
chunk, so the spreading shows in token counts rather than in time.
"""
from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest

from runtime.core.grammar import check_gbnf, schema_to_gbnf
from runtime.native import EngineParams, FinishReason, NativeEngine, RequestParams, Sampling
from tests.core.test_grammar import ATTACK_4K
from tests.native.helpers import collect, wait_ready

GREEDY = Sampling(temperature=0.0)
CHAIN = 'root ::= item{1000}\nitem ::= "x" | "y"'
# 2,000 tokens (a slot's context): more than this engine writes in half a second.
LONG_CHAIN = 'root ::= item{1000} item{1000}\nitem ::= "x" | "y"'


@pytest.fixture(scope="module")
def engine(tiny_model: Path) -> Iterator[NativeEngine]:
    e = NativeEngine(EngineParams(model_path=str(tiny_model), n_ctx=4096, n_parallel=2,
                                  n_threads=2, n_threads_batch=2, max_queue=4,
                                  grammar_budget_us=1))
    yield e
    e.close()


def start_plain(engine: NativeEngine, text: str, max_tokens: int):  # type: ignore[no-untyped-def]
    """A request without a grammar, already decoding, so that a grammar job
    opened afterwards advances one chunk per decode step."""
    r = engine.submit(RequestParams(prompt=engine.tokenize(text), max_tokens=max_tokens,
                                    sampling=GREEDY, ignore_eos=True))
    while r.take().n_generated == 0:
        wait_ready(engine)
    return r


def start_grammar_job(engine: NativeEngine, max_tokens: int = 400,  # type: ignore[no-untyped-def]
                      grammar: str = CHAIN, **kw: object):
    """Submits the grammar request and waits until its first job is open."""
    check_gbnf(grammar)  # within the limits: this is what a client may send
    jobs = engine.stats().grammar_jobs
    r = engine.submit(RequestParams(prompt=engine.tokenize("hello"), max_tokens=max_tokens,
                                    sampling=GREEDY, grammar=grammar, **kw))  # type: ignore[arg-type]
    deadline = time.monotonic() + 60
    while engine.stats().grammar_jobs == jobs and time.monotonic() < deadline:
        time.sleep(0.005)
    assert engine.stats().grammar_jobs > jobs, "the grammar never refused a sampled token"
    return r


def stream(engine: NativeEngine, plain, grammar_req, n: int) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    """Takes output until the plain request has n tokens; returns the
    tokens of each."""
    got_plain = got_grammar = 0
    while got_plain < n:
        wait_ready(engine)
        got_plain += len(plain.take().tokens)
        out = grammar_req.take()
        got_grammar += len(out.tokens)
        assert not out.finished, out.finish_reason
    return got_plain, got_grammar


def finish(engine: NativeEngine, req):  # type: ignore[no-untyped-def]
    """Takes a request's output until it has finished; returns the last."""
    out = req.take()
    while not out.finished:
        wait_ready(engine)
        out = req.take()
    return out


def test_a_grammar_job_does_not_hold_a_plain_request(engine: NativeEngine) -> None:
    """While the grammar request's vocabulary mask is spread over steps (one
    chunk of 8 tokens per step here, about 80 steps for the tiny model's
    vocabulary), a plain request on the same model gets a token every step.  Fails on
    e3a5e70: the whole mask ran inside the step, so both requests got one
    token per step (there, too, grammar_budget_us does not exist)."""
    plain = start_plain(engine, "the city", 400)
    g = start_grammar_job(engine)
    plain.take()  # count from here
    got_plain, got_grammar = stream(engine, plain, g, 32)
    assert got_plain >= 32
    assert got_grammar < 8
    g.cancel()
    assert finish(engine, g).finish_reason is FinishReason.CANCELLED
    plain.free()
    g.free()


def test_cancel_frees_a_grammar_slot_within_a_step(engine: NativeEngine) -> None:
    """A cancel during an open grammar job ends the request at the next
    step, with no further token, while the plain request keeps streaming
    (fails on e3a5e70: there the cancel waited for the whole mask)."""
    plain = start_plain(engine, "the doctor", 400)
    g = start_grammar_job(engine)
    stream(engine, plain, g, 4)
    cancelled = engine.stats().requests_cancelled
    g.cancel()
    extra = 0
    while True:
        wait_ready(engine)
        out = g.take()
        extra += len(out.tokens)
        if out.finished:
            break
    assert out.finish_reason is FinishReason.CANCELLED
    assert extra == 0
    assert engine.stats().requests_cancelled == cancelled + 1
    assert engine.stats().slots_busy <= 1  # the grammar's slot is free
    assert finish(engine, plain).finish_reason is FinishReason.LENGTH
    plain.free()
    g.free()


def test_deadline_ends_a_grammar_job(engine: NativeEngine) -> None:
    """The deadline ends a grammar request whose tokens are chosen by jobs
    (checked between chunks, and by the next reap), and the plain request
    on the same model completes."""
    plain = start_plain(engine, "the bank", 400)
    # The whole grammar (2,000 tokens) cannot be written within the deadline,
    # even on an idle machine (1,000 tokens once took under 0.8 s here).
    g = start_grammar_job(engine, max_tokens=2000, grammar=LONG_CHAIN,
                          deadline_ns=time.monotonic_ns() + 500_000_000)
    assert finish(engine, g).finish_reason is FinishReason.DEADLINE
    assert finish(engine, plain).finish_reason is FinishReason.LENGTH
    plain.free()
    g.free()


def test_the_attack_grammar_never_reaches_the_engine() -> None:
    """The 4 KB grammar of SECURITY-CASES 25 is refused by the checker that
    every transport calls before submit (fails on e3a5e70: accepted)."""
    from runtime.errors import InvalidArgument

    with pytest.raises(InvalidArgument, match="limit"):
        check_gbnf(ATTACK_4K)


def test_realistic_schema_compiles_and_constrains(tiny_model: Path) -> None:
    """A schema with maxLength 1500, an array of objects and a nested object
    compiles in llama.cpp (the {m,n} chunks are within its limits) and the
    output follows it.  Fails on e3a5e70: maxLength 1500 was INTERNAL."""
    schema = {"type": "object", "properties": {
        "note": {"type": "string", "maxLength": 1500},
        "visits": {"type": "array", "minItems": 1, "maxItems": 2,
                   "items": {"type": "object",
                             "properties": {"n": {"type": "integer"}},
                             "required": ["n"], "additionalProperties": False}},
        "who": {"type": "object", "properties": {"id": {"type": "integer"}},
                "required": ["id"], "additionalProperties": False}},
        "required": ["visits", "who"], "additionalProperties": False}
    grammar = schema_to_gbnf(json.dumps(schema))
    fast = NativeEngine(EngineParams(model_path=str(tiny_model), n_ctx=2048, n_parallel=1,
                                     n_threads=2, n_threads_batch=2))
    try:
        r = fast.submit(RequestParams(prompt=fast.tokenize("record:"), max_tokens=300,
                                      sampling=GREEDY, grammar=grammar))
        _, text, final = collect(fast, [r])[r.id]
        r.free()
    finally:
        fast.close()
    if final.finish_reason is FinishReason.STOP:
        jsonschema.validate(json.loads(text), schema)
    else:  # the random model may ramble inside the string: a valid prefix
        assert final.finish_reason is FinishReason.LENGTH
        assert text.startswith("{")
