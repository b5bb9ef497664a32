"""Named crash points for the crash-safety tests.

`failpoint("rotate.after_new_key")` kills the process with SIGKILL when
HEARTH_FAILPOINT names that point, so tests can crash an import or a
rotation at an exact step and check what a restart finds.  Unset (always, in
production) it does nothing.
"""
from __future__ import annotations

import os
import signal

_ARMED = os.environ.get("HEARTH_FAILPOINT", "")


def failpoint(name: str) -> None:
    if _ARMED and name == _ARMED:
        os.kill(os.getpid(), signal.SIGKILL)
