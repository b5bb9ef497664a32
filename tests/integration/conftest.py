"""The real daemon, as a subprocess on real ports and unix sockets."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from runtime.client import HearthClient


@dataclass
class Daemon:
    proc: subprocess.Popen
    addresses: list[str]
    log_path: Path

    @property
    def tcp(self) -> str:
        return next(a for a in self.addresses if not a.startswith("unix:"))

    def client(self, timeout: float | None = 60.0) -> HearthClient:
        return HearthClient(self.tcp, timeout=timeout)

    def admin_client(self, timeout: float | None = 60.0) -> HearthClient:
        """A client on the daemon's unix socket, as the daemon's own uid: an
        admin (anonymous TCP callers are not; SECURITY-CASES 27)."""
        unix = next(a for a in self.addresses if a.startswith("unix:"))
        return HearthClient(unix, timeout=timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)


def start_daemon(args: list[str], tmp: Path, wait: float = 60.0,
                 env: dict[str, str] | None = None) -> Daemon:
    ready = tmp / f"ready-{time.monotonic_ns()}.json"
    log_path = tmp / f"daemon-{time.monotonic_ns()}.log"
    log = log_path.open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "runtime.cli.main", "serve", "--ready-file", str(ready), *args],
        stdout=log, stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
    deadline = time.monotonic() + wait
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"daemon did not start:\n{log_path.read_text()}")
        time.sleep(0.05)
    return Daemon(proc, json.loads(ready.read_text())["addresses"], log_path)


class NotifySocket:
    """The receiving end of sd_notify, recording (time, message)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            self.messages.append((time.monotonic(), data.decode()))

    def pings(self, since: float = 0.0) -> list[float]:
        return [t for t, m in self.messages if "WATCHDOG=1" in m.split("\n") and t >= since]

    def has(self, line: str) -> bool:
        return any(line in m.split("\n") for _, m in self.messages)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    n = NotifySocket(tmp_path / "notify.sock")
    yield n
    n.close()


def wait_for(cond: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def daemon_factory(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    started: list[Daemon] = []

    def make(*args: str) -> Daemon:
        d = start_daemon(list(args), tmp_path)
        started.append(d)
        return d

    yield make
    for d in started:
        if d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait()


@pytest.fixture(scope="module")
def tiny_daemon(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One shared daemon on the tiny model: port 0 plus a unix socket."""
    tmp = tmp_path_factory.mktemp("daemon")
    sock = tmp / "hearth.sock"
    d = start_daemon(["--model", f"tiny={tiny_model}", "--listen", "127.0.0.1:0",
                      "--listen", f"unix:{sock}", "--parallel", "16", "--ctx", "16384",
                      "--threads", "2", "--max-queue", "32"], tmp)
    yield d
    code = d.stop()
    assert code == 0, d.log()
