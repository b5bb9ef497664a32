"""Exit codes of `hearth` and of the daemon it runs, with what each means for an operator.

systemd and scripts act on these: e.g. a unit can stop restarting on CONFIG
(nothing will change until someone edits the file) but retry on
MODEL_LOAD after a disk or driver problem is fixed.
"""
from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    OK = 0
    ERROR = 1
    USAGE = 2
    CONFIG = 3
    MODEL_LOAD = 4
    LISTEN = 5
    UNREACHABLE = 6
    REQUEST_FAILED = 7
    WRONG_KEY = 8
    INTEGRITY = 9
    STORAGE = 10
    CHECKS_FAILED = 11
    INTERRUPTED = 130


HELP = {
    ExitCode.OK: "success",
    ExitCode.ERROR: "unexpected error; the log has a traceback",
    ExitCode.USAGE: "bad command-line arguments",
    ExitCode.CONFIG: "invalid configuration; the message names the key",
    ExitCode.MODEL_LOAD: "a model could not be loaded at start (bad file, not enough memory)",
    ExitCode.LISTEN: "could not listen on a configured address (in use, permissions)",
    ExitCode.UNREACHABLE: "client: the daemon could not be reached",
    ExitCode.REQUEST_FAILED: "client: the daemon answered with an error",
    ExitCode.WRONG_KEY: "the master key or passphrase does not open the state directory",
    ExitCode.INTEGRITY: "stored data failed an integrity check (corruption or tampering)",
    ExitCode.STORAGE: "the state directory could not be written (disk full, permissions)",
    ExitCode.CHECKS_FAILED: "hearth doctor: at least one check failed (lines marked FAIL)",
    ExitCode.INTERRUPTED: "interrupted (Ctrl-C)",
}
