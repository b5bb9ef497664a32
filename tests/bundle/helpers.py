"""Small signed bundles, built without pip, for the verification tests."""
from __future__ import annotations

import json
import tarfile
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from runtime.bundle.build import FORMAT, write_tar
from runtime.bundle.manifest import write_manifest

NAME = "hearth-bundle-0.1.0-cpu-cp311-linux_x86_64"


def signed_tree(tmp: Path, key: Ed25519PrivateKey, created: str = "2026-11-29T10:00:00Z"
                ) -> tuple[Path, str]:
    root = tmp / NAME
    (root / "wheelhouse").mkdir(parents=True)
    (root / "wheelhouse" / "a-1.0-py3-none-any.whl").write_bytes(b"wheel bytes " * 100)
    (root / "models").mkdir()
    (root / "models" / "m.gguf").write_bytes(b"GGUF" + bytes(range(256)) * 8)
    (root / "BUNDLE.json").write_text(json.dumps({"format": FORMAT, "hearth_version": "0.1.0",
                                                  "flavour": "cpu", "python": "cp311",
                                                  "platform": "linux-x86_64", "models": ["m"],
                                                  "created": created}))
    return root, write_manifest(root, key)


def tar_of(root: Path, path: Path) -> Path:
    write_tar(root, path)
    return path


def truncated(root: Path, path: Path) -> Path:
    """The bundle's tar, cut off mid-way through its model."""
    tar_of(root, path)
    with tarfile.open(path) as tar:
        cut = tar.getmember(f"{root.name}/models/m.gguf").offset_data + 100
    path.write_bytes(path.read_bytes()[:cut])
    return path
