"""Speculative decoding through the daemon: --draft, metrics, refusal of a
draft with another tokenizer."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from runtime.models.tiny import write_tiny_model
from tests.integration.conftest import start_daemon
from tests.integration.test_metrics import scrape, value


def test_draft_serves_the_same_text_and_counts_acceptance(tmp_path: Path, tiny_model: Path,
                                                          tiny_daemon) -> None:  # type: ignore[no-untyped-def]
    draft = write_tiny_model(tmp_path / "draft.gguf", n_layer=1)
    d = start_daemon(["--model", f"tiny={tiny_model}", "--draft", str(draft), "--n-draft", "6",
                      "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
                      "--parallel", "4", "--ctx", "4096", "--threads", "2"], tmp_path)
    try:
        with d.client() as c, tiny_daemon.client() as plain:
            for prompt in ("the patient", "bank account"):
                spec = c.complete(prompt, max_tokens=80, temperature=0.0, ignore_eos=True)
                ref = plain.complete(prompt, max_tokens=80, temperature=0.0, ignore_eos=True)
                assert spec[0] == ref[0] and spec[1] == ref[1]
        addr = json.loads(next(tmp_path.glob("ready-*.json")).read_text())["metrics"]
        m = scrape(addr)
        drafted = value(m, "hearth_speculative_draft_tokens",
                        "hearth_speculative_draft_tokens_total", model="tiny")
        accepted = value(m, "hearth_speculative_accepted_tokens",
                         "hearth_speculative_accepted_tokens_total", model="tiny")
        assert 0 < accepted < drafted
    finally:
        assert d.stop() == 0, d.log()


def test_a_draft_with_another_tokenizer_stops_the_start(tmp_path: Path, tiny_model: Path
                                                        ) -> None:
    other = write_tiny_model(tmp_path / "other.gguf", n_layer=1, extra_tokens=2)
    proc = subprocess.run(
        [sys.executable, "-m", "runtime.cli.main", "serve", "--model", f"tiny={tiny_model}",
         "--draft", str(other), "--listen", "127.0.0.1:0", "--threads", "1"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode != 0
    assert "draft model: its vocabulary has" in proc.stderr, proc.stderr[-2000:]
