"""Named crash points and injected I/O errors for the crash-safety tests.

`failpoint("rotate.after_new_key")` kills the process with SIGKILL when
HEARTH_FAILPOINT names that point, so tests can crash an import or a
rotation at an exact step and check what a restart finds.  `io_fault(name)`
raises ENOSPC the next N times a test asked for (inject_io_faults), so a
full disk can be simulated for exactly as long as a test wants.  Unset
(always, in production) both do nothing.
"""
from __future__ import annotations

import errno
import os
import signal

_ARMED = os.environ.get("HEARTH_FAILPOINT", "")
_IO_FAULTS: dict[str, int] = {}


def failpoint(name: str) -> None:
    if _ARMED and name == _ARMED:
        os.kill(os.getpid(), signal.SIGKILL)


def inject_io_faults(name: str, times: int) -> None:
    """The next `times` calls of io_fault(name) fail as a full disk would."""
    _IO_FAULTS[name] = times


def io_fault(name: str) -> None:
    if _IO_FAULTS.get(name):
        _IO_FAULTS[name] -= 1
        raise OSError(errno.ENOSPC, f"injected full disk at {name}")
