"""The storage layer imports nothing above it (issue 14: store.py imported
runtime.models inside a function).  Fails on e3a5e70 (checked: it named
runtime/storage/store.py -> runtime.models.gguf_file)."""
from __future__ import annotations

import ast
from pathlib import Path

STORAGE = Path(__file__).resolve().parents[2] / "runtime" / "storage"
ALLOWED = ("runtime.storage", "runtime.errors", "runtime.config", "runtime.events")


def test_storage_imports_only_downward() -> None:
    upward = []
    for path in sorted(STORAGE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            upward += [f"{path.name} -> {n}" for n in names
                       if n.startswith("runtime") and not n.startswith(ALLOWED)]
    assert not upward
