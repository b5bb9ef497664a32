"""The log-probability of a given continuation, from a running daemon.

The target is teacher-forced along its own tokenization by the engine's
score request, through Inference.Explain with the target given (its
`answer_logprob` is log P(target | prompt); the prompt is one segment, so
the occlusion beside it costs one more short prefill).

An earlier version forced the target with a one-rule grammar and summed
the greedy decoder's logprobs.  That scores whichever tokenization the
decoder happens to start: when a prefix token (" s") outscored the whole
word (" she"), the rest of the word was forced after it and the score fell
by tens of nats.  On Gemma 3 270M that happened to 11 of 80 probe
continuations, all of them " she", which inflated the measured bias.
"""
from __future__ import annotations

from typing import Any, Protocol


class Scorer(Protocol):
    def explain(self, prompt: str, model: str = "", unit: str = "",
                target: str | None = None, max_tokens: int | None = None,
                adapter: str = "") -> Any: ...


def target_logprob(client: Scorer, prompt: str, target: str, model: str = "",
                   adapter: str = "") -> float:
    """log P(target | prompt) in nats, teacher-forced."""
    if not target:
        raise ValueError("target_logprob: the target must not be empty")
    return float(client.explain(prompt, model, unit="line", target=target,
                                adapter=adapter).answer_logprob)
