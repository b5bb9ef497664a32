"""Converters that read live engine state for listings."""
from __future__ import annotations

from pathlib import Path

from runtime.config import ModelConfig
from runtime.models.manager import ModelHandle, ModelState
from runtime.native.engine import EngineParams, NativeEngine
from runtime.server import converters
from runtime.server.kserve import converters as kconverters
from runtime.server.kserve.statistics import ModelCounters


def test_a_model_closed_while_listed_reports_without_live_stats(tiny_model: Path) -> None:
    """ListModels during a removal: the engine may close between the listing
    and the stats read; the listing must still answer (a CI run hit this)."""
    engine = NativeEngine(EngineParams(model_path=str(tiny_model), n_ctx=256, n_parallel=1,
                                       n_threads=1, n_threads_batch=1))
    handle = ModelHandle(name="m", config=ModelConfig(name="m", path=str(tiny_model)),
                         state=ModelState.DRAINING, engine=engine)
    assert converters.model_status(handle).slots_total == 1
    engine.close()
    status = converters.model_status(handle)
    assert status.name == "m" and status.slots_total == 0
    assert kconverters.model_statistics(handle, ModelCounters()).execution_count == 0
    assert engine.stats_if_open() is None


def test_every_option_is_read_from_both_requests() -> None:
    """options_from reads each row of the table by its name; unset
    optional fields are None (the server default), as on e3a5e70."""
    from runtime._proto.hearth.v1 import inference_pb2 as ipb
    from runtime.core import GenerationOptions

    assert converters.generate_request(ipb.GenerateRequest(prompt="x")).options == \
        GenerationOptions()
    fields = dict(max_tokens=3, temperature=0.5, top_p=0.5, top_k=0, seed=0, stop=["a"],
                  min_p=0.0, repeat_penalty=1.5, frequency_penalty=-1.0,
                  presence_penalty=1.0, penalty_last_n=-1, ignore_eos=True, logprobs=True,
                  top_logprobs=2, adapter="clinic")
    want = GenerationOptions(**{**fields, "stop": ("a",)})    # type: ignore[arg-type]
    assert converters.generate_request(ipb.GenerateRequest(**fields)).options == want
    chat = converters.chat_request(ipb.ChatRequest(**fields))
    assert chat.options == want


def test_model_names_with_control_characters_are_refused() -> None:
    """SECURITY-CASES 33.  Fails on e3a5e70: the name went on to the lookup
    and into replies."""
    import pytest

    from runtime._proto.hearth.v1 import inference_pb2 as ipb
    from runtime.errors import InvalidArgument

    for bad in ("tiny\n", "ti\rny", "t\0", "x" * 257):
        with pytest.raises(InvalidArgument, match=r"^model: "):
            converters.generate_request(ipb.GenerateRequest(model=bad, prompt="x"))
        with pytest.raises(InvalidArgument, match=r"^model: "):
            converters.embed_request(ipb.EmbedRequest(model=bad, input=["x"]))
    assert converters.generate_request(ipb.GenerateRequest(model="gemma-3")).model == "gemma-3"
