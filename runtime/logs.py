"""Structured logging: text for people, JSON lines for collectors.

Fields passed with `extra={"request_id": ..., "model": ...}` are kept as
JSON keys (and appended as key=value in text mode).  llama.cpp's own log
lines go through the native core's log hook in the same format.
"""
from __future__ import annotations

import json
import logging
import sys
import time

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}
# ggml levels: 1 debug, 2 info, 3 warn, 4 error.  llama.cpp is chatty at
# info, so it is shown one level above ours.
_NATIVE_LEVEL = {"debug": 1, "info": 3, "warning": 3, "error": 4}


def _extras(record: logging.LogRecord) -> dict:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"ts": round(record.created, 3), "level": record.levelname.lower(),
                 "logger": record.name, "msg": record.getMessage(), **_extras(record)}
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        extras = " ".join(f"{k}={v}" for k, v in _extras(record).items())
        line = f"{stamp} {record.levelname.lower():7} {record.name}: {record.getMessage()}"
        if extras:
            line += f" [{extras}]"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def setup_logging(level: str = "info", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(_LEVELS.get(level, logging.INFO))
    logging.getLogger("hearth").setLevel(_LEVELS.get(level, logging.INFO))
    _native_logging[:] = [_NATIVE_LEVEL.get(level, 3), fmt]
    reapply_native_logging()


_native_logging: list = [3, "text"]


def reapply_native_logging() -> None:
    """(Re)installs the core's llama.cpp log callback; importing llama_cpp
    replaces it with llama-cpp-python's own."""
    from runtime.native import lib

    level, fmt = _native_logging
    lib.hearth_log_configure(level, lib.HEARTH_LOG_JSON if fmt == "json" else lib.HEARTH_LOG_TEXT)
