"""InferenceService: generate, chat, embed, tokenize, detokenize."""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from runtime import errors
from runtime.core.chat import render_chat
from runtime.core.grammar import grammar_for_async
from runtime.core.repository import ModelRepository
from runtime.core.response_cache import ResponseCache, is_deterministic
from runtime.core.types import (
    CallContext,
    ChatRequest,
    Embedding,
    EmbedRequest,
    EmbedResult,
    GenerateChunk,
    GenerateRequest,
    GenerationOptions,
    TokenLogprob,
    TopLogprob,
    Usage,
)
from runtime.core.validation import (
    check_max_tokens,
    check_messages,
    check_prompt_tokens,
    check_stops,
    check_structured,
    native_logprobs,
    sampling_from,
)
from runtime.events import EventBus, RequestFinished, RequestSignals
from runtime.models.manager import ModelHandle, ModelManager
from runtime.native import FinishReason, NativeEngine, Output, RequestParams, TokenLogprobs

if TYPE_CHECKING:
    from runtime.energy.accountant import RequestEnergy
    from runtime.energy.service import EnergyService

log = logging.getLogger("hearth.inference")

# Texts above this size are tokenized off the event loop.
_INLINE_TOKENIZE_BYTES = 16 << 10
MAX_EMBED_INPUTS = 256

_FINISH_NAMES = {
    FinishReason.STOP: "stop", FinishReason.LENGTH: "length",
    FinishReason.CANCELLED: "cancelled", FinishReason.DEADLINE: "deadline",
    FinishReason.ERROR: "error",
}


def _seconds(start_ns: int, end_ns: int) -> float:
    return (end_ns - start_ns) / 1e9 if start_ns and end_ns else 0.0


def usage_of(out: Output, energy: RequestEnergy | None = None) -> Usage:
    return Usage(
        prompt_tokens=out.n_prompt,
        completion_tokens=out.n_generated,
        cached_tokens=out.n_cached,
        queue_s=_seconds(out.t_submit_ns, out.t_admit_ns),
        ttft_s=_seconds(out.t_submit_ns, out.t_first_token_ns),
        total_s=_seconds(out.t_submit_ns, out.t_finish_ns),
        energy_joules=energy.joules if energy else 0.0,
        energy_source=energy.source if energy else "",
    )


def _never(model: str) -> bool:
    return False


def _signals(final: Output | None) -> RequestSignals | None:
    d = final.drift if final is not None else None
    return RequestSignals(d.prompt_nll, d.first_token_entropy, d.prompt_pool) if d else None


def adapter_id_of(handle: ModelHandle, name: str) -> int:
    """The engine's id of the model's adapter `name`; 0 for none ("")."""
    if not name:
        return 0
    adapter_id = handle.adapters.get(name, 0)
    if not adapter_id:
        raise errors.NotFound(f"adapter: model {handle.name!r} has no adapter {name!r}")
    return adapter_id


class InferenceService:
    def __init__(self, models: ModelManager, events: EventBus, max_tokens_default: int,
                 cache: ResponseCache | None = None) -> None:
        self.models = models
        self.repository = ModelRepository(models)
        self.cache = cache or ResponseCache(0)
        self.events = events
        self.max_tokens_default = max_tokens_default
        self.draining = False
        # The audit log's content logging wants the prompt and the response
        # text in RequestFinished; nothing else does, so it is opt-in.
        self.collect_content = False
        # The drift service's sampler: should this request of this model
        # carry drift signals (RequestFinished.drift)?  Off unless set.
        self.drift_sample: Callable[[str], bool] = _never
        # Energy accounting (runtime/energy/service.py), when [energy] is on:
        # the final chunk carries the request's settled energy.
        self.energy: EnergyService | None = None

    # ---- helpers --------------------------------------------------------

    def _model(self, name: str, ctx: CallContext) -> ModelHandle:
        """The ready model the caller asked for, if it may use it (the
        repository's rules)."""
        if self.draining:
            raise errors.Unavailable("the server is shutting down")
        return self.repository.ready(name, ctx.principal)

    async def _tokenize(self, engine: NativeEngine, text: str, add_special: bool,
                        parse_special: bool) -> list[int]:
        if len(text) <= _INLINE_TOKENIZE_BYTES:
            return engine.tokenize(text, add_special, parse_special)
        return await asyncio.get_running_loop().run_in_executor(
            None, engine.tokenize, text, add_special, parse_special)

    def _retry_after(self, engine: NativeEngine) -> float:
        stats = engine.stats()
        per_request = stats.decode_ns_total / 1e9 / max(1, stats.requests_finished)
        return min(10.0, max(0.1, per_request))

    # ---- generation -----------------------------------------------------

    async def generate(self, req: GenerateRequest, ctx: CallContext
                       ) -> AsyncIterator[GenerateChunk]:
        handle = self._model(req.model, ctx)
        assert handle.engine is not None
        if req.prompt and req.prompt_tokens:
            raise errors.InvalidArgument("prompt: set either prompt or prompt_tokens, not both")
        if req.prompt_tokens:
            info = handle.engine.info
            check_prompt_tokens(req.prompt_tokens, info.n_vocab, info.n_ctx_slot)
            tokens = list(req.prompt_tokens)
        elif req.prompt:
            tokens = await self._tokenize(handle.engine, req.prompt, True, True)
        else:
            raise errors.InvalidArgument("prompt: must not be empty")
        async for chunk in self._run(handle, tokens, req.options, ctx, "generate",
                                     req.prompt or f"<{len(tokens)} tokens>"):
            yield chunk

    async def chat(self, req: ChatRequest, ctx: CallContext) -> AsyncIterator[GenerateChunk]:
        handle = self._model(req.model, ctx)
        assert handle.engine is not None
        check_messages(req.messages)
        prompt = render_chat(handle.engine, req.messages, handle.chat_template, handle.name)
        tokens = await self._tokenize(handle.engine, prompt, True, True)
        async for chunk in self._run(handle, tokens, req.options, ctx, "chat", prompt):
            yield chunk

    async def _run(self, handle: ModelHandle, tokens: list[int], opts: GenerationOptions,
                   ctx: CallContext, kind: str, prompt: str) -> AsyncIterator[GenerateChunk]:
        engine, session = handle.engine, handle.session
        assert engine is not None and session is not None
        sampling = sampling_from(opts)
        stops = check_stops(opts.stop)
        check_structured(opts)
        logprobs = native_logprobs(opts)
        grammar = await grammar_for_async(opts.structured)
        max_tokens = check_max_tokens(opts.max_tokens, len(tokens), engine.info.n_ctx_slot,
                                      self.max_tokens_default)
        deadline_ns = 0
        if ctx.deadline is not None:
            deadline_ns = time.monotonic_ns() + int((ctx.deadline - time.monotonic()) * 1e9)
        adapter_id = adapter_id_of(handle, opts.adapter)
        params = RequestParams(prompt=tokens, max_tokens=max_tokens, sampling=sampling,
                               stop=stops, deadline_ns=max(deadline_ns, 0),
                               ignore_eos=opts.ignore_eos, grammar=grammar, logprobs=logprobs,
                               adapter=adapter_id, drift_signals=self.drift_sample(handle.name))
        key = None
        if self.cache.enabled and is_deterministic(opts):
            # The adapter's load id, not only its name: a new version is a
            # new key space.
            key = self.cache.key(handle.name, engine.serial * 100003 + adapter_id,
                                 ctx.principal.identity, kind, tokens, opts, max_tokens)
            stored = self.cache.get(key)
            if stored is not None:
                for chunk in self._replay(stored, handle.name, ctx, kind, prompt, len(tokens)):
                    yield chunk
                return
        async for chunk in self._generate(handle, params, ctx, kind, prompt, key):
            yield chunk

    def _replay(self, stored: tuple[GenerateChunk, ...], model: str, ctx: CallContext,
                kind: str, prompt: str, n_prompt: int) -> Iterator[GenerateChunk]:
        """A cache hit: the stored chunks, as this request's.  Nothing was
        computed, so every prompt token counts as cached and timings are 0."""
        last = stored[-1]
        completion = last.usage.completion_tokens if last.usage else 0
        # Nothing was computed: no energy, said by the meter that would have.
        usage = Usage(n_prompt, completion, n_prompt, 0.0, 0.0, 0.0, 0.0,
                      self.energy.source if self.energy else "")
        for i, chunk in enumerate(stored):
            final = chunk is last
            yield replace(chunk, request_id=ctx.request_id if i == 0 else "",
                          usage=usage if final else None, cached=final)
        content = (prompt, "".join(c.text for c in stored)) if self.collect_content else None
        self.events.publish(RequestFinished(
            request_id=ctx.request_id, model=model, client=ctx.client, kind=kind, status="ok",
            finish_reason=last.finish_reason, prompt_tokens=n_prompt,
            completion_tokens=completion, cached_tokens=n_prompt, queue_s=0.0, ttft_s=0.0,
            total_s=0.0, subject=ctx.subject or ctx.client, content=content,
            response_cache="hit", energy_source=usage.energy_source))

    async def _generate(self, handle: ModelHandle, params: RequestParams, ctx: CallContext,
                        kind: str, prompt: str, cache_key: bytes | None
                        ) -> AsyncIterator[GenerateChunk]:
        engine, session = handle.engine, handle.session
        assert engine is not None and session is not None
        stops = params.stop
        try:
            stream = await session.generate_async(params)
        except errors.ResourceExhausted as exc:
            raise errors.ResourceExhausted(
                f"model {handle.name!r}: {exc}", retry_after_s=self._retry_after(engine)) from None
        except errors.FailedPrecondition:
            raise errors.Unavailable(f"model {handle.name!r} is not admitting requests") from None
        status = "ok"
        final: Output | None = None
        energy: RequestEnergy | None = None
        first = True
        texts: list[str] | None = [] if self.collect_content else None
        kept: list[GenerateChunk] | None = [] if cache_key is not None else None
        try:
            async for out in stream:
                if texts is not None:
                    texts.append(out.text)
                if out.finished:
                    final = out
                    break
                chunk = GenerateChunk(out.text, out.tokens, ctx.request_id if first else "",
                                      logprobs=self._logprobs(engine, out.logprobs))
                if kept is not None:
                    kept.append(chunk)
                yield chunk
                first = False
            if final is None:
                raise errors.InternalError("the engine stopped without finishing the request")
            if final.finish_reason is FinishReason.ERROR:
                raise errors.InternalError(f"generation failed: {final.error}")
            if final.finish_reason is FinishReason.DEADLINE:
                raise errors.DeadlineExceeded(
                    f"deadline passed after {final.n_generated} generated tokens")
            if final.finish_reason is FinishReason.CANCELLED:
                raise errors.Cancelled("the request was cancelled")
            if self.energy is not None:
                # Its end is in the engine's step log: settling closes the
                # energy window now, so the figure below is final.
                energy = await self.energy.settle(engine.serial, stream.id)
            last = GenerateChunk(
                final.text, final.tokens, ctx.request_id if first else "",
                finish_reason=_FINISH_NAMES[final.finish_reason],
                stop_sequence=stops[final.stop_index] if final.stop_index >= 0 else "",
                usage=usage_of(final, energy), model=handle.name,
                logprobs=self._logprobs(engine, final.logprobs))
            if kept is not None and cache_key is not None:
                self.cache.put(cache_key, [*kept, last])
            yield last
        except BaseException as exc:
            status = type(exc).__name__
            raise
        finally:
            stream.close()
            content = (prompt, "".join(texts)) if texts is not None else None
            adapter = next((n for n, i in handle.adapters.items() if i == params.adapter), "")
            if energy is None and self.energy is not None:
                # Failed or cancelled: what closed windows attributed so far.
                energy = self.energy.so_far(engine.serial, stream.id)
            self._publish(handle.name, ctx, kind, status, final, content,
                          "miss" if cache_key is not None else "", adapter, energy)

    @staticmethod
    def _logprobs(engine: NativeEngine, entries: list[TokenLogprobs]
                  ) -> tuple[TokenLogprob, ...]:
        if not entries:
            return ()
        piece = engine.token_piece
        return tuple(
            TokenLogprob(e.token, piece(e.token), e.logprob,
                         tuple(TopLogprob(t, piece(t), lp) for t, lp in e.top))
            for e in entries)

    def _publish(self, model: str, ctx: CallContext, kind: str, status: str,
                 final: Output | None, content: tuple[str, str] | None,
                 response_cache: str = "", adapter: str = "",
                 energy: RequestEnergy | None = None) -> None:
        usage = usage_of(final, energy) if final else Usage(0, 0, 0, 0.0, 0.0, 0.0)
        reason = _FINISH_NAMES.get(final.finish_reason, "") if final else "cancelled"
        self.events.publish(RequestFinished(
            request_id=ctx.request_id, model=model, client=ctx.client, kind=kind, status=status,
            finish_reason=reason, prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens, cached_tokens=usage.cached_tokens,
            queue_s=usage.queue_s, ttft_s=usage.ttft_s, total_s=usage.total_s,
            subject=ctx.subject or ctx.client, content=content, response_cache=response_cache,
            draft_tokens=final.n_drafted if final else 0,
            draft_accepted=final.n_draft_accepted if final else 0, adapter=adapter,
            drift=_signals(final), energy_joules=energy.joules if energy else 0.0,
            energy_source=energy.source if energy else "",
            co2e_grams=energy.co2e_grams if energy else 0.0))

    # ---- embeddings and tokens --------------------------------------------

    async def embed(self, req: EmbedRequest, ctx: CallContext) -> EmbedResult:
        handle = self._model(req.model, ctx)
        engine, session = handle.engine, handle.session
        assert engine is not None and session is not None
        if not req.inputs:
            raise errors.InvalidArgument("input: must not be empty")
        if len(req.inputs) > MAX_EMBED_INPUTS:
            raise errors.InvalidArgument(
                f"input: at most {MAX_EMBED_INPUTS} texts per request, got {len(req.inputs)}")
        token_lists = []
        for i, text in enumerate(req.inputs):
            tokens = await self._tokenize(engine, text, True, False)
            if not tokens or len(tokens) > engine.info.n_ctx_slot:
                raise errors.InvalidArgument(
                    f"input[{i}]: {len(tokens)} tokens is outside 1..{engine.info.n_ctx_slot}")
            token_lists.append(tokens)
        streams = []
        try:
            for tokens in token_lists:
                streams.append(session.embed(tokens, req.normalize))
            results = [await s.result() for s in streams]
        except errors.ResourceExhausted as exc:
            raise errors.ResourceExhausted(str(exc), retry_after_s=1.0) from None
        finally:
            for s in streams:
                s.close()
        embeddings = []
        for out in results:
            if out.finish_reason is not FinishReason.STOP or out.embedding is None:
                raise errors.InternalError(f"embedding failed: {out.error}")
            embeddings.append(Embedding(out.embedding, out.n_prompt))
        self.events.publish(RequestFinished(
            request_id=ctx.request_id, model=handle.name, client=ctx.client, kind="embed",
            status="ok", finish_reason="stop", prompt_tokens=sum(len(t) for t in token_lists),
            completion_tokens=0, cached_tokens=0, queue_s=0.0, ttft_s=0.0, total_s=0.0,
            subject=ctx.subject or ctx.client))
        return EmbedResult(handle.name, embeddings)

    async def tokenize(self, model: str, text: str, add_special: bool, parse_special: bool,
                       ctx: CallContext) -> list[int]:
        handle = self._model(model, ctx)
        assert handle.engine is not None
        return await self._tokenize(handle.engine, text, add_special, parse_special)

    async def detokenize(self, model: str, tokens: Sequence[int], render_special: bool,
                         ctx: CallContext) -> str:
        handle = self._model(model, ctx)
        assert handle.engine is not None
        return handle.engine.detokenize(tokens, render_special)
