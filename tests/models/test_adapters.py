"""Named LoRA adapters through the model manager and the core: from the
config, per request, and swapped under load with no stream failing."""
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from runtime import errors
from runtime.config import Config, ModelConfig
from runtime.core import CallContext, GenerateRequest, GenerationOptions, InferenceService
from runtime.events import EventBus
from runtime.models.manager import ModelManager
from runtime.models.source import FileSource
from runtime.models.tiny import write_tiny_lora, write_tiny_model


async def text_of(core: InferenceService, prompt: str, n: int, adapter: str = "",
                  rid: str = "r") -> tuple[str, str]:
    opts = GenerationOptions(max_tokens=n, temperature=0.0, ignore_eos=True, adapter=adapter)
    parts, reason = [], ""
    async for chunk in core.generate(GenerateRequest("tiny", prompt, options=opts),
                                     CallContext(rid)):
        parts.append(chunk.text)
        reason = chunk.finish_reason or reason
    return "".join(parts), reason


def test_adapters_from_the_config_per_request_and_hot_swapped(tiny_model: Path,
                                                              tmp_path: Path) -> None:
    v1 = write_tiny_lora(tmp_path / "clinic-v1.gguf", seed=1)
    v2 = write_tiny_lora(tmp_path / "clinic-v2.gguf", seed=2)

    async def main() -> None:
        cfg = ModelConfig(name="tiny", path=str(tiny_model), n_ctx=8192, n_parallel=8,
                          threads=2, adapters=(("clinic", FileSource(str(v1))),))
        events = EventBus()
        models = ModelManager(Config(models={"tiny": cfg}), events)
        core = InferenceService(models, events, 256)
        await models.load(cfg)
        try:
            base, _ = await text_of(core, "the patient", 40)
            clinic_v1, _ = await text_of(core, "the patient", 300, "clinic")
            assert clinic_v1[:len(base)] != base
            with pytest.raises(errors.NotFound, match="has no adapter 'nope'"):
                await text_of(core, "the patient", 4, "nope")
            # Eight streams on v1; v2 replaces it while they run.
            streams = [asyncio.create_task(text_of(core, "the patient", 300, "clinic", f"s{i}"))
                       for i in range(8)]
            await asyncio.sleep(0.05)
            await models.set_adapter("tiny", "clinic", FileSource(str(v2)))
            results = await asyncio.gather(*streams)
            assert all(r == (clinic_v1, "length") for r in results)
            clinic_v2, _ = await text_of(core, "the patient", 300, "clinic")
            assert clinic_v2 != clinic_v1
            assert (await text_of(core, "the patient", 40))[0] == base
            handle = models.remove_adapter("tiny", "clinic")
            assert handle.adapters == {}
            with pytest.raises(errors.NotFound):
                await text_of(core, "the patient", 4, "clinic")
        finally:
            await models.shutdown(5.0)

    asyncio.run(main())


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
