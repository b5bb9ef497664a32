"""report.html in a real headless browser (Chromium from Debian's packages:
`apt-get install chromium`); skipped with the reason when it is absent, so
CI never depends on it.  The docs' screenshot comes from the same code:

    python -m tests.transparency.test_report_browser docs/img/report.png
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from runtime.config import Config, ReportConfig
from runtime.native import build_info
from runtime.storage.audit import AuditLog
from runtime.storage.keys import KeySource
from runtime.storage.store import Kind, SealedStore
from runtime.transparency import bias_data
from runtime.transparency.bias import evaluate
from runtime.transparency.report import BIAS_OBJECT, CheckResult, ReportSources, build_report
from runtime.transparency.report_render import render_html
from runtime.transparency.report_sign import key_block, report_signer

KEY = KeySource("key-file", "t", b"b" * 32)


def chromium() -> str | None:
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser"))
                 if p is not None), None)


def demo_page(state: Path) -> str:
    """A report page from a real (small) store: an audit log with a model
    load and requests, a sealed bias result with an association, the
    operator's text with one field left out."""
    import json

    store = SealedStore.init(state, KEY)
    try:
        audit = AuditLog(store)
        audit.record_admin("model.ready", {"model": "gemma", "state": "ready", "error": ""})
        male = set(bias_data.MALE_DOMINATED)
        result = evaluate(lambda prompt, target: (0.4 if target == " he" else 0.0) * (
            1 if any(o in prompt for o in male) else -1) + 0.03 * (len(prompt) % 7), "gemma")
        store.put_bytes(Kind.EVALUATION, BIAS_OBJECT,
                        json.dumps(result.to_json()).encode())
        config = Config(report=ReportConfig(
            provider="Example Clinic IT", contact="ai-officer@example.org",
            intended_purpose="Drafting discharge letters that a physician reviews and signs.",
            human_oversight="Every draft is read, corrected and signed by the physician.",
            license="gemma", language="en"))
        doc = build_report(ReportSources(
            config=config, store=store, audit=audit, engine=build_info(),
            doctor=[CheckResult("core", "ok", "libhearth_core loaded"),
                    CheckResult("unit", "skip", "systemd-analyze is not installed")],
            now=time.time()))
        doc = {"signing_key": key_block(report_signer(store).public_key()), **doc}
        return render_html(doc)
    finally:
        store.close()


def screenshot(page: str, png: Path, browser: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        html = Path(tmp) / "report.html"
        html.write_text(page, encoding="utf-8")
        subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu",
                        "--hide-scrollbars", f"--user-data-dir={tmp}/profile",
                        "--window-size=1100,1500", f"--screenshot={png}", html.as_uri()],
                       check=True, capture_output=True, timeout=120)


def test_the_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    """Checked that it can fail: an empty page (render_html returning "")
    gives a white screenshot and the ink assertion fails."""
    browser = chromium()
    if browser is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium); the "
                    "browser check is optional")
    from PIL import Image

    png = tmp_path / "report.png"
    screenshot(demo_page(tmp_path / "state"), png, browser)
    pixels = np.asarray(Image.open(png).convert("L"), dtype=np.float64)
    assert pixels.shape[0] >= 1000 and pixels.shape[1] >= 1000
    ink = float((pixels < 200).mean())         # share of non-background pixels
    assert 0.01 < ink < 0.6, ink
    assert len(np.unique(pixels)) > 16         # text and tables, not a flat fill


if __name__ == "__main__":
    found = chromium()
    if found is None:
        sys.exit("chromium is not installed")
    with tempfile.TemporaryDirectory() as tmp:
        screenshot(demo_page(Path(tmp) / "state"), Path(sys.argv[1]), found)
