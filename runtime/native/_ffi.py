"""Loading libhearth_core and turning its status codes into exceptions.

The cdef is read from the installed copy of native/include/hearth_core.h:
the text between the HEARTH_CDEF markers, with the export macro removed.
Before the core is opened, the pinned llama-cpp-python's libllama.so is
loaded globally from the installed package, at the very path llama_cpp uses;
the core's DT_NEEDED entries then resolve to those already-loaded objects by
SONAME, so the process holds a single copy of ggml.
"""
from __future__ import annotations

import ctypes
import importlib.util
import os
import re
from pathlib import Path
from typing import Any

import cffi

from runtime import errors

_NATIVE_DIR = Path(__file__).resolve().parent.parent / "_native"
LIB_NAME = "libhearth_core.so"
HEADER_NAME = "hearth_core.h"


def _cdef_from_header(text: str) -> str:
    try:
        body = text.split("/* HEARTH_CDEF_BEGIN */", 1)[1].split("/* HEARTH_CDEF_END */", 1)[0]
    except IndexError as exc:
        raise errors.InternalError(f"{HEADER_NAME} has no CDEF markers") from exc
    kept = []
    for line in body.splitlines():
        if line.lstrip().startswith("#") and not re.match(r"\s*#define\s+\w+\s+-?\d+\s*$", line):
            continue
        kept.append(line.replace("HEARTH_API ", ""))
    return "\n".join(kept)


def _llama_lib_dir() -> Path:
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        raise errors.InternalError("llama-cpp-python is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "lib"


def _preload_llama() -> None:
    path = _llama_lib_dir() / "libllama.so"
    ctypes.CDLL(str(path), mode=os.RTLD_GLOBAL | os.RTLD_NOW)


def library_path() -> Path:
    override = os.environ.get("HEARTH_CORE_LIB")
    return Path(override) if override else _NATIVE_DIR / LIB_NAME


def _load() -> tuple[cffi.FFI, Any]:
    lib_path = library_path()
    header = lib_path.with_name(HEADER_NAME)
    if not lib_path.exists() or not header.exists():
        raise errors.InternalError(
            f"{lib_path} or its header is missing: the native core is not built "
            "(run `make setup` or `pip install .`)")
    ffi = cffi.FFI()
    ffi.cdef(_cdef_from_header(header.read_text()))
    _preload_llama()
    native = ffi.dlopen(str(lib_path))
    if native.hearth_abi_version() != native.HEARTH_CORE_ABI_VERSION:
        raise errors.InternalError("libhearth_core does not match its header")
    # Route llama.cpp's chatty default output through our filter (warnings
    # and errors only) until logging is configured.
    native.hearth_log_configure(3, native.HEARTH_LOG_TEXT)
    return ffi, native


ffi, lib = _load()

_STATUS_TO_ERROR: dict[int, type[errors.HearthError]] = {
    lib.HEARTH_E_INVALID_ARGUMENT: errors.InvalidArgument,
    lib.HEARTH_E_NOT_FOUND: errors.NotFound,
    lib.HEARTH_E_RESOURCE_EXHAUSTED: errors.ResourceExhausted,
    lib.HEARTH_E_FAILED_PRECONDITION: errors.FailedPrecondition,
    lib.HEARTH_E_LOAD_FAILED: errors.ModelLoadError,
    lib.HEARTH_E_OUT_OF_MEMORY: errors.ResourceExhausted,
    lib.HEARTH_E_INTERNAL: errors.InternalError,
}


def last_error() -> str:
    return ffi.string(lib.hearth_last_error()).decode("utf-8", errors="replace")


def check(status: int) -> None:
    """Raises the exception family of a non-zero hearth_status."""
    if status != lib.HEARTH_OK:
        raise _STATUS_TO_ERROR.get(status, errors.InternalError)(last_error())
