"""The one rule for host tools (tests/conftest.py): a developer's machine
without one skips the tests that need it, CI fails them, naming the tool."""
from __future__ import annotations

import pytest

from tests.conftest import have_tool, require_tool

MISSING = "hearth-no-such-tool"


def test_a_missing_tool_skips_outside_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=f"{MISSING} is not installed"):
        require_tool(MISSING)
    assert have_tool(MISSING) is False


@pytest.mark.parametrize("value", ["true", "1", "TRUE"])
def test_a_missing_tool_fails_in_ci(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    """Checked: with in_ci() returning False this fails (the test skips)."""
    monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.fail.Exception, match=f"missing host tool in CI: {MISSING}"):
        require_tool(MISSING)
    with pytest.raises(pytest.fail.Exception, match=MISSING):
        have_tool(MISSING)


def test_a_present_tool_is_found(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    assert require_tool("sh").endswith("/sh") and have_tool("sh")
