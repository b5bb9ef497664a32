"""systemd integration: readiness, status lines and the watchdog.

sd_notify's protocol is a datagram to $NOTIFY_SOCKET; no library needed.
Outside systemd every call is a no-op.  The watchdog is pinged only while
every engine's loop shows a recent heartbeat, so a wedged engine stops the
pings and systemd restarts the service.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable

log = logging.getLogger("hearth.systemd")


class Notifier:
    def __init__(self) -> None:
        self.address = os.environ.get("NOTIFY_SOCKET", "")
        usec = os.environ.get("WATCHDOG_USEC", "")
        pid = os.environ.get("WATCHDOG_PID", "")
        self.watchdog_s = (int(usec) / 1e6 if usec.isdigit() and int(usec) > 0
                           and (not pid or pid == str(os.getpid())) else 0.0)

    def notify(self, message: str) -> None:
        if not self.address:
            return
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            try:
                s.sendto(message.encode(), target)
            except OSError as exc:
                log.warning("sd_notify to %s failed: %s", self.address, exc)

    def status(self, text: str) -> None:
        self.notify(f"STATUS={text}")

    def ready(self, text: str) -> None:
        self.notify(f"READY=1\nSTATUS={text}")

    def stopping(self, text: str) -> None:
        self.notify(f"STOPPING=1\nSTATUS={text}")


async def watchdog(notifier: Notifier, heartbeats: Callable[[], dict[str, int]],
                   stop: asyncio.Event) -> None:
    """Pings at half the watchdog interval while every engine is alive.
    `heartbeats` maps model -> CLOCK_MONOTONIC ns of its loop's last turn."""
    if notifier.watchdog_s <= 0:
        return
    interval = notifier.watchdog_s / 2
    wedged: set[str] = set()
    while not stop.is_set():
        now = time.monotonic_ns()
        late = {name for name, beat in heartbeats().items()
                if now - beat > notifier.watchdog_s * 1e9}
        for name in late - wedged:
            log.error("engine of model %s is wedged (no heartbeat for over %.0fs): not pinging "
                      "the watchdog, systemd will restart the service", name,
                      notifier.watchdog_s)
        wedged = late
        if not late:
            notifier.notify("WATCHDOG=1")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval)
