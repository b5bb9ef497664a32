"""Property-based fuzzing of the GBNF checker and the JSON-schema converter
(SECURITY-CASES 25).  Whatever the input, the answer is the checked text or
InvalidArgument (never another exception), and what passes is within the
cost limits.  Time-bounded: a fixed number of examples, no per-example
deadline (the machine may be shared).

Fails on e3a5e70: deeply nested groups raised RecursionError, schemas with
large maxLength expanded without bound, and the cost limits did not exist."""
from __future__ import annotations

import json
import string

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime.core import gbnf, gbnf_cost
from runtime.core.grammar import MAX_SPEC_BYTES, check_gbnf, schema_to_gbnf
from runtime.errors import InvalidArgument

FUZZ = settings(max_examples=150, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])

_GBNF_CHARS = st.sampled_from(list('root a b ::= | ( ) [ ] " * + ? { } , 0 1 9 2001 \\ \n # . < > !'
                                   .split(" ")) + [" ", "x", "y", "-", "^", "::=", "root ::= "])


def _within_limits(text: str) -> None:
    cost = gbnf_cost.cost(gbnf.parse(text))
    assert cost.stacks <= gbnf_cost.MAX_STACKS
    assert cost.work <= gbnf_cost.MAX_WORK
    assert cost.elements <= gbnf_cost.MAX_ELEMENTS


def _answer(text: str) -> None:
    try:
        out = check_gbnf(text)
    except InvalidArgument as exc:
        assert str(exc).startswith("grammar: ")
        return
    assert out == text
    _within_limits(text)


@FUZZ
@given(st.lists(_GBNF_CHARS, max_size=80).map("".join))
def test_any_text_gets_the_grammar_or_invalid_argument(text: str) -> None:
    _answer(text)


_NAMES = ["root", "a", "b", "c"]


@st.composite
def _item(draw: st.DrawFn, depth: int = 0) -> str:
    kind = draw(st.sampled_from(["lit", "cls", "ref", "group", "empty", "dot"]
                                if depth < 3 else ["lit", "cls", "ref"]))
    if kind == "lit":
        base = json.dumps(draw(st.text(alphabet="xyz", min_size=1, max_size=3)))
    elif kind == "cls":
        base = "[" + draw(st.sampled_from(["a-z", "xy", "^\\n", "0-9"])) + "]"
    elif kind == "ref":
        base = draw(st.sampled_from(_NAMES))
    elif kind == "empty":
        base = '""'
    elif kind == "dot":
        base = "."
    else:
        alts = draw(st.lists(st.lists(_item(depth + 1), min_size=0, max_size=3),
                             min_size=1, max_size=3))
        base = "(" + " | ".join(" ".join(a) for a in alts) + ")"
    suffix = draw(st.sampled_from(["", "", "*", "+", "?", "{2}", "{0,3}", "{1,}", "{40,60}",
                                   "{0,2000}", "{0,2001}"]))
    return base + suffix


@st.composite
def _grammar(draw: st.DrawFn) -> str:
    rules = []
    for name in _NAMES:
        alts = draw(st.lists(st.lists(_item(), min_size=0, max_size=6), min_size=1,
                             max_size=4))
        rules.append(f"{name} ::= " + " | ".join(" ".join(a) for a in alts))
    return "\n".join(rules)


@FUZZ
@given(_grammar())
def test_generated_grammars_get_checked_or_invalid_argument(text: str) -> None:
    _answer(text)


@FUZZ
@given(st.integers(min_value=1, max_value=40), st.integers(min_value=1, max_value=4000))
def test_nullable_chains_are_bounded(n_alts: int, n_refs: int) -> None:
    """The attack's shape at every size: either refused, or within the
    limits the engine's grammar work is sized for."""
    text = ("root ::= " + " ".join(["a"] * n_refs) + "\na ::= "
            + " | ".join(f'"{c}"' for c in string.ascii_lowercase[:min(n_alts, 26)]) + " |")
    _answer(text)


_LEAF = st.one_of(
    st.just({"type": "integer"}), st.just({"type": "number"}), st.just({"type": "boolean"}),
    st.builds(lambda lo, hi: {"type": "string", "minLength": lo, "maxLength": lo + hi},
              st.integers(0, 3000), st.integers(0, 12000)),
    st.builds(lambda v: {"enum": v}, st.lists(st.text(max_size=4), min_size=1, max_size=5)),
    st.just({"type": "string", "pattern": "^[a-z]{2,30}$"}),
)


def _extend(inner: st.SearchStrategy) -> st.SearchStrategy:
    return st.one_of(
        st.builds(lambda items, lo, hi: {"type": "array", "items": items, "minItems": lo,
                                         "maxItems": lo + hi},
                  inner, st.integers(0, 3000), st.integers(0, 12000)),
        st.builds(lambda props, req: {"type": "object", "properties": props,
                                      "required": sorted(props)[:req]},
                  st.dictionaries(st.sampled_from(list("abcdefgh")), inner, max_size=5),
                  st.integers(0, 5)),
        st.builds(lambda alts: {"anyOf": alts}, st.lists(inner, min_size=1, max_size=3)),
    )


@FUZZ
@given(st.recursive(_LEAF, _extend, max_leaves=12))
def test_schemas_convert_within_bounds_or_invalid_argument(schema: dict) -> None:
    try:
        out = schema_to_gbnf(json.dumps(schema))
    except InvalidArgument as exc:
        assert str(exc).startswith("json_schema: ")
        return
    assert len(out.encode()) <= MAX_SPEC_BYTES
    _within_limits(out)
