"""Core results -> OpenAI response JSON, checked against OpenAI's own
client types (the `openai` package parses what we send)."""
from __future__ import annotations

import base64
import struct

from openai.types import Completion, CreateEmbeddingResponse, Model
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from runtime.core import GenerateChunk, TokenLogprob, TopLogprob, Usage
from runtime.core.types import Embedding, EmbedResult
from runtime.http.responses import (
    ChatFormat,
    CompletionFormat,
    embeddings_json,
    model_json,
    models_json,
    token_bytes,
)

USAGE = Usage(prompt_tokens=5, completion_tokens=3, cached_tokens=2, queue_s=0.0, ttft_s=0.1,
              total_s=0.2)
HI = TokenLogprob(1, "Hi", -0.5, (TopLogprob(1, "Hi", -0.5), TopLogprob(2, "Yo", -1.5)))
THERE = TokenLogprob(3, " there", -0.25, (TopLogprob(3, " there", -0.25),))
BANG = TokenLogprob(4, "!", -2.0, ())


def generation(logprobs: bool = False) -> list[GenerateChunk]:
    lp = (lambda *t: t) if logprobs else (lambda *t: ())
    return [GenerateChunk("Hi", [1], "r1", logprobs=lp(HI)),
            GenerateChunk(" there", [3], logprobs=lp(THERE)),
            GenerateChunk("!", [4], finish_reason="length", usage=USAGE, model="tiny",
                          logprobs=lp(BANG))]


def test_whole_chat_completion() -> None:
    body = ChatFormat("chatcmpl-r1", 1700000000, "tiny", logprobs=False).whole(generation())
    parsed = ChatCompletion.model_validate(body)
    assert body["object"] == "chat.completion" and parsed.id == "chatcmpl-r1"
    assert parsed.choices[0].message.content == "Hi there!"
    assert parsed.choices[0].message.role == "assistant"
    assert parsed.choices[0].finish_reason == "length" and parsed.choices[0].logprobs is None
    assert body["usage"] == {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8,
                             "prompt_tokens_details": {"cached_tokens": 2}}


def test_chat_logprobs_when_asked() -> None:
    body = ChatFormat("c", 1, "tiny", logprobs=True).whole(generation(logprobs=True))
    content = ChatCompletion.model_validate(body).choices[0].logprobs.content  # type: ignore[union-attr]
    assert [t.token for t in content] == ["Hi", " there", "!"]
    assert [t.logprob for t in content] == [-0.5, -0.25, -2.0]
    assert content[0].bytes == list(b"Hi")
    assert [(a.token, a.logprob) for a in content[0].top_logprobs] == [("Hi", -0.5),
                                                                       ("Yo", -1.5)]
    assert content[2].top_logprobs == []


def test_chat_stream_events() -> None:
    fmt = ChatFormat("c", 1, "tiny", logprobs=False, include_usage=True)
    chunks = generation()
    events = [*fmt.opening(), *(fmt.delta(c) for c in chunks), fmt.finish("length"),
              fmt.usage_chunk(USAGE)]
    parsed = [ChatCompletionChunk.model_validate(e) for e in events if e is not None]
    assert parsed[0].choices[0].delta.role == "assistant"
    assert "".join(p.choices[0].delta.content or "" for p in parsed[:-1]) == "Hi there!"
    assert [p.choices[0].finish_reason for p in parsed[:-1]] == [None] * 4 + ["length"]
    assert all(e["usage"] is None for e in events[:-1] if e is not None)
    assert parsed[-1].choices == [] and parsed[-1].usage is not None
    assert parsed[-1].usage.total_tokens == 8
    assert all(e["object"] == "chat.completion.chunk" for e in events if e is not None)


def test_stream_chunks_omit_usage_unless_asked_and_skip_empty_deltas() -> None:
    fmt = ChatFormat("c", 1, "tiny", logprobs=False)
    assert "usage" not in fmt.finish("stop")
    assert fmt.delta(GenerateChunk("", [])) is None
    assert fmt.delta(GenerateChunk("", [5], logprobs=(BANG,))) is not None


def test_whole_text_completion_with_logprobs() -> None:
    body = CompletionFormat("cmpl-r1", 1, "tiny", logprobs=True).whole(generation(True))
    parsed = Completion.model_validate(body)
    choice = parsed.choices[0]
    assert body["object"] == "text_completion"
    assert choice.text == "Hi there!" and choice.finish_reason == "length"
    assert choice.logprobs is not None
    assert choice.logprobs.tokens == ["Hi", " there", "!"]
    assert choice.logprobs.token_logprobs == [-0.5, -0.25, -2.0]
    assert choice.logprobs.text_offset == [0, 2, 8]
    assert choice.logprobs.top_logprobs == [{"Hi": -0.5, "Yo": -1.5}, {" there": -0.25}, {}]


def test_streamed_completion_offsets_run_on_across_chunks() -> None:
    fmt = CompletionFormat("c", 1, "tiny", logprobs=True)
    offsets = [fmt.delta(c)["choices"][0]["logprobs"]["text_offset"]  # type: ignore[index]
               for c in generation(True)]
    assert offsets == [[0], [2], [8]]
    finish = Completion.model_validate(fmt.finish("stop"))
    assert finish.choices[0].text == "" and finish.choices[0].finish_reason == "stop"


def test_embeddings_float_and_base64() -> None:
    result = EmbedResult("tiny", [Embedding([0.5, -1.25, 3.0], 4), Embedding([1.0, 0, 0], 2)])
    plain = CreateEmbeddingResponse.model_validate(embeddings_json(result, "float"))
    assert plain.data[0].embedding == [0.5, -1.25, 3.0] and plain.data[1].index == 1
    assert plain.usage.prompt_tokens == plain.usage.total_tokens == 6
    packed = embeddings_json(result, "base64")["data"][0]["embedding"]
    raw = base64.b64decode(packed)
    assert struct.unpack("<3f", raw) == (0.5, -1.25, 3.0)


def test_models() -> None:
    assert Model.model_validate(model_json("tiny", 5)).id == "tiny"
    assert models_json(["a", "b"], 5) == {"object": "list", "data": [
        {"id": "a", "object": "model", "created": 5, "owned_by": "hearth"},
        {"id": "b", "object": "model", "created": 5, "owned_by": "hearth"}]}


def test_token_bytes() -> None:
    assert token_bytes("é") == [0xC3, 0xA9]
    assert token_bytes("\ufffd") == [0xEF, 0xBF, 0xBD]
    assert token_bytes("\udcc3") == [ord("?")]       # never fails, whatever the text
