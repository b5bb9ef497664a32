"""Named LoRA adapters through the model manager and the core: from the
config, per request, and swapped under load with no stream failing."""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from runtime import errors
from runtime.config import Config, ModelConfig
from runtime.core import CallContext, GenerateRequest, GenerationOptions, InferenceService
from runtime.events import EventBus
from runtime.models.manager import ModelManager
from runtime.models.tiny import write_tiny_lora, write_tiny_model
from runtime.sources import FileSource


@dataclass
class Run:
    text: str = ""
    reason: str = ""
    first: float = 0.0        # when the first chunk arrived (0: none did)
    end: float = 0.0


async def run_of(core: InferenceService, prompt: str, n: int, adapter: str = "",
                 rid: str = "r", run: Run | None = None) -> Run:
    """One greedy generation; `run` is filled in as it goes (first chunk
    time at once), so a caller can watch it while it runs."""
    opts = GenerationOptions(max_tokens=n, temperature=0.0, ignore_eos=True, adapter=adapter)
    run, parts = run or Run(), []
    async for chunk in core.generate(GenerateRequest("tiny", prompt, options=opts),
                                     CallContext(rid)):
        run.first = run.first or time.monotonic()
        parts.append(chunk.text)
        run.reason = chunk.finish_reason or run.reason
    run.text, run.end = "".join(parts), time.monotonic()
    return run


async def text_of(core: InferenceService, prompt: str, n: int, adapter: str = "",
                  rid: str = "r") -> tuple[str, str]:
    run = await run_of(core, prompt, n, adapter, rid)
    return run.text, run.reason


def test_adapters_from_the_config_per_request_and_hot_swapped(tiny_model: Path,
                                                              tmp_path: Path) -> None:
    """Eight streams are proven running on v1 when v2 replaces it (each
    had its first chunk before the swap began and ended after it was done);
    they end with v1's text, and later requests get v2's, the same text as
    v2 loaded under a name of its own.  Can fail: wait_streaming and the
    overlap assertion fail when a stream ends before the swap, and a swap
    that kept serving v1 (manager.set_adapter not replacing
    handle.adapters) gives later requests v1's text; freeing v1
    under its running requests is caught in tests/native/test_adapters.py."""
    v1 = write_tiny_lora(tmp_path / "clinic-v1.gguf", seed=1)
    v2 = write_tiny_lora(tmp_path / "clinic-v2.gguf", seed=2)
    n = 300

    async def main() -> None:
        cfg = ModelConfig(name="tiny", path=str(tiny_model), n_ctx=8192, n_parallel=8,
                          threads=2, adapters=(("clinic", FileSource(str(v1))),
                                               ("v2-alone", FileSource(str(v2)))))
        events = EventBus()
        models = ModelManager(Config(models={"tiny": cfg}), events)
        core = InferenceService(models, events, 256)
        await models.load(cfg)
        try:
            base, _ = await text_of(core, "the patient", 40)
            clinic_v1, _ = await text_of(core, "the patient", n, "clinic")
            v2_alone, _ = await text_of(core, "the patient", n, "v2-alone")
            assert clinic_v1[:len(base)] != base and v2_alone != clinic_v1
            with pytest.raises(errors.NotFound, match="has no adapter 'nope'"):
                await text_of(core, "the patient", 4, "nope")
            # Eight streams on v1; v2 replaces it while they run.
            runs = [Run() for _ in range(8)]
            tasks = [asyncio.create_task(run_of(core, "the patient", n, "clinic", f"s{i}", r))
                     for i, r in enumerate(runs)]
            await wait_streaming(runs, tasks)
            swap_start = time.monotonic()
            await models.set_adapter("tiny", "clinic", FileSource(str(v2)))
            swap_end = time.monotonic()
            results = await asyncio.gather(*tasks)
            for r in results:
                assert 0 < r.first < swap_start and r.end > swap_end, (r.first, r.end)
                assert (r.text, r.reason) == (clinic_v1, "length")
            later = await asyncio.gather(*(text_of(core, "the patient", n, "clinic", f"l{i}")
                                           for i in range(3)))
            assert all(text == v2_alone for text, _ in later)
            assert (await text_of(core, "the patient", 40))[0] == base
            handle = models.remove_adapter("tiny", "clinic")
            assert set(handle.adapters) == {"v2-alone"}
            with pytest.raises(errors.NotFound):
                await text_of(core, "the patient", 4, "clinic")
        finally:
            await models.shutdown(5.0)

    asyncio.run(main())


async def wait_streaming(runs: list[Run], tasks: list[asyncio.Task],
                         timeout: float = 60.0) -> None:
    """Until every stream has its first chunk, none having finished."""
    deadline = time.monotonic() + timeout
    while not all(r.first for r in runs):
        assert not any(t.done() for t in tasks), "a stream ended before the swap"
        assert time.monotonic() < deadline, "the streams did not start"
        await asyncio.sleep(0.01)
    assert not any(t.done() for t in tasks), "a stream ended before the swap"


def test_a_file_that_is_not_an_adapter_fails_the_load(tiny_model: Path, tmp_path: Path) -> None:
    other_model = write_tiny_model(tmp_path / "not-an-adapter.gguf", n_layer=1)

    async def main() -> None:
        cfg = ModelConfig(name="tiny", path=str(tiny_model), n_ctx=1024, n_parallel=2,
                          threads=1, adapters=(("x", FileSource(str(other_model))),))
        models = ModelManager(Config(models={"tiny": cfg}), EventBus())
        with pytest.raises(errors.ModelLoadError, match="not an adapter"):
            await models.load(cfg)
        await models.shutdown(1.0)

    asyncio.run(main())
