"""The sealed artifact format, version 1 (spec: docs/formats/sealed-v1.md).

A chunked streaming AEAD in the STREAM construction: every chunk is sealed
with its own nonce (chunk counter plus a final-chunk flag) under a key that is
unique to the file (HKDF of the object's data key with a random salt and the
object's context), after a header whose HMAC doubles as the key commitment.
Encryption and decryption need O(chunk) memory; decryption into a buffer of
known size (a memfd) runs chunks in parallel.

Errors: IntegrityError for anything that fails authentication or does not
parse (it names the check), WrongKey when the key does not open the header.
A reader that failed keeps failing.
"""
from __future__ import annotations

import contextlib
import enum
import hashlib
import hmac
import io
import json
import mmap
import os
import struct
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from runtime.errors import IntegrityError, InvalidArgument, WrongKey

MAGIC = b"HEARTHSL"
VERSION = 1
TAG = 16
DIGEST = 32
MAC = 32
SALT = 32
MAX_CONTEXT = 4096
MIN_CHUNK_LOG2, MAX_CHUNK_LOG2 = 12, 24
# 1 MiB: AES-GCM through `cryptography` reached its full speed from 64 KiB up
# on the development machines (2.2-2.4 GB/s per core here, 12.8 GB/s on a
# faster one at 1 MiB) and slows beyond 4 MiB; 1 MiB keeps the per-chunk
# overhead (a 16-byte tag, one call) under 0.01% and memory small.
DEFAULT_CHUNK_LOG2 = 20
_FIXED = struct.Struct("<8sHHB3x32sI")  # magic, version, suite, chunk_log2, salt, ctx len


class Suite(enum.IntEnum):
    AES_256_GCM = 1
    CHACHA20_POLY1305 = 2


_AEADS: dict[Suite, type[AESGCM] | type[ChaCha20Poly1305]] = {
    Suite.AES_256_GCM: AESGCM, Suite.CHACHA20_POLY1305: ChaCha20Poly1305}


@dataclass(frozen=True)
class Context:
    """What a sealed file is; bound into its keys and its header MAC."""

    kind: str
    name: str
    version: int

    def encode(self) -> bytes:
        return json.dumps({"kind": self.kind, "name": self.name, "version": self.version},
                          sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, raw: bytes) -> Context:
        try:
            d = json.loads(raw)
            return cls(str(d["kind"]), str(d["name"]), int(d["version"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise IntegrityError("sealed header: the context is not valid") from exc


@dataclass(frozen=True)
class Header:
    suite: Suite
    chunk_size: int
    salt: bytes
    context: Context
    raw: bytes          # every header byte before the MAC
    mac: bytes

    @property
    def size(self) -> int:
        return len(self.raw) + MAC


def _keys(dek: bytes, suite: Suite, chunk_log2: int, salt: bytes, context: bytes
          ) -> tuple[bytes, bytes]:
    info = b"hearth/sealed/v1" + struct.pack("<HB", suite, chunk_log2) + context
    okm = HKDF(algorithm=hashes.SHA256(), length=64, salt=salt, info=info).derive(dek)
    return okm[:32], okm[32:]


def _nonce(index: int, final: bool) -> bytes:
    return struct.pack(">QB3x", index, 1 if final else 0)


def _check_dek(dek: bytes) -> None:
    if len(dek) != 32:
        raise InvalidArgument("a data key is 32 bytes")


class SealedWriter:
    """Encrypts a stream: write() any amount, then close() (which seals the
    final chunk, carrying the SHA-256 of everything written).

    Chunks are encrypted on a worker thread while the caller hashes and
    writes (both primitives release the GIL), so hashing and encryption use
    two cores; at most a few chunks are in flight."""

    def __init__(self, out: BinaryIO, dek: bytes, context: Context,
                 suite: Suite = Suite.AES_256_GCM, chunk_log2: int = DEFAULT_CHUNK_LOG2,
                 salt: bytes | None = None) -> None:
        _check_dek(dek)
        if not MIN_CHUNK_LOG2 <= chunk_log2 <= MAX_CHUNK_LOG2:
            raise InvalidArgument(f"chunk size 2^{chunk_log2} is outside "
                                  f"2^{MIN_CHUNK_LOG2}..2^{MAX_CHUNK_LOG2}")
        ctx = context.encode()
        if len(ctx) > MAX_CONTEXT:
            raise InvalidArgument("the object's context is too long")
        self._out = out
        self._chunk = 1 << chunk_log2
        self.salt = salt if salt is not None else os.urandom(SALT)
        enc_key, mac_key = _keys(dek, suite, chunk_log2, self.salt, ctx)
        self._aead = _AEADS[suite](enc_key)
        raw = _FIXED.pack(MAGIC, VERSION, suite, chunk_log2, self.salt, len(ctx)) + ctx
        self._aad = hmac.digest(mac_key, raw, "sha256")
        out.write(raw + self._aad)
        self._buf = bytearray()
        self._full: bytes | None = None
        self._index = 0
        self._hash = hashlib.sha256()
        self._pool = ThreadPoolExecutor(max_workers=1)
        self._inflight: deque[Future[bytes]] = deque()
        self.digest: bytes | None = None
        self.plaintext_size = 0

    def write(self, data: bytes | memoryview) -> None:
        if self.digest is not None:
            raise InvalidArgument("the sealed writer is closed")
        self._hash.update(data)
        self.plaintext_size += len(data)
        if self._full is not None and data:
            self._seal(self._full, final=False)
            self._full = None
        if not self._buf and len(data) == self._chunk and isinstance(data, bytes):
            # The common case (callers read whole chunks): no copying.  A full
            # chunk waits until more data comes, as only close() knows which
            # chunk is the final one.
            self._full = data
            return
        self._buf += data
        while len(self._buf) > self._chunk:
            self._seal(bytes(self._buf[:self._chunk]), final=False)
            del self._buf[:self._chunk]

    def _seal(self, plain: bytes, final: bool) -> None:
        self._inflight.append(self._pool.submit(
            self._aead.encrypt, _nonce(self._index, final), plain, self._aad))
        self._index += 1
        while len(self._inflight) > (0 if final else 3):
            self._out.write(self._inflight.popleft().result())

    def close(self) -> bytes:
        """Seals the last chunk; returns the plaintext's SHA-256."""
        if self.digest is None:
            self.digest = self._hash.digest()
            if self._full is not None:
                self._buf = bytearray(self._full)
                self._full = None
            # The stream is data || SHA-256(data) in full chunks; the last
            # chunk takes the rest, so the trailer may straddle two chunks.
            tail = bytes(self._buf) + self.digest
            while len(tail) > self._chunk:
                self._seal(tail[:self._chunk], final=False)
                tail = tail[self._chunk:]
            self._seal(tail, final=True)
            self._buf.clear()
            self._pool.shutdown()
        return self.digest


def read_header(data: bytes, dek: bytes, expect: Context | None = None) -> Header:
    """Parses and authenticates a header held in `data` (which may extend
    past it).  Unknown versions and suites are refused by name; a header
    that the key does not open raises WrongKey before any chunk is read."""
    _check_dek(dek)
    if not data:
        raise IntegrityError("sealed file: the file is empty")
    if len(data) < _FIXED.size:
        raise IntegrityError(f"sealed file: truncated header ({len(data)} bytes)")
    magic, version, suite, chunk_log2, salt, ctx_len = _FIXED.unpack_from(data)
    if magic != MAGIC:
        raise IntegrityError(f"sealed file: bad magic {magic!r} (not a Hearth sealed file)")
    if version != VERSION:
        raise IntegrityError(f"sealed file: unsupported format version {version} "
                             f"(this build reads version {VERSION})")
    if suite not in Suite._value2member_map_:
        raise IntegrityError(f"sealed file: unknown cipher suite {suite}")
    if not MIN_CHUNK_LOG2 <= chunk_log2 <= MAX_CHUNK_LOG2 or ctx_len > MAX_CONTEXT:
        raise IntegrityError("sealed header: chunk size or context length out of range")
    end = _FIXED.size + ctx_len
    if len(data) < end + MAC:
        raise IntegrityError("sealed file: truncated header")
    raw = bytes(data[:end])
    mac = bytes(data[end:end + MAC])
    ctx_raw = raw[_FIXED.size:]
    _, mac_key = _keys(dek, Suite(suite), chunk_log2, salt, ctx_raw)
    if not hmac.compare_digest(hmac.digest(mac_key, raw, "sha256"), mac):
        # A wrong key and a tampered header look alike, on purpose.
        raise WrongKey("sealed header authentication failed: wrong key, or the header was "
                       "tampered with")
    context = Context.decode(ctx_raw)
    if expect is not None and context != expect:
        raise IntegrityError(f"sealed file holds {context}, expected {expect}: the file was "
                             "swapped or renamed")
    return Header(Suite(suite), 1 << chunk_log2, salt, context, raw, mac)


class SealedReader:
    """Streams the verified plaintext of a sealed file, chunk by chunk.

    Nothing is yielded from a chunk before its tag verifies; the SHA-256
    trailer is checked at the end.  Any failure is final: later calls raise
    the same error."""

    def __init__(self, src: BinaryIO, size: int, dek: bytes, expect: Context | None = None
                 ) -> None:
        self._src = src
        self._size = size
        head = src.read(min(size, _FIXED.size + MAX_CONTEXT + MAC))
        self.header = read_header(head, dek, expect)
        src.seek(self.header.size)
        enc_key, _ = _keys(dek, self.header.suite, self.header.chunk_size.bit_length() - 1,
                           self.header.salt, self.header.raw[_FIXED.size:])
        self._aead = _AEADS[self.header.suite](enc_key)
        self._error: IntegrityError | None = None
        self.digest: bytes | None = None
        body = size - self.header.size
        step = self.header.chunk_size + TAG
        self.n_chunks = -(-body // step) if body > 0 else 0
        last = body - (self.n_chunks - 1) * step if self.n_chunks else 0
        stream = body - self.n_chunks * TAG     # data and trailer
        if self.n_chunks == 0 or last <= TAG or stream < DIGEST:
            self._error = IntegrityError("sealed file: truncated (no final chunk)")
        self.plaintext_size = max(0, stream - DIGEST)
        self._trailer = bytearray(DIGEST)

    def _place(self, index: int, plain: bytes, out: memoryview | None) -> bytes:
        """Splits a decrypted chunk into data (returned, or copied into out)
        and the part of the digest trailer it holds."""
        start = index * self.header.chunk_size
        split = max(0, min(len(plain), self.plaintext_size - start))
        for i in range(split, len(plain)):
            self._trailer[start + i - self.plaintext_size] = plain[i]
        if out is not None and split:
            out[start:start + split] = plain[:split]
        return plain[:split]

    def _fail(self, message: str) -> IntegrityError:
        self._error = IntegrityError(message)
        return self._error

    def decrypt_chunk(self, index: int, sealed: bytes | memoryview,
                      out: memoryview | None = None) -> bytes:
        final = index == self.n_chunks - 1
        try:
            if out is not None:
                self._aead.decrypt_into(_nonce(index, final), sealed, self.header.mac, out)
                return b""
            return self._aead.decrypt(_nonce(index, final), sealed, self.header.mac)
        except InvalidTag:
            raise self._fail(f"sealed file: chunk {index} of {self.n_chunks} failed "
                             "authentication (corrupted, reordered, duplicated, spliced from "
                             "another file, or the file was truncated)") from None

    def chunks(self) -> Iterator[bytes]:
        """Yields verified plaintext; the digest trailer is checked last."""
        if self._error:
            raise self._error
        step = self.header.chunk_size + TAG
        for index in range(self.n_chunks):
            plain = self.decrypt_chunk(index, self._read_chunk(index, step))
            data = self._place(index, plain, None) if index >= self.n_chunks - 2 else plain
            if data:
                yield data
        self.digest = bytes(self._trailer)

    def _read_chunk(self, index: int, step: int) -> bytes:
        sealed = self._src.read(step)
        expected = step if index < self.n_chunks - 1 else None
        if len(sealed) <= TAG or (expected is not None and len(sealed) != expected):
            raise self._fail(f"sealed file: chunk {index} is truncated (the file changed "
                             "while it was read)")
        return sealed

    def verify_digest(self, plaintext_sha256: bytes) -> None:
        """Compares the recomputed plaintext hash with the sealed trailer."""
        if self.digest is None or not hmac.compare_digest(self.digest, plaintext_sha256):
            raise self._fail("sealed file: the plaintext SHA-256 does not match its trailer")

    def decrypt_into(self, out: memoryview, threads: int = 2) -> None:
        """Decrypts the whole file into `out` (plaintext_size bytes)."""
        if len(out) != self.plaintext_size:
            raise InvalidArgument("the output buffer does not match the plaintext size")

        def sink(offset: int, data: memoryview) -> None:
            out[offset:offset + len(data)] = data

        self.decrypt_to(sink, threads)

    def decrypt_to(self, sink: Callable[[int, memoryview], None], threads: int = 2,
                   progress: Callable[[int], None] | None = None) -> None:
        """Decrypts every chunk, in parallel, and hands each verified chunk to
        sink(offset, data) from the worker thread that decrypted it (a memfd
        sink uses pwrite, which allocates pages far faster than faulting
        them in through a mapping).  What the sink received is verified data
        only if this returns; on an error the caller discards it."""
        if self._error:
            raise self._error
        step, chunk = self.header.chunk_size + TAG, self.header.chunk_size
        local = threading.local()

        def one(index: int, sealed: bytes | None) -> None:
            if sealed is None:                          # slice the mapping here, and let go
                at = self.header.size + index * step
                with source[at:at + step] as view:      # type: ignore[index]
                    return one_chunk(index, view)
            return one_chunk(index, sealed)

        def one_chunk(index: int, sealed: bytes | memoryview) -> None:
            start = index * chunk
            if start + chunk <= self.plaintext_size:
                buf = getattr(local, "buf", None)
                if buf is None:
                    buf = local.buf = bytearray(chunk)
                view = memoryview(buf)
                self.decrypt_chunk(index, sealed, view)
                sink(start, view)
            else:                                       # holds (part of) the trailer
                data = self._place(index, self.decrypt_chunk(index, sealed), None)
                if data:
                    sink(start, memoryview(data))

        with self._mapped() as source, ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
            futures = []
            for index in range(self.n_chunks):
                sealed = None if source is not None else self._read_chunk(index, step)
                futures.append(pool.submit(one, index, sealed))
                if len(futures) >= 4 * threads:
                    futures.pop(0).result()
                if progress:
                    progress(min((index + 1) * chunk, self.plaintext_size))
            for f in futures:
                f.result()
        self.digest = bytes(self._trailer)

    @contextlib.contextmanager
    def _mapped(self) -> Iterator[memoryview | None]:
        """The sealed file mapped read-only, when it is a file: chunks are
        then decrypted straight from the page cache, without copies."""
        try:
            m = mmap.mmap(self._src.fileno(), self._size, access=mmap.ACCESS_READ)
        except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
            yield None
            return
        try:
            if len(m) != self._size:
                raise self._fail("sealed file: the file changed while it was read")
            with memoryview(m) as view:
                yield view
        finally:
            m.close()
