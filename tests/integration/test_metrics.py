"""Prometheus metrics, scraped over HTTP and parsed with prometheus_client."""
from __future__ import annotations

import json
import threading
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import start_daemon


def scrape(addr: str) -> dict[str, list]:
    with urllib.request.urlopen(f"http://{addr}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def value(metrics: dict[str, list], family: str, sample: str, **labels: str) -> float:
    return next(s.value for s in metrics[family]
                if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()))


def test_metrics_move_during_a_generation_and_parse(tmp_path: Path, tiny_model: Path) -> None:
    d = start_daemon(["--model", f"tiny={tiny_model}", "--listen", "127.0.0.1:0",
                      "--metrics-listen", "127.0.0.1:0", "--parallel", "2", "--ctx", "2048",
                      "--threads", "1"], tmp_path)
    try:
        ready = next(tmp_path.glob("ready-*.json"))
        addr = json.loads(ready.read_text())["metrics"]
        with d.client() as c:
            done = threading.Event()

            def long_stream() -> None:
                c.complete("hello", max_tokens=1000, temperature=0.0, ignore_eos=True)
                done.set()

            threading.Thread(target=long_stream).start()
            deadline = time.monotonic() + 20
            while value(scrape(addr), "hearth_slots_busy", "hearth_slots_busy",
                        model="tiny") == 0:
                assert time.monotonic() < deadline
                time.sleep(0.01)
            first = value(scrape(addr), "hearth_engine_generated_tokens",
                          "hearth_engine_generated_tokens_total", model="tiny")
            time.sleep(0.1)
            second = value(scrape(addr), "hearth_engine_generated_tokens",
                           "hearth_engine_generated_tokens_total", model="tiny")
            assert second > first          # live, while the stream is still running
            assert done.wait(60)
        m = scrape(addr)
        assert value(m, "hearth_requests", "hearth_requests_total", model="tiny",
                     kind="generate", status="ok") == 1
        assert value(m, "hearth_completion_tokens", "hearth_completion_tokens_total",
                     model="tiny") == 1000
        assert value(m, "hearth_ttft_seconds", "hearth_ttft_seconds_count", model="tiny") == 1
        assert value(m, "hearth_inter_token_seconds", "hearth_inter_token_seconds_count",
                     model="tiny") == 1
        assert value(m, "hearth_slots_total", "hearth_slots_total", model="tiny") == 2
        assert value(m, "hearth_queue_depth", "hearth_queue_depth", model="tiny") == 0
        assert value(m, "hearth_kv_cells_total", "hearth_kv_cells_total", model="tiny") == 2048
        assert value(m, "hearth_model_state", "hearth_model_state", model="tiny",
                     state="ready") == 1
        assert value(m, "hearth_model_load_seconds", "hearth_model_load_seconds",
                     model="tiny") > 0
    finally:
        assert d.stop() == 0


def test_the_grafana_dashboard_only_uses_exported_metrics() -> None:
    import re

    from runtime.config import Config
    from runtime.events import EventBus
    from runtime.models.manager import ModelManager
    from runtime.server.metrics import Metrics

    dashboard = json.loads((Path(__file__).resolve().parents[2] / "packaging" / "grafana" /
                            "hearth.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {n for e in exprs for n in re.findall(r"hearth_[a-z_]+", e)}
    metrics = Metrics(EventBus(), ModelManager(Config(), EventBus()), audit_lag=lambda: 0.0)
    families = {f.name: f.type for f in metrics.registry.collect()}
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"],
                "gauge": [""]}
    exported = {name + s for name, kind in families.items() for s in suffixes[kind]}
    assert used <= exported, used - exported
