"""In-process events: what happened, for whoever needs to know.

The core publishes RequestFinished for every request, the model manager
ModelStateChanged for every state change, and the drift service
DriftDetected when a monitor's alarm begins.  Subscribers today: the request
log line (daemon.py), gRPC health (server/health.py), Prometheus metrics
(server/metrics.py), KServe statistics, the audit log (storage/audit.py)
and the drift watch (drift/service.py).  Request records carry the energy
the accountant (energy/service.py) attributed to them.  Handlers run
synchronously on the event loop and must be quick; an exception in one is
logged and never reaches the publisher or the other handlers.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("hearth.events")


@dataclass(frozen=True)
class ModelStateChanged:
    name: str
    state: str
    error: str = ""


@dataclass(frozen=True)
class RequestSignals:
    """A sampled request's drift signals, as the engine computed them (no
    text).  For the drift monitor only: held in memory, never written."""

    prompt_nll: float | None              # nats/token; None if no position was scored
    first_token_entropy: float | None     # nats
    prompt_pool: tuple[float, ...] | None  # mean input embedding of the prompt


@dataclass(frozen=True)
class DriftDetected:
    """A drift monitor's alarm began: live traffic of `model` (under
    `version`) no longer looks like its reference."""

    model: str
    version: str                            # the model version measured against
    signals: dict[str, tuple[float, float]]  # name -> (statistic, p-value)
    threshold: float                        # the calibrated p-value threshold
    window: int                             # requests in the live window
    reference_size: int
    observed: int                           # requests watched since the reference


@dataclass(frozen=True)
class RequestFinished:
    request_id: str
    model: str
    client: str
    kind: str                 # generate | chat | embed
    status: str               # ok, or the error family's status name
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    queue_s: float
    ttft_s: float
    total_s: float
    subject: str = ""                          # whose content this is (audit erasure)
    content: tuple[str, str] | None = None     # (prompt, response), when collected
    response_cache: str = ""                   # "hit" or "miss" when the cache was asked
    draft_tokens: int = 0                      # speculative decoding: proposed ...
    draft_accepted: int = 0                    # ... and accepted by the model
    adapter: str = ""                          # the LoRA adapter used, "" for none
    drift: RequestSignals | None = None        # sampled for drift: never persisted
    energy_joules: float = 0.0                 # attributed energy (runtime/energy/)
    energy_source: str = ""                    # nvml | rapl | estimate ("" when off)
    co2e_grams: float = 0.0                    # energy × the grid intensity of its windows


Handler = Callable[[Any], None]


class EventBus:
    def __init__(self) -> None:
        self._handlers: list[tuple[type | None, Handler]] = []

    def subscribe(self, handler: Handler, event_type: type | None = None) -> None:
        self._handlers.append((event_type, handler))

    def publish(self, event: object) -> None:
        for event_type, handler in list(self._handlers):
            if event_type is not None and not isinstance(event, event_type):
                continue
            try:
                handler(event)
            except Exception:  # a broken subscriber must not break serving
                log.exception("event handler %r failed on %r", handler, event)
