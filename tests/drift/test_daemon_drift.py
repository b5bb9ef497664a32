"""The drift watch end to end: a real daemon on the tiny model with the
sealed store and audit log; traffic from one domain, then another.

The alarm, the metrics and `hearth drift status` must agree; `hearth drift
reset` must start a new reference and be audited; and nothing a request
said may reach the disk (the state directory and the daemon's log are
scanned for every prompt, with a positive control for the scanner)."""
from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import Daemon, start_daemon, wait_for
from tests.integration.test_metrics import scrape

HOME = ["the cat sat on the mat", "a dog ran in the park", "we read a good book",
        "the sun is warm today", "my friend likes green tea", "birds sing in the morning"]
CONFIG = """
[drift]
enabled = true
sample_fraction = 1.0
reference_size = 40
window = 20
stride = 5
ert_requests = 1000
embedding_dims = 16
"""


def run_hearth(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runtime.cli.main", *args],
                          capture_output=True, text=True, timeout=300)


def hearth(*args: str) -> str:
    proc = run_hearth(*args)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def home_prompt(rng: random.Random) -> str:
    """The home domain: the same marker (a needle for the disk scan), then
    everyday sentences drawn at random."""
    return f"zebracorn {rng.choice(HOME)} and {rng.choice(HOME)}"


def shifted_prompt(rng: random.Random) -> str:
    digits = " ".join(str(rng.randrange(10)) for _ in range(24))
    return f"zebracorn {digits} = {rng.randrange(1000)} ?"


def send(d: Daemon, prompts: list[str]) -> None:
    with d.client() as c:
        for p in prompts:
            c.complete(p, max_tokens=4, temperature=0.0)


def find_texts(root: Path, needles: list[str]) -> list[tuple[Path, str]]:
    """Every (file, needle) where a needle occurs in a file under root, in
    its raw bytes (UTF-8 and UTF-16, the encodings a writer might use)."""
    found = []
    encoded = [(n, [n.encode(), n.encode("utf-16-le")]) for n in needles]
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        found += [(path, n) for n, forms in encoded if any(f in data for f in forms)]
    return found


def drift_status(d: Daemon) -> dict:
    out = json.loads(hearth("drift", "status", "--addr", d.tcp, "--model", "tiny"))
    (monitor,) = out["monitors"]
    return monitor


@pytest.fixture
def state(tmp_path: Path) -> tuple[Path, Path]:
    state_dir, key = tmp_path / "state", tmp_path / "master.key"
    hearth("keys", "init", "--state-dir", str(state_dir), "--key-file", str(key))
    return state_dir, key


def test_drift_alarm_metrics_status_reset_audit_and_nothing_on_disk(
        tiny_model: Path, tmp_path: Path, state: tuple[Path, Path]) -> None:
    """Fails if the alarm never rises on the shifted traffic, if the metrics
    and the status disagree, if reset is not audited, or if a prompt (or the
    per-request signals, via the audit log's request records) reaches disk:
    with audit.py's `entry.pop("drift", None)` removed the request records
    carry every prompt's pooled embedding, and the last assertion fails."""
    state_dir, key = state
    config = tmp_path / "hearth.toml"
    config.write_text(CONFIG)
    sock = tmp_path / "hearth.sock"       # the admin's way in: the daemon's own uid
    d = start_daemon(["--config", str(config), "--model", f"tiny={tiny_model}",
                      "--listen", "127.0.0.1:0", "--listen", f"unix:{sock}",
                      "--metrics-listen", "127.0.0.1:0",
                      "--parallel", "2", "--ctx", "2048", "--threads", "2",
                      "--state-dir", str(state_dir), "--key-file", str(key)], tmp_path)
    rng = random.Random(7)
    prompts = [home_prompt(rng) for _ in range(70)]
    shifted = [shifted_prompt(rng) for _ in range(40)]
    try:
        metrics_addr = json.loads(next(tmp_path.glob("ready-*.json")).read_text())["metrics"]
        send(d, prompts)
        assert wait_for(lambda: drift_status(d)["observed"] == 70, 30)
        before = drift_status(d)
        assert before["phase"] == "watching" and before["reference_size"] == 40
        assert not before["alarm"], before

        send(d, shifted)
        assert wait_for(lambda: drift_status(d)["observed"] == 110, 30)
        after = drift_status(d)
        assert after["alarm"], after
        m = scrape(metrics_addr)
        alarm = {s.labels["model"]: s.value for s in m["hearth_drift_alarm"]}
        assert alarm == {"tiny": 1.0}
        seen = [s for s in m["hearth_drift_requests_observed"]
                if s.name == "hearth_drift_requests_observed_total"]
        assert [(s.labels["model"], s.value) for s in seen] == [("tiny", 110.0)]
        for family, field in (("hearth_drift_statistic", "statistic"),
                              ("hearth_drift_p_value", "p_value")):
            got = {s.labels["signal"]: s.value for s in m[family]}
            want = {name: v[field] for name, v in after["signals"].items()}
            assert got == pytest.approx(want), family

        admin = f"unix:{sock}"
        for addr, bad, code in ((d.tcp, "tiny", "PERMISSION_DENIED"),   # anonymous
                                (admin, "tiny\n", "INVALID_ARGUMENT"),
                                (admin, "nope", "NOT_FOUND")):
            proc = run_hearth("drift", "reset", "--addr", addr, "--model", bad)
            assert proc.returncode != 0 and code in proc.stderr, proc.stderr
        reset = json.loads(hearth("drift", "reset", "--addr", admin, "--model", "tiny"))
        (monitor,) = reset["monitors"]
        assert monitor["phase"] == "reference" and not monitor["alarm"]
        scrape(metrics_addr)
    finally:
        assert d.stop() == 0, d.log()

    records = [json.loads(line) for line in hearth(
        "audit", "export", "--state-dir", str(state_dir), "--key-file", str(key)).splitlines()]
    actions = [r.get("action") for r in records if r.get("action")]
    assert [a for a in actions if not a.startswith("model.")] == [   # not model loads
        "drift_detected", "drift_reset"], actions
    reset_record = next(r for r in records if r.get("action") == "drift_reset")
    assert reset_record["versions"] == ["tiny"] and reset_record["actor"].startswith("uid:")
    detected = next(r for r in records if r.get("action") == "drift_detected")
    assert detected["version"] == "tiny" and detected["window"] == 20
    assert set(detected["signals"]) >= {"prompt_nll", "prompt_embedding"}
    objects = hearth("store", "list", "--state-dir", str(state_dir), "--key-file", str(key))
    assert "drift" in objects

    # Nothing a request said is on disk: not in the state directory, not in the log.
    needles = [p.split(" ", 1)[1][:20] for p in prompts + shifted] + ["zebracorn"]
    assert find_texts(state_dir, needles) == []
    assert find_texts(d.log_path.parent, ["zebracorn"]) == []
    # Positive control: the same scan finds a prompt where one is written.
    control = state_dir / "objects" / "control.bin"
    control.write_bytes(b"\x00\x01" + prompts[3].encode("utf-16-le") + b"\xff")
    hits = find_texts(state_dir, needles)
    assert {path for path, _ in hits} == {control} and (control, "zebracorn") in hits
    control.unlink()
    # Per-request signals never reach the audit log's request records.
    assert [r for r in records if "drift" in r] == []
