"""The catalog's one connection, shared by the daemon's threads: readers of
the store and a writer of audit subject keys at once must not deadlock.

Checked that it can fail: without catalog.SerialConnection (the connection
opened without `factory=`) the child process hangs within seconds, with
one thread holding the GIL in sqlite3's bind and another holding the
database mutex in prepare, waiting for the GIL for the authorizer; the
timeout below then fails the test."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

CHILD = textwrap.dedent("""
    import sys, threading, time
    from pathlib import Path
    from runtime.storage.audit import AuditLog
    from runtime.storage.keys import KeySource
    from runtime.storage.store import Kind, SealedStore

    store = SealedStore.init(Path(sys.argv[1]), KeySource("key-file", "t", b"a" * 32))
    store.put_bytes(Kind.FEDERATION, "x", b"hello")
    audit = AuditLog(store)
    stop = time.monotonic() + 5.0
    done = [0, 0]

    def reader():
        while time.monotonic() < stop:
            assert store.read_bytes(Kind.FEDERATION, "x") == b"hello"
            done[0] += 1

    def writer():
        while time.monotonic() < stop:
            assert audit.content_key(audit.subject_id(f"s{done[1]}"), True)
            done[1] += 1

    threads = [threading.Thread(target=f) for f in (reader, writer, reader)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print("ok", done[0] > 0 and done[1] > 0)
""")


def test_readers_and_a_writer_share_the_catalog_without_deadlock(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "state")],
                          capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["ok", "True"]
