"""Gemma 3 270M imported into the sealed store (the issue's "done when")."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.conftest import start_daemon
from tests.integration.test_sealed_serving import hearth
from tests.storage.plaintext_scan import find_plaintext_windows

pytestmark = pytest.mark.gemma


def test_no_plaintext_under_the_state_dir_and_the_same_greedy_output(
        gemma_model: Path, tmp_path: Path) -> None:
    state, key = tmp_path / "state", tmp_path / "master.key"
    hearth("keys", "init", "--state-dir", str(state), "--key-file", str(key))
    hearth("models", "import", str(gemma_model), "--name", "gemma3-270m", "--state-dir",
           str(state), "--key-file", str(key))
    files = [p for p in state.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) > gemma_model.stat().st_size
    assert find_plaintext_windows(gemma_model, files) == []

    common = ["--listen", "127.0.0.1:0", "--parallel", "2", "--ctx", "2048"]
    sealed = start_daemon(["--model", "gemma3-270m", "--state-dir", str(state), "--key-file",
                           str(key), *common], tmp_path)
    plain = start_daemon(["--model", f"gemma3-270m={gemma_model}", *common], tmp_path)
    try:
        prompt = "Question: What is the capital of France?\nAnswer:"
        with sealed.client() as s, plain.client() as p:
            a = s.complete(prompt, max_tokens=16, temperature=0.0)
            b = p.complete(prompt, max_tokens=16, temperature=0.0)
        assert a[1] == b[1]
        assert a[0].startswith(" Paris")
    finally:
        assert sealed.stop() == 0
        assert plain.stop() == 0
    # The daemon wrote nothing plaintext while serving either (audit log on).
    files = [p for p in state.rglob("*") if p.is_file()]
    assert (state / "audit" / "log.jsonl").exists()
    assert find_plaintext_windows(gemma_model, files) == []
