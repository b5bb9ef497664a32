"""The default model, Gemma 3 270M Q4_K_M, served by the real daemon."""
from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.client import AsyncHearthClient
from tests.integration.conftest import Daemon, start_daemon

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
        chunks = list(c.generate("The capital of France is", max_tokens=12, temperature=0.0))
    text = "".join(ch.text for ch in chunks)
    assert "Paris" in text
    # Streamed: the first chunk arrives before the generation is over.
    assert len(chunks) > 1


def test_matches_llama_cpp_python_greedy(gemma_daemon: Daemon, gemma_model: Path) -> None:
    """Same engine, same greedy tokens as llama-cpp-python's own sampling."""
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
    assert ours == theirs


def test_chat_template_from_the_gguf(gemma_daemon: Daemon) -> None:
    with gemma_daemon.client() as c:
        text = "".join(ch.text for ch in c.chat(
            [("user", "What is the capital of France? Answer in one word.")],
            max_tokens=8, temperature=0.0))
        status = c.get_model()
    assert "Paris" in text
    assert status.architecture == "gemma3"


def test_four_concurrent_streams_all_complete(gemma_daemon: Daemon) -> None:
    async def run() -> list[int]:
        async with AsyncHearthClient(gemma_daemon.tcp) as c:
            results = await asyncio.gather(*(
                c.complete(f"Tell me about the number {i}.", max_tokens=16, temperature=0.0,
                           ignore_eos=True) for i in range(4)))
        return [last.usage.completion_tokens for _, _, last in results]

    assert asyncio.run(run()) == [16] * 4


def test_follow_up_turn_reuses_the_cached_prefix(gemma_daemon: Daemon) -> None:
    with gemma_daemon.client() as c:
        turn = [("system", "You are a terse assistant for a hospital ward."),
                ("user", "Name one vital sign.")]
        reply = "".join(ch.text for ch in c.chat(turn, max_tokens=8, temperature=0.0))
        chunks = list(c.chat(turn + [("assistant", reply), ("user", "And another?")],
                             max_tokens=8, temperature=0.0))
    assert chunks[-1].usage.cached_tokens > 15
