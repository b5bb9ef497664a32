"""The log-probability of a given continuation, from a running daemon.

The continuation is forced with a one-rule grammar (its text as a GBNF
literal) and scored with `logprobs`, which Hearth computes from the raw
logits row before any sampling setting or grammar applies.  The sum over
the generated tokens is log P(target | prompt) along the tokenization the
greedy decoder chose under the grammar — the model's own most likely way of
writing the target.  A finished grammar admits only the end-of-generation
token, which the engine samples (and reports) last: its log-probability is
the model's belief that the text ends there, not part of the target's, so it
is left out.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, Protocol

from runtime._proto.hearth.v1 import inference_pb2 as ipb


class Generator(Protocol):
    def generate(self, prompt: str, model: str = "", **options: Any) -> Iterator[Any]: ...


def gbnf_literal(text: str) -> str:
    """A GBNF string literal for `text` (JSON's escapes are ones GBNF reads)."""
    return json.dumps(text, ensure_ascii=False)


def target_logprob(client: Generator, prompt: str, target: str, model: str = "",
                   adapter: str = "") -> float:
    options: dict[str, Any] = {"grammar": f"root ::= {gbnf_literal(target)}\n",
                               "logprobs": True, "temperature": 0.0,
                               "max_tokens": max(4, 2 * len(target.encode()))}
    if adapter:
        options["adapter"] = adapter
    text: list[str] = []
    logprobs: list[float] = []
    last = None
    for chunk in client.generate(prompt, model, **options):
        text.append(chunk.text)
        logprobs.extend(lp.logprob for lp in chunk.logprobs)
        last = chunk
    if "".join(text) != target or last is None or last.finish_reason != ipb.FINISH_REASON_STOP:
        raise RuntimeError(f"forced generation produced {''.join(text)!r}, not {target!r}")
    return float(sum(logprobs[:-1]))
