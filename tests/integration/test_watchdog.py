"""systemd readiness and watchdog, end to end: the test plays systemd.

A core built with HEARTH_TEST_HOOKS wedges its engine thread at a chosen
decode step.  The daemon must then stop pinging WATCHDOG=1, and a supervisor
that kills and restarts it (what systemd does on WatchdogSec expiry) gets a
serving daemon back.
"""
from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest

from runtime.native._ffi import HEADER_NAME, LIB_NAME
from tests.integration.conftest import NotifySocket, start_daemon, wait_for

ROOT = Path(__file__).resolve().parents[2]
WATCHDOG_S = 2.0


@pytest.fixture(scope="module")
def hang_core(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """libhearth_core with the fault-injection hook compiled in."""
    if shutil.which("cmake") is None:
        pytest.fail("cmake is required to build the test core")
    build = tmp_path_factory.mktemp("hang-core")
    subprocess.run(["cmake", "-S", str(ROOT), "-B", str(build / "b"), "-DHEARTH_TEST_HOOKS=ON",
                    "-DHEARTH_CUDA=OFF", f"-DPython3_EXECUTABLE={sys.executable}",
                    f"-DCMAKE_INSTALL_PREFIX={build / 'lib'}"],
                   check=True, capture_output=True)
    subprocess.run(["cmake", "--build", str(build / "b"), "--parallel"], check=True,
                   capture_output=True)
    subprocess.run(["cmake", "--install", str(build / "b")], check=True, capture_output=True)
    lib = build / "lib" / LIB_NAME
    assert lib.exists() and lib.with_name(HEADER_NAME).exists()
    return lib


def test_wedged_engine_stops_the_pings_and_a_restart_serves_again(
        hang_core: Path, tiny_model: Path, notify: NotifySocket, tmp_path: Path) -> None:
    env = {"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": str(int(WATCHDOG_S * 1e6)),
           "HEARTH_CORE_LIB": str(hang_core), "HEARTH_TEST_HANG_AT_STEP": "40"}
    args = ["--model", f"tiny={tiny_model}", "--listen", "127.0.0.1:0", "--threads", "1"]
    d = start_daemon(args, tmp_path, env=env)
    try:
        assert wait_for(lambda: notify.has("READY=1"), 10), notify.messages
        assert any(m.startswith("STATUS=loading model tiny") for _, m in notify.messages)
        ready_at = next(t for t, m in notify.messages if "READY=1" in m.split("\n"))
        # alive and idle: pinged at half the interval
        assert wait_for(lambda: len(notify.pings(ready_at)) >= 3, 4 * WATCHDOG_S)
        with d.client(timeout=60) as c:
            text, _, _ = c.complete("before the hang", max_tokens=8, temperature=0.0,
                                    ignore_eos=True)
        assert text

        # this generation runs into decode step 40 and wedges the engine
        stuck: list[BaseException] = []

        def call() -> None:
            try:
                with d.client(timeout=30) as c:
                    c.complete("wedge", max_tokens=100, temperature=0.0, ignore_eos=True)
            except grpc.RpcError as exc:
                stuck.append(exc)

        caller = threading.Thread(target=call, daemon=True)
        caller.start()

        def silent_for(seconds: float) -> bool:
            pings = notify.pings()
            return bool(pings) and time.monotonic() - pings[-1] > seconds

        # systemd would fire after WATCHDOG_S without a ping; wait twice that
        assert wait_for(lambda: silent_for(2 * WATCHDOG_S), 30), \
            f"pings kept coming from a wedged engine:\n{d.log()}"
        assert d.proc.poll() is None          # the process lives; only its engine is stuck
        limits = Path(f"/proc/{d.proc.pid}/limits").read_text()
        assert re.search(r"Max core file size\s+0\s+0\s", limits), limits   # no plaintext cores
        assert "is wedged" in d.log()

        # what systemd does on a watchdog timeout: SIGABRT (WatchdogSignal=), then restart
        d.proc.send_signal(signal.SIGABRT)
        d.proc.wait(15)
        caller.join(30)
        assert stuck and stuck[0].code() == grpc.StatusCode.UNAVAILABLE
    finally:
        if d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait()

    restarted_at = time.monotonic()
    env.pop("HEARTH_TEST_HANG_AT_STEP")
    d2 = start_daemon(args, tmp_path, env=env)
    try:
        assert wait_for(lambda: len(notify.pings(restarted_at)) >= 2, 4 * WATCHDOG_S)
        with d2.client(timeout=60) as c:
            _, tokens, _ = c.complete("after the restart", max_tokens=60,
                                      temperature=0.0, ignore_eos=True)
        assert len(tokens) == 60
        assert d2.stop() == 0
        assert any("STOPPING=1" in m for t, m in notify.messages if t >= restarted_at)
    finally:
        if d2.proc.poll() is None:
            d2.proc.kill()
            d2.proc.wait()
