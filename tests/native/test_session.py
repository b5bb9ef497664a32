"""EngineSession: a grammar request is submitted (and so compiled) off the
event loop, on the tiny model."""
from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

from runtime.engine.session import EngineSession
from runtime.native import EngineParams, NativeEngine, NativeRequest, RequestParams, Sampling

GREEDY = Sampling(temperature=0.0)


class SpyEngine:
    """Wraps a NativeEngine, recording the thread that submits and holding
    each submit until `release` is set."""

    def __init__(self, engine: NativeEngine) -> None:
        self._engine = engine
        self.threads: list[int] = []
        self.release = threading.Event()
        self.release.set()
        self.submitted: list[NativeRequest] = []

    def __getattr__(self, name: str) -> object:
        return getattr(self._engine, name)

    def submit(self, params: RequestParams) -> NativeRequest:
        self.threads.append(threading.get_ident())
        self.release.wait(10)
        finished = self._engine.stats().requests_finished
        request = self._engine.submit(params)
        self.submitted.append(request)
        if self.hold_until_finished:
            deadline = time.monotonic() + 30
            while (self._engine.stats().requests_finished == finished
                   and time.monotonic() < deadline):
                time.sleep(0.01)
            time.sleep(0.2)  # the loop drains the ready id meanwhile
        return request

    hold_until_finished = False


def test_grammar_requests_are_submitted_off_the_event_loop(tiny_model: Path) -> None:
    """Submit compiles the grammar: it runs in a worker thread, a plain
    request on the loop (fails on e3a5e70: no generate_async, and the
    grammar was compiled on the event loop)."""
    engine = NativeEngine(EngineParams(model_path=str(tiny_model), n_ctx=1024, n_parallel=2,
                                       n_threads=1, n_threads_batch=1))
    spy = SpyEngine(engine)

    async def main() -> tuple[int, str]:
        session = EngineSession(spy)  # type: ignore[arg-type]
        try:
            plain = await session.generate_async(RequestParams(prompt=[1, 300], max_tokens=3,
                                                               sampling=GREEDY))
            constrained = await session.generate_async(RequestParams(
                prompt=[1, 300], max_tokens=8, sampling=GREEDY, grammar='root ::= "yes" | "no"'))
            text = ""
            async for out in constrained:
                text += out.text
            async for _ in plain:
                pass
            return threading.get_ident(), text
        finally:
            session.close()

    try:
        loop_thread, text = asyncio.run(main())
    finally:
        engine.close()
    assert spy.threads[0] == loop_thread and spy.threads[1] != loop_thread
    assert text in ("yes", "no")


def test_a_caller_gone_during_submit_frees_the_request(tiny_model: Path) -> None:
    """If the caller is cancelled while the grammar compiles, the request is
    freed (and so cancelled) once submitted, never left running (without
    the done callback in generate_async it runs on: this fails)."""
    engine = NativeEngine(EngineParams(model_path=str(tiny_model), n_ctx=1024, n_parallel=1,
                                       n_threads=1, n_threads_batch=1))
    spy = SpyEngine(engine)
    spy.release.clear()

    async def main() -> None:
        session = EngineSession(spy)  # type: ignore[arg-type]
        task = asyncio.ensure_future(session.generate_async(RequestParams(
            prompt=[1, 300], max_tokens=900, sampling=GREEDY,
            grammar='root ::= [a-z]{1000}')))
        while not spy.threads:
            await asyncio.sleep(0.01)
        task.cancel()
        await asyncio.sleep(0)
        spy.release.set()
        deadline = time.monotonic() + 10
        while engine.stats().requests_cancelled == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)  # the loop runs the done callback
        assert task.cancelled() and spy.submitted
        session.close()

    try:
        asyncio.run(main())
        stats = engine.stats()
        assert stats.requests_cancelled == 1
        assert stats.slots_busy == 0
    finally:
        engine.close()


def test_output_ready_before_the_stream_is_tracked_is_not_lost(tiny_model: Path) -> None:
    """A grammar request submitted from a worker thread can finish before
    its stream is tracked; the event loop then drains its id and finds no
    stream.  The stream still gets its output (without the notify after
    tracking in generate_async it waited forever: the full native run hung
    here)."""
    engine = NativeEngine(EngineParams(model_path=str(tiny_model), n_ctx=1024, n_parallel=1,
                                       n_threads=1, n_threads_batch=1))
    spy = SpyEngine(engine)
    spy.hold_until_finished = True

    async def main() -> str:
        session = EngineSession(spy)  # type: ignore[arg-type]
        try:
            stream = await session.generate_async(RequestParams(
                prompt=[1, 300], max_tokens=8, sampling=GREEDY, grammar='root ::= "yes" | "no"'))

            async def read() -> str:
                return "".join([out.text async for out in stream])

            return await asyncio.wait_for(read(), 30)
        finally:
            session.close()

    try:
        assert asyncio.run(main()) in ("yes", "no")
    finally:
        engine.close()
