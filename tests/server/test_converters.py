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
