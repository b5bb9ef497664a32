"""Structured output: JSON Schema or GBNF in, a checked GBNF grammar out.

The engine enforces the grammar with llama.cpp's grammar sampler.  llama.cpp
reports a syntax error only on the daemon's stderr, so grammars are checked
here first (runtime/core/gbnf.py), and the client is told what is wrong and
where: `grammar: line 2, column 9: expected '::='`.  The same reading bounds
what the grammar will cost llama.cpp (its compiled size and its parse
stacks), before anything is compiled.

JSON schemas are bounded first (nesting depth, every length and item count),
checked against their meta-schema (jsonschema), then converted with
llama-cpp-python's converter (the same code llama.cpp's server uses), whose
refusals (an unsupported keyword, a bad $ref) become InvalidArgument too.
The converter's own repetition writer lays a bound out as one nested group
per unit, so `maxLength: N` grew with N before any size check could run;
ours (_repetition) writes llama.cpp's {m,n} instead, within its limits, so
the grammar's size does not depend on the bounds.
"""
from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Callable
from typing import Any

from runtime.core import gbnf, gbnf_cost
from runtime.core.types import StructuredOutput
from runtime.errors import InvalidArgument

MAX_SPEC_BYTES = 64 << 10
# Any JSON object, for response_format {"type": "json_object"}.
JSON_OBJECT_SCHEMA = '{"type": "object"}'
# The largest minLength, maxLength, minItems or maxItems a schema may set.
MAX_SCHEMA_REPEAT = 10_000
# The deepest nesting of objects and arrays in a schema document.
MAX_SCHEMA_DEPTH = 64
# Specs up to this size are checked on the caller's thread; larger ones in a
# worker thread (grammar_for_async), so the event loop never waits on them.
INLINE_SPEC_BYTES = 4096


def check_gbnf(text: str, field: str = "grammar") -> str:
    """The grammar, if llama.cpp will read it as written and its cost is
    within the limits (runtime/core/gbnf_cost.py); else InvalidArgument naming
    the problem, or the limit."""
    if not text.strip():
        raise InvalidArgument(f"{field}: must not be empty")
    if len(text.encode("utf-8")) > MAX_SPEC_BYTES:
        raise InvalidArgument(f"{field}: longer than {MAX_SPEC_BYTES} bytes")
    if "\0" in text:
        raise InvalidArgument(f"{field}: must not contain NUL")
    try:
        cost = gbnf_cost.cost(gbnf.parse(text))
    except gbnf.GrammarError as exc:
        if exc.pos is None:
            raise InvalidArgument(f"{field}: {exc}") from None
        line = text.count("\n", 0, exc.pos) + 1
        column = exc.pos - (text.rfind("\n", 0, exc.pos) + 1) + 1
        raise InvalidArgument(f"{field}: line {line}, column {column}: {exc}") from None
    if cost.elements > gbnf_cost.MAX_ELEMENTS:
        raise InvalidArgument(
            f"{field}: expands to about {cost.elements} grammar elements once its repetitions "
            f"are laid out; the limit is {gbnf_cost.MAX_ELEMENTS}")
    hint = ("each rule or item that may match nothing multiplies the ways a text can "
            "continue: make items required, or merge alternatives")
    if cost.stacks > gbnf_cost.MAX_STACKS:
        raise InvalidArgument(
            f"{field}: up to {cost.stacks} parse stacks can be open at once (at {cost.where}); "
            f"the limit is {gbnf_cost.MAX_STACKS} ({hint})")
    if cost.duplicates > gbnf_cost.MAX_DUPLICATES:
        raise InvalidArgument(
            f"{field}: {cost.duplicated} recurs {cost.duplicates} times among the parse stacks "
            f"one position opens; the limit is {gbnf_cost.MAX_DUPLICATES} (llama.cpp tries a token "
            f"against every copy, again for each of its characters; {hint})")
    if cost.work > gbnf_cost.MAX_WORK:
        raise InvalidArgument(
            f"{field}: testing a token could take {cost.work} parse-stack comparisons (up to "
            f"{cost.stacks} stacks open, at {cost.where}); the limit is "
            f"{gbnf_cost.MAX_WORK} ({hint})")
    return text


@functools.cache
def _converter() -> Callable[[str], str]:
    """Importing llama_cpp installs its own llama.cpp log callback; the
    daemon's (log format and level) is put back at once.  The converter
    calls its module's repetition writer by name: ours replaces it."""
    from llama_cpp import llama_grammar

    from runtime import logs

    logs.reapply_native_logging()
    llama_grammar._build_repetition = _repetition
    return llama_grammar.json_schema_to_gbnf


# Copies of one symbol per {m,n} group: llama.cpp allows REPEAT_LIMIT rules
# per repeated symbol, and a separated list item is a group of up to four
# symbols (the separator's and the item's rule names, the group itself).
_CHUNK = 1000
_SEPARATED_CHUNK = 400


def _repetition(item_rule: str, min_items: int, max_items: int | None,
                separator_rule: str | None = None, item_rule_is_literal: bool = False) -> str:
    """`item_rule` repeated min..max times (max None: unbounded), each
    separated by `separator_rule` when given, in the converter's signature.
    Written as {m,n} groups of at most a chunk each; a longer optional run
    nests one alternative per chunk, so every count has a single parse."""
    lo, hi = int(min_items), None if max_items is None else int(max_items)
    for n in (lo, hi):
        if n is not None and n > MAX_SCHEMA_REPEAT:
            raise ValueError(f"a repetition of {n} is above the limit of {MAX_SCHEMA_REPEAT}")
    if hi is not None and hi < lo:
        raise ValueError(f"a repetition of at least {lo} and at most {hi}")
    if hi == 0:
        return ""
    if not separator_rule:
        return _repeat(item_rule, lo, hi, _CHUNK)
    rest = _repeat(f"({separator_rule} {item_rule})", max(lo - 1, 0),
                   None if hi is None else hi - 1, _SEPARATED_CHUNK)
    body = f"{item_rule} {rest}".rstrip()
    # Not (body)?: llama.cpp counts every rule inside a group against the
    # group's own repetition limit, and body can hold thousands.
    return body if lo > 0 else f"({body} | )"


def _repeat(atom: str, lo: int, hi: int | None, chunk: int) -> str:
    parts = []
    n = lo
    while n > 0:
        k = min(n, chunk)
        parts.append(atom if k == 1 else f"({atom}{{{k}}})")
        n -= k
    if hi is None:
        parts.append(f"{atom}*")
    elif hi > lo:
        parts.append(_optional(atom, hi - lo, chunk))
    return " ".join(parts)


def _optional(atom: str, k: int, chunk: int) -> str:
    """atom 0..k times: fewer than a chunk, or a full chunk and the rest."""
    if k == 1:
        return f"{atom}?"
    if k <= chunk:
        return f"({atom}{{0,{k}}})"
    return f"({atom}{{0,{chunk - 1}}} | ({atom}{{{chunk}}}) {_optional(atom, k - chunk, chunk)})"


# What llama-cpp-python's converter turns into grammar rules.  Anything else
# that constrains values (minimum, multipleOf, uniqueItems, not, ...) it
# would silently drop, and the output could break the schema: refused.
_ENFORCED = frozenset((
    "type", "format", "$ref", "oneOf", "anyOf", "allOf", "const", "enum", "properties",
    "additionalProperties", "required", "items", "prefixItems", "minItems", "maxItems",
    "pattern", "minLength", "maxLength", "$defs", "definitions"))
_ANNOTATIONS = frozenset((
    "$schema", "$id", "$comment", "title", "description", "default", "examples",
    "deprecated", "readOnly", "writeOnly", "contentMediaType", "contentEncoding"))
_SUBSCHEMA_MAPS = ("properties", "$defs", "definitions")
_SUBSCHEMA_LISTS = ("oneOf", "anyOf", "allOf", "prefixItems")


_COUNTS = ("minLength", "maxLength", "minItems", "maxItems")


def _check_enforceable(schema: Any, field: str, where: str = "") -> None:
    if not isinstance(schema, dict):
        return
    at = f" at {where}" if where else ""
    for key in schema:
        if key not in _ENFORCED and key not in _ANNOTATIONS:
            raise InvalidArgument(
                f"{field}: {key!r}{at} cannot be enforced "
                "during generation (supported: " + ", ".join(sorted(_ENFORCED)) + ")")
    for key in _COUNTS:
        value = schema.get(key)
        if isinstance(value, int) and value > MAX_SCHEMA_REPEAT:
            raise InvalidArgument(f"{field}: {key} {value}{at} is above the limit of "
                                  f"{MAX_SCHEMA_REPEAT}")
    for key in _SUBSCHEMA_MAPS:
        for name, sub in (schema.get(key) or {}).items():
            _check_enforceable(sub, field, f"{where}/{key}/{name}".lstrip("/"))
    for key in _SUBSCHEMA_LISTS:
        for i, sub in enumerate(schema.get(key) or ()):
            _check_enforceable(sub, field, f"{where}/{key}/{i}".lstrip("/"))
    for key in ("items", "additionalProperties"):
        sub = schema.get(key)
        subs = sub if isinstance(sub, list) else [sub]
        for i, item in enumerate(subs):
            suffix = f"/{i}" if isinstance(sub, list) else ""
            _check_enforceable(item, field, f"{where}/{key}{suffix}".lstrip("/"))


def _check_depth(doc: Any, field: str) -> None:
    """Refuses documents nested deeper than MAX_SCHEMA_DEPTH, without
    recursion (the checks after this one recurse)."""
    todo = [(doc, 1)]
    while todo:
        value, depth = todo.pop()
        if depth > MAX_SCHEMA_DEPTH:
            raise InvalidArgument(f"{field}: nested deeper than {MAX_SCHEMA_DEPTH} levels")
        children = value.values() if isinstance(value, dict) else (
            value if isinstance(value, list) else ())
        todo.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))


def _check_schema(schema: Any, field: str) -> None:
    import jsonschema

    if not isinstance(schema, dict):
        raise InvalidArgument(f"{field}: a JSON schema must be an object, got "
                              f"{type(schema).__name__}")
    _check_depth(schema, field)
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = "/".join(str(p) for p in exc.path)
        raise InvalidArgument(f"{field}: not a valid JSON schema"
                              f"{f' at {where}' if where else ''}: {exc.message}") from None


@functools.lru_cache(maxsize=256)
def schema_to_gbnf(schema_text: str, field: str = "json_schema") -> str:
    """Cached: clients send the same few schemas over and over."""
    if len(schema_text.encode("utf-8")) > MAX_SPEC_BYTES:
        raise InvalidArgument(f"{field}: longer than {MAX_SPEC_BYTES} bytes")
    try:
        schema = json.loads(schema_text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise InvalidArgument(f"{field}: not valid JSON: {exc}") from None
    _check_schema(schema, field)
    _check_enforceable(schema, field)
    try:
        gbnf = _converter()(json.dumps(schema))
    except (ValueError, KeyError, TypeError, NotImplementedError, AssertionError,
            RecursionError) as exc:
        raise InvalidArgument(f"{field}: cannot be turned into a grammar: {exc}") from None
    # The converter lets raw control characters into strings, which JSON
    # (RFC 8259, section 7) forbids: a parser would reject the output.
    gbnf = gbnf.replace(_LAX_JSON_CHAR, _JSON_CHAR)
    return check_gbnf(gbnf, field)


_LAX_JSON_CHAR = r'char ::= [^"\\] |'
_JSON_CHAR = r'char ::= [^"\\\x00-\x1F] |'


async def grammar_for_async(structured: StructuredOutput | None) -> str | None:
    """grammar_for, in a worker thread when the spec is large enough that
    checking and converting it would hold the event loop."""
    if structured is None or len(structured.spec) <= INLINE_SPEC_BYTES:
        return grammar_for(structured)
    return await asyncio.to_thread(grammar_for, structured)


def grammar_for(structured: StructuredOutput | None) -> str | None:
    """The GBNF to enforce, or None; InvalidArgument names what is wrong."""
    if structured is None:
        return None
    if structured.kind == "grammar":
        return check_gbnf(structured.spec)
    if structured.kind == "json_schema":
        return schema_to_gbnf(structured.spec)
    if structured.kind == "json_object":
        return schema_to_gbnf(JSON_OBJECT_SCHEMA, "response_format")
    raise InvalidArgument(f"response_format: unknown type {structured.kind!r} (expected "
                          "text, json_object, json_schema or grammar)")
