"""Metadata, config, repository index and statistics messages."""
from __future__ import annotations

from runtime._proto.kserve.v2 import inference_pb2 as kpb
from runtime.config import ModelConfig
from runtime.events import EventBus, RequestFinished
from runtime.models.manager import ModelHandle, ModelState
from runtime.server.kserve import converters
from runtime.server.kserve.statistics import RequestStatistics


def handle(name: str, state: ModelState, error: str = "") -> ModelHandle:
    return ModelHandle(name, ModelConfig(name=name, path=f"/m/{name}.gguf"), state, error=error)


def test_metadata_shows_the_llm_signature() -> None:
    meta = converters.model_metadata(handle("tiny", ModelState.READY))
    assert (meta.name, list(meta.versions), meta.platform) == ("tiny", ["1"], "hearth")
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [
        ("text_input", "BYTES", [1]), ("stream", "BOOL", [1]),
        ("sampling_parameters", "BYTES", [1]), ("exclude_input_in_output", "BOOL", [1])]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == \
        [("text_output", "BYTES", [-1])]


def test_config_is_decoupled_and_unbatched() -> None:
    config = converters.model_config(handle("tiny", ModelState.LOADING)).config
    assert (config.name, config.platform, config.backend, config.max_batch_size) == \
        ("tiny", "hearth", "llama.cpp", 0)
    assert config.model_transaction_policy.decoupled
    assert [(i.name, i.data_type, i.optional) for i in config.input] == [
        ("text_input", kpb.TYPE_STRING, False), ("stream", kpb.TYPE_BOOL, True),
        ("sampling_parameters", kpb.TYPE_STRING, True),
        ("exclude_input_in_output", kpb.TYPE_BOOL, True)]
    assert [(o.name, o.data_type, list(o.dims)) for o in config.output] == \
        [("text_output", kpb.TYPE_STRING, [-1])]
    assert not config.parameters          # no engine: no facts to tell


def test_repository_index_states() -> None:
    handles = [handle("b", ModelState.LOADING), handle("a", ModelState.READY),
               handle("c", ModelState.DRAINING), handle("d", ModelState.FAILED, "bad magic")]
    index = converters.repository_index(handles, ["e"], only_ready=False)
    assert [(m.name, m.version, m.state, m.reason) for m in index.models] == [
        ("a", "1", "READY", ""), ("b", "1", "LOADING", ""), ("c", "1", "UNLOADING", ""),
        ("d", "1", "UNAVAILABLE", "bad magic"), ("e", "", "UNAVAILABLE", "not loaded")]
    ready = converters.repository_index(handles, ["e"], only_ready=True)
    assert [m.name for m in ready.models] == ["a"]


def finished(model: str, status: str, queue_s: float, total_s: float,
             response_cache: str = "") -> RequestFinished:
    return RequestFinished(request_id="r", model=model, client="c", kind="generate",
                           status=status, finish_reason="stop", prompt_tokens=1,
                           completion_tokens=1, cached_tokens=0, queue_s=queue_s, ttft_s=0.0,
                           total_s=total_s, response_cache=response_cache)


def test_statistics_count_successes_and_failures_per_model() -> None:
    events = EventBus()
    stats = RequestStatistics(events)
    events.publish(finished("tiny", "ok", 0.25, 1.0))
    events.publish(finished("tiny", "ok", 0.5, 2.0))
    events.publish(finished("tiny", "DeadlineExceeded", 0.0, 3.0))
    events.publish(finished("other", "ok", 0.0, 9.0))
    msg = converters.model_statistics(handle("tiny", ModelState.READY), stats.of("tiny"))
    s = msg.inference_stats
    assert (msg.name, msg.version, msg.inference_count) == ("tiny", "1", 2)
    assert (s.success.count, s.success.ns) == (2, 3_000_000_000)
    assert (s.fail.count, s.fail.ns) == (1, 3_000_000_000)
    assert (s.queue.count, s.queue.ns) == (2, 750_000_000)
    assert (s.compute_infer.count, s.compute_infer.ns) == (2, 2_250_000_000)
    assert msg.last_inference > 0
    assert stats.of("never").success_count == 0
    stats.of("tiny").success_count = 100           # a copy: the book is unchanged
    assert stats.of("tiny").success_count == 2
    assert (s.cache_hit.count, s.cache_miss.count) == (0, 0)


def test_statistics_count_response_cache_hits_and_misses() -> None:
    events = EventBus()
    stats = RequestStatistics(events)
    events.publish(finished("tiny", "ok", 0.1, 0.5, response_cache="miss"))
    events.publish(finished("tiny", "ok", 0.0, 0.0, response_cache="hit"))
    events.publish(finished("tiny", "ok", 0.0, 0.0, response_cache="hit"))
    s = converters.model_statistics(handle("tiny", ModelState.READY),
                                    stats.of("tiny")).inference_stats
    assert (s.cache_hit.count, s.cache_miss.count, s.success.count) == (2, 1, 3)


def test_parameters_keep_their_kind() -> None:
    out = kpb.ModelInferResponse()
    converters.set_parameters(out, {"b": True, "i": 3, "f": 0.5, "s": "x"})
    kinds = {k: v.WhichOneof("parameter_choice") for k, v in out.parameters.items()}
    assert kinds == {"b": "bool_param", "i": "int64_param", "f": "double_param",
                     "s": "string_param"}
