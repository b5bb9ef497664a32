"""`runtime/` imports only downward: the layers listed in ARCHITECTURE.md.

Every import under runtime/ (module level, inside functions, under
TYPE_CHECKING) is resolved with `ast`, and an import of a module from a
lower layer (later in the list) fails the test, as does a top-level module
or package the list does not place.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUNTIME = ROOT / "runtime"
MARKER = "<!-- layers:"


def layers() -> dict[str, int]:
    """Top-level unit (`errors`, `server`, ...) -> its layer, from the
    numbered list after the marker in ARCHITECTURE.md."""
    text = (ROOT / "ARCHITECTURE.md").read_text(encoding="utf-8")
    section = text[text.index(MARKER):]
    order: dict[str, int] = {}
    for line in section.splitlines()[1:]:
        if not line.strip():
            break
        m = re.match(r"(\d+)\. (.*)", line)
        if m is None:
            continue             # a continuation line
        for unit in re.findall(r"`([\w.]+)`", m.group(2).split(":")[0]):
            assert unit not in order, f"ARCHITECTURE.md lists {unit} twice"
            order[unit] = int(m.group(1))
    return order


def unit_of(module: str) -> str:
    """`runtime.server.app` -> `server`; the package itself is `runtime`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "runtime"


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import of a runtime module in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = module_name(path) if path.name == "__init__.py" \
        else module_name(path).rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module == "runtime":   # from runtime import errors, __version__
                found += [(node.lineno, f"runtime.{a.name}")
                          if (RUNTIME / a.name).is_dir() or (RUNTIME / f"{a.name}.py").exists()
                          else (node.lineno, "runtime") for a in node.names]
            else:
                found.append((node.lineno, module))
    return [(line, m) for line, m in found if m == "runtime" or m.startswith("runtime.")]


def sources() -> list[Path]:
    return sorted(p for p in RUNTIME.rglob("*.py") if "_proto" not in p.relative_to(RUNTIME).parts)


def test_every_top_level_module_has_a_layer() -> None:
    """Deleting a line of the list in ARCHITECTURE.md makes this fail."""
    order = layers()
    units = {unit_of(module_name(p)) for p in sources()}
    assert not units - set(order), f"not placed in ARCHITECTURE.md's layers: {units - set(order)}"


def test_no_import_reaches_a_lower_layer() -> None:
    """Fails on e3a5e70 (checked by running it there with this list in its
    ARCHITECTURE.md): server/reload.py, the daemon's SIGHUP handling inside
    the gRPC face, imported systemd, and storage/store.py imported models
    inside a function.  The second is still there on the daemon branch
    (the storage branch removes it)."""
    order = layers()
    upward = []
    for path in sources():
        importer = unit_of(module_name(path))
        for line, module in imported_modules(path):
            target = unit_of(module)
            if target not in order:
                pytest.fail(f"{path.relative_to(ROOT)}:{line} imports {module}, which "
                            "ARCHITECTURE.md's layers do not place")
            if order[target] > order[importer]:
                upward.append(f"{path.relative_to(ROOT)}:{line}: {importer} (layer "
                              f"{order[importer]}) imports {module} (layer {order[target]})")
    assert not upward, "imports from a lower layer:\n" + "\n".join(upward)


def test_the_grpc_face_composes_nothing() -> None:
    """server/ serves gRPC over parts it is given: building the store, the
    token store, the HTTP face, logging and systemd belong to daemon.py.
    Fails on e3a5e70: server/app.py imported runtime.http,
    runtime.storage.store and runtime.auth.tokens, server/reload.py
    runtime.logs and runtime.systemd (checked by running it there)."""
    composing = ("runtime.http", "runtime.storage", "runtime.auth.tokens", "runtime.systemd",
                 "runtime.logs", "runtime.daemon", "runtime.reload")
    found = [f"{path.relative_to(ROOT)}:{line} imports {module}"
             for path in sources() if path.is_relative_to(RUNTIME / "server")
             for line, module in imported_modules(path)
             if any(module == c or module.startswith(c + ".") for c in composing)]
    assert not found, "\n".join(found)
