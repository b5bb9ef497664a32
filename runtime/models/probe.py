"""Proving a model loadable before the daemon loads it in its own process.

llama.cpp aborts the whole process (GGML_ASSERT) on some malformed models
instead of returning an error.  gguf_file.py checks what can be checked
cheaply from the header, but not every assertion can be foreseen, so the
first load of each model digest runs in a short-lived child process that
loads it with the real engine (on the CPU, with a small context) and
generates one token.  A child that dies, fails or overruns its time makes
the load a ModelLoadError naming what happened; the daemon and its other
models go on serving.

Which digests passed is remembered in this process's memory only.  A record
on disk would save one probe per model per start, but anyone who could edit
it (the state directory is the attacker's target in SECURITY-CASES 29) could
add the digest of a crashing model, and the daemon would then load that
model in-process and crash-loop under systemd.  Kept in memory, the record
cannot be edited from outside, and the cost is one CPU load per model per
daemon start (its pages are then in the page cache for the real load).
"""
from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import threading
import time

from runtime.errors import ModelLoadError

PROBE_TIMEOUT_S = 600.0
_STDERR_TAIL = 16384
_REFUSED = 2                          # the child's exit status for an engine error
_REFUSAL_MARK = "hearth-probe-refused: "
_BUILD_PATH = re.compile(r"^\S*/(?=[^/\s]+:\d+:)")

_passed: set[str] = set()
_passed_lock = threading.Lock()


def fd_digest(fd: int) -> str:
    """The SHA-256 of everything the descriptor holds (read with pread, so
    its offset is left alone)."""
    h = hashlib.sha256()
    offset = 0
    while chunk := os.pread(fd, 4 << 20, offset):
        h.update(chunk)
        offset += len(chunk)
    return h.hexdigest()


def probe(label: str, model_fd: int, draft_fd: int = -1,
          timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Loads the model (and its draft) in a child process, unless this
    process has already seen the same bytes load; raises ModelLoadError if
    the child does not succeed."""
    key = fd_digest(model_fd) + (f"+{fd_digest(draft_fd)}" if draft_fd >= 0 else "")
    with _passed_lock:
        if key in _passed:
            return
    fds = [model_fd] + ([draft_fd] if draft_fd >= 0 else [])
    cmd = [sys.executable, "-m", "runtime.models.probe", *map(str, fds)]
    try:
        # GGML_NO_BACKTRACE: an abort need not attach a debugger to print one.
        proc = subprocess.run(cmd, pass_fds=fds, stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              env={**os.environ, "GGML_NO_BACKTRACE": "1"},
                              timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        raise ModelLoadError(f"{label}: the engine did not finish loading the model within "
                             f"{timeout_s:.0f}s in a probe process; refused") from None
    refusal = _refusal(proc.stderr) if proc.returncode == _REFUSED else None
    if refusal is not None:          # the engine refused the model, as it would here
        raise ModelLoadError(f"{label}: {refusal}")
    if proc.returncode != 0:
        raise ModelLoadError(f"{label}: the engine {_how(proc.returncode)} while loading the "
                             f"model in a probe process, so the daemon refuses it"
                             f"{_reason(proc.stderr)}")
    with _passed_lock:
        _passed.add(key)


def _how(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"crashed ({signal.Signals(-returncode).name})"
        except ValueError:
            return f"crashed (signal {-returncode})"
    return f"failed (exit status {returncode})"


def _refusal(stderr: bytes) -> str | None:
    """The error the engine raised in the child (not a crash), if any."""
    for line in reversed(stderr[-_STDERR_TAIL:].decode("utf-8", "replace").splitlines()):
        if line.startswith(_REFUSAL_MARK):
            return line[len(_REFUSAL_MARK):]
    return None


def _reason(stderr: bytes) -> str:
    """The child's own words: llama.cpp's failed assertion if it printed
    one (without its build path), else its last line; cut short and
    printable."""
    lines = [ln.strip() for ln in stderr[-_STDERR_TAIL:].decode("utf-8", "replace").splitlines()
             if ln.strip()]
    if not lines:
        return ""
    text = next((ln for ln in lines if "GGML_ASSERT" in ln), lines[-1])
    text = _BUILD_PATH.sub("", text)
    return ": " + "".join(c if c.isprintable() else "?" for c in text)[:300]


def _child(model_fd: int, draft_fd: int) -> int:
    """The probe itself: load, tokenize, generate one token, close."""
    from runtime.native import EngineParams, NativeEngine, RequestParams, Sampling

    engine = NativeEngine(EngineParams(
        model_fd=model_fd, draft_fd=draft_fd, n_ctx=256, n_parallel=1, n_batch=64, n_ubatch=64,
        prefill_chunk=64, max_queue=1, n_threads=1, n_threads_batch=1, n_gpu_layers=0,
        draft_n_gpu_layers=0, repack_weights=False, enable_embeddings=False))
    try:
        tokens = engine.tokenize("Hello", True, False) or [0]
        request = engine.submit(RequestParams(prompt=tokens[:32], max_tokens=1,
                                              sampling=Sampling()))   # any token will do
        try:
            deadline = time.monotonic() + PROBE_TIMEOUT_S
            while not request.take().finished:
                if time.monotonic() > deadline:
                    return 3
                time.sleep(0.01)
        finally:
            request.free()
    finally:
        engine.close()
    return 0


if __name__ == "__main__":
    fds = [int(a) for a in sys.argv[1:3]]
    try:
        sys.exit(_child(fds[0], fds[1] if len(fds) > 1 else -1))
    except Exception as exc:   # a refusal the engine reports (not an abort): say it
        message = " ".join(str(exc).split())
        print(f"{_REFUSAL_MARK}{message}", file=sys.stderr)
        sys.exit(_REFUSED)
