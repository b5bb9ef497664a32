"""Where Hearth keeps its state.

--state-dir wins, then $HEARTH_STATE_DIR, then systemd's $STATE_DIRECTORY
(set by StateDirectory=), then /var/lib/hearth for a system service, else
~/.local/share/hearth for a user.
"""
from __future__ import annotations

import os
from pathlib import Path


def state_dir(explicit: str | None = None) -> Path:
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get("HEARTH_STATE_DIR")
    if env:
        return Path(env).expanduser()
    systemd = os.environ.get("STATE_DIRECTORY")
    if systemd:
        return Path(systemd.split(":")[0])
    if os.environ.get("INVOCATION_ID") and os.geteuid() == 0:
        return Path("/var/lib/hearth")
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data_home) / "hearth"

