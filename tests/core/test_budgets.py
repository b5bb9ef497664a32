"""A budget for every request field: each numeric and list field is bounded
before anything is allocated for it, and a value out of bounds is
INVALID_ARGUMENT naming the field and the limit (issue 15)."""
from __future__ import annotations

import pytest

from runtime.core import ChatMessage, GenerationOptions
from runtime.core.validation import (
    MAX_MESSAGES,
    OptionError,
    check_messages,
    check_options,
    check_printable,
    check_prompt_tokens,
    check_stops,
    sampling_from,
)
from runtime.errors import InvalidArgument


@pytest.mark.parametrize("window", [2**28, 2**31 - 1, 131073])
def test_penalty_last_n_is_bounded(window: int) -> None:
    """llama.cpp allocates 4 bytes per unit of the window at submit, on the
    event loop.  Fails on e3a5e70: any value >= -1 was accepted (2**28 cost
    about 1 GB), checked by running this test against that commit's
    validation.py."""
    with pytest.raises(InvalidArgument, match=r"penalty_last_n: must be in \[-1, 131072\]"):
        sampling_from(GenerationOptions(penalty_last_n=window))
    assert dict(sampling_from(GenerationOptions(penalty_last_n=131072)).values)[
        "penalty_last_n"] == 131072


@pytest.mark.parametrize(("field", "value"), [
    ("top_k", 2**31), ("top_k", 10**30), ("seed", 2**32 - 1), ("seed", 2**64),
    ("temperature", 10**400), ("top_p", float("nan")),
])
def test_numbers_out_of_the_c_types_are_refused(field: str, value: float) -> None:
    """Fails on e3a5e70 for top_k: a value past int32 passed validation and
    raised OverflowError in the binding's copy into the C struct (INTERNAL);
    for temperature=10**400, math.isfinite raised OverflowError."""
    with pytest.raises(InvalidArgument, match=f"^{field}: must be "):
        sampling_from(GenerationOptions(**{field: value}))


def test_top_logprobs_is_bounded() -> None:
    with pytest.raises(OptionError, match=r"top_logprobs: must be in \[0, 20\], got 21"):
        check_options(GenerationOptions(logprobs=True, top_logprobs=21))


@pytest.mark.parametrize(("stops", "message"), [
    (tuple("abcdefghijklmnopq"), "stop: at most 16 strings, got 17"),
    (("ok", "x" * 257), r"stop\[1\]: longer than 256 bytes"),
    (("", ), r"stop\[0\]: must not be empty"),
    (("a\0b",), r"stop\[0\]: must not contain NUL"),
    (("\ud800",), r"stop\[0\]: is not valid Unicode"),
])
def test_stop_lists_have_a_budget(stops: tuple[str, ...], message: str) -> None:
    """The lone surrogate fails on e3a5e70: `encode` raised
    UnicodeEncodeError, an INTERNAL error (KServe's sampling_parameters can
    carry one as a JSON \\ud800 escape)."""
    with pytest.raises(InvalidArgument, match=message):
        check_stops(stops)


@pytest.mark.parametrize("name", ["x" * 257, "a\nb", "\ud800", "a\u202eb"])
def test_adapter_names_are_short_plain_text(name: str) -> None:
    """Fails on e3a5e70: any adapter string went on to the lookup and into
    the NotFound message."""
    with pytest.raises(OptionError) as err:
        check_options(GenerationOptions(adapter=name))
    assert err.value.option == "adapter"


def test_prompt_token_count_is_checked_before_each_id() -> None:
    """A prompt longer than the context is refused in one comparison,
    before a loop over (up to millions of) ids.  On e3a5e70 the core looped
    over every id first (and named prompt_tokens[0] here)."""
    with pytest.raises(InvalidArgument, match="prompt: 4096 tokens do not fit the model's "
                                              "context of 512"):
        check_prompt_tokens([10**9] * 4096, n_vocab=100, n_ctx_slot=512)
    with pytest.raises(InvalidArgument, match=r"prompt_tokens\[1\]: 100 is outside"):
        check_prompt_tokens([1, 100], n_vocab=100, n_ctx_slot=512)
    check_prompt_tokens([0, 99], n_vocab=100, n_ctx_slot=512)


def test_message_count_and_text_are_bounded() -> None:
    """Fails on e3a5e70: any number of messages was rendered, and a lone
    surrogate in content failed in the chat template's encode (INTERNAL)."""
    with pytest.raises(InvalidArgument, match=f"messages: at most {MAX_MESSAGES} messages"):
        check_messages((ChatMessage("user", "hi"),) * (MAX_MESSAGES + 1))
    with pytest.raises(InvalidArgument, match=r"messages\[0\].content: is not valid Unicode"):
        check_messages((ChatMessage("user", "bad \udfff"),))


@pytest.mark.parametrize("value", ["id\n", "a\rb", "nul\0", "esc\x1b[2J", "\u2028", "x" * 65])
def test_echoed_names_and_ids_must_be_plain(value: str) -> None:
    """SECURITY-CASES 33: a trailing newline, CR, NUL or other control
    character in an id is refused, never written into a log line."""
    with pytest.raises(InvalidArgument, match=r"^id: "):
        check_printable("id", value, 64)
    assert check_printable("id", "req-42.a:b", 64) == "req-42.a:b"


@pytest.mark.parametrize(("kind", "field"), [("grammar", "grammar"),
                                             ("json_schema", "json_schema")])
def test_a_lone_surrogate_in_structured_output_is_invalid_argument(kind: str,
                                                                   field: str) -> None:
    """KServe's sampling_parameters and OpenAI's response_format are JSON,
    whose \\ud800 escapes give lone surrogates.  Fails on e3a5e70:
    grammar_for raised UnicodeEncodeError (INTERNAL)."""
    from runtime.core.types import StructuredOutput
    from runtime.core.validation import check_structured

    spec = 'root ::= "\ud800"' if kind == "grammar" else '{"enum": ["\ud800"]}'
    with pytest.raises(InvalidArgument, match=f"^{field}: is not valid Unicode"):
        check_structured(GenerationOptions(structured=StructuredOutput(kind, spec)))
