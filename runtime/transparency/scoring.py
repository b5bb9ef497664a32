"""The log-probability of a given continuation, from a running daemon.

The continuation is forced with a one-rule grammar (its text as a GBNF
literal) and scored with `logprobs`, which Hearth computes from the raw
logits row before any sampling setting or grammar applies.  The sum over
the generated tokens is log P(target | prompt) along the tokenization the
greedy decoder chose under the grammar — the model's own most likely way of
writing the target.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, Protocol


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
    text, total = [], 0.0
    for chunk in client.generate(prompt, model, **options):
        text.append(chunk.text)
        total += sum(lp.logprob for lp in chunk.logprobs)
    if "".join(text) != target:
        raise RuntimeError(f"forced generation produced {''.join(text)!r}, not {target!r}")
    return total
