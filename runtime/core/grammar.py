"""Structured output: JSON Schema or GBNF in, a checked GBNF grammar out.

The engine enforces the grammar with llama.cpp's grammar sampler.  llama.cpp
reports a syntax error only on the daemon's stderr, so grammars are checked
here first, and the client is told what is wrong and where:
`grammar: line 2, column 9: expected '::='`.  JSON schemas are checked
against their JSON Schema meta-schema (jsonschema), then converted with
llama-cpp-python's converter (the same code llama.cpp's server uses), whose
refusals (an unsupported keyword, a bad $ref) become InvalidArgument too.
"""
from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable
from typing import Any

from runtime.core.types import StructuredOutput
from runtime.errors import InvalidArgument

MAX_SPEC_BYTES = 64 << 10
# Any JSON object, for response_format {"type": "json_object"}.
JSON_OBJECT_SCHEMA = '{"type": "object"}'
_NAME = re.compile(r"[A-Za-z0-9-]+")


class _GrammarError(Exception):
    def __init__(self, pos: int, message: str) -> None:
        super().__init__(message)
        self.pos = pos


class _Checker:
    """A recursive-descent reading of GBNF (llama.cpp's grammars/README.md):
    rules `name ::= alternatives`, each a sequence of "literals", [classes],
    rule names, (groups), `.`, <token>/<[id]> (optionally negated with !),
    with repetition suffixes * + ? {m} {m,} {m,n}; `#` comments; newlines end
    a rule except inside parentheses and after '|'."""

    def __init__(self, text: str) -> None:
        self.s = text
        self.i = 0
        self.defined: dict[str, int] = {}
        self.used: list[tuple[str, int]] = []

    def fail(self, message: str) -> _GrammarError:
        return _GrammarError(self.i, message)

    def peek(self) -> str:
        return self.s[self.i] if self.i < len(self.s) else ""

    def space(self, newlines: bool) -> None:
        while self.i < len(self.s):
            c = self.s[self.i]
            if c in " \t" or (newlines and c in "\r\n"):
                self.i += 1
            elif c == "#":
                while self.i < len(self.s) and self.s[self.i] not in "\r\n":
                    self.i += 1
            else:
                return

    def name(self) -> str:
        m = _NAME.match(self.s, self.i)
        if not m:
            raise self.fail("expected a rule name")
        self.i = m.end()
        return m.group()

    def escape(self) -> None:
        self.i += 1  # the backslash
        c = self.peek()
        widths = {"x": 2, "u": 4, "U": 8}
        if c in widths:
            digits = self.s[self.i + 1:self.i + 1 + widths[c]]
            if len(digits) != widths[c] or not all(d in "0123456789abcdefABCDEF" for d in digits):
                raise self.fail(f"\\{c} needs {widths[c]} hex digits")
            self.i += 1 + widths[c]
        elif c and c in 'nrt\\"[]-^':
            self.i += 1
        else:
            raise self.fail(f"unknown escape \\{c}" if c else "unfinished escape")

    def literal(self, close: str) -> None:
        start = self.i
        self.i += 1
        while self.peek() != close:
            c = self.peek()
            if not c or (close == '"' and c in "\r\n"):
                self.i = start
                what = "string" if close == '"' else "character class"
                raise self.fail(f"unterminated {what}")
            if c == "\\":
                self.escape()
            else:
                self.i += 1
        self.i += 1

    def repetition(self) -> None:
        start = self.i
        m = re.compile(r"\{\s*(\d+)\s*(,\s*(\d*)\s*)?\}").match(self.s, self.i)
        if not m:
            raise self.fail("expected {m}, {m,} or {m,n}")
        lo, hi = int(m.group(1)), m.group(3)
        if hi and int(hi) < lo:
            self.i = start
            raise self.fail(f"repetition {{{lo},{hi}}}: the maximum is below the minimum")
        self.i = m.end()

    def sequence(self, nested: bool) -> None:
        items = 0
        while True:
            self.space(nested)
            c = self.peek()
            if not c:
                return
            if c == '"':
                self.literal('"')
            elif c == "[":
                self.literal("]")
            elif c == ".":
                self.i += 1
            elif c == "(":
                self.i += 1
                self.alternatives(nested=True)
                if self.peek() != ")":
                    raise self.fail("expected ')'")
                self.i += 1
            elif c in "!<":
                if c == "!":
                    self.i += 1
                m = re.compile(r"<(\[\d+\]|[^<>\s]+)>").match(self.s, self.i)
                if not m:
                    raise self.fail("expected a token reference such as <[42]> or <tok>")
                self.i = m.end()
            elif _NAME.match(c):
                at = self.i
                ref = self.name()
                after = self.i
                self.space(nested)
                if self.s.startswith("::=", self.i):
                    self.i = at
                    if nested:
                        raise self.fail(f"rule {ref!r} starts inside parentheses")
                    return  # the next rule begins
                self.i = after
                self.used.append((ref, at))
            elif c in "*+?{":
                if items == 0:
                    raise self.fail(f"{c!r} has nothing to repeat")
                if c == "{":
                    self.repetition()
                else:
                    self.i += 1
                continue
            else:
                return
            items += 1

    def alternatives(self, nested: bool) -> None:
        self.sequence(nested)
        while self.peek() == "|":
            self.i += 1
            self.space(True)
            self.sequence(nested)

    def rule(self) -> None:
        at = self.i
        name = self.name()
        self.space(False)
        if not self.s.startswith("::=", self.i):
            raise self.fail("expected '::='")
        self.i += 3
        self.space(True)
        if name in self.defined:
            # llama.cpp would silently keep only the last definition.
            raise _GrammarError(at, f"rule {name!r} is defined twice")
        self.defined[name] = at
        self.alternatives(nested=False)
        self.space(False)
        c = self.peek()
        if c and c not in "\r\n":
            raise self.fail(f"unexpected {c!r}")

    def check(self) -> None:
        self.space(True)
        while self.i < len(self.s):
            self.rule()
            self.space(True)
        if "root" not in self.defined:
            raise _GrammarError(0, "no 'root' rule (generation starts there)")
        for ref, at in self.used:
            if ref not in self.defined:
                raise _GrammarError(at, f"rule {ref!r} is used but never defined")


def check_gbnf(text: str, field: str = "grammar") -> str:
    if not text.strip():
        raise InvalidArgument(f"{field}: must not be empty")
    if len(text.encode("utf-8")) > MAX_SPEC_BYTES:
        raise InvalidArgument(f"{field}: longer than {MAX_SPEC_BYTES} bytes")
    if "\0" in text:
        raise InvalidArgument(f"{field}: must not contain NUL")
    try:
        _Checker(text).check()
    except _GrammarError as exc:
        line = text.count("\n", 0, exc.pos) + 1
        column = exc.pos - (text.rfind("\n", 0, exc.pos) + 1) + 1
        raise InvalidArgument(f"{field}: line {line}, column {column}: {exc}") from None
    return text


@functools.cache
def _converter() -> Callable[[str], str]:
    """Importing llama_cpp installs its own llama.cpp log callback; the
    daemon's (log format and level) is put back at once."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    from runtime import logs

    logs.reapply_native_logging()
    return json_schema_to_gbnf


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


def _check_enforceable(schema: Any, field: str, where: str = "") -> None:
    if not isinstance(schema, dict):
        return
    for key in schema:
        if key not in _ENFORCED and key not in _ANNOTATIONS:
            raise InvalidArgument(
                f"{field}: {key!r}{f' at {where}' if where else ''} cannot be enforced "
                "during generation (supported: " + ", ".join(sorted(_ENFORCED)) + ")")
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


def _check_schema(schema: Any, field: str) -> None:
    import jsonschema

    if not isinstance(schema, dict):
        raise InvalidArgument(f"{field}: a JSON schema must be an object, got "
                              f"{type(schema).__name__}")
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
