"""A strict reader of GGUF headers, run before llama.cpp sees a file.

llama.cpp's own parser has had memory-safety bugs on crafted files, so Hearth
checks every header first: magic and version, counts and lengths bounded by
the file's real size, known value and tensor types, dimensions whose product
cannot overflow, tensor data inside the file and aligned, and a tokenizer
llama.cpp can read without aborting (no duplicate tokens, per-token arrays of
the vocabulary's length and type).  Anything off is a
ModelLoadError naming the first problem; nothing is allocated from a length
before that length has been checked against the bytes that remain.

The result also gives per-tensor sizes, which the GPU layer fitter uses.
"""
from __future__ import annotations

import mmap
import os
import stat
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime.errors import ModelLoadError

MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_STRING = 64 << 20
MAX_DIMS = 4
MAX_TENSOR_ELEMENTS = 1 << 40

# ggml tensor type -> (elements per block, bytes per block), from ggml.h.
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22), 7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 40),
    10: ("Q2_K", 256, 84), 11: ("Q3_K", 256, 110), 12: ("Q4_K", 256, 144),
    13: ("Q5_K", 256, 176), 14: ("Q6_K", 256, 210), 15: ("Q8_K", 256, 292),
    16: ("IQ2_XXS", 256, 66), 17: ("IQ2_XS", 256, 74), 18: ("IQ3_XXS", 256, 98),
    19: ("IQ1_S", 256, 50), 20: ("IQ4_NL", 32, 18), 21: ("IQ3_S", 256, 110),
    22: ("IQ2_S", 256, 82), 23: ("IQ4_XS", 256, 136), 24: ("I8", 1, 1), 25: ("I16", 1, 2),
    26: ("I32", 1, 4), 27: ("I64", 1, 8), 28: ("F64", 1, 8), 29: ("IQ1_M", 256, 56),
    30: ("BF16", 1, 2), 34: ("TQ1_0", 256, 54), 35: ("TQ2_0", 256, 66),
    39: ("MXFP4", 32, 17), 40: ("NVFP4", 64, 36), 41: ("Q1_0", 128, 18),
}

# GGUF metadata value types: id -> (struct format, size); 8 string, 9 array.
_SCALARS: dict[int, tuple[str, int]] = {
    0: ("<B", 1), 1: ("<b", 1), 2: ("<H", 2), 3: ("<h", 2), 4: ("<I", 4), 5: ("<i", 4),
    6: ("<f", 4), 7: ("<?", 1), 10: ("<Q", 8), 11: ("<q", 8), 12: ("<d", 8),
}
_STRING, _ARRAY = 8, 9
_U64 = struct.Struct("<Q")
# Arrays longer than this are checked but not kept (vocabularies, merges).
_KEEP_ARRAY = 64
_F32, _I32, _U8, _I8 = 6, 5, 0, 1

# The tokenizer arrays llama.cpp reads by index up to the vocabulary size, or
# through accessors that abort the process (GGML_ASSERT) on a wrong type.
VOCAB_TOKENS = "tokenizer.ggml.tokens"
_PER_TOKEN = {"tokenizer.ggml.scores": (_F32, "float32"),
              "tokenizer.ggml.token_type": (_I32, "int32")}
_STRING_ARRAYS = ("tokenizer.ggml.merges",)
_BYTE_ARRAYS = ("tokenizer.ggml.precompiled_charsmap",)


@dataclass(frozen=True)
class TensorInfo:
    name: str
    type_name: str
    dims: tuple[int, ...]
    offset: int
    nbytes: int


@dataclass
class GGUFInfo:
    path: str
    version: int
    size: int
    alignment: int
    data_offset: int
    metadata: dict[str, Any] = field(default_factory=dict)
    tensors: list[TensorInfo] = field(default_factory=list)
    arrays: dict[str, tuple[int, int]] = field(default_factory=dict)  # key -> (type, count)

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", ""))

    @property
    def kind(self) -> str:
        """"model" or "adapter" (general.type)."""
        return str(self.metadata.get("general.type", "model"))

    def arch_int(self, key: str, default: int = 0) -> int:
        value = self.metadata.get(f"{self.architecture}.{key}", default)
        return int(value) if isinstance(value, int) else default


class _Reader:
    """Walks a read-only buffer (an mmap of the file) with explicit bounds."""

    def __init__(self, buf: Any, size: int, label: str) -> None:
        self.buf = buf
        self.size = size
        self.label = label
        self.pos = 0
        self.last_array = (0, 0)     # (element type, count) of the last array read

    def fail(self, what: str) -> ModelLoadError:
        return ModelLoadError(f"{self.label}: not a valid GGUF file: {what} (at byte {self.pos})")

    def skip(self, n: int, what: str) -> int:
        if n < 0 or n > self.size - self.pos:
            raise self.fail(f"{what} needs {n} bytes, {self.size - self.pos} remain")
        start = self.pos
        self.pos += n
        return start

    def take(self, n: int, what: str) -> bytes:
        start = self.skip(n, what)
        return bytes(self.buf[start:start + n])

    def scalar(self, fmt: str, n: int, what: str) -> Any:
        return struct.unpack_from(fmt, self.buf, self.skip(n, what))[0]

    def u32(self, what: str) -> int:
        return int(self.scalar("<I", 4, what))

    def u64(self, what: str) -> int:
        return int(self.scalar("<Q", 8, what))

    def string(self, what: str, keep: bool = True) -> str:
        n = self.u64(f"length of {what}")
        if n > MAX_STRING:
            raise self.fail(f"{what} claims {n} bytes (limit {MAX_STRING})")
        if not keep:
            self.skip(n, what)
            return ""
        raw = self.take(n, what)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise self.fail(f"{what} is not UTF-8") from exc

    def skip_strings(self, count: int, what: str, unique: bool = False) -> None:
        """Bounds-checks `count` strings without decoding them: Gemma's
        vocabulary has 262k, so this loop is kept tight.  With `unique`, two
        equal strings are refused, as llama.cpp sees them (see _vocab_key)."""
        pos, size, buf = self.pos, self.size, self.buf
        length = _U64.unpack_from
        seen: dict[bytes, int] = {}
        for i in range(count):
            if pos + 8 > size:
                self.pos = pos
                raise self.fail(f"{what}[{i}]: length runs past the end of the file")
            n = length(buf, pos)[0]
            pos += 8
            if n > MAX_STRING or n > size - pos:
                self.pos = pos
                raise self.fail(f"{what}[{i}] claims {n} bytes, {size - pos} remain")
            if unique:
                first = seen.setdefault(_vocab_key(bytes(buf[pos:pos + n]), i), i)
                if first != i:
                    self.pos = pos
                    raise self.fail(f"{what}[{i}] repeats entry {first}; llama.cpp aborts "
                                    "on a vocabulary with duplicate tokens")
            pos += n
        self.pos = pos

    def value(self, vtype: int, what: str) -> Any:
        if vtype in _SCALARS:
            fmt, n = _SCALARS[vtype]
            return self.scalar(fmt, n, what)
        if vtype == _STRING:
            return self.string(what)
        if vtype == _ARRAY:
            etype = self.u32(f"element type of {what}")
            count = self.u64(f"length of {what}")
            if etype not in _SCALARS and etype != _STRING:
                raise self.fail(f"{what}: element type {etype} is unknown or nested")
            min_size = _SCALARS[etype][1] if etype in _SCALARS else 8
            if count > (self.size - self.pos) // min_size:
                raise self.fail(f"{what} claims {count} elements, more than the file can hold")
            self.last_array = (etype, count)
            if count > _KEEP_ARRAY or what == VOCAB_TOKENS:
                # Vocabularies and merges: check the bounds, keep a summary.
                if etype in _SCALARS:
                    self.skip(count * min_size, what)
                else:
                    self.skip_strings(count, what, unique=what == VOCAB_TOKENS)
                return f"<array of {count}>"
            return [self.value(etype, f"{what}[{i}]") for i in range(count)]
        raise self.fail(f"{what}: unknown value type {vtype}")


def _vocab_key(raw: bytes, index: int) -> bytes:
    """A token as llama.cpp's token-to-id map keys it: it renames an empty
    token to "[EMPTY_<index>]", which can then collide with a real one."""
    return raw or f"[EMPTY_{index}]".encode()


def check_vocabulary(info: GGUFInfo, label: str) -> None:
    """What llama.cpp would abort on (rather than refuse) in a tokenizer:
    the per-token arrays must be of the vocabulary's length and of the type
    it reads them as, and the string arrays must hold strings.  Duplicate
    tokens are refused while the vocabulary is read (skip_strings)."""
    def fail(what: str) -> ModelLoadError:
        return ModelLoadError(f"{label}: not a valid GGUF file: {what}")

    for key in (VOCAB_TOKENS, *_PER_TOKEN, *_STRING_ARRAYS, *_BYTE_ARRAYS):
        if key in info.metadata and key not in info.arrays:
            raise fail(f"{key} must be an array")
    if VOCAB_TOKENS not in info.arrays:
        return
    etype, n_vocab = info.arrays[VOCAB_TOKENS]
    if etype != _STRING:
        raise fail(f"{VOCAB_TOKENS} must be an array of strings")
    if n_vocab == 0:
        raise fail(f"{VOCAB_TOKENS} is empty")
    for key, (want, type_name) in _PER_TOKEN.items():
        if key in info.arrays:
            etype, count = info.arrays[key]
            if etype != want:
                raise fail(f"{key} must be an array of {type_name}")
            if count != n_vocab:
                raise fail(f"{key} has {count} entries for {n_vocab} tokens")
    for key in _STRING_ARRAYS:
        if key in info.arrays and info.arrays[key][0] != _STRING:
            raise fail(f"{key} must be an array of strings")
    for key in _BYTE_ARRAYS:
        if key in info.arrays and info.arrays[key][0] not in (_U8, _I8):
            raise fail(f"{key} must be an array of bytes")


def inspect_gguf(path: str | Path, label: str | None = None) -> GGUFInfo:
    """Reads and checks the header of a GGUF file; raises ModelLoadError."""
    path = Path(path)
    label = label or path.name
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise ModelLoadError(f"{label}: cannot open: {exc.strerror}") from exc
    try:
        return inspect_gguf_fd(fd, label, str(path))
    finally:
        os.close(fd)


def inspect_gguf_fd(fd: int, label: str, path: str = "") -> GGUFInfo:
    """Checks the GGUF header of an open file (which the engine then loads
    from, so what was checked is what is loaded)."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise ModelLoadError(f"{label}: not a regular file")
    if st.st_size == 0:
        return parse_gguf_header(b"", 0, label, path)
    with mmap.mmap(fd, 0, access=mmap.ACCESS_READ) as buf:
        return parse_gguf_header(buf, st.st_size, label, path)


def parse_gguf_header(buf: Any, size: int, label: str, path: str = "") -> GGUFInfo:
    """Checks a GGUF header held in `buf` (bytes, memoryview or mmap)."""
    if size == 0:
        raise ModelLoadError(f"{label}: the file is empty")
    r = _Reader(buf, size, label)
    magic = r.take(4, "magic") if size >= 4 else bytes(buf[:size])
    if magic != MAGIC:
        raise ModelLoadError(f"{label}: not a GGUF file (magic {magic!r}, expected {MAGIC!r})")
    version = r.u32("version")
    if version not in SUPPORTED_VERSIONS:
        raise ModelLoadError(f"{label}: GGUF version {version} is not supported "
                             f"(supported: {', '.join(map(str, SUPPORTED_VERSIONS))})")
    n_tensors = r.u64("tensor count")
    n_kv = r.u64("metadata count")
    # Smallest possible records: a kv is key length (8) + 1 byte + type (4) +
    # 1 byte of value; a tensor info is 8 + 1 + 4 + 8 + 4 + 8.
    if n_kv > (size - r.pos) // 14:
        raise r.fail(f"{n_kv} metadata entries cannot fit in {size} bytes")
    if n_tensors > (size - r.pos) // 33:
        raise r.fail(f"{n_tensors} tensors cannot fit in {size} bytes")
    info = GGUFInfo(path=path, version=version, size=size, alignment=DEFAULT_ALIGNMENT,
                    data_offset=0)
    for i in range(n_kv):
        key = r.string(f"key of metadata entry {i}")
        vtype = r.u32(f"type of {key}")
        if key in info.metadata:
            raise r.fail(f"duplicate metadata key {key}")
        info.metadata[key] = r.value(vtype, key)
        if vtype == _ARRAY:
            info.arrays[key] = r.last_array
    check_vocabulary(info, label)
    alignment = info.metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise r.fail(f"general.alignment {alignment!r} is not a power of two")
    info.alignment = alignment
    raw = []
    for i in range(n_tensors):
        name = r.string(f"name of tensor {i}")
        n_dims = r.u32(f"dimension count of {name}")
        if not 1 <= n_dims <= MAX_DIMS:
            raise r.fail(f"tensor {name} has {n_dims} dimensions (1..{MAX_DIMS} allowed)")
        dims = tuple(r.u64(f"dimension {d} of {name}") for d in range(n_dims))
        elements = 1
        for d in dims:
            if d == 0:
                raise r.fail(f"tensor {name} has a zero dimension {dims}")
            elements *= d
            if elements > MAX_TENSOR_ELEMENTS:
                raise r.fail(f"tensor {name} has absurd dimensions {dims}")
        ttype = r.u32(f"type of {name}")
        if ttype not in GGML_TYPES:
            raise r.fail(f"tensor {name} has unknown type {ttype}")
        type_name, block, block_bytes = GGML_TYPES[ttype]
        if dims[0] % block:
            raise r.fail(f"tensor {name}: row of {dims[0]} is not a multiple of the "
                         f"{type_name} block size {block}")
        offset = r.u64(f"offset of {name}")
        if offset % alignment:
            raise r.fail(f"tensor {name} offset {offset} is not aligned to {alignment}")
        raw.append((name, type_name, dims, offset, elements // block * block_bytes))
    data_offset = -(-r.pos // alignment) * alignment
    info.data_offset = data_offset
    names: set[str] = set()
    for name, type_name, dims, offset, nbytes in raw:
        if name in names:
            raise ModelLoadError(f"{label}: not a valid GGUF file: duplicate tensor {name}")
        names.add(name)
        end = data_offset + offset + nbytes
        if end > size:
            raise ModelLoadError(f"{label}: not a valid GGUF file: tensor {name} ends at byte "
                                 f"{end}, past the end of the file ({size} bytes); "
                                 "is the file truncated?")
        info.tensors.append(TensorInfo(name, type_name, dims, offset, nbytes))
    return info
