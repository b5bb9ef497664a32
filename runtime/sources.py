"""Where a model, draft or adapter's bytes come from: a file or the sealed store.

Configs and command lines name a source as text, a path or `store:NAME`;
`parse_source` turns that text into a typed reference at that edge, and
`str()` of a reference gives the text back.  Everything past the edge (the
model manager, the repository service, the servicers) passes the typed
reference and never looks at a prefix.  This module imports nothing from
Hearth so that the config layer can use it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

STORE_PREFIX = "store:"


@dataclass(frozen=True)
class FileSource:
    """A GGUF file on disk."""
    path: str

    def __str__(self) -> str:
        return self.path

    def resolved_against(self, base: Path) -> FileSource:
        """A relative path is relative to `base` (the config file's folder)."""
        return self if os.path.isabs(self.path) else FileSource(str((base / self.path).resolve()))


@dataclass(frozen=True)
class StoredSource:
    """An object of the sealed store, by name (its newest version)."""
    name: str

    def __str__(self) -> str:
        return f"{STORE_PREFIX}{self.name}"

    def resolved_against(self, base: Path) -> StoredSource:
        return self


Source = FileSource | StoredSource


def parse_source(text: str) -> Source:
    """The typed reference of a source's text form.  The caller checks a
    stored name (names.py's rules) where it reports errors."""
    if text.startswith(STORE_PREFIX):
        return StoredSource(text[len(STORE_PREFIX):])
    return FileSource(text)
