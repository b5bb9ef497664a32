"""Prometheus metrics on a local port (`[server] metrics_listen`).

Request outcomes, tokens and latencies are counted from RequestFinished
events; what changes while requests run (tokens generated so far, queue
depth, busy slots, KV cells, audit-log lag) is read from the engines at
scrape time, so the counters move during a long generation, not only at
its end.  packaging/grafana/hearth.json is a dashboard over these names.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from runtime import errors
from runtime.core.response_cache import ResponseCache
from runtime.energy.service import EnergyService
from runtime.events import EventBus, RequestFinished
from runtime.models.manager import ModelManager

if TYPE_CHECKING:
    from runtime.drift.service import DriftService

log = logging.getLogger("hearth.metrics")

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
ITL_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56)
_STATES = ("loading", "ready", "draining", "failed", "unloaded")


class DriftCollector(Collector):
    """The drift monitors' last evaluation, read at scrape time.  The model
    label is the monitor's version: the model, or model@adapter."""

    def __init__(self, drift: DriftService) -> None:
        self.drift = drift

    def collect(self) -> Iterator[Any]:
        stat = GaugeMetricFamily("hearth_drift_statistic", "Drift statistic of the last "
                                 "window against the reference", labels=["model", "signal"])
        pval = GaugeMetricFamily("hearth_drift_p_value", "Calibrated null tail probability "
                                 "of the drift statistic", labels=["model", "signal"])
        alarm = GaugeMetricFamily("hearth_drift_alarm", "1 while a drift alarm holds",
                                  labels=["model"])
        seen = CounterMetricFamily("hearth_drift_requests_observed", "Requests the drift "
                                   "monitor observed", labels=["model"])
        for version, status, observed in self.drift.statuses():
            for name, s in status.signals.items():
                stat.add_metric([version, name], s.statistic)
                pval.add_metric([version, name], s.p_value)
            alarm.add_metric([version], 1.0 if status.alarm else 0.0)
            seen.add_metric([version], observed)
        yield from (stat, pval, alarm, seen)


class EnergyCollector(Collector):
    """Energy attributed to each model's requests, idle energy, and gCO2e,
    as the accountant's closed windows add them up (runtime/energy/)."""

    def __init__(self, energy: EnergyService) -> None:
        self.energy = energy

    def collect(self) -> Iterator[Any]:
        t = self.energy.accountant.totals
        source = self.energy.source
        joules = CounterMetricFamily("hearth_energy_joules", "Energy attributed to the "
                                     "model's requests", labels=["model", "source"])
        idle = CounterMetricFamily("hearth_idle_energy_joules", "Energy of the windows' "
                                   "time when no request ran", labels=["source"])
        per_token = GaugeMetricFamily("hearth_energy_joules_per_token", "Joules per token "
                                      "(prefill and decode) over the model's last window "
                                      "with work", labels=["model"])
        co2e = CounterMetricFamily("hearth_co2e_grams", "gCO2e of the energy attributed "
                                   "to the model's requests (grid_g_per_kwh)", labels=["model"])
        for model, j in dict(t.joules).items():
            joules.add_metric([model, source], j)
        for model, g in dict(t.co2e_grams).items():
            co2e.add_metric([model], g)
        for model, jpt in dict(t.joules_per_token).items():
            per_token.add_metric([model], jpt)
        idle.add_metric([source], t.idle_joules)
        yield from (joules, idle, per_token, co2e)


class EngineCollector(Collector):
    """Live figures, read from every engine when Prometheus scrapes."""

    def __init__(self, models: ModelManager, audit_lag: Callable[[], float] | None,
                 cache: ResponseCache | None = None) -> None:
        self.models = models
        self.audit_lag = audit_lag
        self.cache = cache

    def collect(self) -> Iterator[Any]:
        g = {name: GaugeMetricFamily(f"hearth_{name}", text, labels=["model"]) for name, text in (
            ("queue_depth", "Requests waiting for a slot"),
            ("slots_busy", "Slots decoding or prefilling"),
            ("slots_total", "Slots (sequences decoded together)"),
            ("kv_cells_used", "KV cache cells holding tokens"),
            ("kv_cells_total", "KV cache cells"),
            ("model_load_seconds", "Time the model took to load"),
        )}
        state = GaugeMetricFamily("hearth_model_state", "1 for the model's current state",
                                  labels=["model", "state"])
        generated = CounterMetricFamily("hearth_engine_generated_tokens",
                                        "Tokens generated, updated every decode step",
                                        labels=["model"])
        computed = CounterMetricFamily("hearth_engine_prompt_tokens",
                                       "Prompt tokens computed (not taken from the cache)",
                                       labels=["model"])
        for handle in self.models.handles():
            name = handle.name
            for s in _STATES:
                state.add_metric([name, s], 1.0 if handle.state.value == s else 0.0)
            g["model_load_seconds"].add_metric([name], handle.load_seconds)
            engine = handle.engine
            stats = engine.stats_if_open() if engine is not None else None
            if stats is None:
                continue
            g["queue_depth"].add_metric([name], stats.queue_depth)
            g["slots_busy"].add_metric([name], stats.slots_busy)
            g["slots_total"].add_metric([name], stats.n_slots)
            g["kv_cells_used"].add_metric([name], stats.kv_cells_used)
            g["kv_cells_total"].add_metric([name], stats.kv_cells_total)
            generated.add_metric([name], stats.tokens_generated)
            computed.add_metric([name], stats.tokens_prompt)
        yield from g.values()
        yield state
        yield generated
        yield computed
        if self.cache is not None and self.cache.enabled:
            cs = self.cache.stats()
            for name, text, value in (
                    ("entries", "Answers held by the response cache", cs.entries),
                    ("bytes", "Estimated memory held by the response cache", cs.bytes),
                    ("capacity_bytes", "Bound of the response cache", cs.capacity_bytes)):
                gauge = GaugeMetricFamily(f"hearth_response_cache_{name}", text)
                gauge.add_metric([], value)
                yield gauge
            evictions = CounterMetricFamily("hearth_response_cache_evictions",
                                            "Answers dropped to stay within the bound")
            evictions.add_metric([], cs.evictions)
            yield evictions
        if self.audit_lag is not None:
            lag = GaugeMetricFamily("hearth_audit_lag_seconds",
                                    "Age of the oldest audit record not yet on disk")
            lag.add_metric([], self.audit_lag())
            yield lag


class Metrics:
    def __init__(self, events: EventBus, models: ModelManager,
                 audit_lag: Callable[[], float] | None = None,
                 cache: ResponseCache | None = None,
                 drift: DriftService | None = None,
                 energy: EnergyService | None = None) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("hearth_requests", "Finished requests", ["model", "kind",
                                                                         "status"], registry=r)
        self.prompt_tokens = Counter("hearth_prompt_tokens", "Prompt tokens of finished "
                                     "requests", ["model"], registry=r)
        self.cached_tokens = Counter("hearth_cached_prompt_tokens", "Prompt tokens reused from "
                                     "the KV cache", ["model"], registry=r)
        self.completion_tokens = Counter("hearth_completion_tokens", "Generated tokens of "
                                         "finished requests", ["model"], registry=r)
        self.ttft = Histogram("hearth_ttft_seconds", "Submit to first token", ["model"],
                              buckets=LATENCY_BUCKETS, registry=r)
        self.duration = Histogram("hearth_request_duration_seconds", "Submit to last token",
                                  ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.queue = Histogram("hearth_queue_seconds", "Time waiting for a slot", ["model"],
                               buckets=LATENCY_BUCKETS, registry=r)
        self.itl = Histogram("hearth_inter_token_seconds", "Mean gap between generated tokens, "
                             "one observation per request", ["model"], buckets=ITL_BUCKETS,
                             registry=r)
        self.cache_lookups = Counter("hearth_response_cache_lookups", "Deterministic requests "
                                     "looked up in the response cache", ["model", "result"],
                                     registry=r)
        self.draft_tokens = Counter("hearth_speculative_draft_tokens", "Tokens proposed by "
                                    "the draft model", ["model"], registry=r)
        self.draft_accepted = Counter("hearth_speculative_accepted_tokens", "Draft tokens "
                                      "the model accepted", ["model"], registry=r)
        r.register(EngineCollector(models, audit_lag, cache))
        if drift is not None:
            r.register(DriftCollector(drift))
        if energy is not None:
            r.register(EnergyCollector(energy))
        events.subscribe(self.on_request, RequestFinished)

    def on_request(self, e: RequestFinished) -> None:
        self.requests.labels(e.model, e.kind, e.status).inc()
        self.prompt_tokens.labels(e.model).inc(e.prompt_tokens)
        self.cached_tokens.labels(e.model).inc(e.cached_tokens)
        self.completion_tokens.labels(e.model).inc(e.completion_tokens)
        if e.response_cache:
            self.cache_lookups.labels(e.model, e.response_cache).inc()
        if e.draft_tokens:
            self.draft_tokens.labels(e.model).inc(e.draft_tokens)
            self.draft_accepted.labels(e.model).inc(e.draft_accepted)
        if e.response_cache == "hit":
            return  # nothing was computed: no latencies to observe
        if e.completion_tokens > 0:
            self.ttft.labels(e.model).observe(e.ttft_s)
            self.duration.labels(e.model).observe(e.total_s)
            self.queue.labels(e.model).observe(e.queue_s)
        if e.completion_tokens > 1:
            self.itl.labels(e.model).observe((e.total_s - e.ttft_s) / (e.completion_tokens - 1))

    def serve(self, addr: str) -> int:
        """Serves /metrics on HOST:PORT (loopback only); returns the port."""
        host, _, port = addr.rpartition(":")
        try:
            server, _thread = start_http_server(int(port), addr=host, registry=self.registry)
        except OSError as exc:
            raise errors.Unavailable(f"cannot serve metrics on {addr}: {exc.strerror}") from exc
        bound = int(server.server_port)
        log.info("metrics on http://%s:%d/metrics", host, bound)
        return bound
