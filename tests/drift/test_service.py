"""DriftService without a daemon: RequestFinished events in, alarms, the
sealed aggregate, reset and the bounded queue out.  Seeded: deterministic."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from runtime.config import DriftConfig, parse_config
from runtime.drift.service import STORE_KIND, DriftService, object_name, settings_of
from runtime.errors import ConfigError, NotFound
from runtime.events import DriftDetected, EventBus, RequestFinished, RequestSignals

CFG = DriftConfig(enabled=True, sample_fraction=1.0, reference_size=60, window=20, stride=5,
                  ert_requests=2000, embedding_dims=8)


def event(rng: np.random.Generator, shift: float = 0.0, adapter: str = "") -> RequestFinished:
    pool = tuple(float(x) for x in rng.normal(shift, 1.0, 24))
    return RequestFinished(
        request_id="r", model="m", client="c", kind="generate", status="ok",
        finish_reason="stop" if rng.random() < 0.7 else "length", prompt_tokens=10,
        completion_tokens=int(rng.integers(5, 30)), cached_tokens=0, queue_s=0.0, ttft_s=0.0,
        total_s=0.0, adapter=adapter,
        drift=RequestSignals(float(rng.normal(3.0 + shift, 0.3)),
                             float(rng.gamma(2.0 + shift, 1.0)), pool))


@dataclass
class Obj:
    name: str


class FakeStore:
    """The two store calls the service makes, over a dict."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], bytes] = {}

    def put_bytes(self, kind: str, name: str, data: bytes) -> None:
        self.objects[(kind, name)] = data

    def list(self, kind: str) -> list[Obj]:
        return [Obj(n) for k, n in self.objects if k == kind]

    def read_bytes(self, kind: str, name: str) -> bytes:
        return self.objects[(kind, name)]


def make(store: Any = None) -> tuple[DriftService, list[DriftDetected], list[tuple[str, dict]]]:
    bus = EventBus()
    alarms: list[DriftDetected] = []
    bus.subscribe(alarms.append, DriftDetected)
    audited: list[tuple[str, dict]] = []
    svc = DriftService(CFG, bus, store, lambda a, d: audited.append((a, d)))
    svc.start()
    return svc, alarms, audited


def feed(svc: DriftService, rng: np.random.Generator, n: int, shift: float = 0.0,
         adapter: str = "") -> None:
    for _ in range(n):
        svc.on_request(event(rng, shift, adapter))
    svc.wait_idle()


def test_a_shift_alarms_is_published_and_audited_and_reset_accepts_it() -> None:
    """Fails if the alarm's onset is not published (e.g. `before is None`
    dropped from _observe publishes every evaluation while alarmed: more than
    one DriftDetected) or if reset is not audited."""
    rng = np.random.default_rng(1)
    store = FakeStore()
    svc, alarms, audited = make(store)
    try:
        feed(svc, rng, 200)
        assert alarms == []
        (status,) = svc.status("m")
        assert status["phase"] == "watching" and not status["alarm"]
        feed(svc, rng, 60, shift=1.5)
        assert len(alarms) == 1
        assert alarms[0].version == "m" and alarms[0].reference_size == 60
        assert [a for a, _ in audited] == ["drift_detected"]
        assert set(audited[0][1]["signals"]) == set(CFG.signals)
        assert svc.status("m")[0]["alarm"]
        assert svc.reset("m", actor="uid:0") == ["m"]
        assert audited[-1] == ("drift_reset", {"model": "m", "versions": ["m"],
                                               "actor": "uid:0"})
        feed(svc, rng, 100, shift=1.5)      # the shifted traffic is the new normal
        assert len(alarms) == 1
        assert svc.status("m")[0]["phase"] == "watching"
        with pytest.raises(NotFound):
            svc.reset("nobody")
    finally:
        svc.close()


def test_only_aggregates_are_stored_and_they_are_reloaded() -> None:
    """The stored object holds quantiles and a mean/covariance, not the
    observations; a new service starts watching from it at once.  Fails if
    _load_aggregates is skipped at start (the new monitor would be collecting)."""
    rng = np.random.default_rng(2)
    store = FakeStore()
    svc, _, _ = make(store)
    try:
        feed(svc, rng, 61)
    finally:
        svc.close()
    (raw,) = [v for (k, n), v in store.objects.items() if k == STORE_KIND]
    doc = json.loads(raw)
    assert doc["version"] == "m" and set(doc["aggregate"]) == {
        "size", "quantiles", "vector_mean", "vector_cov"}
    assert len(doc["aggregate"]["vector_mean"]) == CFG.embedding_dims
    assert (STORE_KIND, object_name("m")) in store.objects
    again, _, _ = make(store)
    try:
        feed(again, rng, 1)
        (status,) = again.status("m")
        assert status["phase"] == "watching" and status["reference_size"] == 60
    finally:
        again.close()


def test_adapters_get_their_own_monitor() -> None:
    rng = np.random.default_rng(3)
    svc, _, _ = make()
    try:
        feed(svc, rng, 5)
        feed(svc, rng, 7, adapter="clinic")
        got = {s["version"]: s["reference_size"] for s in svc.status("m")}
        assert got == {"m": 5, "m@clinic": 7}
    finally:
        svc.close()


def test_a_full_queue_drops_and_counts_never_blocks() -> None:
    """The handler runs on the event loop: with the worker stuck, events
    beyond the queue's size are dropped and counted."""
    svc = DriftService(DriftConfig(enabled=True, queue=3), EventBus())
    # The worker is not started, so nothing drains the queue.
    for _ in range(5):
        svc.on_request(event(np.random.default_rng(0)))
    assert svc.dropped == 2


def test_requests_without_signals_or_failed_are_ignored() -> None:
    rng = np.random.default_rng(4)
    svc, _, _ = make()
    try:
        e = event(rng)
        svc.on_request(RequestFinished(**{**e.__dict__, "drift": None}))
        svc.on_request(RequestFinished(**{**e.__dict__, "status": "Cancelled"}))
        svc.on_request(RequestFinished(**{**e.__dict__, "drift": RequestSignals(
            None, 1.0, e.drift.prompt_pool if e.drift else None)}))   # no position scored
        svc.wait_idle()
        assert svc.status() == []
    finally:
        svc.close()


def test_drift_config_is_validated() -> None:
    cfg = parse_config({"drift": {"enabled": True, "sample_fraction": 0.5, "window": 50,
                                  "signals": ["prompt_nll", "prompt_embedding"]}})
    assert cfg.drift.signals == ("prompt_nll", "prompt_embedding")
    for bad, where in (({"sample_fraction": 0}, "drift.sample_fraction"),
                       ({"sample_fraction": 1.5}, "drift.sample_fraction"),
                       ({"window": 600}, "drift.window"),
                       ({"reference_size": 5}, "drift.reference_size"),
                       ({"signals": []}, "drift.signals"),
                       ({"nll_rows": 1000}, "drift.nll_rows"),
                       ({"colour": 1}, "drift.colour")):
        with pytest.raises(ConfigError, match=re.escape(where)):
            parse_config({"drift": bad})
    with pytest.raises(ConfigError, match=r"drift\.signals"):
        settings_of(parse_config({"drift": {"signals": ["vibes"]}}).drift)


def test_drift_reset_needs_a_model(capsys: pytest.CaptureFixture[str]) -> None:
    """A typed error before any connection (the address is never dialled)."""
    from runtime.cli.main import main

    assert main(["drift", "reset", "--addr", "127.0.0.1:1"]) != 0
    assert "--model is required" in capsys.readouterr().err
