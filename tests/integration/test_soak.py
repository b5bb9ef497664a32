"""Soak: 64 concurrent streams of good and bad requests against Gemma.

SECURITY-CASES 25, 27, 33 (and 13, 18, 19 along the way).  Every good stream
must complete with the output it gets alone; every bad request must get its
typed error; the daemon's RSS must stay bounded and it must stay up.  The
whole run is bounded in requests (64 clients × 3 rounds) and in time (the
asyncio timeout below), and sends traffic to loopback only.

Fails on e3a5e70: the 2,000-reference grammar held the engine for minutes
(the run hit its time bound), `penalty_last_n = 2^31 - 1` was accepted, the
`maxLength = 10^9` schema grew the daemon by gigabytes, the 600-deep grammar
got INTERNAL, the name with a newline was treated as a missing model
(NOT_FOUND), and an anonymous caller could load models.
"""
from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import psutil
import pytest

from runtime._proto.hearth.v1 import inference_pb2 as ipb
from runtime._proto.hearth.v1 import models_pb2 as mpb
from runtime.client import AsyncHearthClient, HearthClient
from tests.integration.conftest import Daemon, start_daemon
from tests.integration.near_tie import assert_same_greedy

pytestmark = [pytest.mark.gemma, pytest.mark.slow]

MODEL = "gemma3-270m"
CLIENTS = 64
ROUNDS = 3
MAX_TOKENS = 12
RUN_BOUND_S = 240.0
RSS_GROWTH_BOUND = 1536 << 20    # the 10^9 maxLength schema alone took > 19 GB on e3a5e70

PROMPTS = [f"Write a short note about {topic}:" for topic in (
    "the sea", "a hospital night shift", "bread", "mountains", "a library", "winter",
    "a train station", "the harvest")]

INVALID = grpc.StatusCode.INVALID_ARGUMENT
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED


def _explosive_grammar(refs: int) -> str:
    return "root ::= " + " ".join(["a"] * refs) + '\na ::= "x" | "y" |\n'


def _nested_grammar(depth: int) -> str:
    return "root ::= " + "(" * depth + '"x"' + ")" * depth + "\n"


def _schema(doc: object) -> ipb.ResponseFormat:
    text = doc if isinstance(doc, str) else json.dumps(doc)
    return ipb.ResponseFormat(type=ipb.ResponseFormat.TYPE_JSON_SCHEMA, json_schema=text)


def _deep_schema(depth: int) -> str:
    """As text: json.dumps itself recurses once per level."""
    return ('{"type":"object","properties":{"a":' * depth + '{"type":"string"}'
            + '},"required":["a"]}' * depth)


@dataclass(frozen=True)
class Bad:
    """A bad request and the status codes that are a correct answer to it."""

    name: str
    request: ipb.GenerateRequest
    codes: tuple[grpc.StatusCode, ...]


def _bad_requests() -> list[Bad]:
    base = {"model": MODEL, "prompt": "hello", "max_tokens": 4}
    return [
        Bad("grammar with 2,000 nullable references",
            ipb.GenerateRequest(**base, grammar=_explosive_grammar(2000)), (INVALID, EXHAUSTED)),
        Bad("grammar nested 600 deep",
            ipb.GenerateRequest(**base, grammar=_nested_grammar(600)), (INVALID, EXHAUSTED)),
        Bad("penalty window of 2^31 - 1",
            ipb.GenerateRequest(**base, penalty_last_n=2**31 - 1), (INVALID,)),
        Bad("schema maxLength 10^9",
            ipb.GenerateRequest(**base, response_format=_schema(
                {"type": "string", "maxLength": 10**9})), (INVALID, EXHAUSTED)),
        Bad("schema nested 5,000 deep",
            ipb.GenerateRequest(**base, response_format=_schema(_deep_schema(5000))),
            (INVALID, EXHAUSTED)),
        Bad("prompt longer than the context",
            ipb.GenerateRequest(model=MODEL, prompt_tokens=[2] * 20_000, max_tokens=4),
            (INVALID,)),
        Bad("top_p above 1", ipb.GenerateRequest(**base, top_p=2.0), (INVALID,)),
        Bad("100,000 top logprobs",
            ipb.GenerateRequest(**base, logprobs=True, top_logprobs=100_000), (INVALID,)),
        Bad("10,000 stop strings",
            ipb.GenerateRequest(**base, stop=["zz"] * 10_000), (INVALID,)),
        Bad("model name with a trailing newline",
            ipb.GenerateRequest(model=MODEL + "\n", prompt="hello", max_tokens=4), (INVALID,)),
    ]


@pytest.fixture(scope="module")
def soak_daemon(gemma_model: Path, tmp_path_factory: pytest.TempPathFactory
                ) -> Iterator[Daemon]:
    tmp = tmp_path_factory.mktemp("soak")
    models_dir = tmp / "models"
    models_dir.mkdir()      # empty: an anonymous Load must be refused before any lookup
    d = start_daemon(["--model", f"{MODEL}={gemma_model}", "--listen", "127.0.0.1:0",
                      "--parallel", "16", "--ctx", "8192", "--threads", "2",
                      "--max-queue", "96", "--models-dir", str(models_dir)], tmp, wait=120)
    yield d
    assert d.stop() == 0, d.log()


async def _good(client: AsyncHearthClient, prompt: str) -> list[int]:
    _, tokens, last = await client.complete(prompt, MODEL, max_tokens=MAX_TOKENS,
                                            temperature=0.0, ignore_eos=True)
    assert last.finish_reason == ipb.FINISH_REASON_LENGTH
    return tokens


async def _bad(client: AsyncHearthClient, bad: Bad) -> grpc.StatusCode:
    try:
        async for _ in client.inference.Generate(bad.request, timeout=60):
            pass
    except grpc.aio.AioRpcError as err:
        return err.code()
    return grpc.StatusCode.OK


async def _cancelled_grammar(client: AsyncHearthClient) -> grpc.StatusCode:
    """A legitimate grammar request whose client gives up after a moment."""
    request = ipb.GenerateRequest(model=MODEL, prompt="Digits:", max_tokens=400,
                                  grammar="root ::= [0-9]{300}\n")     # cannot end early
    try:
        async for _ in client.inference.Generate(request, timeout=0.5):
            pass
    except grpc.aio.AioRpcError as err:
        return err.code()
    return grpc.StatusCode.OK


async def _anonymous_load(client: AsyncHearthClient) -> grpc.StatusCode:
    try:
        await client.models.Load(mpb.LoadModelRequest(name="spare"), timeout=60)
    except grpc.aio.AioRpcError as err:
        return err.code()
    return grpc.StatusCode.OK


async def _soak(addr: str) -> tuple[dict[int, list[list[int]]], list[tuple[str, object]]]:
    bads = _bad_requests()
    good: dict[int, list[list[int]]] = {}
    answers: list[tuple[str, object]] = []
    async with AsyncHearthClient(addr) as client:
        async def worker(i: int) -> None:
            for r in range(ROUNDS):
                kind = (i + r) % 4
                if kind in (0, 1):
                    p = (i + r) % len(PROMPTS)
                    good.setdefault(p, []).append(await _good(client, PROMPTS[p]))
                elif kind == 2:
                    bad = bads[((i + r) // 4) % len(bads)]     # every class in turn
                    answers.append((bad.name, await _bad(client, bad)))
                elif (i + r) % 8 == 3:
                    answers.append(("cancelled grammar", await _cancelled_grammar(client)))
                else:
                    answers.append(("anonymous load", await _anonymous_load(client)))
        await asyncio.wait_for(asyncio.gather(*(worker(i) for i in range(CLIENTS))),
                               RUN_BOUND_S)
    return good, answers


def test_soak_mixed_good_and_bad(soak_daemon: Daemon, gemma_model: Path) -> None:
    async def alone() -> list[list[int]]:
        async with AsyncHearthClient(soak_daemon.tcp) as c:
            return [await _good(c, p) for p in PROMPTS]

    reference = asyncio.run(alone())
    proc = psutil.Process(soak_daemon.proc.pid)
    baseline = proc.memory_info().rss
    peak = [baseline]
    stop = False

    async def sample_rss() -> None:
        while not stop:
            peak[0] = max(peak[0], proc.memory_info().rss)
            await asyncio.sleep(0.1)

    async def run() -> tuple[dict[int, list[list[int]]], list[tuple[str, object]]]:
        nonlocal stop
        sampler = asyncio.create_task(sample_rss())
        try:
            return await _soak(soak_daemon.tcp)
        finally:
            stop = True
            await sampler

    started = time.monotonic()
    good, answers = asyncio.run(run())
    assert soak_daemon.proc.poll() is None, soak_daemon.log()

    expected = {b.name: b.codes for b in _bad_requests()}
    expected["cancelled grammar"] = (grpc.StatusCode.DEADLINE_EXCEEDED,)
    expected["anonymous load"] = (grpc.StatusCode.PERMISSION_DENIED,)
    wrong = [(name, code) for name, code in answers if code not in expected[name]]
    assert not wrong, f"bad requests answered wrongly: {wrong}"
    assert {name for name, _ in answers} == set(expected)

    prompt_tokens = {}
    with HearthClient(soak_daemon.tcp) as c:
        for p in good:
            prompt_tokens[p] = c.tokenize(PROMPTS[p], MODEL)
        # The daemon still serves normally after the soak.
        _, after, _ = c.complete(PROMPTS[0], MODEL, max_tokens=MAX_TOKENS, temperature=0.0,
                                 ignore_eos=True)
    for p, runs in good.items():
        for tokens in runs:
            assert_same_greedy(gemma_model, prompt_tokens[p], tokens, reference[p],
                               tie=0.25)
    assert after == reference[0]
    assert peak[0] - baseline < RSS_GROWTH_BOUND, (
        f"RSS grew by {(peak[0] - baseline) >> 20} MiB during the soak "
        f"({time.monotonic() - started:.0f} s)")
