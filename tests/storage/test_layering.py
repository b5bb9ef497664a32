"""The storage layer imports nothing above it (issue 14: store.py imported
runtime.models inside a function).  Fails on e3a5e70 (checked: it named
runtime/storage/store.py -> runtime.models.gguf_file)."""
from __future__ import annotations

import ast
from pathlib import Path

STORAGE = Path(__file__).resolve().parents[2] / "runtime" / "storage"
ALLOWED = ("runtime.storage", "runtime.errors", "runtime.names", "runtime.config", "runtime.events")


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


RUNTIME = STORAGE.parent
# Renames that are not writes: the audit log set aside by `hearth audit repair`.
NOT_WRITERS = {"storage/audit.py"}


def test_one_atomic_writer() -> None:
    """Temp-file-and-rename lives in storage/fsutil.py only (issue 14: four
    helpers).  Fails on e3a5e70 (checked: it named federation/operations.py,
    federation/serve.py, cli/serve.py and bundle/build.py)."""
    renames = []
    for path in sorted(RUNTIME.rglob("*.py")):
        rel = path.relative_to(RUNTIME).as_posix()
        if rel in NOT_WRITERS or rel == "storage/fsutil.py" or rel.startswith("_proto"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            f = node.func
            os_rename = isinstance(f.value, ast.Name) and f.value.id == "os" \
                and f.attr in ("replace", "rename")
            # Path.replace(target) takes one argument; str.replace takes two
            path_replace = f.attr in ("replace", "rename") and len(node.args) == 1 \
                and not (isinstance(f.value, ast.Name) and f.value.id == "os")
            if os_rename or path_replace:
                renames.append(f"{rel}:{node.lineno}")
    assert not renames
