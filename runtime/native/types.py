"""The engine's values: parameters, requests, outputs, stats and devices, and the
explicit converters from the C structs of native/include/hearth_core.h to them."""
from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from runtime import errors
from runtime.native._ffi import check, ffi, lib

# ggml_type values of the KV cache types the engine accepts.
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


def c_string(buf: object) -> str:
    return ffi.string(buf).decode("utf-8", errors="replace")


def build_info() -> str:
    return c_string(lib.hearth_build_info())


def list_devices() -> list[DeviceInfo]:
    out = []
    info = ffi.new("hearth_device_info *")
    for i in range(lib.hearth_device_count()):
        check(lib.hearth_device_get(i, info))
        out.append(DeviceInfo(i, c_string(info.name), c_string(info.description),
                              _DEVICE_TYPES.get(info.type, "other"), info.free_bytes,
                              info.total_bytes))
    return out


def finite_or_none(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def drift_signals_of(o: Any) -> DriftSignals:
    pool = (tuple(ffi.unpack(o.drift_prompt_pool, o.drift_n_pool))
            if o.drift_n_pool > 0 else None)
    return DriftSignals(finite_or_none(o.drift_prompt_nll), o.drift_nll_positions,
                        finite_or_none(o.drift_first_entropy), pool)


def logprobs_of(arr: Any, n: int) -> list[TokenLogprobs]:
    out = []
    for i in range(n):
        lp = arr[i]
        k = lp.n_top
        out.append(TokenLogprobs(lp.token, lp.logprob, tuple(
            zip(ffi.unpack(lp.top_token, k), ffi.unpack(lp.top_logprob, k), strict=True))
            if k else ()))
    return out


def struct_fields(cdata: object, cls: type) -> dict:
    values = {}
    for name in cls.__dataclass_fields__:  # type: ignore[attr-defined]
        v = getattr(cdata, name)
        values[name] = c_string(v) if isinstance(v, ffi.CData) else v
    return values
