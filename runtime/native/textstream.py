"""The engine's text hand-out (UTF-8 hold-back and stop strings), exposed on
its own so it can be tested without a model."""
from __future__ import annotations

from collections.abc import Sequence

from runtime.native._ffi import check, ffi, lib


class TextStream:
    def __init__(self, stops: Sequence[str] = ()) -> None:
        keep = [ffi.new("char[]", s.encode("utf-8")) for s in stops]
        arr = ffi.new("char *[]", keep) if keep else ffi.NULL
        out = ffi.new("hearth_textstream **")
        check(lib.hearth_textstream_create(arr, len(keep), out))
        self._h = ffi.gc(out[0], lib.hearth_textstream_free)
        self._n = ffi.new("int32_t *")

    def feed(self, piece: bytes) -> int:
        """Returns the index of the stop string that matched, or -1."""
        return int(lib.hearth_textstream_feed(self._h, piece, len(piece)))

    def flush(self) -> None:
        lib.hearth_textstream_flush(self._h)

    def take(self) -> bytes:
        p = lib.hearth_textstream_take(self._h, self._n)
        return ffi.unpack(p, self._n[0]) if self._n[0] else b""
