"""One open per source (opener.py): a file in the models directory cannot be
swapped between the check and the load (issue 15, low items), and the
typed source references that replace "store:NAME" text (issue 14)."""
from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
from pathlib import Path

import pytest

from runtime import errors
from runtime.config import Config, ServerConfig, parse_config
from runtime.events import EventBus
from runtime.models.manager import ModelManager
from runtime.sources import FileSource, StoredSource, parse_source


def _manager(models_dir: Path) -> ModelManager:
    return ModelManager(Config(server=ServerConfig(models_dir=str(models_dir))), EventBus())


def _load_after_swap(tmp_path: Path, tiny_model: Path, swap: str) -> BaseException | None:
    """Resolves models/m.gguf (a regular file), swaps it, then loads the
    resolved config; returns the load's error (None: it loaded)."""
    models = tmp_path / "models"
    models.mkdir()
    target = models / "m.gguf"
    target.write_bytes(tiny_model.read_bytes())
    manager = _manager(models)
    cfg = manager.resolve("m")
    target.unlink()
    if swap == "fifo":
        os.mkfifo(target)
    else:
        outside = tmp_path / "outside.gguf"
        outside.write_bytes(tiny_model.read_bytes())
        target.symlink_to(outside)

    async def main() -> BaseException | None:
        try:
            await asyncio.wait_for(manager.load(cfg), 60)
            return None
        except BaseException as exc:   # the caller inspects it
            return exc
        finally:
            await manager.shutdown(1.0)

    try:
        return asyncio.run(main())
    finally:
        if swap == "fifo":   # a blocked open (the old code) gets a writer and returns
            with contextlib.suppress(OSError):
                os.close(os.open(target, os.O_WRONLY | os.O_NONBLOCK))


def test_a_fifo_swapped_in_after_the_check_is_refused_at_once(tiny_model: Path,
                                                               tmp_path: Path) -> None:
    """Fails on e3a5e70: the load blocked in open() on the FIFO (checked by
    running this test there: it hung until pytest's timeout)."""
    exc = _load_after_swap(tmp_path, tiny_model, "fifo")
    assert isinstance(exc, errors.ModelLoadError), exc
    assert "not a regular file" in str(exc)


def test_a_symlink_swapped_in_after_the_check_is_not_followed(tiny_model: Path,
                                                              tmp_path: Path) -> None:
    """Fails on e3a5e70: the file outside the models directory was loaded
    through the symlink (checked by running this test there)."""
    exc = _load_after_swap(tmp_path, tiny_model, "symlink")
    assert isinstance(exc, errors.ModelLoadError), exc
    assert "symlink" in str(exc)


def test_config_sources_are_typed(tmp_path: Path) -> None:
    """Fails on e3a5e70: draft and adapters were "store:NAME" strings."""
    config = parse_config({"models": {"m": {
        "path": "m.gguf", "draft": "store:small",
        "adapters": {"clinic": "store:fed-clinic", "local": "lora.gguf"}}}}, tmp_path)
    m = config.models["m"]
    assert m.draft == StoredSource("small")
    assert dict(m.adapters) == {"clinic": StoredSource("fed-clinic"),
                                "local": FileSource(str((tmp_path / "lora.gguf").resolve()))}
    assert str(m.draft) == "store:small" and parse_source(str(m.draft)) == m.draft
    with pytest.raises(errors.ConfigError, match=r"^models\.m\.adapters\.x: "):
        parse_config({"models": {"m": {"path": "m.gguf", "adapters": {"x": "store:../x"}}}})
    with pytest.raises(errors.ConfigError, match=r"^models\.m\.draft: "):
        parse_config({"models": {"m": {"path": "m.gguf", "draft": "store:"}}})


def test_the_store_prefix_is_spelled_once() -> None:
    """Issue 14: one parser, one formatter.  Fails on e3a5e70 (17 lines)."""
    root = Path(__file__).resolve().parents[2] / "runtime"
    hits = subprocess.run(["grep", "-rn", '"store:', str(root)], capture_output=True,
                          text=True).stdout.splitlines()
    assert len(hits) <= 2, hits
