"""Typed wrappers of the engine, request and device handles."""
from __future__ import annotations

import enum
import itertools
import math
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from runtime import errors
from runtime.native._ffi import check, ffi, lib

# ggml_type values of the KV cache types the engine accepts.
_SERIALS = itertools.count(1)
KV_CACHE_TYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q8_0": 8}


class FinishReason(enum.IntEnum):
    NONE = lib.HEARTH_FINISH_NONE
    STOP = lib.HEARTH_FINISH_STOP
    LENGTH = lib.HEARTH_FINISH_LENGTH
    CANCELLED = lib.HEARTH_FINISH_CANCELLED
    DEADLINE = lib.HEARTH_FINISH_DEADLINE
    ERROR = lib.HEARTH_FINISH_ERROR


@dataclass(frozen=True)
class EngineParams:
    model_path: str | None = None
    model_fd: int = -1
    n_ctx: int = 4096
    n_parallel: int = 4
    n_batch: int = 512
    n_ubatch: int = 512
    prefill_chunk: int = 512
    max_queue: int = 64
    burst_window_us: int = 3000
    grammar_budget_us: int = 0           # see hearth_core.h (0: the default)
    n_threads: int = 4
    n_threads_batch: int = 4
    n_gpu_layers: int = 0
    main_gpu: int = 0
    tensor_split: tuple[float, ...] = ()
    flash_attn: int = -1
    cache_type_k: str = "f16"
    cache_type_v: str = "f16"
    kv_unified: bool = True
    swa_full: bool = False
    use_mmap: bool = True
    use_mlock: bool = False
    enable_embeddings: bool = True
    repack_weights: bool = True          # see hearth_core.h
    draft_path: str | None = None        # speculative decoding: a draft GGUF ...
    draft_fd: int = -1                   # ... or an fd to load it from
    n_draft: int = 4
    draft_n_gpu_layers: int = 0
    drift_rows: int = 0                  # logits rows per step for drift prompt NLL
    score_rows: int = 16                 # logits rows per step for score requests
    rpc_workers: tuple[str, ...] = ()    # ggml RPC workers, "HOST:PORT" (see hearth_core.h)


_SAMPLING_FIELDS = frozenset(name for name, _ in ffi.typeof("hearth_sampling").fields)


@dataclass(frozen=True, init=False)
class Sampling:
    """Values for fields of `hearth_sampling`, by their C names as keyword
    arguments.  A field left out (or None) keeps its C default from
    hearth_sampling_init.  The binding copies by name and knows no option:
    the daemon's core names them and gives every one its server default
    (runtime/core/options.py)."""

    values: tuple[tuple[str, float | int], ...]

    def __init__(self, **values: float | int | None) -> None:
        unknown = sorted(set(values) - _SAMPLING_FIELDS)
        if unknown:
            raise TypeError(f"Sampling: hearth_sampling has no field {', '.join(unknown)}")
        object.__setattr__(self, "values", tuple(sorted(
            (name, value) for name, value in values.items() if value is not None)))


def copy_sampling(sampling: Sampling, into: Any) -> None:
    """Into a `hearth_sampling` (cdata), by name."""
    for name, value in sampling.values:
        try:
            setattr(into, name, value)
        except (OverflowError, TypeError) as exc:
            raise errors.InvalidArgument(f"{name}: {exc}") from None


@dataclass(frozen=True)
class RequestParams:
    prompt: Sequence[int]
    max_tokens: int
    sampling: Sampling = field(default_factory=Sampling)
    stop: tuple[str, ...] = ()
    deadline_ns: int = 0
    ignore_eos: bool = False
    grammar: str | None = None           # GBNF, start rule "root"
    logprobs: int = -1                   # -1 none, 0 chosen token, k: also top k
    speculate: bool = True               # use the draft model, if there is one
    adapter: int = 0                     # a loaded LoRA adapter's id; 0 none
    adapter_scale: float = 1.0
    drift_signals: bool = False          # compute DriftSignals (sampled requests)


@dataclass(frozen=True)
class ScoreParams:
    """Occlusion scoring (hearth_engine_submit_score): log P(target | prompt)
    teacher-forced, and without each [start, end) token span of the prompt."""

    prompt: Sequence[int]
    target: Sequence[int]
    spans: Sequence[tuple[int, int]] = ()
    deadline_ns: int = 0
    adapter: int = 0
    adapter_scale: float = 1.0


@dataclass(frozen=True)
class ScoreResult:
    """logprob[0]: the whole prompt; logprob[1 + i]: without span i.  The
    cost as the engine counted it."""

    logprob: tuple[float, ...]
    prefills: int
    prefill_tokens: int
    reused_tokens: int


@dataclass(frozen=True)
class DriftSignals:
    """What the drift monitor learns about a finished request (signals.c);
    no text.  A signal the engine could not compute is None."""

    prompt_nll: float | None             # nats/token over the scored prompt positions
    nll_positions: int
    first_token_entropy: float | None    # nats
    prompt_pool: tuple[float, ...] | None  # mean input embedding of the prompt


@dataclass(frozen=True)
class TokenLogprobs:
    """Log-softmax of the raw logits at one generated position."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True)
class Output:
    """What a request produced since the last take."""

    tokens: list[int]
    text: str
    finished: bool
    finish_reason: FinishReason
    stop_index: int
    error: str | None
    n_prompt: int
    n_cached: int
    n_generated: int
    slot: int
    t_submit_ns: int
    t_admit_ns: int
    t_first_token_ns: int
    t_finish_ns: int
    embedding: list[float] | None = None
    logprobs: list[TokenLogprobs] = field(default_factory=list)
    n_drafted: int = 0
    n_draft_accepted: int = 0
    drift: DriftSignals | None = None    # finished requests that asked for them
    score: ScoreResult | None = None     # finished score requests


@dataclass(frozen=True)
class ModelInfo:
    arch: str
    description: str
    n_vocab: int
    n_ctx_train: int
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    n_swa: int
    n_params: int
    size_bytes: int
    kv_bytes: int
    n_ctx: int
    n_ctx_slot: int
    n_parallel: int
    n_gpu_layers: int
    add_bos: bool
    embeddings_enabled: bool


@dataclass(frozen=True)
class EngineStats:
    n_slots: int
    slots_busy: int
    queue_depth: int
    max_queue: int
    kv_cells_total: int
    kv_cells_used: int
    requests_submitted: int
    requests_rejected: int
    requests_finished: int
    requests_cancelled: int
    tokens_prompt: int
    tokens_cached: int
    tokens_copied: int
    tokens_generated: int
    decode_steps: int
    decode_failures: int
    decode_ns_total: int
    grammar_jobs: int
    last_heartbeat_ns: int
    admission_open: bool


class StepRecord(NamedTuple):
    """One request's part in one engine step (or, `finished`, its end):
    the step log that energy accounting drains in windows."""

    request_id: int
    t_start_ns: int              # CLOCK_MONOTONIC, as time.monotonic_ns()
    t_end_ns: int
    n_prefill: int
    n_decode: int
    finished: bool


_STEP_DRAIN = 4096


@dataclass(frozen=True)
class DeviceInfo:
    index: int
    name: str
    description: str
    type: str
    free_bytes: int
    total_bytes: int


_DEVICE_TYPES = {lib.HEARTH_DEVICE_CPU: "cpu", lib.HEARTH_DEVICE_GPU: "gpu",
                 lib.HEARTH_DEVICE_IGPU: "igpu", lib.HEARTH_DEVICE_ACCEL: "accel"}


def _str(buf: object) -> str:
    return ffi.string(buf).decode("utf-8", errors="replace")


def build_info() -> str:
    return _str(lib.hearth_build_info())


def list_devices() -> list[DeviceInfo]:
    out = []
    info = ffi.new("hearth_device_info *")
    for i in range(lib.hearth_device_count()):
        check(lib.hearth_device_get(i, info))
        out.append(DeviceInfo(i, _str(info.name), _str(info.description),
                              _DEVICE_TYPES.get(info.type, "other"), info.free_bytes,
                              info.total_bytes))
    return out


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _drift_signals(o: Any) -> DriftSignals:
    pool = (tuple(ffi.unpack(o.drift_prompt_pool, o.drift_n_pool))
            if o.drift_n_pool > 0 else None)
    return DriftSignals(_finite(o.drift_prompt_nll), o.drift_nll_positions,
                        _finite(o.drift_first_entropy), pool)


def _logprobs(arr: Any, n: int) -> list[TokenLogprobs]:
    out = []
    for i in range(n):
        lp = arr[i]
        k = lp.n_top
        out.append(TokenLogprobs(lp.token, lp.logprob, tuple(
            zip(ffi.unpack(lp.top_token, k), ffi.unpack(lp.top_logprob, k), strict=True))
            if k else ()))
    return out


def _struct_fields(cdata: object, cls: type) -> dict:
    values = {}
    for name in cls.__dataclass_fields__:  # type: ignore[attr-defined]
        v = getattr(cdata, name)
        values[name] = _str(v) if isinstance(v, ffi.CData) else v
    return values


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
            error=_str(o.error) if o.error != ffi.NULL else None,
            n_prompt=o.n_prompt,
            n_cached=o.n_cached,
            n_generated=o.n_generated,
            slot=o.slot,
            t_submit_ns=o.t_submit_ns,
            t_admit_ns=o.t_admit_ns,
            t_first_token_ns=o.t_first_token_ns,
            t_finish_ns=o.t_finish_ns,
            embedding=embedding,
            logprobs=_logprobs(o.logprobs, o.n_logprobs) if o.n_logprobs else [],
            n_drafted=o.n_drafted,
            n_draft_accepted=o.n_draft_accepted,
            drift=_drift_signals(o) if o.finished and self._drift else None,
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
        return ModelInfo(**_struct_fields(info, ModelInfo))

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
        return EngineStats(**_struct_fields(out, EngineStats))

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
