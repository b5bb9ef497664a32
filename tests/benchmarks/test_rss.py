"""benchmarks/rss.py reads /proc itself; these check its parsing on this process."""
from __future__ import annotations

import os

from benchmarks.rss import largest_mappings, proc_status_kib


def test_the_mappings_add_up_to_the_resident_set() -> None:
    """Every mapping's Rss line is counted once: their sum is VmRSS (smaps and
    status are read a moment apart, hence the slack).  Fails when a header
    line is mistaken for another (a mapping's RSS then lands under the
    previous name or is lost) or when a field is read from the wrong line:
    requiring a sixth field in a header (the name) fails it, checked."""
    pid = os.getpid()
    maps = largest_mappings(pid, top=10_000)
    total = sum(kib for kib, _ in maps)
    assert abs(total - proc_status_kib(pid, "VmRSS")) < 4096
    assert [kib for kib, _ in maps] == sorted((kib for kib, _ in maps), reverse=True)
    names = {name for _, name in maps}
    assert "[anon]" in names and "[stack]" in names
    assert any(name.endswith(".so") or ".so." in name for name in names)
    assert proc_status_kib(pid, "VmHWM") >= proc_status_kib(pid, "VmRSS") - 4096
