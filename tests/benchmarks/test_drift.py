"""The drift benchmarks' own code: the domains the false-alarm and delay
benchmark feeds, and a miniature run of the serving-cost benchmark (no
figure is asserted: only that each daemon ran and the watch saw traffic)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import drift, drift_serving
from runtime.federation.corpus import generate_site_corpus


def test_the_clinical_domains_are_the_simulations_shift() -> None:
    """Fails if the home pool were not site 0's distribution (its house
    style's header) or if a new-domain prompt also occurred at home."""
    home, new = drift.domain_prompts("clinical", 50)
    assert len(home) == len(new) == 50
    assert not set(home) & set(new)
    train, _ = generate_site_corpus(0, 3, 20, 0)
    site0_header = train[0].split(".")[0].split()[-1]    # "... clinic note" style
    assert sum(site0_header in h for h in home) > 25
    generic_home, generic_new = drift.domain_prompts("generic", 5)
    assert len(generic_home) == len(generic_new) == 5


@pytest.mark.slow
def test_the_serving_cost_benchmark_runs_both_daemons_and_the_watch_sees_every_request(
        tiny_model: Path, tmp_path: Path) -> None:
    """Fails if the "on" daemon ran without its watch (checked: with
    start()'s config line dropped the monitor observes 0 requests)."""
    assert drift_serving.main([
        "--model", str(tiny_model), "--concurrency", "2", "--repeat", "2", "--batches", "1",
        "--max-tokens", "8", "--threads", "1", "--parallel", "2", "--ctx", "1024",
        "--sample-fraction", "1.0", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "drift-serving-latest.json").read_text())
    assert [len(result["runs"][m]) for m in ("off", "on")] == [2, 2]
    assert all(r["completed"] == 2 and not r["errors"]
               for m in ("off", "on") for r in result["runs"][m])
    # the warm-up round and two runs of one round, 2 requests each
    assert result["requests_observed_by_monitor"] == 6
    assert result["ratio_on_off"] > 0
    assert "Ratio on/off" in (tmp_path / "drift-serving-latest.md").read_text()
