"""Typed wrappers of the engine and request handles (the values they take and
give are in runtime/native/types.py)."""
from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from runtime import errors
from runtime.native._ffi import check, ffi, lib
from runtime.native.types import (
    KV_CACHE_TYPES,
    EngineParams,
    EngineStats,
    FinishReason,
    ModelInfo,
    Output,
    RequestParams,
    ScoreParams,
    ScoreResult,
    StepRecord,
    c_string,
    copy_sampling,
    drift_signals_of,
    logprobs_of,
    struct_fields,
)

_SERIALS = itertools.count(1)
_STEP_DRAIN = 4096


class NativeRequest:
    """A submitted request.  take() is not thread-safe against itself: one
    consumer (the engine session) reads each request."""

    __slots__ = ("_drift", "_handle", "_out", "_score", "id")

    def __init__(self, handle: object, drift: bool = False, score: bool = False) -> None:
        self._handle = handle
        self._out = ffi.new("hearth_output *")
        self.id: int = lib.hearth_request_id(handle)
        self._drift = drift
        self._score = score

    def take(self) -> Output:
        if self._handle is None:
            raise errors.FailedPrecondition("request already freed")
        o = self._out
        check(lib.hearth_request_take(self._handle, o))
        embedding = (ffi.unpack(o.embedding, o.n_embd) if o.n_embd > 0 else None)
        return Output(
            tokens=ffi.unpack(o.tokens, o.n_tokens) if o.n_tokens else [],
            text=ffi.unpack(o.text, o.n_text).decode("utf-8") if o.n_text else "",
            finished=bool(o.finished),
            finish_reason=FinishReason(o.finish_reason),
            stop_index=o.stop_index,
            error=c_string(o.error) if o.error != ffi.NULL else None,
            n_prompt=o.n_prompt,
            n_cached=o.n_cached,
            n_generated=o.n_generated,
            slot=o.slot,
            t_submit_ns=o.t_submit_ns,
            t_admit_ns=o.t_admit_ns,
            t_first_token_ns=o.t_first_token_ns,
            t_finish_ns=o.t_finish_ns,
            embedding=embedding,
            logprobs=logprobs_of(o.logprobs, o.n_logprobs) if o.n_logprobs else [],
            n_drafted=o.n_drafted,
            n_draft_accepted=o.n_draft_accepted,
            drift=drift_signals_of(o) if o.finished and self._drift else None,
            score=(self._score_result()
                   if self._score and o.finish_reason == FinishReason.STOP else None),
        )

    def _score_result(self) -> ScoreResult:
        res = ffi.new("hearth_score_result *")
        check(lib.hearth_request_score(self._handle, res))
        return ScoreResult(logprob=tuple(ffi.unpack(res.logprob, res.n_variants)),
                           prefills=res.n_prefills, prefill_tokens=res.prefill_tokens,
                           reused_tokens=res.reused_tokens)

    def cancel(self) -> None:
        if self._handle is not None:
            lib.hearth_request_cancel(self._handle)

    def free(self) -> None:
        """Drops our reference; cancels the request if it is still running."""
        if self._handle is not None:
            lib.hearth_request_free(self._handle)
            self._handle = None

    def __del__(self) -> None:
        self.free()


class NativeEngine:
    """One loaded model and its engine thread.  Construction loads the model
    (blocking; run it in an executor from async code)."""

    def __init__(self, params: EngineParams) -> None:
        p = ffi.new("hearth_engine_params *")
        lib.hearth_engine_params_init(p)
        keep = []
        if params.model_path is not None:
            keep.append(ffi.new("char[]", params.model_path.encode()))
            p.model_path = keep[-1]
        p.model_fd = params.model_fd
        if params.draft_path is not None:
            keep.append(ffi.new("char[]", params.draft_path.encode()))
            p.draft_path = keep[-1]
        p.draft_fd = params.draft_fd
        p.n_draft = params.n_draft
        p.draft_n_gpu_layers = params.draft_n_gpu_layers
        p.drift_rows = params.drift_rows
        p.score_rows = params.score_rows
        if params.rpc_workers:
            keep.append(ffi.new("char[]", ",".join(params.rpc_workers).encode()))
            p.rpc_workers = keep[-1]
        for name in ("n_ctx", "n_parallel", "n_batch", "n_ubatch", "prefill_chunk", "max_queue",
                     "burst_window_us", "grammar_budget_us",
                     "n_threads", "n_threads_batch", "n_gpu_layers", "main_gpu", "flash_attn",
                     "kv_unified", "swa_full", "use_mmap", "use_mlock", "enable_embeddings",
                     "repack_weights"):
            setattr(p, name, getattr(params, name))
        if len(params.tensor_split) > 16:
            raise errors.InvalidArgument("tensor_split: at most 16 devices")
        for i, share in enumerate(params.tensor_split):
            p.tensor_split[i] = share
        for attr, value in (("type_k", params.cache_type_k), ("type_v", params.cache_type_v)):
            if value not in KV_CACHE_TYPES:
                raise errors.InvalidArgument(
                    f"cache_type: {value!r} is not one of {sorted(KV_CACHE_TYPES)}")
            setattr(p, attr, KV_CACHE_TYPES[value])
        out = ffi.new("hearth_engine **")
        check(lib.hearth_engine_create(p, out))
        self._handle = out[0]
        # Calls from other threads (metrics scrapes, the watchdog, executor
        # tokenizing) may overlap close(); close() waits for them to leave
        # before freeing, so none can touch a freed engine.
        self._lock = threading.Condition(threading.Lock())
        self._users = 0
        self.params = params
        self.info = self._model_info()
        self._ids = ffi.new("uint64_t[]", 256)
        self._pieces: dict[int, bytes] = {}
        # Distinguishes this load from any earlier one of the same model
        # (response-cache keys); id() could be reused after a reload.
        self.serial = next(_SERIALS)

    @contextmanager
    def _h(self) -> Iterator[object]:
        with self._lock:
            if self._handle is None:
                raise errors.FailedPrecondition("engine is closed")
            self._users += 1
            handle = self._handle
        try:
            yield handle
        finally:
            with self._lock:
                self._users -= 1
                if self._users == 0:
                    self._lock.notify_all()

    def _model_info(self) -> ModelInfo:
        info = ffi.new("hearth_model_info *")
        with self._h() as h:
            check(lib.hearth_engine_model_info(h, info))
        return ModelInfo(**struct_fields(info, ModelInfo))

    @property
    def event_fd(self) -> int:
        with self._h() as h:
            return int(lib.hearth_engine_event_fd(h))

    def close(self) -> None:
        """Stops the engine; open requests finish as CANCELLED."""
        with self._lock:
            handle, self._handle = self._handle, None
            self._lock.wait_for(lambda: self._users == 0)
        if handle is not None:
            lib.hearth_engine_free(handle)

    def close_admission(self) -> None:
        with self._h() as h:
            lib.hearth_engine_close_admission(h)

    def drain_ready(self) -> list[int]:
        ids = self._ids
        with self._h() as h:
            n = lib.hearth_engine_drain_ready(h, ids, len(ids))
        return ffi.unpack(ids, n) if n else []

    def stats(self) -> EngineStats:
        out = ffi.new("hearth_engine_stats *")
        with self._h() as h:
            check(lib.hearth_engine_get_stats(h, out))
        return EngineStats(**struct_fields(out, EngineStats))

    def stats_if_open(self) -> EngineStats | None:
        """Stats for reports that list every model: a model being removed may
        close its engine between the listing and this call, which is not an
        error for the reader."""
        try:
            return self.stats()
        except errors.FailedPrecondition:
            return None

    def _grow(self, call: Callable[[object, Any, int], int], kind: str, cap: int,
              n: Any) -> Any:
        """Calls `call(handle, buf, cap)`; if the buffer was too small, once
        more with the size the core asked for."""
        buf = ffi.new(kind, cap)
        with self._h() as h:
            status = call(h, buf, cap)
            if status == lib.HEARTH_E_RESOURCE_EXHAUSTED:
                cap = n[0] + 1
                buf = ffi.new(kind, cap)
                status = call(h, buf, cap)
        if status != lib.HEARTH_E_NOT_FOUND:
            check(status)
        return buf if status == lib.HEARTH_OK else None

    def meta(self, key: str) -> str | None:
        n = ffi.new("int32_t *")
        k = key.encode()
        buf = self._grow(lambda h, b, c: lib.hearth_engine_meta(h, k, b, c, n), "char[]", 256, n)
        return None if buf is None else ffi.unpack(buf, n[0]).decode("utf-8", errors="replace")

    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = False
                 ) -> list[int]:
        data = text.encode("utf-8")
        n = ffi.new("int32_t *")
        buf = self._grow(lambda h, b, c: lib.hearth_engine_tokenize(
            h, data, len(data), add_special, parse_special, b, c, n), "int32_t[]",
            len(data) + 8, n)
        return ffi.unpack(buf, n[0])

    def detokenize(self, tokens: Sequence[int], render_special: bool = False) -> str:
        toks = ffi.new("int32_t[]", list(tokens))
        n = ffi.new("int32_t *")
        buf = self._grow(lambda h, b, c: lib.hearth_engine_detokenize(
            h, toks, len(tokens), render_special, b, c, n), "char[]", 8 * len(tokens) + 16, n)
        return ffi.unpack(buf, n[0]).decode("utf-8", errors="replace")

    def token_bytes(self, token: int) -> bytes:
        """The bytes of one token as generated (special tokens rendered)."""
        cache = self._pieces
        if token not in cache:
            if len(cache) > 65536:
                cache.clear()
            n = ffi.new("int32_t *")
            buf = self._grow(lambda h, b, c: lib.hearth_engine_token_piece(h, token, b, c, n),
                             "char[]", 64, n)
            cache[token] = ffi.unpack(buf, n[0])
        return cache[token]

    def token_piece(self, token: int) -> str:
        """token_bytes as text, for logprobs; part of a UTF-8 character
        shows as U+FFFD."""
        return self.token_bytes(token).decode("utf-8", errors="replace")

    def apply_chat_template(self, messages: Sequence[tuple[str, str]], add_assistant: bool = True,
                            template: str | None = None) -> str:
        roles = [ffi.new("char[]", r.encode()) for r, _ in messages]
        contents = [ffi.new("char[]", c.encode()) for _, c in messages]
        role_arr = ffi.new("char *[]", roles)
        content_arr = ffi.new("char *[]", contents)
        tmpl = ffi.new("char[]", template.encode()) if template is not None else ffi.NULL
        n = ffi.new("int32_t *")
        buf = self._grow(lambda h, b, c: lib.hearth_engine_apply_chat_template(
            h, tmpl, role_arr, content_arr, len(messages), add_assistant, b, c, n), "char[]",
            2 * sum(len(c) for _, c in messages) + 512, n)
        return ffi.unpack(buf, n[0]).decode("utf-8", errors="replace")

    def submit(self, params: RequestParams) -> NativeRequest:
        p = ffi.new("hearth_request_params *")
        lib.hearth_request_params_init(p)
        prompt = ffi.new("int32_t[]", list(params.prompt))
        p.prompt = prompt
        p.n_prompt = len(params.prompt)
        p.max_tokens = params.max_tokens
        copy_sampling(params.sampling, p.sampling)
        stops = [ffi.new("char[]", x.encode("utf-8")) for x in params.stop]
        stop_arr = ffi.new("char *[]", stops) if stops else ffi.NULL
        p.stop = stop_arr
        p.n_stop = len(stops)
        p.deadline_ns = params.deadline_ns
        p.ignore_eos = params.ignore_eos
        grammar = ffi.new("char[]", params.grammar.encode("utf-8")) if params.grammar else None
        p.grammar = grammar if grammar is not None else ffi.NULL
        p.logprobs = params.logprobs
        p.speculate = params.speculate
        p.adapter = params.adapter
        p.adapter_scale = params.adapter_scale
        p.drift_signals = params.drift_signals
        out = ffi.new("hearth_request **")
        with self._h() as h:
            check(lib.hearth_engine_submit(h, p, out))
        return NativeRequest(out[0], params.drift_signals)

    def load_adapter(self, path: str | None = None, fd: int = -1) -> int:
        """Loads a LoRA adapter GGUF (blocks until the step in progress
        ends); returns its id for RequestParams.adapter."""
        out = ffi.new("int32_t *")
        cpath = ffi.new("char[]", path.encode()) if path else ffi.NULL
        with self._h() as h:
            check(lib.hearth_engine_adapter_load(h, cpath, fd, out))
        return int(out[0])

    def unload_adapter(self, adapter_id: int) -> None:
        """New requests can no longer use it; running ones finish with it."""
        with self._h() as h:
            check(lib.hearth_engine_adapter_unload(h, adapter_id))

    def adapter_count(self) -> int:
        with self._h() as h:
            return int(lib.hearth_engine_adapter_count(h))

    def submit_embedding(self, tokens: Sequence[int], normalize: bool) -> NativeRequest:
        toks = ffi.new("int32_t[]", list(tokens))
        out = ffi.new("hearth_request **")
        with self._h() as h:
            check(lib.hearth_engine_submit_embedding(h, toks, len(tokens), normalize, out))
        return NativeRequest(out[0])

    def submit_score(self, params: ScoreParams) -> NativeRequest:
        """Queues an occlusion score request; its final Output carries the
        ScoreResult."""
        p = ffi.new("hearth_score_params *")
        lib.hearth_score_params_init(p)
        prompt = ffi.new("int32_t[]", list(params.prompt))
        target = ffi.new("int32_t[]", list(params.target))
        spans = ffi.new("int32_t[]", [x for span in params.spans for x in span] or [0])
        p.prompt, p.n_prompt = prompt, len(params.prompt)
        p.target, p.n_target = target, len(params.target)
        p.spans, p.n_spans = spans, len(params.spans)
        p.deadline_ns = params.deadline_ns
        p.adapter = params.adapter
        p.adapter_scale = params.adapter_scale
        out = ffi.new("hearth_request **")
        with self._h() as h:
            check(lib.hearth_engine_submit_score(h, p, out))
        return NativeRequest(out[0], score=True)

    def enable_step_log(self, capacity: int) -> None:
        """Keep the last `capacity` step records (0: off) for drain_steps."""
        with self._h() as h:
            check(lib.hearth_engine_step_log(h, capacity))

    def drain_steps(self) -> tuple[list[StepRecord], int]:
        """The step records since the last drain, oldest first, and how many
        were lost (overwritten unread)."""
        buf = ffi.new("hearth_step_record[]", _STEP_DRAIN)
        lost = ffi.new("uint64_t *")
        records: list[StepRecord] = []
        lost_total = 0
        while True:
            with self._h() as h:
                n = lib.hearth_engine_drain_steps(h, buf, _STEP_DRAIN, lost)
            lost_total += int(lost[0])
            for i in range(n):
                r = buf[i]
                records.append(StepRecord(int(r.request_id), int(r.t_start_ns), int(r.t_end_ns),
                                          int(r.n_prefill), int(r.n_decode),
                                          bool(r.flags & lib.HEARTH_STEP_FINISHED)))
            if n < _STEP_DRAIN:
                return records, lost_total
