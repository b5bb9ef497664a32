"""An in-memory LRU of finished deterministic generations.

Clinics and help desks send the same question many times.  When a request
is deterministic (greedy, or seeded sampling), the same model with
the same prompt tokens and the same options produces the same tokens, so the
answer can be streamed from memory instead of computed again.

Keys hash everything that decides the output: the model and the identity of
its loaded engine (a reload or a new adapter is a different model), the
prompt tokens, every generation option (each row of core/options.py's
table), and the caller's identity unless the configuration shares answers
across clients (it does not by default: a cached answer would tell one
client what another asked).  Only complete,
successful generations are stored, under a byte bound; least recently used
entries go first.
"""
from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from runtime.core.options import OPTIONS, GenerationOptions
from runtime.core.options import is_deterministic as is_deterministic
from runtime.core.types import GenerateChunk

# Python object overhead per stored chunk and per entry, so that many tiny
# answers cannot exceed the bound by hiding behind small payloads.
_CHUNK_OVERHEAD = 200
_ENTRY_OVERHEAD = 400


@dataclass(frozen=True)
class CacheStats:
    entries: int
    bytes: int
    capacity_bytes: int
    hits: int
    misses: int
    evictions: int


def _size(chunks: Sequence[GenerateChunk]) -> int:
    total = _ENTRY_OVERHEAD
    for c in chunks:
        total += _CHUNK_OVERHEAD + len(c.text.encode("utf-8")) + 8 * len(c.token_ids)
        total += sum(64 + 48 * len(lp.top) for lp in c.logprobs)
    return total


class ResponseCache:
    def __init__(self, capacity_bytes: int, shared: bool = False) -> None:
        self.capacity_bytes = capacity_bytes
        self.shared = shared
        self._entries: OrderedDict[bytes, tuple[tuple[GenerateChunk, ...], int]] = OrderedDict()
        self._bytes = 0
        self._hits = self._misses = self._evictions = 0
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.capacity_bytes > 0

    def key(self, model: str, engine_id: int, client: str, kind: str, prompt: Sequence[int],
            opts: GenerationOptions, max_tokens: int) -> bytes:
        h = hashlib.sha256()
        scope = "*" if self.shared else client
        for part in (model, str(engine_id), scope, kind, str(max_tokens)):
            h.update(part.encode("utf-8", "surrogatepass") + b"\0")
        h.update(len(prompt).to_bytes(4, "little"))
        h.update(b"".join(t.to_bytes(4, "little", signed=True) for t in prompt))
        for row in OPTIONS:             # every option; max_tokens as resolved, above
            if row.name != "max_tokens":
                value = getattr(opts, row.name)
                h.update(f"{row.name}={value!r}\0".encode("utf-8", "surrogatepass"))
        return h.digest()

    def get(self, key: bytes) -> tuple[GenerateChunk, ...] | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self._misses += 1
                return None
            self._entries.move_to_end(key)
            self._hits += 1
            return entry[0]

    def put(self, key: bytes, chunks: Sequence[GenerateChunk]) -> bool:
        size = _size(chunks)
        if size > self.capacity_bytes // 4:
            return False  # one answer must not flush the whole cache
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            self._entries[key] = (tuple(chunks), size)
            self._bytes += size
            while self._bytes > self.capacity_bytes and self._entries:
                _, (_, dropped) = self._entries.popitem(last=False)
                self._bytes -= dropped
                self._evictions += 1
        return True

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(len(self._entries), self._bytes, self.capacity_bytes,
                              self._hits, self._misses, self._evictions)
