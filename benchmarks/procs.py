"""Child processes of the benchmark: free ports, start/stop, readiness, RSS sampling."""
from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import psutil

MB = 1024 * 1024


class PeerUnavailable(Exception):
    """A peer cannot run here (missing binary or module, failed start); the run goes on."""


class PeerSkipped(PeerUnavailable):
    """A peer left out on purpose (missing optional modules, no N it is measured at)."""


def free_port() -> int:
    """A port that was free a moment ago (bind port 0, read it back, release it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ManagedProcess:
    """A child in its own process group, its output in a log file; `stop` ends the group."""

    def __init__(self, name: str, cmd: Sequence[str], log_dir: Path,
                 env: dict[str, str] | None = None) -> None:
        self.name = name
        self.cmd = list(cmd)
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("wb")
        try:
            self.proc = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL, stdout=self._log,
                                         stderr=subprocess.STDOUT, start_new_session=True,
                                         env=env)
        except OSError as exc:
            self._log.close()
            raise PeerUnavailable(f"cannot start {self.cmd[0]}: {exc}") from exc

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 8) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])

    def wait_until(self, ready: Callable[[], bool], timeout: float, what: str) -> None:
        """Polls `ready` until it holds; raises PeerUnavailable if the child dies or time ends."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise PeerUnavailable(f"{self.name} exited with {self.proc.returncode} before "
                                      f"{what}:\n{self.log_tail()}")
            if ready():
                return
            time.sleep(0.2)
        raise PeerUnavailable(f"{self.name}: no {what} within {timeout:.0f}s:\n{self.log_tail()}")

    def stop(self, grace: float = 15.0) -> None:
        """SIGTERM to the whole group, then SIGKILL after `grace` seconds."""
        try:
            if self.alive():
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout=grace)
            # the leader may be gone while others in its group linger
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=5)
        finally:
            self._log.close()


def http_status(host: str, port: int, path: str, timeout: float = 2.0) -> int | None:
    """GET path; the status code, or None when nothing answers."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def tree_rss(proc: psutil.Process) -> int:
    """RSS of a process plus all of its descendants, in bytes."""
    total = 0
    members = [proc]
    with contextlib.suppress(psutil.Error):
        members += proc.children(recursive=True)
    for p in members:
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total


class RssSampler:
    """Samples a process tree's RSS every `interval` seconds in a thread; keeps the peak
    since the last `reset` and over the sampler's whole life."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self._proc = psutil.Process(pid)
        self._interval = interval
        self._lock = threading.Lock()
        self._window_peak = 0
        self.overall_peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=2)

    def sample(self) -> int:
        rss = tree_rss(self._proc)
        with self._lock:
            self._window_peak = max(self._window_peak, rss)
            self.overall_peak = max(self.overall_peak, rss)
        return rss

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self._interval)

    def reset(self) -> None:
        with self._lock:
            self._window_peak = 0
        self.sample()

    def window_peak(self) -> int:
        self.sample()
        with self._lock:
            return self._window_peak
