"""`hearth explain` on Gemma 3 270M: the sentence an answer depends on is
ranked first among distractors (the issue's acceptance test)."""
from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import Daemon, start_daemon

pytestmark = pytest.mark.gemma

# The fact is stated once, among sentences that have nothing to do with the
# question; the answer (greedy, a few tokens: " 4711.") copies it.
VAULT = ("The weather was mild. The meeting ran late. The vault code is 4711. The coffee was "
         "cold. The lights in the hall are broken. Question: What is the vault code? Answer: "
         "The vault code is")
FACT = "The vault code is 4711."


@pytest.fixture(scope="module")
def gemma_daemon(gemma_model: Path, tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[Daemon]:
    d = start_daemon(["--model", f"gemma3-270m={gemma_model}", "--listen", "127.0.0.1:0",
                      "--parallel", "2", "--ctx", "4096", "--threads", "2"],
                     tmp_path_factory.mktemp("gemma-explain"))
    yield d
    assert d.stop() == 0, d.log()


def test_the_sentence_holding_the_fact_ranks_first(gemma_daemon: Daemon) -> None:
    """Fails if the score's sign is reversed: measured on this prompt
    (docs/img/explain.png) the fact scores +11.8 nats and every distractor
    within 0.1 of 0, so reversed the fact ranks last (checked: with
    occlusion_scores returning without - full this test failed).  Fails too
    if variants did not leave their segment out (all scores would be 0)."""
    out = subprocess.run([sys.executable, "-m", "runtime.cli.main", "explain", "--addr",
                          gemma_daemon.tcp, "--unit", "sentence", "--max-tokens", "6", "--json",
                          VAULT], capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert "4711" in doc["answer"]
    ranked = sorted(doc["segments"], key=lambda s: s["score"], reverse=True)
    assert ranked[0]["text"] == FACT, ranked
    # By a clear margin over every distractor sentence.
    distractors = [s["score"] for s in doc["segments"]
                   if s["text"] != FACT and not s["text"].startswith(("Question", "Answer"))]
    assert ranked[0]["score"] > 2.0 + max(distractors), ranked
