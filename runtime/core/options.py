"""The one table of generation options.

Every option a request may set is one field of `GenerationOptions` below,
and the field's `option(...)` is its row in the table: its kind, its range
(for lists: how many items and how long each may be), the server default,
its OpenAI and KServe spellings, and where it goes in the C request
(`hearth_request_params`; the "sampling" ones are copied by name into its
`hearth_sampling`).  The hearth.v1 protos spell
every option as its name.

Derived from the table, and spelling no option themselves:
  * `core/validation.py`: ranges, list budgets, server defaults filled in;
  * the converters: `server/converters.py` (hearth.v1), `http/converters.py`
    (OpenAI), `server/kserve/sampling.py` (KServe / Triton);
  * `core/response_cache.py`: the cache key hashes every option;
  * `native/types.py`: copies the `sampling` options into `hearth_sampling`
    by name.
Adding a sampling option touches this table, the proto, the header
(`hearth_sampling`) and `native/src/sampling.c`, and nothing else.

Which default wins: None in a request means "the server default", the
`default` of the option's row, which the core always fills in.  The C
defaults (`hearth_sampling_init`: temperature 1, top-k, top-p and min-p
off) apply only to callers of the binding or the C API that leave a field
out; no request through the daemon ever sees them.

Every bound is checked before anything is allocated for the request (the
binding, llama.cpp): an out-of-range value is INVALID_ARGUMENT naming the
field and the limit.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field, fields
from typing import Any

INT32_MAX = 2**31 - 1
# HEARTH_SEED_RANDOM (0xFFFFFFFF) means "a random seed"; a request's seed is
# any other uint32.
SEED_MAX = 2**32 - 2


class Kind(enum.Enum):
    INT = "an integer"
    FLOAT = "a number"
    BOOL = "true or false"
    TEXT = "a string"
    TEXT_LIST = "a list of strings"
    STRUCTURED = "a structured-output constraint"   # read by each converter's own rules


@dataclass(frozen=True)
class Option:
    """One row of the table."""

    name: str                          # GenerationOptions field; hearth.v1 field
    kind: Kind
    lo: float | None = None            # numbers: the range [lo, hi] ...
    hi: float | None = None
    lo_open: bool = False              # ... or (lo, hi]
    max_items: int | None = None       # lists: at most this many items ...
    max_bytes: int | None = None       # ... each (or the text) at most this long in UTF-8
    default: Any = None                # the server default, used when a request sends none
    openai: str | None = None          # the OpenAI request field; None: not a plain field
    kserve: str | None = None          # the KServe sampling key; None: not a plain key
    # Values KServe clients write for ours (vLLM's "no top-k" is -1, ours 0).
    kserve_aliases: tuple[tuple[Any, Any], ...] = ()
    # Where it ends up in the C request (hearth_request_params): "sampling"
    # options are copied by the binding into hearth_sampling's field of the
    # same name; the others are set by the core from the resolved request.
    c_field: str = ""
    cli: bool = False                  # a flag of `hearth generate` and `hearth chat`
    # The CLI's default for a person at a terminal, where it differs from the
    # API's (a screenful, repetition curbed); None: the server's.
    cli_default: Any = None
    empty: Any = None                  # the value of an option a request does not set
    doc: str = ""


def row(kind: Kind, **spec: Any) -> dict[str, Any]:
    """A GenerationOptions field's metadata: its row of the table.  The
    field's default is the option's value when a request does not set it
    (None: "use the server default")."""
    return {"row": (kind, spec)}


@dataclass(frozen=True)
class StructuredOutput:
    """A constraint on what the model may write, enforced by the grammar
    sampler.  kind: "json_object" (any JSON object; spec unused),
    "json_schema" (spec: the schema as JSON text) or "grammar" (spec: GBNF
    text whose start rule is `root`)."""

    kind: str
    spec: str = ""


@dataclass(frozen=True)
class GenerationOptions:
    """Sampling and stopping; None means "the server default".  Each field
    is a row of the table (see the module docstring)."""

    max_tokens: int | None = field(default=None, metadata=row(
        Kind.INT, cli=True, cli_default=200, lo=1, openai="max_tokens", kserve="max_tokens",
        c_field="max_tokens",
        doc="most tokens to generate; default: the config's max_tokens_default, at most "
            "what the request's context leaves"))
    temperature: float | None = field(default=None, metadata=row(
        Kind.FLOAT, cli=True, lo=0.0, hi=100.0, default=0.8, openai="temperature",
        kserve="temperature", c_field="sampling", doc="0 = greedy"))
    top_p: float | None = field(default=None, metadata=row(
        Kind.FLOAT, cli=True, lo=0.0, lo_open=True, hi=1.0, default=0.95, openai="top_p",
        kserve="top_p", c_field="sampling", doc="nucleus sampling; 1 disables"))
    top_k: int | None = field(default=None, metadata=row(
        Kind.INT, cli=True, lo=0, hi=INT32_MAX, default=40, openai="top_k", kserve="top_k",
        kserve_aliases=((-1, 0),), c_field="sampling", doc="0 disables"))
    seed: int | None = field(default=None, metadata=row(
        Kind.INT, cli=True, lo=0, hi=SEED_MAX, openai="seed", kserve="seed", c_field="sampling",
        doc="a fixed seed for reproducible sampling; unset: random"))
    stop: tuple[str, ...] = field(default=(), metadata=row(
        Kind.TEXT_LIST, cli=True, default=(), max_items=16, max_bytes=256, openai="stop",
        kserve="stop",
        c_field="stop", doc="generation stops before the first of these strings"))
    min_p: float | None = field(default=None, metadata=row(
        Kind.FLOAT, lo=0.0, hi=1.0, default=0.05, openai="min_p", kserve="min_p",
        c_field="sampling", doc="0 disables"))
    repeat_penalty: float | None = field(default=None, metadata=row(
        Kind.FLOAT, cli=True, cli_default=1.1, lo=0.0, lo_open=True, hi=100.0, default=1.0,
        openai="repeat_penalty",
        kserve="repetition_penalty", c_field="sampling", doc="1 disables"))
    frequency_penalty: float | None = field(default=None, metadata=row(
        Kind.FLOAT, lo=-2.0, hi=2.0, default=0.0, openai="frequency_penalty",
        kserve="frequency_penalty", c_field="sampling", doc="0 disables"))
    presence_penalty: float | None = field(default=None, metadata=row(
        Kind.FLOAT, lo=-2.0, hi=2.0, default=0.0, openai="presence_penalty",
        kserve="presence_penalty", c_field="sampling", doc="0 disables"))
    # llama.cpp allocates (and zero-fills) 4 bytes per unit of the window
    # when the request is submitted, on the server's event loop: the bound
    # keeps that to 512 KiB.  A window longer than a request's context holds
    # the same tokens as the whole context, which -1 asks for.
    penalty_last_n: int | None = field(default=None, metadata=row(
        Kind.INT, lo=-1, hi=131072, default=64, openai="penalty_last_n",
        kserve="penalty_last_n", c_field="sampling",
        doc="tokens the three penalties look back over; -1: the whole context"))
    ignore_eos: bool = field(default=False, metadata=row(
        Kind.BOOL, default=False, openai="ignore_eos", kserve="ignore_eos",
        c_field="ignore_eos", doc="never stop at an end-of-generation token"))
    structured: StructuredOutput | None = field(default=None, metadata=row(
        Kind.STRUCTURED,
        c_field="grammar (GBNF from core/grammar.py)",
        doc="JSON object, JSON schema or GBNF grammar (OpenAI and KServe: response_format "
            "or grammar)"))
    logprobs: bool = field(default=False, metadata=row(
        Kind.BOOL, default=False, kserve="logprobs",
        c_field="logprobs (-1: off, else top_logprobs)",
        doc="the log-probability of each chosen token (OpenAI: chat's logprobs, or "
            "completions' logprobs=N; KServe: also vLLM's logprobs=N)"))
    top_logprobs: int = field(default=0, metadata=row(
        Kind.INT, lo=0, hi=20, default=0, kserve="top_logprobs",
        c_field="logprobs",
        doc="and of the k most likely tokens at each position (OpenAI: chat's "
            "top_logprobs, completions' logprobs=N)"))
    adapter: str = field(default="", metadata=row(
        Kind.TEXT, max_bytes=256, default="", openai="adapter", kserve="adapter",
        c_field="adapter (the loaded adapter's id)",
        doc="a LoRA adapter loaded for the model, by name; \"\": none"))


def _rows() -> tuple[Option, ...]:
    rows = []
    for f in fields(GenerationOptions):
        kind, spec = f.metadata["row"]
        rows.append(Option(name=f.name, kind=kind, empty=f.default, **spec))
    return tuple(rows)


OPTIONS: tuple[Option, ...] = _rows()
BY_NAME: dict[str, Option] = {o.name: o for o in OPTIONS}
SAMPLING: tuple[Option, ...] = tuple(o for o in OPTIONS if o.c_field == "sampling")
CLI_OPTIONS: tuple[Option, ...] = tuple(o for o in OPTIONS if o.cli)


def is_deterministic(opts: GenerationOptions) -> bool:
    """Greedy (temperature 0, by request or by default) or sampled with a
    fixed seed: the same request then gives the same tokens."""
    temperature = BY_NAME["temperature"].default if opts.temperature is None else opts.temperature
    return temperature <= 0.0 or opts.seed is not None
