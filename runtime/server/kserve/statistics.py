"""Per-model request statistics for KServe's ModelStatistics.

Counted from the RequestFinished events the core publishes for every
request, whatever protocol it came in by, so the figures agree with the
audit log and the metrics endpoint.  As in Triton, queue and compute time
are summed over successful requests only.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from runtime.events import EventBus, RequestFinished


@dataclass
class ModelCounters:
    success_count: int = 0
    success_ns: int = 0
    fail_count: int = 0
    fail_ns: int = 0
    queue_ns: int = 0                 # over successful requests
    compute_ns: int = 0               # admission to finish, over successful requests
    last_inference_ms: int = 0        # wall clock, milliseconds since the epoch
    cache_hit_count: int = 0          # response cache (deterministic requests)
    cache_miss_count: int = 0


class RequestStatistics:
    def __init__(self, events: EventBus) -> None:
        self._models: dict[str, ModelCounters] = {}
        events.subscribe(self.on_request, RequestFinished)

    def on_request(self, event: RequestFinished) -> None:
        c = self._models.setdefault(event.model, ModelCounters())
        total_ns = int(event.total_s * 1e9)
        if event.status == "ok":
            queue_ns = int(event.queue_s * 1e9)
            c.success_count += 1
            c.success_ns += total_ns
            c.queue_ns += queue_ns
            c.compute_ns += max(0, total_ns - queue_ns)
        else:
            c.fail_count += 1
            c.fail_ns += total_ns
        if event.response_cache == "hit":
            c.cache_hit_count += 1
        elif event.response_cache == "miss":
            c.cache_miss_count += 1
        c.last_inference_ms = time.time_ns() // 1_000_000

    def of(self, model: str) -> ModelCounters:
        """A copy of the model's counters (zeros before its first request)."""
        found = self._models.get(model)
        return ModelCounters(**vars(found)) if found else ModelCounters()
