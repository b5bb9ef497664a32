"""The security cases the tests cite are the ones written down in the repo.

`docs/security-cases.md` lists the cases; tests name the cases they cover as
`SECURITY-CASES N[, M …]`.  Checked that it can fail: removing row 33 from the
document, or citing "SECURITY-CASES 99" in a test docstring, fails it.
"""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "security-cases.md"
CITATION = re.compile(r"SECURITY-CASES((?:[\s,]*(?:and\s+)?\d+(?:[-–]\d+)?)+)")


def listed_cases() -> set[int]:
    return {int(m.group(1)) for m in re.finditer(r"^\| (\d+) \|", DOC.read_text(), re.M)}


def cited_cases() -> dict[int, list[str]]:
    cited: dict[int, list[str]] = {}
    for path in sorted((ROOT / "tests").rglob("*.py")):
        if path.name == Path(__file__).name:
            continue
        for match in CITATION.finditer(path.read_text(encoding="utf-8")):
            for first, last in re.findall(r"(\d+)(?:[-–](\d+))?", match.group(1)):
                for number in range(int(first), int(last or first) + 1):
                    cited.setdefault(number, []).append(str(path.relative_to(ROOT)))
    return cited


def test_cases_are_numbered_without_gaps() -> None:
    cases = listed_cases()
    assert cases == set(range(1, max(cases) + 1))


def test_every_cited_case_is_listed() -> None:
    unknown = {n: where for n, where in cited_cases().items() if n not in listed_cases()}
    assert not unknown, f"tests cite cases missing from {DOC.name}: {unknown}"


def test_every_listed_case_is_cited_by_a_test() -> None:
    missing = sorted(listed_cases() - set(cited_cases()))
    assert not missing, f"cases with no test citing them: {missing}"
