"""Driving a NativeEngine synchronously, the way EngineSession does."""
from __future__ import annotations

import select
import threading
from collections.abc import Callable, Sequence

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


def run_in_threads(target: Callable[..., None], args: Sequence[tuple], timeout: float = 60.0,
                   start: Callable[[], None] | None = None) -> None:
    """Runs target(*a) in a thread for each a in args (then start(), if
    given, on this thread) and re-raises the first exception a thread
    raised: a worker that dies must fail the test, not vanish."""
    errors: list[BaseException] = []

    def guarded(*a: object) -> None:
        try:
            target(*a)
        except BaseException as exc:  # handed to the test
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=a) for a in args]
    for t in threads:
        t.start()
    if start is not None:
        start()
    for t in threads:
        t.join(timeout)
    assert not any(t.is_alive() for t in threads), "a worker thread hung"
    if errors:
        raise errors[0]
