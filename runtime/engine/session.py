"""Bridging engine threads and the asyncio event loop."""
from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from runtime.native import NativeEngine, NativeRequest, Output, RequestParams, ScoreParams


class RequestStream:
    """Async iterator over the outputs of one native request.  Leaving the
    iteration early (client gone, exception) frees and so cancels it."""

    def __init__(self, session: EngineSession, request: NativeRequest) -> None:
        self._session = session
        self._request = request
        self._wake = asyncio.Event()
        self.id = request.id
        self.finished = False

    def notify(self) -> None:
        self._wake.set()

    def cancel(self) -> None:
        self._request.cancel()

    async def __aiter__(self) -> AsyncIterator[Output]:
        try:
            while not self.finished:
                await self._wake.wait()
                self._wake.clear()
                out = self._request.take()
                self.finished = out.finished
                if out.tokens or out.text or out.finished:
                    yield out
        finally:
            self.close()

    async def result(self) -> Output:
        """Waits for a single-shot request (embeddings, scores) to finish."""
        final = None
        async for out in self:
            final = out
        assert final is not None
        return final

    def close(self) -> None:
        self._session._forget(self.id)
        self._request.free()


def _free_submitted(future: asyncio.Future[NativeRequest]) -> None:
    if not future.cancelled() and future.exception() is None:
        future.result().free()


class EngineSession:
    """Owns the event-loop side of one NativeEngine."""

    def __init__(self, engine: NativeEngine, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.engine = engine
        self._loop = loop or asyncio.get_running_loop()
        self._streams: dict[int, RequestStream] = {}
        self._fd = engine.event_fd
        self._loop.add_reader(self._fd, self._on_ready)

    @property
    def active(self) -> int:
        return len(self._streams)

    def _on_ready(self) -> None:
        while True:
            ids = self.engine.drain_ready()
            if not ids:
                return
            for rid in ids:
                stream = self._streams.get(rid)
                if stream is not None:
                    stream.notify()

    def _forget(self, rid: int) -> None:
        self._streams.pop(rid, None)

    def _track(self, request: NativeRequest) -> RequestStream:
        stream = RequestStream(self, request)
        self._streams[request.id] = stream
        return stream

    def generate(self, params: RequestParams) -> RequestStream:
        """Submits at once (so a full queue raises here, before any output)."""
        return self._track(self.engine.submit(params))

    async def generate_async(self, params: RequestParams) -> RequestStream:
        """generate, but a request with a grammar is submitted from a worker
        thread: submit compiles the grammar, which within the checked limits
        (runtime/core/gbnf_cost.py) can still take a fraction of a second.  If
        the caller goes away meanwhile, the request is freed (so cancelled)
        once submitted."""
        if not params.grammar:
            return self.generate(params)
        future = self._loop.run_in_executor(None, self.engine.submit, params)
        try:
            request = await asyncio.shield(future)
        except asyncio.CancelledError:
            future.add_done_callback(_free_submitted)
            raise
        stream = self._track(request)
        # Its first output may have been drained (and its id dropped, the
        # stream unknown yet) while the loop waited: look once now.
        stream.notify()
        return stream

    def embed(self, tokens: list[int], normalize: bool) -> RequestStream:
        return self._track(self.engine.submit_embedding(tokens, normalize))

    def score(self, params: ScoreParams) -> RequestStream:
        """An occlusion score request; its result() carries Output.score."""
        return self._track(self.engine.submit_score(params))

    def cancel_all(self) -> None:
        for stream in list(self._streams.values()):
            stream.cancel()

    async def wait_idle(self, timeout: float) -> bool:
        """Waits until no stream is open; False if the timeout passed first."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while self._streams:
            if loop.time() >= end:
                return False
            await asyncio.sleep(0.05)
        return True

    def close(self) -> None:
        """Detaches from the loop.  Call after the engine is closed: every
        request has then finished, and the streams still open are woken to
        take their final output."""
        with contextlib.suppress(ValueError, OSError):
            self._loop.remove_reader(self._fd)
        for stream in list(self._streams.values()):
            stream.notify()
