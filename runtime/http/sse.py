"""Replying with a generation: one JSON body, or server-sent events.

The first chunk is awaited before anything is sent.  The core checks a
request lazily, when its stream is first iterated, and a full queue fails
at submit; both come before the first chunk, so they still get their own
HTTP status instead of a 200 followed by an error event.  Once the stream
has started, an error is sent as a final `data: {"error": ...}` event
(OpenAI's clients raise it as an APIError) and no `[DONE]` follows.

Whatever ends the reply (the last chunk, an error, the client going away,
which cancels the handler), the core's stream is closed, and closing it
frees the request's engine slot.
"""
from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from runtime import errors
from runtime.core import GenerateChunk
from runtime.http.errors import error_reply
from runtime.http.responses import ChoiceFormat

log = logging.getLogger("hearth.http")

SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",        # reverse proxies: pass events on at once
}
DONE = b"data: [DONE]\n\n"


def event(body: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(body, ensure_ascii=False).encode() + b"\n\n"


@contextlib.asynccontextmanager
async def closing(chunks: AsyncIterator[GenerateChunk]) -> AsyncIterator[None]:
    """Closes the core's stream (an async generator) however the reply ends;
    its cleanup frees the engine slot."""
    try:
        yield
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()


async def _next(chunks: AsyncIterator[GenerateChunk]) -> GenerateChunk:
    try:
        return await anext(chunks)
    except StopAsyncIteration:
        raise errors.InternalError("the generation ended without a final chunk") from None


async def _run_out(chunks: AsyncIterator[GenerateChunk]) -> None:
    """After the last chunk, lets the core's stream end by itself: closing it
    at its last `yield` would record the request as abandoned."""
    async for extra in chunks:
        raise errors.InternalError(f"a chunk after the last one: {extra!r:.80}")


async def reply_with_generation(request: web.Request, chunks: AsyncIterator[GenerateChunk],
                                fmt: ChoiceFormat, stream: bool) -> web.StreamResponse:
    async with closing(chunks):
        first = await _next(chunks)
        if not stream:
            collected = [first]
            while not collected[-1].finish_reason:
                collected.append(await _next(chunks))
            await _run_out(chunks)
            return web.json_response(fmt.whole(collected), dumps=_dumps)
        return await _stream(request, chunks, first, fmt)


async def _stream(request: web.Request, chunks: AsyncIterator[GenerateChunk],
                  first: GenerateChunk, fmt: ChoiceFormat) -> web.StreamResponse:
    response = web.StreamResponse(headers=SSE_HEADERS)
    await response.prepare(request)
    try:
        for opening in fmt.opening():
            await response.write(event(opening))
        chunk = first
        while True:
            delta = fmt.delta(chunk)
            if delta is not None:
                await response.write(event(delta))
            if chunk.finish_reason:
                break
            chunk = await _next(chunks)
        await _run_out(chunks)
        await response.write(event(fmt.finish(chunk.finish_reason)))
        if fmt.include_usage:
            await response.write(event(fmt.usage_chunk(chunk.usage)))
        await response.write(DONE)
    except ConnectionResetError:
        # The client went away; returning closes the core's stream.
        return response
    except Exception as exc:
        if not isinstance(exc, errors.HearthError):
            log.exception("unexpected error in a stream", exc_info=exc,
                          extra={"request_id": request.get("request_id", "")})
        _status, body, _headers = error_reply(exc)
        with contextlib.suppress(ConnectionResetError):
            await response.write(event(body))
    with contextlib.suppress(ConnectionResetError):
        await response.write_eof()
    return response


def _dumps(body: Any) -> str:
    return json.dumps(body, ensure_ascii=False)
