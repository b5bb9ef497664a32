"""Core results to OpenAI response JSON: chat completions, text
completions (whole and as stream chunks), embeddings, models.

A generation is rendered by a ChoiceFormat, which knows one endpoint's
shapes: `whole()` for a non-streaming reply, and `opening()`, `delta()`,
`finish()`, `usage_chunk()` for the events of a stream.  Hearth answers one
choice per request, always at index 0.
"""
from __future__ import annotations

import base64
import struct
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

from runtime.core import GenerateChunk, TokenLogprob, Usage
from runtime.core.types import EmbedResult

OWNED_BY = "hearth"


def usage_json(usage: Usage | None) -> dict[str, Any] | None:
    if usage is None:
        return None
    body: dict[str, Any] = {
        "prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens}}
    if usage.energy_source:
        # Hearth's extension (docs/energy.md): the request's attributed energy.
        body["energy_joules"] = usage.energy_joules
        body["energy_source"] = usage.energy_source
    return body


def token_bytes(token: str) -> list[int]:
    """The UTF-8 bytes of the token's text.  A token that is part of a
    character reaches us with U+FFFD in its place (the engine decodes pieces
    with replacement), so its `bytes` are those of U+FFFD, not the raw ones."""
    return list(token.encode("utf-8", "replace"))


class ChoiceFormat(ABC):
    """One generation endpoint's response shapes."""

    object_whole = ""
    object_chunk = ""

    def __init__(self, response_id: str, created: int, model: str, logprobs: bool,
                 include_usage: bool = False) -> None:
        self.id = response_id
        self.created = created
        self.model = model
        self.logprobs = logprobs
        self.include_usage = include_usage

    def _envelope(self, obj: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model,
                "choices": choices}

    def _chunk(self, choice: dict[str, Any]) -> dict[str, Any]:
        body = self._envelope(self.object_chunk, [choice])
        if self.include_usage:
            body["usage"] = None     # OpenAI: null on every chunk but the usage one
        return body

    def usage_chunk(self, usage: Usage | None) -> dict[str, Any]:
        body = self._envelope(self.object_chunk, [])
        body["usage"] = usage_json(usage)
        return body

    def opening(self) -> list[dict[str, Any]]:
        return []

    @abstractmethod
    def delta(self, chunk: GenerateChunk) -> dict[str, Any] | None:
        """The streamed chunk for new text, or None when there is nothing."""

    @abstractmethod
    def finish(self, reason: str) -> dict[str, Any]:
        """The streamed chunk that carries the finish reason."""

    @abstractmethod
    def whole(self, chunks: Sequence[GenerateChunk]) -> dict[str, Any]:
        """The non-streamed response."""


class ChatFormat(ChoiceFormat):
    object_whole = "chat.completion"
    object_chunk = "chat.completion.chunk"

    def _logprobs(self, logprobs: Sequence[TokenLogprob]) -> dict[str, Any] | None:
        if not self.logprobs:
            return None
        return {"content": [
            {"token": t.token, "logprob": t.logprob, "bytes": token_bytes(t.token),
             "top_logprobs": [{"token": a.token, "logprob": a.logprob,
                               "bytes": token_bytes(a.token)} for a in t.top]}
            for t in logprobs], "refusal": None}

    def opening(self) -> list[dict[str, Any]]:
        return [self._chunk({"index": 0, "delta": {"role": "assistant", "content": ""},
                             "logprobs": None, "finish_reason": None})]

    def delta(self, chunk: GenerateChunk) -> dict[str, Any] | None:
        if not chunk.text and not chunk.logprobs:
            return None
        return self._chunk({"index": 0, "delta": {"content": chunk.text},
                            "logprobs": self._logprobs(chunk.logprobs), "finish_reason": None})

    def finish(self, reason: str) -> dict[str, Any]:
        return self._chunk({"index": 0, "delta": {}, "logprobs": None, "finish_reason": reason})

    def whole(self, chunks: Sequence[GenerateChunk]) -> dict[str, Any]:
        last = chunks[-1]
        message = {"role": "assistant", "content": "".join(c.text for c in chunks),
                   "refusal": None}
        logprobs = self._logprobs([t for c in chunks for t in c.logprobs])
        body = self._envelope(self.object_whole, [
            {"index": 0, "message": message, "logprobs": logprobs,
             "finish_reason": last.finish_reason}])
        body["usage"] = usage_json(last.usage)
        return body


class CompletionFormat(ChoiceFormat):
    """The legacy /v1/completions shapes; their logprobs are parallel lists."""

    object_whole = "text_completion"
    object_chunk = "text_completion"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._offset = 0             # characters of completion text rendered so far

    def _logprobs(self, logprobs: Sequence[TokenLogprob]) -> dict[str, Any] | None:
        if not self.logprobs:
            return None
        offsets = []
        for t in logprobs:
            offsets.append(self._offset)
            self._offset += len(t.token)
        return {"tokens": [t.token for t in logprobs],
                "token_logprobs": [t.logprob for t in logprobs],
                "top_logprobs": [{a.token: a.logprob for a in t.top} for t in logprobs],
                "text_offset": offsets}

    def _choice(self, text: str, logprobs: Sequence[TokenLogprob],
                reason: str | None) -> dict[str, Any]:
        return {"text": text, "index": 0, "logprobs": self._logprobs(logprobs),
                "finish_reason": reason}

    def delta(self, chunk: GenerateChunk) -> dict[str, Any] | None:
        if not chunk.text and not chunk.logprobs:
            return None
        return self._chunk(self._choice(chunk.text, chunk.logprobs, None))

    def finish(self, reason: str) -> dict[str, Any]:
        return self._chunk(self._choice("", (), reason))

    def whole(self, chunks: Sequence[GenerateChunk]) -> dict[str, Any]:
        last = chunks[-1]
        body = self._envelope(self.object_whole, [self._choice(
            "".join(c.text for c in chunks), [t for c in chunks for t in c.logprobs],
            last.finish_reason)])
        body["usage"] = usage_json(last.usage)
        return body


def embeddings_json(result: EmbedResult, encoding_format: str) -> dict[str, Any]:
    """base64 is the vector's little-endian float32 bytes, as OpenAI sends
    it (and as its Python client asks for by default)."""
    data = []
    for i, e in enumerate(result.embeddings):
        vector: list[float] | str = e.values
        if encoding_format == "base64":
            vector = base64.b64encode(struct.pack(f"<{len(e.values)}f", *e.values)).decode()
        data.append({"object": "embedding", "index": i, "embedding": vector})
    tokens = sum(e.prompt_tokens for e in result.embeddings)
    return {"object": "list", "data": data, "model": result.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


def model_json(name: str, created: int) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": created, "owned_by": OWNED_BY}


def models_json(names: Sequence[str], created: int) -> dict[str, Any]:
    return {"object": "list", "data": [model_json(n, created) for n in names]}
