"""Checks of client-supplied values.  Every error names the field."""
from __future__ import annotations

import math

from runtime.core.types import ChatMessage, GenerationOptions
from runtime.errors import InvalidArgument
from runtime.native import Sampling

MAX_STOPS = 16
MAX_STOP_BYTES = 256
ROLES = ("system", "user", "assistant")
DEFAULTS = Sampling()


def _number(name: str, value: float | None, lo: float, hi: float, lo_open: bool = False
            ) -> float | None:
    if value is None:
        return None
    ok = math.isfinite(value) and (value > lo if lo_open else value >= lo) and value <= hi
    if not ok:
        bound = "(" if lo_open else "["
        raise InvalidArgument(f"{name}: must be in {bound}{lo:g}, {hi:g}], got {value!r}")
    return value


def sampling_from(opts: GenerationOptions) -> Sampling:
    """Server defaults filled in, every value range-checked."""
    temperature = _number("temperature", opts.temperature, 0.0, 100.0)
    top_p = _number("top_p", opts.top_p, 0.0, 1.0, lo_open=True)
    min_p = _number("min_p", opts.min_p, 0.0, 1.0)
    repeat = _number("repeat_penalty", opts.repeat_penalty, 0.0, 100.0, lo_open=True)
    freq = _number("frequency_penalty", opts.frequency_penalty, -2.0, 2.0)
    pres = _number("presence_penalty", opts.presence_penalty, -2.0, 2.0)
    if opts.top_k is not None and opts.top_k < 0:
        raise InvalidArgument(f"top_k: must be >= 0, got {opts.top_k}")
    if opts.penalty_last_n is not None and opts.penalty_last_n < -1:
        raise InvalidArgument(f"penalty_last_n: must be >= -1, got {opts.penalty_last_n}")
    if opts.seed is not None and not 0 <= opts.seed < 2**32 - 1:
        raise InvalidArgument(f"seed: must be in [0, {2**32 - 2}], got {opts.seed}")
    return Sampling(
        temperature=DEFAULTS.temperature if temperature is None else temperature,
        top_k=DEFAULTS.top_k if opts.top_k is None else opts.top_k,
        top_p=DEFAULTS.top_p if top_p is None else top_p,
        min_p=DEFAULTS.min_p if min_p is None else min_p,
        repeat_penalty=DEFAULTS.repeat_penalty if repeat is None else repeat,
        frequency_penalty=DEFAULTS.frequency_penalty if freq is None else freq,
        presence_penalty=DEFAULTS.presence_penalty if pres is None else pres,
        penalty_last_n=DEFAULTS.penalty_last_n if opts.penalty_last_n is None
        else opts.penalty_last_n,
        seed=opts.seed,
    )


MAX_TOP_LOGPROBS = 20


def native_logprobs(opts: GenerationOptions) -> int:
    """The core's logprobs argument: -1 none, else how many alternatives."""
    if not 0 <= opts.top_logprobs <= MAX_TOP_LOGPROBS:
        raise InvalidArgument(f"top_logprobs: must be in [0, {MAX_TOP_LOGPROBS}], "
                              f"got {opts.top_logprobs}")
    if opts.top_logprobs and not opts.logprobs:
        raise InvalidArgument("top_logprobs: needs logprobs to be set")
    return opts.top_logprobs if opts.logprobs else -1


def check_structured(opts: GenerationOptions) -> None:
    if opts.structured is not None and opts.ignore_eos:
        raise InvalidArgument("ignore_eos: cannot be combined with structured output (a "
                              "finished grammar allows only the end of generation)")


def check_stops(stops: tuple[str, ...]) -> tuple[str, ...]:
    if len(stops) > MAX_STOPS:
        raise InvalidArgument(f"stop: at most {MAX_STOPS} strings, got {len(stops)}")
    for i, s in enumerate(stops):
        if not s:
            raise InvalidArgument(f"stop[{i}]: must not be empty")
        if "\0" in s:
            raise InvalidArgument(f"stop[{i}]: must not contain NUL")
        if len(s.encode("utf-8")) > MAX_STOP_BYTES:
            raise InvalidArgument(f"stop[{i}]: longer than {MAX_STOP_BYTES} bytes")
    return stops


def check_max_tokens(requested: int | None, n_prompt: int, n_ctx_slot: int, default: int) -> int:
    """The number of tokens to generate; the prompt must leave room for one."""
    if n_prompt >= n_ctx_slot:
        raise InvalidArgument(
            f"prompt: {n_prompt} tokens do not fit the model's context of {n_ctx_slot} tokens "
            f"per request (the prompt must leave room for at least 1 generated token)")
    room = n_ctx_slot - n_prompt
    if requested is None:
        return min(default, room)
    if requested < 1:
        raise InvalidArgument(f"max_tokens: must be >= 1, got {requested}")
    if requested > room:
        raise InvalidArgument(
            f"max_tokens: prompt ({n_prompt} tokens) + max_tokens ({requested}) = "
            f"{n_prompt + requested} tokens exceeds the model's context of {n_ctx_slot} tokens "
            "per request")
    return requested


def check_messages(messages: tuple[ChatMessage, ...]) -> None:
    if not messages:
        raise InvalidArgument("messages: must not be empty")
    for i, m in enumerate(messages):
        if m.role not in ROLES:
            raise InvalidArgument(f"messages[{i}].role: must be one of {', '.join(ROLES)}, "
                                  f"got {m.role!r}")
        if "\0" in m.content:
            raise InvalidArgument(f"messages[{i}].content: must not contain NUL")
