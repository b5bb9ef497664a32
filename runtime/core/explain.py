"""Explanations by occlusion (Inference.Explain, `hearth explain`).

The prompt is completed as Generate completes it: raw text, special-token
text parsed, no chat template (a base model such as Gemma 3 270M has none;
a client that wants a chat explained sends the rendered chat as the
prompt, and its markup is then scored like any text).  The answer is the
model's greedy completion, or the caller's target.  The prompt is cut into
segments (runtime/transparency/segments.py), each segment's tokens are left
out in turn, and one score request (native score.c) teacher-forces the
answer under the whole prompt and under every variant:

    score_i = log P(answer | prompt) - log P(answer | prompt without i)

in nats; positive when the segment supports the answer.  The engine runs
the variants in one slot, each reusing the KV of the tokens before its
segment: S segments cost at most S + 1 prefills, which the engine counts.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from runtime import errors
from runtime.config import ExplainConfig
from runtime.core.inference import InferenceService, adapter_id_of
from runtime.core.types import CallContext
from runtime.core.validation import check_max_tokens
from runtime.engine.session import EngineSession, RequestStream
from runtime.events import RequestFinished
from runtime.native import FinishReason, NativeEngine, Output, RequestParams, Sampling, ScoreParams
from runtime.transparency.segments import (
    Segment,
    Unit,
    occlusion_scores,
    split,
    token_anchors,
    token_spans,
)


@dataclass(frozen=True)
class ExplainRequest:
    model: str = ""
    prompt: str = ""
    unit: str = ""                 # word | sentence | line; "" = sentence
    target: str | None = None      # None: explain the greedy answer
    max_tokens: int | None = None  # of the greedy answer
    adapter: str = ""              # a loaded adapter's name; "" = the base model


@dataclass(frozen=True)
class ExplainedSegment:
    text: str
    score: float                   # nats; positive: supports the answer
    start: int                     # UTF-8 byte offsets into the prompt
    end: int


@dataclass(frozen=True)
class ExplainResult:
    model: str
    answer: str
    answer_logprob: float
    segments: tuple[ExplainedSegment, ...]
    prefill_tokens: int            # as the engine counted them for the scoring
    prefills: int
    seconds: float


def _deadline_ns(ctx: CallContext) -> int:
    if ctx.deadline is None:
        return 0
    return max(1, time.monotonic_ns() + int((ctx.deadline - time.monotonic()) * 1e9))


def _check_finished(out: Output | None, what: str) -> Output:
    if out is None:
        raise errors.InternalError(f"{what}: the engine stopped without finishing the request")
    if out.finish_reason is FinishReason.DEADLINE:
        raise errors.DeadlineExceeded(f"{what}: the deadline passed")
    if out.finish_reason is FinishReason.CANCELLED:
        raise errors.Cancelled(f"{what}: the request was cancelled")
    if out.finish_reason is FinishReason.ERROR:
        raise errors.InternalError(f"{what} failed: {out.error}")
    return out


class Explainer:
    def __init__(self, core: InferenceService, config: ExplainConfig | None = None) -> None:
        self.core = core
        self.config = config or ExplainConfig()

    async def explain(self, req: ExplainRequest, ctx: CallContext) -> ExplainResult:
        started = time.monotonic()
        if not req.prompt.strip():
            raise errors.InvalidArgument("prompt: must not be empty")
        unit = Unit.parse(req.unit)
        segments = split(req.prompt, unit)
        limit = self.config.max_segments
        if len(segments) > limit:
            raise errors.InvalidArgument(
                f"prompt: {len(segments)} segments of unit {unit.value!r}, more than the limit "
                f"of {limit} (each costs a prefill; [explain] max_segments); use a coarser unit")
        if req.target is not None and not req.target:
            raise errors.InvalidArgument("target: must not be empty when set")
        handle = self.core._model(req.model, ctx)
        adapter = adapter_id_of(handle, req.adapter)
        engine, session = handle.engine, handle.session
        assert engine is not None and session is not None
        n_ctx_slot = engine.info.n_ctx_slot
        tokens = await self.core._tokenize(engine, req.prompt, True, True)
        n_special = len(engine.tokenize("", True, True))
        spans = self._spans(engine, tokens, n_special, req.prompt, segments)
        deadline_ns = _deadline_ns(ctx)
        status = "error"
        try:
            if req.target is not None:
                answer, target = req.target, await self._target_tokens(engine, req, tokens)
            else:
                max_tokens = check_max_tokens(req.max_tokens, len(tokens), n_ctx_slot,
                                              self.config.answer_tokens)
                answer, target = await self._answer(session, tokens, max_tokens, deadline_ns,
                                                    adapter)
            if len(tokens) + len(target) > n_ctx_slot:
                raise errors.InvalidArgument(
                    f"target: prompt ({len(tokens)} tokens) + target ({len(target)}) exceeds "
                    f"the model's context of {n_ctx_slot} tokens per request")
            kept = [s for s in spans if s is not None]
            out = await self._run(session, ScoreParams(prompt=tokens, target=target, spans=kept,
                                                       deadline_ns=deadline_ns, adapter=adapter),
                                  handle.name)
            assert out.score is not None
            full, rest = out.score.logprob[0], iter(out.score.logprob[1:])
            without = [None if s is None else next(rest) for s in spans]
            scores = occlusion_scores(full, without)
            status = "ok"
        finally:
            self.core.events.publish(RequestFinished(
                request_id=ctx.request_id, model=handle.name, client=ctx.client, kind="explain",
                status=status, finish_reason="stop" if status == "ok" else "", queue_s=0.0,
                prompt_tokens=len(tokens), completion_tokens=0, cached_tokens=0, ttft_s=0.0,
                total_s=time.monotonic() - started, subject=ctx.subject or ctx.client))
        return ExplainResult(
            model=handle.name, answer=answer, answer_logprob=full,
            segments=tuple(ExplainedSegment(s.text, score, s.start, s.end)
                           for s, score in zip(segments, scores, strict=True)),
            prefill_tokens=out.score.prefill_tokens, prefills=out.score.prefills,
            seconds=time.monotonic() - started)

    async def _target_tokens(self, engine: NativeEngine, req: ExplainRequest,
                             prompt: list[int]) -> list[int]:
        """The target as the tokenizer writes it after this prompt: the
        tokens of prompt + target past the prompt's own, where those begin
        with them (a tokenizer that prefixes a space to a text on its own
        would otherwise score " she" as two tokens); else the target alone."""
        assert req.target is not None
        whole = await self.core._tokenize(engine, req.prompt + req.target, True, True)
        if len(whole) > len(prompt) and whole[:len(prompt)] == prompt:
            return whole[len(prompt):]
        return engine.tokenize(req.target, False, True)

    @staticmethod
    def _spans(engine: NativeEngine, tokens: list[int], n_special: int, prompt: str,
               segments: list[Segment]) -> list[tuple[int, int] | None]:
        anchors = token_anchors([engine.token_bytes(t) for t in tokens[n_special:]],
                                prompt.encode("utf-8"))
        if anchors is None:
            raise errors.FailedPrecondition(
                "explain: this model's tokens do not spell the prompt back, so its segments "
                "cannot be mapped to tokens")
        return token_spans(anchors, segments, n_special)

    async def _answer(self, session: EngineSession, tokens: list[int], max_tokens: int,
                      deadline_ns: int, adapter: int) -> tuple[str, list[int]]:
        """The greedy answer: its text and tokens, less the end-of-generation
        token (a STOP without stop strings is one)."""
        stream = self._submit(lambda: session.generate(RequestParams(
            prompt=tokens, max_tokens=max_tokens, sampling=Sampling(temperature=0.0),
            deadline_ns=deadline_ns, adapter=adapter)))
        text: list[str] = []
        generated: list[int] = []
        final = None
        try:
            async for out in stream:
                text.append(out.text)
                generated.extend(out.tokens)
                if out.finished:
                    final = out
        finally:
            stream.close()
        final = _check_finished(final, "the answer")
        if final.finish_reason is FinishReason.STOP and generated:
            generated.pop()
        if not generated:
            raise errors.FailedPrecondition(
                "explain: the model's answer is empty (it ended at once); give a target")
        return "".join(text), generated

    async def _run(self, session: EngineSession, params: ScoreParams, model: str) -> Output:
        stream = self._submit(lambda: session.score(params))
        try:
            out = await stream.result()
        finally:
            stream.close()
        out = _check_finished(out, "scoring")
        if out.score is None:
            raise errors.InternalError(f"model {model!r}: the score request returned no result")
        return out

    @staticmethod
    def _submit(submit: Callable[[], RequestStream]) -> RequestStream:
        try:
            return submit()
        except errors.ResourceExhausted as exc:
            raise errors.ResourceExhausted(str(exc), retry_after_s=1.0) from None
        except errors.FailedPrecondition:
            raise errors.Unavailable("the model is not admitting requests") from None
