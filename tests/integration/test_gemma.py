"""The default models, Gemma 3 270M Q4_K_M and SmolLM2-135M-Instruct, served
by the real daemon."""
from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from runtime.client import AsyncHearthClient
from tests.integration.conftest import Daemon, start_daemon
from tests.integration.near_tie import assert_same_greedy

pytestmark = pytest.mark.gemma


@pytest.fixture(scope="module")
def gemma_daemon(gemma_model: Path, tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[Daemon]:
    d = start_daemon(["--model", f"gemma3-270m={gemma_model}", "--listen", "127.0.0.1:0",
                      "--parallel", "4", "--ctx", "4096"], tmp_path_factory.mktemp("gemma"))
    yield d
    assert d.stop() == 0, d.log()


def test_capital_of_france(gemma_daemon: Daemon) -> None:
    with gemma_daemon.client() as c:
        chunks = list(c.generate("Question: What is the capital of France?\nAnswer:",
                                 max_tokens=12, temperature=0.0))
    text = "".join(ch.text for ch in chunks)
    assert text.startswith(" Paris")
    # Streamed: the first chunk arrives before the generation is over.
    assert len(chunks) > 1


def test_matches_llama_cpp_python_greedy(gemma_daemon: Daemon, gemma_model: Path) -> None:
    """The same greedy tokens as llama-cpp-python's own decoding, up to a
    near-tie: the two run different batch shapes and KV layouts, and this
    prompt has a top-two gap of 0.07 at token 10 that rounding can flip."""
    from llama_cpp import Llama

    prompt = "Write one sentence about the sea:"
    with gemma_daemon.client() as c:
        _, ours, _ = c.complete(prompt, max_tokens=24, temperature=0.0, ignore_eos=True)
        prompt_tokens = c.tokenize(prompt, parse_special=True)
    llm = Llama(model_path=str(gemma_model), n_ctx=512, n_threads=2, verbose=False)
    theirs = []
    for tok in llm.generate(prompt_tokens, temp=0.0, top_k=1):
        theirs.append(tok)
        if len(theirs) == 24:
            break
    assert_same_greedy(gemma_model, prompt_tokens, ours, theirs, tie=0.25)


def test_chat_refuses_a_base_model_without_a_template(gemma_daemon: Daemon) -> None:
    """Gemma 3 270M (a base model) ships no chat template: Chat refuses it,
    saying how to configure one, rather than guessing one; Models.Get says
    "none".  Fails on ea4a01e, where it fell back to the Gemma template."""
    with gemma_daemon.client() as c:
        with pytest.raises(grpc.RpcError) as err:
            list(c.chat([("user", "What is the capital of France?")], max_tokens=8))
        status = c.get_model()
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "'gemma3-270m' has no chat template" in err.value.details()
    assert "--chat-template" in err.value.details()
    assert "[models.gemma3-270m] chat_template" in err.value.details()
    assert status.architecture == "gemma3"
    assert status.chat_template == "none"


def test_chat_uses_the_template_the_operator_configured(
        gemma_model: Path, tmp_path: Path) -> None:
    """With `--chat-template gemma` the operator's choice is used: the same
    tokens as the Gemma turn written by hand."""
    d = start_daemon(["--model", f"gemma3-270m={gemma_model}", "--chat-template", "gemma",
                      "--listen", "127.0.0.1:0", "--parallel", "1", "--ctx", "1024"], tmp_path)
    question = "What is the capital of France? Answer in one word."
    try:
        with d.client() as c:
            chunks = list(c.chat([("user", question)], max_tokens=8, temperature=0.0))
            manual = f"<start_of_turn>user\n{question}<end_of_turn>\n<start_of_turn>model\n"
            _, expected, _ = c.complete(manual, max_tokens=8, temperature=0.0)
            status = c.get_model()
    finally:
        assert d.stop() == 0, d.log()
    assert [t for ch in chunks for t in ch.token_ids] == expected
    assert status.chat_template == "config"


def test_four_concurrent_streams_all_complete(gemma_daemon: Daemon) -> None:
    async def run() -> list[int]:
        async with AsyncHearthClient(gemma_daemon.tcp) as c:
            results = await asyncio.gather(*(
                c.complete(f"Tell me about the number {i}.", max_tokens=16, temperature=0.0,
                           ignore_eos=True) for i in range(4)))
        return [last.usage.completion_tokens for _, _, last in results]

    assert asyncio.run(run()) == [16] * 4


def test_follow_up_turn_reuses_the_cached_prefix(chat_model: Path, tmp_path: Path) -> None:
    d = start_daemon(["--model", f"smollm2-135m-instruct={chat_model}", "--listen",
                      "127.0.0.1:0", "--parallel", "2", "--ctx", "2048"], tmp_path)
    try:
        with d.client() as c:
            turn = [("system", "You are a terse assistant for a hospital ward."),
                    ("user", "Name one vital sign.")]
            reply = "".join(ch.text for ch in c.chat(turn, max_tokens=8, temperature=0.0))
            chunks = list(c.chat(turn + [("assistant", reply), ("user", "And another?")],
                                 max_tokens=8, temperature=0.0))
    finally:
        assert d.stop() == 0, d.log()
    assert chunks[-1].usage.cached_tokens > 15
