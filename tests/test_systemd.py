"""sd_notify messages and the watchdog's decision, against a real datagram socket."""
from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import pytest

from runtime.systemd import Notifier, watchdog


@pytest.fixture
def listener(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> socket.socket:
    path = tmp_path / "notify"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(path))
    s.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    monkeypatch.setenv("WATCHDOG_USEC", "200000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    yield s
    s.close()


def received(s: socket.socket) -> list[str]:
    out = []
    while True:
        try:
            out.append(s.recv(4096).decode())
        except BlockingIOError:
            return out


def test_ready_status_and_stopping(listener: socket.socket) -> None:
    n = Notifier()
    n.status("loading model a")
    n.ready("serving 1 model(s)")
    n.stopping("draining")
    assert received(listener) == ["STATUS=loading model a", "READY=1\nSTATUS=serving 1 model(s)",
                                  "STOPPING=1\nSTATUS=draining"]


def test_outside_systemd_nothing_is_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    n = Notifier()
    n.ready("x")                 # must not raise
    assert n.watchdog_s == 0


def test_watchdog_for_another_pid_is_ignored(listener: socket.socket,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_PID", "1")
    assert Notifier().watchdog_s == 0


def test_a_dead_socket_is_logged_not_raised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone"))
    Notifier().ready("x")
    assert "sd_notify" in caplog.text


def run_watchdog(beats: dict[str, int], seconds: float) -> None:
    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.ensure_future(watchdog(Notifier(), lambda: beats, stop))
        await asyncio.sleep(seconds)
        stop.set()
        await task
    asyncio.run(main())


def test_pings_while_engines_beat(listener: socket.socket) -> None:
    beats = {"a": time.monotonic_ns() + 10**10}      # always fresh
    run_watchdog(beats, 0.45)
    assert received(listener).count("WATCHDOG=1") >= 3


def test_no_pings_while_one_engine_is_late(listener: socket.socket,
                                           caplog: pytest.LogCaptureFixture) -> None:
    beats = {"fresh": time.monotonic_ns() + 10**10, "stuck": time.monotonic_ns() - 10**9}
    run_watchdog(beats, 0.45)
    assert received(listener) == []
    assert caplog.text.count("engine of model stuck is wedged") == 1   # said once, not per tick


def test_no_engines_loaded_still_pings(listener: socket.socket) -> None:
    """While models load (no engine yet) the service is alive."""
    run_watchdog({}, 0.25)
    assert "WATCHDOG=1" in received(listener)
