"""GBNF checking and JSON-schema conversion (no model needed)."""
from __future__ import annotations

import asyncio
import json
import re
import threading

import pytest

from runtime.core import gbnf, gbnf_cost, grammar
from runtime.core.grammar import (
    INLINE_SPEC_BYTES,
    MAX_SCHEMA_DEPTH,
    MAX_SCHEMA_REPEAT,
    check_gbnf,
    grammar_for,
    grammar_for_async,
    schema_to_gbnf,
)
from runtime.core.types import StructuredOutput
from runtime.errors import InvalidArgument


@pytest.mark.parametrize("text", [
    'root ::= "a" | "b"',
    'root ::= ("a"\n   | "b")* # comment\n',
    'root ::= [a-z]+ ws\nws ::= [ \\t\\n]*',
    'root ::=\n  "x" item{2,3}\nitem ::= [^"\\\\] | "\\\\" ["nrt] | "\\u00e9"',
    'root ::= <[42]> !<[7]> . "\\x41"?',
])
def test_valid_grammars_pass(text: str) -> None:
    assert check_gbnf(text) == text


def test_llama_cpp_sample_grammars_pass() -> None:
    from llama_cpp import llama_grammar as g

    for text in (g.JSON_GBNF, g.ARITHMETIC_GBNF, g.CHESS_GBNF, g.LIST_GBNF, g.C_GBNF,
                 g.JAPANESE_GBNF):
        check_gbnf(text)


@pytest.mark.parametrize(("text", "message"), [
    ("root ::= foo", "line 1, column 10: rule 'foo' is used but never defined"),
    ('x ::= "a"', "no 'root' rule"),
    ('root = "a"', "line 1, column 6: expected '::='"),
    ('root ::= "a', "line 1, column 10: unterminated string"),
    ("root ::= [a-z", "unterminated character class"),
    ('root ::= *"a"', "'*' has nothing to repeat"),
    ('root ::= "a"{3,1}', "the maximum is below the minimum"),
    ('root ::= "a"\nroot ::= "b"', "line 2, column 1: rule 'root' is defined twice"),
    ('root ::= "\\q"', "unknown escape \\q"),
    ('root ::= "\\x4"', "\\x needs 2 hex digits"),
    ('root ::= ("a"', "expected ')'"),
    ('root ::= "a" )', "unexpected ')'"),
    ("", "must not be empty"),
    ('root ::= "a\0"', "NUL"),
])
def test_bad_grammars_name_the_problem(text: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=r"^grammar: ") as info:
        check_gbnf(text)
    assert message in str(info.value)


def test_schema_conversion_and_errors() -> None:
    gbnf = schema_to_gbnf(json.dumps({"type": "object", "properties": {
        "a": {"type": "string", "maxLength": 3}}, "required": ["a"]}))
    assert "root ::=" in gbnf
    # Raw control characters are not allowed in JSON strings.
    assert r'[^"\\\x00-\x1F]' in gbnf
    for schema, message in [
        ("nope", "json_schema: not valid JSON"),
        ("[1]", "a JSON schema must be an object"),
        ('{"type": "nonsense"}', "not a valid JSON schema at type"),
        ('{"properties": {"n": {"type": "integer", "minimum": 3}}}',
         "'minimum' at properties/n cannot be enforced"),
        ('{"items": {"uniqueItems": true}}', "'uniqueItems' at items cannot be enforced"),
        ('{"properties": {"a": {"$ref": "#/nowhere"}}}', "cannot be turned into a grammar"),
    ]:
        with pytest.raises(InvalidArgument, match="json_schema: ") as info:
            schema_to_gbnf(schema)
        assert message in str(info.value)


def test_grammar_for_each_kind() -> None:
    assert grammar_for(None) is None
    assert grammar_for(StructuredOutput("grammar", 'root ::= "a"')) == 'root ::= "a"'
    assert "root ::= object" in (grammar_for(StructuredOutput("json_object")) or "")
    with pytest.raises(InvalidArgument, match="unknown type"):
        grammar_for(StructuredOutput("yaml"))


# SECURITY-CASES 25: a grammar whose cost explodes after parsing.
ATTACK_4K = "root ::= " + " ".join(["a"] * 2000) + '\na ::= "x" | "y" |\n'
ATTACK_16K = "root ::= " + " ".join(["a"] * 8000) + '\na ::= "x" | "y" |\n'


@pytest.mark.parametrize("text", [ATTACK_4K, ATTACK_16K], ids=["4k", "16k"])
def test_grammar_whose_parse_stacks_explode_is_refused_naming_the_limit(text: str) -> None:
    """Fails on e3a5e70: both grammars were accepted (4 KB and 16 KB, under
    the 64 KiB limit) and then held the engine for minutes."""
    assert len(text) < 64 << 10
    with pytest.raises(InvalidArgument, match=r"parse stacks can be open at once") as info:
        check_gbnf(text)
    assert f"the limit is {gbnf_cost.MAX_STACKS}" in str(info.value)
    with pytest.raises(InvalidArgument):
        grammar_for(StructuredOutput("grammar", text))


@pytest.mark.parametrize(("text", "limit"), [
    # The attack's shape, short: few stacks, but one rule opened 60 times
    # over, and llama.cpp tries a token against every copy.
    ("root ::= " + " ".join(["a"] * 60) + '\na ::= "x" | "y" |\n', "MAX_DUPLICATES"),
    # The same through nested rules: 4 x 4 x 4 copies of d.
    ('root ::= b b b b\nb ::= c c c c\nc ::= d d d d\nd ::= "x" | "y" |', "MAX_DUPLICATES"),
    ('root ::= a{0,9}\na ::= "x" | "y" |', "MAX_DUPLICATES"),
    ('root ::= "x"? "x"? "x"? "x"? "x"? "y"', "MAX_DUPLICATES"),
])
def test_grammars_that_multiply_the_work_per_token_are_refused(text: str, limit: str) -> None:
    """Fails on e3a5e70: all accepted; the first held the tiny model's
    engine for most of a second per token and Gemma's for far longer."""
    with pytest.raises(InvalidArgument, match=f"the limit is {getattr(gbnf_cost, limit)}"):
        check_gbnf(text)


@pytest.mark.parametrize("text", [
    "root ::= a a a\na ::= \"x\" | \"y\" |",
    'root ::= "x"{0,5} "y"',
    'root ::= item{1000}\nitem ::= "x" | "y"',
])
def test_the_same_shapes_within_the_limits_pass(text: str) -> None:
    assert check_gbnf(text) == text


def test_deeply_nested_groups_are_invalid_argument() -> None:
    """Fails on e3a5e70: the recursive checker hit Python's recursion limit
    (INTERNAL to the client)."""
    text = "root ::= " + "(" * 600 + '"a"' + ")" * 600
    with pytest.raises(InvalidArgument, match=f"nested more than {gbnf.MAX_NESTING} deep"):
        check_gbnf(text)


@pytest.mark.parametrize("text", ['root ::= "a"{0,2001}', 'root ::= "a"{2001}',
                                  'root ::= "a"{2001,}', 'root ::= "a"{1,5000}'])
def test_repetition_above_llama_cpp_limit_is_refused(text: str) -> None:
    """Fails on e3a5e70: accepted, and llama.cpp silently made a maximum
    above 2000 unbounded."""
    with pytest.raises(InvalidArgument, match=f"at most {gbnf.REPEAT_LIMIT} repetitions"):
        check_gbnf(text)
    check_gbnf('root ::= "a"{0,2000}')


@pytest.mark.parametrize(("text", "message"), [
    ('root ::= root "a" | "b"', "left-recursive"),
    ('root ::= a\na ::= "(" a ")"? | "x"', "can nest without bound"),
    ('root ::= "a"{0,50}{0,50}', "would make 2500 rules"),
])
def test_grammars_llama_cpp_would_refuse_or_grow_are_named(text: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        check_gbnf(text)


@pytest.mark.parametrize("n", [30_000_000, 1_000_000_000])
def test_schema_with_huge_max_length_is_refused_before_expanding(n: int) -> None:
    """Fails on e3a5e70: the converter laid out one nested group per unit of
    maxLength (~24 bytes each) before the size check: 3e7 blocked the daemon
    3 s, 1e9 took 19 GB.  Now the bound is checked before conversion."""
    schema = json.dumps({"type": "string", "maxLength": n})
    with pytest.raises(InvalidArgument, match=f"above the limit of {MAX_SCHEMA_REPEAT}"):
        schema_to_gbnf(schema)


def test_schema_nested_too_deep_is_refused() -> None:
    """Fails on e3a5e70: the recursive checks ran out of stack (INTERNAL)."""
    schema: dict = {"type": "string"}
    for _ in range(300):
        schema = {"type": "array", "items": schema}
    with pytest.raises(InvalidArgument, match=f"nested deeper than {MAX_SCHEMA_DEPTH}"):
        schema_to_gbnf(json.dumps(schema))


REALISTIC = {
    "type": "object",
    "properties": {
        "summary": {"type": "string", "maxLength": 1500},
        "notes": {"type": "string", "minLength": 1, "maxLength": 8000},
        "visits": {"type": "array", "minItems": 1, "maxItems": 50, "items": {
            "type": "object",
            "properties": {"date": {"type": "string", "maxLength": 10},
                           "findings": {"type": "array", "items": {"type": "string"},
                                        "maxItems": 2500}},
            "required": ["date"]}},
        "patient": {"type": "object", "properties": {
            "name": {"type": "string", "maxLength": 200},
            "address": {"type": "object", "properties": {"city": {"type": "string"}}}}},
    },
    "required": ["summary", "visits"],
}


def test_realistic_schemas_convert() -> None:
    """Fails on e3a5e70: maxLength 1500 nested 1500 groups deep and the
    checker failed with INTERNAL."""
    gbnf_text = schema_to_gbnf(json.dumps({"type": "string", "maxLength": 1500}))
    assert "{0,999}" in gbnf_text and len(gbnf_text) < 1000
    gbnf_text = schema_to_gbnf(json.dumps(REALISTIC))
    assert len(gbnf_text) < 8000
    cost = gbnf_cost.cost(gbnf.parse(gbnf_text))
    assert cost.stacks <= gbnf_cost.MAX_STACKS and cost.elements <= gbnf_cost.MAX_ELEMENTS


def _as_regex(gbnf_text: str) -> re.Pattern[str]:
    """A repetition written by _repetition over atom x and separator ",",
    read as a Python regex (GBNF's {m,n}, ?, * and groups mean the same)."""
    body = gbnf_text.replace('"," ', ",").replace(" ", "").replace("(", "(?:")
    return re.compile(body)


@pytest.mark.parametrize(("lo", "hi"), [(0, 1), (0, 7), (2, 2), (3, 11), (0, 10), (7, 25),
                                        (0, None), (4, None)])
@pytest.mark.parametrize("separator", [None, '","'])
def test_bounded_repetition_matches_exactly_the_counts(monkeypatch: pytest.MonkeyPatch,
                                                       lo: int, hi: int | None,
                                                       separator: str | None) -> None:
    """Chunks of 3 so that the nested form for runs longer than a chunk is
    exercised; every count from lo to hi matches and no other does."""
    monkeypatch.setattr(grammar, "_CHUNK", 3)
    monkeypatch.setattr(grammar, "_SEPARATED_CHUNK", 3)
    text = grammar._repetition("x", lo, hi, separator)
    pattern = _as_regex(text)
    for count in range(0, 30):
        s = ",".join("x" * count) if separator else "x" * count
        expected = lo <= count and (hi is None or count <= hi)
        assert bool(pattern.fullmatch(s)) == expected, (text, count)
    check_gbnf(f"root ::= {text}\nx ::= \"x\"" if text else 'root ::= ""')


def test_large_specs_are_checked_off_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """A spec above INLINE_SPEC_BYTES is checked in a worker thread, so the
    event loop never runs the conversion (fails on e3a5e70: it had no such
    path; grammar_for ran on the loop)."""
    threads: list[int] = []
    real = grammar.grammar_for

    def spy(structured: StructuredOutput | None) -> str | None:
        threads.append(threading.get_ident())
        return real(structured)

    monkeypatch.setattr(grammar, "grammar_for", spy)
    big = StructuredOutput("grammar", 'root ::= "a"' + " " * INLINE_SPEC_BYTES)
    small = StructuredOutput("grammar", 'root ::= "a"')

    async def main() -> int:
        assert await grammar_for_async(big) == big.spec
        assert await grammar_for_async(small) == small.spec
        return threading.get_ident()

    loop_thread = asyncio.run(main())
    assert threads[0] != loop_thread and threads[1] == loop_thread
