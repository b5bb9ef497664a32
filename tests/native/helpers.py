"""Driving a NativeEngine synchronously, the way EngineSession does."""
from __future__ import annotations

import select

from runtime.native import NativeEngine, NativeRequest, Output


def wait_ready(engine: NativeEngine, timeout: float = 10.0) -> list[int]:
    readable, _, _ = select.select([engine.event_fd], [], [], timeout)
    assert readable, "the engine produced no output in time"
    return engine.drain_ready()


def collect(engine: NativeEngine, requests: list[NativeRequest], timeout: float = 60.0
            ) -> dict[int, tuple[list[int], str, Output]]:
    """Runs requests to the end: id -> (tokens, text, final output)."""
    by_id = {r.id: r for r in requests}
    acc: dict[int, tuple[list[int], list[str]]] = {r.id: ([], []) for r in requests}
    final: dict[int, Output] = {}
    while len(final) < len(requests):
        for rid in wait_ready(engine, timeout):
            if rid not in by_id or rid in final:
                continue
            out = by_id[rid].take()
            acc[rid][0].extend(out.tokens)
            acc[rid][1].append(out.text)
            if out.finished:
                final[rid] = out
    return {rid: (acc[rid][0], "".join(acc[rid][1]), final[rid]) for rid in by_id}
