"""Finds 4 KiB-aligned windows of a plaintext file inside other files.

Every 4 KiB block of the plaintext that carries information (not a run of a
few byte values, like zero padding) is fingerprinted by its first 8 bytes;
every byte offset of every scanned file is looked up among the fingerprints
(vectorised with numpy, eight alignments), and each hit is compared in full.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

BLOCK = 4096
MASK = (1 << 24) - 1


def _fingerprints(plain: np.ndarray) -> tuple[np.ndarray, dict[int, list[int]]]:
    n = len(plain) // BLOCK
    blocks = plain[: n * BLOCK].reshape(n, BLOCK)
    informative = [i for i in range(n) if len(np.unique(blocks[i][:256])) > 16]
    keys = blocks[informative, :8].copy().view("<u8").ravel()
    index: dict[int, list[int]] = {}
    for key, block in zip(keys.tolist(), informative, strict=True):
        index.setdefault(key, []).append(block)
    return np.unique(keys), index


def find_plaintext_windows(plaintext: Path, files: list[Path], limit: int = 10
                           ) -> list[tuple[Path, int, int]]:
    """(file, offset in file, block index in plaintext) of each window found."""
    plain = np.fromfile(plaintext, dtype=np.uint8)
    keys, index = _fingerprints(plain)
    # A 2^24-entry presence table on the low bits filters almost every word
    # before the exact (sorted) lookup.
    present = np.zeros(1 << 24, dtype=bool)
    present[(keys & np.uint64(MASK)).astype(np.int64)] = True
    found: list[tuple[Path, int, int]] = []
    for path in files:
        data = np.fromfile(path, dtype=np.uint8)
        for r in range(8):
            usable = (len(data) - r) // 8
            if usable <= 0:
                continue
            words = data[r: r + usable * 8].view("<u8")
            maybe = np.nonzero(present[(words & np.uint64(MASK)).astype(np.int64)])[0]
            cand = words[maybe]
            pos = np.searchsorted(keys, cand)
            pos[pos == len(keys)] = 0
            hits = maybe[keys[pos] == cand]
            for h in hits.tolist():
                offset = r + 8 * h
                window = data[offset: offset + BLOCK]
                for block in index[int(words[h])]:
                    if len(window) == BLOCK and np.array_equal(
                            window, plain[block * BLOCK:(block + 1) * BLOCK]):
                        found.append((path, offset, block))
                        if len(found) >= limit:
                            return found
    return found
