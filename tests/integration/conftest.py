"""The real daemon, as a subprocess on real ports and unix sockets."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
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
