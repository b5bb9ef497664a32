"""`hearth eval bias` seals its latest result into the store, where
`hearth report` finds it; and it runs on Gemma (a reduced probe set: the
full set's wall time is a benchmark figure, `python -m benchmarks.bias`)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from runtime.cli.main import main
from runtime.config import Config
from runtime.storage.keys import KeySource
from runtime.storage.store import Kind, SealedStore
from runtime.transparency import bias_data
from runtime.transparency.report import BIAS_OBJECT, ReportSources, build_report
from tests.integration.conftest import Daemon, start_daemon

KEY = KeySource("key-file", "t", b"c" * 32)


def reduced_probes(monkeypatch: pytest.MonkeyPatch, per_group: int, templates: int) -> None:
    monkeypatch.setattr(bias_data, "MALE_DOMINATED", bias_data.MALE_DOMINATED[:per_group])
    monkeypatch.setattr(bias_data, "FEMALE_DOMINATED", bias_data.FEMALE_DOMINATED[:per_group])
    monkeypatch.setattr(bias_data, "TEMPLATES", bias_data.TEMPLATES[:templates])


def run_and_seal(daemon: Daemon, tmp_path: Path) -> dict:
    """`hearth eval bias` with the master key options; returns the report's
    bias section built from the store afterwards."""
    state = tmp_path / "state"
    SealedStore.init(state, KEY).close()
    keyfile = tmp_path / "k"
    keyfile.write_bytes(KEY.secret)
    keyfile.chmod(0o600)
    assert main(["eval", "bias", "--addr", daemon.tcp, "--out", str(tmp_path / "out"),
                 "--state-dir", str(state), "--key-file", str(keyfile)]) == 0
    written = json.loads((tmp_path / "out" / "bias.json").read_text())
    store = SealedStore.open(state, KEY)
    try:
        assert json.loads(store.read_bytes(Kind.EVALUATION, BIAS_OBJECT)) == written
        doc = build_report(ReportSources(config=Config(), store=store, audit=None, engine="-"))
    finally:
        store.close()
    return dict(doc["evaluation"]["bias"])


def test_eval_bias_seals_its_result_for_the_report(tiny_daemon: Daemon, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Checked that it can fail: without the put_bytes in cmd_eval_bias the
    store has no evaluation object (NotFound) and the report says missing."""
    reduced_probes(monkeypatch, 3, 2)
    bias = run_and_seal(tiny_daemon, tmp_path)
    assert bias["status"] == "measured" and len(bias["per_occupation"]) == 6
    low, high = bias["association_gap"]["low"], bias["association_gap"]["high"]
    assert low <= bias["association_gap"]["estimate"] <= high


@pytest.mark.gemma
def test_eval_bias_on_gemma(gemma_model: Path, tmp_path: Path,
                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The evaluation on the real model: 6 occupations per group, 2
    templates (48 forced generations instead of 320); finite intervals
    around the estimate, sealed for the report."""
    reduced_probes(monkeypatch, 6, 2)
    daemon = start_daemon(["--model", f"gemma={gemma_model}", "--listen", "127.0.0.1:0",
                           "--threads", "2", "--parallel", "4"], tmp_path, wait=300)
    try:
        bias = run_and_seal(daemon, tmp_path)
    finally:
        assert daemon.stop() == 0, daemon.log()
    assert bias["model"] == "gemma" and len(bias["per_occupation"]) == 12
    gap = bias["association_gap"]
    assert gap["low"] <= gap["estimate"] <= gap["high"] and gap["high"] - gap["low"] < 50
