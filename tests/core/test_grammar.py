"""GBNF checking and JSON-schema conversion (no model needed)."""
from __future__ import annotations

import json

import pytest

from runtime.core.grammar import check_gbnf, grammar_for, schema_to_gbnf
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
