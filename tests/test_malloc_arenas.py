"""runtime/daemon.py limit_malloc_arenas: the daemon's threads share two
glibc malloc arenas instead of taking one each (benchmarks/rss.py measured
the difference in peak RSS)."""
from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

PROBE = """
import ctypes, re, sys, tempfile, threading
if sys.argv[1] == "limit":
    from runtime.daemon import limit_malloc_arenas
    limit_malloc_arenas()
hold = []
together = threading.Barrier(8)
def allocate():
    together.wait()                                 # all alive at once: no arena is reused
    hold.append([bytes(4096) for _ in range(64)])   # malloc'd, not pymalloc'd
    together.wait()
threads = [threading.Thread(target=allocate) for _ in range(8)]
for t in threads:
    t.start()
for t in threads:
    t.join()
libc = ctypes.CDLL(None)
libc.fopen.restype = ctypes.c_void_p
libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
libc.fclose.argtypes = [ctypes.c_void_p]
with tempfile.NamedTemporaryFile() as f:
    out = libc.fopen(f.name.encode(), b"w")
    libc.malloc_info(0, out)
    libc.fclose(out)
    print(len(re.findall(r'<heap nr="', open(f.name).read())))
"""


def arenas(mode: str) -> int:
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True,
                         check=True, env=env).stdout
    return int(out.split()[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")
def test_threads_share_two_arenas() -> None:
    """Eight threads that each malloc: without the limit glibc gives each an
    arena (9 here), with it they share 2.  Deleting the mallopt call
    in limit_malloc_arenas makes it fail."""
    assert arenas("no-limit") > 2       # the probe does create arenas
    assert arenas("limit") <= 2
