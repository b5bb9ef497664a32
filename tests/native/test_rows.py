"""native/src/rows.c, the vectorised logits-row scans behind greedy sampling, built alone
and checked against numpy on rows shaped to hit each branch: lengths that are not a
multiple of the vector lanes, ties, NaN, and banned tokens at the maximum.

The library build hides these functions, so this builds rows.c by itself with the C
compiler that built the core.  Each check fails if the scan returns another index than
numpy's first-maximum rule (a later tie, a banned token, a NaN)."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from cffi import FFI

from tests.conftest import require_tool

SRC = Path(__file__).resolve().parents[2] / "native" / "src"
CDEF = """
float hearth_row_max(const float *x, int32_t n);
int32_t hearth_row_argmax(const float *x, int32_t n, const uint8_t *ban);
"""


class Rows:
    """rows.c's two functions on numpy arrays."""

    def __init__(self, lib: Path) -> None:
        self.ffi = FFI()
        self.ffi.cdef(CDEF)
        self.lib = self.ffi.dlopen(str(lib))

    def _floats(self, x: np.ndarray) -> object:
        return self.ffi.cast("const float *", self.ffi.from_buffer(x))

    def max(self, x: np.ndarray) -> float:
        x = np.ascontiguousarray(x, dtype=np.float32)
        return float(self.lib.hearth_row_max(self._floats(x), len(x)))

    def argmax(self, x: np.ndarray, ban: np.ndarray | None = None) -> int:
        x = np.ascontiguousarray(x, dtype=np.float32)
        bp = self.ffi.NULL
        if ban is not None:
            ban = np.ascontiguousarray(ban, dtype=np.uint8)
            bp = self.ffi.cast("const uint8_t *", self.ffi.from_buffer(ban))
        return int(self.lib.hearth_row_argmax(self._floats(x), len(x), bp))


@pytest.fixture(scope="module")
def rows(tmp_path_factory: pytest.TempPathFactory) -> Rows:
    cc = os.environ.get("CC") or shutil.which("cc") or require_tool("gcc")
    lib = tmp_path_factory.mktemp("rows") / "librows.so"
    subprocess.run([cc, "-O3", "-std=gnu11", "-shared", "-fPIC", "-I", str(SRC),
                    str(SRC / "rows.c"), "-o", str(lib)], check=True)
    return Rows(lib)


def expected(x: np.ndarray, ban: np.ndarray | None = None) -> int:
    y = np.where(np.isnan(x), -np.inf, x).astype(np.float32)
    if ban is not None:
        y[ban.astype(bool)] = -np.inf
    if not np.isfinite(y).any() and not (y == np.inf).any():
        return -1
    return int(np.argmax(y))  # numpy: the first of equal maxima


@pytest.mark.parametrize("n", [1, 15, 16, 17, 63, 64, 65, 1000, 262_144])
def test_argmax_matches_numpy_at_every_length(rows: Rows, n: int) -> None:
    rng = np.random.default_rng(n)
    for _ in range(20):
        x = rng.standard_normal(n).astype(np.float32)
        assert rows.argmax(x) == expected(x)


def test_the_first_of_equal_maxima_wins(rows: Rows) -> None:
    x = np.zeros(1000, dtype=np.float32)
    for first, second in [(3, 900), (500, 501), (63, 64), (0, 999)]:
        x[:] = 0
        x[first] = x[second] = 5.0
        assert rows.argmax(x) == first


def test_nan_never_wins_and_an_all_nan_row_has_none(rows: Rows) -> None:
    x = np.full(300, np.nan, dtype=np.float32)
    assert rows.argmax(x) == -1
    x[200] = -1e30
    assert rows.argmax(x) == 200
    assert rows.max(np.full(40, np.nan)) == -np.inf
    assert rows.max(np.array([np.nan, 2.5, np.nan])) == 2.5


def test_a_banned_maximum_gives_way_to_the_best_allowed_token(rows: Rows) -> None:
    rng = np.random.default_rng(7)
    n = 262_144
    for trial in range(30):
        x = rng.standard_normal(n).astype(np.float32)
        ban = np.zeros(n, dtype=np.uint8)
        top = np.argsort(x)[::-1]
        ban[top[: trial % 4 + 1]] = 1          # the best one to four tokens are banned
        ban[rng.integers(0, n, 3)] = 1         # and a few others anywhere
        assert rows.argmax(x, ban) == expected(x, ban)


def test_ties_across_a_banned_token_keep_the_lowest_allowed_index(rows: Rows) -> None:
    x = np.zeros(100, dtype=np.float32)
    x[[10, 20, 30]] = 4.0
    ban = np.zeros(100, dtype=np.uint8)
    ban[[10, 25]] = 1                           # 20 and 30 now lie in different pieces
    assert rows.argmax(x, ban) == 20
    ban[[0, 99]] = 1                            # bans at both ends cut empty pieces
    assert rows.argmax(x, ban) == 20
    assert rows.argmax(x, np.ones(100, dtype=np.uint8)) == -1
