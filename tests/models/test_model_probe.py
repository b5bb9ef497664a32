"""SECURITY-CASES 26: a GGUF that passes the header check but makes llama.cpp
abort.  The header check refuses what llama.cpp would assert on in a
tokenizer, and the first load of new bytes runs in a probe process, so a
model that still crashes the engine is refused and the process serving the
other models survives."""
from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from runtime import errors
from runtime.config import Config, ModelConfig
from runtime.core import CallContext, GenerateRequest, GenerationOptions, InferenceService
from runtime.events import EventBus
from runtime.models import gguf_file, probe
from runtime.models.gguf_file import inspect_gguf
from runtime.models.manager import ModelManager, ModelState
from runtime.models.tiny import write_tiny_model

# Token 300 is a piece of the tiny vocabulary; "▁the" is a later one.
DUPLICATE = {300: "▁the"}


def _tokenizer_only(path: Path, **arrays: Any) -> Path:
    """A GGUF with a three-token vocabulary and the given tokenizer arrays
    (key suffix -> (values, element type)), and one tensor."""
    import gguf
    import numpy as np

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_token_list(["a", "b", "c"])
    for suffix, (values, etype) in arrays.items():
        w.add_key_value(f"tokenizer.ggml.{suffix}", values, gguf.GGUFValueType.ARRAY, etype)
    w.add_tensor("x", np.zeros(32, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_a_duplicate_vocabulary_entry_is_refused_by_the_header_check(tmp_path: Path) -> None:
    """Fails on e3a5e70: inspect_gguf accepted the file (checked by running
    this test there), and loading it aborted the process (exit 134,
    GGML_ASSERT(id_to_token.size() == token_to_id.size()))."""
    bad = write_tiny_model(tmp_path / "dup.gguf", rename_tokens=DUPLICATE)
    with pytest.raises(errors.ModelLoadError, match=r"tokens\[\d+\] repeats entry 300"):
        inspect_gguf(bad)


def test_an_empty_token_collides_with_its_llama_cpp_name(tmp_path: Path) -> None:
    """llama.cpp renames an empty token to "[EMPTY_<index>]".  Fails on
    e3a5e70: the file was accepted (removing _vocab_key's renaming makes it
    pass too)."""
    bad = write_tiny_model(tmp_path / "empty.gguf", rename_tokens={300: "", 301: "[EMPTY_300]"})
    with pytest.raises(errors.ModelLoadError, match="repeats entry 300"):
        inspect_gguf(bad)


@pytest.mark.parametrize(("arrays", "message"), [
    ({"scores": ([0.0, 0.0], "FLOAT32")}, "scores has 2 entries for 3 tokens"),
    ({"scores": ([1, 2, 3], "UINT8")}, "scores must be an array of float32"),
    ({"token_type": ([1, 1, 1, 1], "INT32")}, "token_type has 4 entries for 3 tokens"),
    ({"token_type": ([1.0, 1.0, 1.0], "FLOAT32")}, "token_type must be an array of int32"),
    ({"merges": ([1, 2], "INT32")}, "merges must be an array of strings"),
])
def test_per_token_arrays_must_match_the_vocabulary(tmp_path: Path, arrays: dict[str, Any],
                                                    message: str) -> None:
    """llama.cpp reads scores and token types by token index as float32 and
    int32.  Fails on e3a5e70: every one of these files was accepted."""
    import gguf

    typed = {k: (v, getattr(gguf.GGUFValueType, t)) for k, (v, t) in arrays.items()}
    with pytest.raises(errors.ModelLoadError, match=message):
        inspect_gguf(_tokenizer_only(tmp_path / "bad.gguf", **typed))


def test_the_tiny_models_still_pass(tmp_path: Path) -> None:
    """The checks refuse nothing real: the tiny model with a full tokenizer."""
    info = inspect_gguf(write_tiny_model(tmp_path / "ok.gguf"))
    assert info.arrays["tokenizer.ggml.tokens"][1] == info.arrays["tokenizer.ggml.scores"][1]


def test_the_probe_refuses_a_model_that_aborts_the_engine(tmp_path: Path) -> None:
    """The probe loads the file in a child process.  Fails on e3a5e70: there
    was no probe, and the same load in-process killed the process with
    SIGABRT (checked with NativeEngine on this file: exit status 134)."""
    bad = write_tiny_model(tmp_path / "dup.gguf", rename_tokens=DUPLICATE)
    fd = os.open(bad, os.O_RDONLY)
    try:
        with pytest.raises(errors.ModelLoadError, match=r"SIGABRT.*GGML_ASSERT"):
            probe.probe("dup", fd)
    finally:
        os.close(fd)


def test_digests_that_passed_are_not_probed_again(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The same bytes under another name skip the probe; other bytes do
    not.  Deleting the `_passed` lookup in probe() makes this fail."""
    first = write_tiny_model(tmp_path / "a.gguf", seed=7)
    copy = tmp_path / "b.gguf"
    copy.write_bytes(first.read_bytes())
    other = write_tiny_model(tmp_path / "c.gguf", seed=8)

    def run_probe(path: Path) -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            probe.probe(path.name, fd)
        finally:
            os.close(fd)

    run_probe(first)                       # a real child process
    runs: list[object] = []
    monkeypatch.setattr(probe.subprocess, "run", lambda *a, **k: runs.append(a))
    run_probe(copy)                        # the same bytes: no child
    assert runs == []
    with pytest.raises(AttributeError):    # other bytes: a child (the stub returns None)
        run_probe(other)
    assert len(runs) == 1


def test_a_crashing_model_is_refused_and_the_others_keep_serving(
        tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the header check out of the way (as for any assertion it does
    not foresee), ModelManager.load refuses the model and this process goes
    on serving the other one.  Fails on e3a5e70: the load aborted the
    process (SIGABRT)."""
    monkeypatch.setattr(gguf_file, "check_vocabulary", lambda info, label: None)
    bad = write_tiny_model(tmp_path / "dup.gguf", rename_tokens=DUPLICATE)
    monkeypatch.setattr(gguf_file, "VOCAB_TOKENS", "not-checked")
    good = ModelConfig(name="good", path=str(tiny_model), n_ctx=512, n_parallel=1, threads=1)
    crafted = ModelConfig(name="dup", path=str(bad), n_ctx=512, n_parallel=1, threads=1)

    async def main() -> None:
        events = EventBus()
        models = ModelManager(Config(models={"good": good, "dup": crafted}), events)
        core = InferenceService(models, events, 16)
        try:
            await models.load(good)
            with pytest.raises(errors.ModelLoadError, match=r"crashed.*probe"):
                await models.load(crafted)
            assert models.get("dup").state is ModelState.FAILED
            request = GenerateRequest(model="good", prompt="the patient",
                                      options=GenerationOptions(max_tokens=3, temperature=0.0))
            chunks = [c async for c in core.generate(request, CallContext(request_id="r"))]
            assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3
        finally:
            await models.shutdown(1.0)

    asyncio.run(main())
