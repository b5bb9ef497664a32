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
    """Checked: with in_ci() returning False this fails (a skip is caught
    and is not the failure asked for)."""
    monkeypatch.setenv("CI", value)
    for check in (require_tool, have_tool):
        # BaseException: a skip must be caught here too, to fail this test
        with pytest.raises(BaseException) as err:
            check(MISSING)
        assert err.type is pytest.fail.Exception, err.type
        assert f"missing host tool in CI: {MISSING} is not installed" in str(err.value)


def test_a_present_tool_is_found(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    assert require_tool("sh").endswith("/sh") and have_tool("sh")
