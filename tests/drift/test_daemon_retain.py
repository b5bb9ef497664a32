"""Traffic kept for training in a real daemon (tiny model, sealed store,
audit log): with [drift] retain_for_training on, the sampled prompts are
kept, sealed (the disk scan of test_daemon_drift.py still finds none of
them in the clear), per the subject the caller named, and `hearth audit
erase --subject` shreds exactly that subject's.  With it off (the other
test in this folder) nothing is kept."""
from __future__ import annotations

from pathlib import Path

import pytest

from runtime.client import _generate_request
from runtime.drift.retain import retained_prompts
from runtime.storage.audit import AuditLog
from runtime.storage.keys import key_from_file
from runtime.storage.store import SealedStore
from tests.drift.test_daemon_drift import CONFIG, find_texts, hearth
from tests.integration.conftest import start_daemon


@pytest.fixture
def state(tmp_path: Path) -> tuple[Path, Path]:
    state_dir, key = tmp_path / "state", tmp_path / "master.key"
    hearth("keys", "init", "--state-dir", str(state_dir), "--key-file", str(key))
    return state_dir, key


def kept(state_dir: Path, key: Path) -> list[str]:
    store = SealedStore.open(state_dir, key_from_file(str(key)))
    try:
        return retained_prompts(AuditLog(store))
    finally:
        store.close()


def test_a_daemon_keeps_sampled_prompts_sealed_per_subject_and_erase_shreds_them(
        tiny_model: Path, tmp_path: Path, state: tuple[Path, Path]) -> None:
    """Fails if the daemon does not collect the content for the retainer
    (nothing kept), if a prompt is on disk in the clear, or if erasing
    alice leaves her prompts readable."""
    state_dir, key = state
    config = tmp_path / "hearth.toml"
    config.write_text(CONFIG + "retain_for_training = true\nretention_days = 7\n")
    d = start_daemon(["--config", str(config), "--model", f"tiny={tiny_model}",
                      "--listen", "127.0.0.1:0", "--parallel", "2", "--ctx", "1024",
                      "--threads", "2", "--state-dir", str(state_dir), "--key-file", str(key)],
                     tmp_path)
    asked = {"alice": [f"zebracorn alice asks about item {i}" for i in range(4)],
             "bob": [f"zebracorn bob asks about thing {i}" for i in range(4)]}
    try:
        with d.client() as c:
            for subject, prompts in asked.items():
                for p in prompts:
                    for _ in c.inference.Generate(
                            _generate_request(p, "", max_tokens=2, temperature=0.0),
                            metadata=(("x-hearth-subject", subject),), timeout=60):
                        pass
    finally:
        assert d.stop() == 0, d.log()
    assert "keeping the prompts of sampled requests" in d.log()
    assert sorted(kept(state_dir, key)) == sorted(asked["alice"] + asked["bob"])
    assert find_texts(state_dir, ["zebracorn", "alice asks", "bob asks"]) == []
    hearth("audit", "erase", "--subject", "alice", "--state-dir", str(state_dir),
           "--key-file", str(key))
    assert sorted(kept(state_dir, key)) == sorted(asked["bob"])
