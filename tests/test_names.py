"""Identifier checks (runtime/names.py), SECURITY-CASES 33: names and ids
with control characters are refused, wherever they come from."""
from __future__ import annotations

import pytest

from runtime.config import parse_config
from runtime.errors import ConfigError, InvalidArgument
from runtime.federation.pki import make_site_request
from runtime.request_meta import sane_request_id, sane_subject

CONTROL = ["gemma\n", "gemma\r", "gem\0ma", "gemma\r\n", "\ngemma", "gem\tma", "gemma\x7f",
           "gemma\x85"]


@pytest.mark.parametrize("name", CONTROL)
def test_config_refuses_model_names_with_control_characters(name: str) -> None:
    """Fails on e3a5e70 for "gemma\\n": NAME_RE ended in `$`, which matches
    before a final newline, so the name was accepted (checked by running
    this test there; the other cases were refused already)."""
    with pytest.raises(ConfigError, match="is not a valid name"):
        parse_config({"models": {name: {"path": "/m.gguf"}}})


@pytest.mark.parametrize("name", ["site\n", "../site", "site name"])
def test_a_bad_site_name_is_invalid_argument_not_a_config_error(name: str) -> None:
    """Names that arrive over the network or the CLI are InvalidArgument, not
    ConfigError (a ConfigError means the config file is wrong).  Fails on
    e3a5e70: check_model_name raised ConfigError, and accepted "site\\n"
    (checked by running this test there)."""
    with pytest.raises(InvalidArgument, match="is not a valid name") as caught:
        make_site_request(name)
    assert not isinstance(caught.value, ConfigError)


@pytest.mark.parametrize("value", ["req-1\n", "req\r1", "req\x001"])
def test_request_ids_with_control_characters_are_not_echoed(value: str) -> None:
    """A KServe or gRPC request id with a newline split a log line.  Fails on
    e3a5e70 for "req-1\\n" (`$` before the final newline; checked by running
    this test there)."""
    assert not sane_request_id(value)
    assert sane_request_id("req-1")


@pytest.mark.parametrize("value", ["alice\nbob", "alice\r", "alice\0", "alice\x1b[31m"])
def test_audit_subjects_with_control_characters_are_dropped(value: str) -> None:
    """Fails on e3a5e70: any text up to 256 characters was a subject
    (checked by running this test there)."""
    assert not sane_subject(value)
    assert sane_subject("patient 4711 / ward B")
