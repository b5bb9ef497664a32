"""Core chunks -> KServe responses: the final-response convention of
decoupled streaming, whole responses, and the raw text_output encoding."""
from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from runtime._proto.kserve.v2 import inference_pb2 as kpb
from runtime.core import GenerateChunk, GenerationOptions
from runtime.core.types import TokenLogprob, TopLogprob, Usage
from runtime.errors import InternalError
from runtime.server.kserve.requests import InferCall
from runtime.server.kserve.responses import streamed_responses, whole_response
from runtime.server.kserve.tensors import deserialize_bytes

CALL = InferCall(id="req-7", model="tiny", prompt="Hi", stream=True, include_prompt=False,
                 options=GenerationOptions(), empty_final_response=True, timeout_s=None)
USAGE = Usage(prompt_tokens=2, completion_tokens=3, cached_tokens=1, queue_s=0.0, ttft_s=0.1,
              total_s=0.2)


def chunks(*texts: str, last: str = "!", stop: str = "") -> list[GenerateChunk]:
    """What the core yields: partial chunks, then one with the finish reason."""
    out = [GenerateChunk(t, [i]) for i, t in enumerate(texts)]
    out.append(GenerateChunk(last, [99], finish_reason="stop" if stop else "length",
                             stop_sequence=stop, usage=USAGE, model="tiny"))
    return out


async def feed(items: list[GenerateChunk]) -> AsyncIterator[GenerateChunk]:
    for item in items:
        yield item


def collect(call: InferCall, items: list[GenerateChunk]) -> list[kpb.ModelInferResponse]:
    async def run() -> list[kpb.ModelInferResponse]:
        return [r async for r in streamed_responses(call, feed(items))]
    return asyncio.run(run())


def text(response: kpb.ModelInferResponse) -> str | None:
    if not response.outputs:
        return None
    assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == \
        [("text_output", "BYTES", [1])]
    (element,) = deserialize_bytes("text_output", response.raw_output_contents[0], 1)
    return element.decode()


def params(response: kpb.ModelInferResponse) -> dict:
    return {k: getattr(v, v.WhichOneof("parameter_choice"))
            for k, v in response.parameters.items()}


def test_stream_with_empty_final_response() -> None:
    got = collect(CALL, chunks("a", "", "b", last="c"))
    # The chunk without text (held back inside a character) is skipped.
    assert [text(r) for r in got] == ["a", "b", "c", None]
    assert [params(r)["triton_final_response"] for r in got] == [False, False, False, True]
    assert all(r.id == "req-7" and r.model_name == "tiny" and r.model_version == "1"
               for r in got)
    assert params(got[-1]) == {"triton_final_response": True, "finish_reason": "length",
                               "prompt_tokens": 2, "completion_tokens": 3, "cached_tokens": 1}


def test_stream_with_empty_final_response_and_an_empty_last_chunk() -> None:
    got = collect(CALL, chunks("a", last="", stop="END"))
    assert [text(r) for r in got] == ["a", None]
    assert params(got[-1])["stop_sequence"] == "END"


def test_stream_without_empty_final_response_flags_the_last_text() -> None:
    call = replace(CALL, empty_final_response=False)
    got = collect(call, chunks("a", "b", last=""))
    assert [text(r) for r in got] == ["a", "b", ""]
    assert [params(r)["triton_final_response"] for r in got] == [False, False, True]
    assert params(got[-1])["finish_reason"] == "length"


def test_stream_that_ends_without_a_final_chunk_is_an_internal_error() -> None:
    with pytest.raises(InternalError):
        collect(CALL, [GenerateChunk("a", [1])])


def test_whole_response_with_and_without_the_prompt() -> None:
    async def run(call: InferCall, flag: bool) -> kpb.ModelInferResponse:
        return await whole_response(call, feed(chunks("a", "b", last="c")), flag_final=flag)

    call = replace(CALL, stream=False, include_prompt=True)
    with_prompt = asyncio.run(run(call, False))
    assert text(with_prompt) == "Hiabc"
    assert "triton_final_response" not in params(with_prompt)
    assert params(with_prompt)["completion_tokens"] == 3
    alone = asyncio.run(run(replace(call, include_prompt=False), True))
    assert text(alone) == "abc" and params(alone)["triton_final_response"] is True


def test_logprobs_travel_as_a_json_parameter() -> None:
    lp = TokenLogprob(5, "a", -0.25, (TopLogprob(5, "a", -0.25), TopLogprob(6, "b", -1.5)))
    items = [replace(chunks("a")[0], logprobs=(lp,)), chunks("a")[1]]
    got = collect(CALL, items)
    decoded = json.loads(params(got[0])["logprobs"])
    assert decoded == [{"token_id": 5, "token": "a", "logprob": -0.25,
                        "top": [{"token_id": 5, "token": "a", "logprob": -0.25},
                                {"token_id": 6, "token": "b", "logprob": -1.5}]}]
    assert "logprobs" not in params(got[-1])
