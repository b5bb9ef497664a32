"""The state-directory commands as an operator runs them: master key
sources (--passphrase-file, --credential), `keys status/rotate`,
`models import --remove-source`, `store verify` and `audit repair`."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from runtime.events import RequestFinished
from runtime.exit_codes import ExitCode
from runtime.storage.audit import AuditLog
from runtime.storage.keys import key_from_file
from runtime.storage.store import SealedStore


def hearth(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runtime.cli.main", *args],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL)


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_passphrase_file_status_and_rotation_to_a_new_key_file(tmp_path: Path,
                                                               tiny_model: Path) -> None:
    """`keys rotate --new-key-file` creates the file (its help says
    "created if missing"; it failed with "cannot read" until the command
    created the file before reading it: this test found that), re-wraps
    every key, and from then on only the new key opens the store;
    `keys status` tells which key is active and what it wraps."""
    state, passphrase = tmp_path / "state", tmp_path / "passphrase"
    passphrase.write_text("correct horse battery staple\n")
    by_pass = ["--state-dir", str(state), "--passphrase-file", str(passphrase)]
    ok(hearth("keys", "init", *by_pass))
    ok(hearth("models", "import", str(tiny_model), "--name", "tiny", *by_pass))
    status = ok(hearth("keys", "status", "--state-dir", str(state)))      # no key needed
    assert "(active): passphrase, scrypt," in status and "wraps 1 keys" in status
    old_id = status.split("master key ")[1].split()[0]

    new_key = tmp_path / "new.key"
    out = ok(hearth("keys", "rotate", *by_pass, "--new-key-file", str(new_key)))
    assert f"re-wrapped 1 objects from {old_id} to k-" in out
    assert new_key.stat().st_mode & 0o777 == 0o600
    status = ok(hearth("keys", "status", "--state-dir", str(state)))
    assert old_id not in status
    assert "(active): key-file, hkdf-sha256," in status and "wraps 1 keys" in status
    refused = hearth("store", "list", *by_pass)
    assert refused.returncode == ExitCode.WRONG_KEY
    assert "does not open this store" in refused.stderr
    by_key = ["--state-dir", str(state), "--key-file", str(new_key)]
    assert "tiny" in ok(hearth("store", "list", *by_key))
    # A passphrase file that is empty is refused by name.
    (tmp_path / "empty").write_text("")
    empty = hearth("store", "list", "--state-dir", str(state), "--passphrase-file",
                   str(tmp_path / "empty"))
    assert empty.returncode == ExitCode.CONFIG and "is empty" in empty.stderr


def test_a_systemd_credential_is_a_key_source(tmp_path: Path, tiny_model: Path) -> None:
    """--credential NAME reads $CREDENTIALS_DIRECTORY/NAME (what systemd's
    LoadCredential= provides); without that directory it is a CONFIG error,
    and a short secret is refused.  Fails if --credential were ignored
    (the store would be opened by prompt, which has no terminal here)."""
    creds = tmp_path / "credentials"
    creds.mkdir()
    (creds / "hearth-master").write_bytes(os.urandom(32).hex().encode())
    (creds / "short").write_bytes(b"too short")
    env = {"CREDENTIALS_DIRECTORY": str(creds)}
    state = tmp_path / "state"
    common = ["--state-dir", str(state), "--credential", "hearth-master"]
    ok(hearth("keys", "init", *common, env=env))
    ok(hearth("models", "import", str(tiny_model), "--name", "tiny", *common, env=env))
    assert "(active): credential, hkdf-sha256," in ok(hearth("keys", "status", "--state-dir",
                                                             str(state)))
    assert "tiny" in ok(hearth("store", "list", *common, env=env))
    without = hearth("store", "list", *common,
                     env={"CREDENTIALS_DIRECTORY": ""})
    assert without.returncode == ExitCode.CONFIG
    assert "$CREDENTIALS_DIRECTORY is not set" in without.stderr
    short = hearth("store", "list", "--state-dir", str(state), "--credential", "short", env=env)
    assert short.returncode == ExitCode.CONFIG and "need at least 32" in short.stderr
    other = tmp_path / "other"
    other.mkdir()
    (other / "hearth-master").write_bytes(os.urandom(32).hex().encode())
    wrong = hearth("store", "list", *common, env={"CREDENTIALS_DIRECTORY": str(other)})
    assert wrong.returncode == ExitCode.WRONG_KEY


def test_remove_source_unlinks_only_after_a_successful_import(tmp_path: Path,
                                                              tiny_model: Path) -> None:
    """Fails if --remove-source were ignored (the file stays) or applied
    without the flag."""
    key = tmp_path / "master.key"
    common = ["--state-dir", str(tmp_path / "state"), "--key-file", str(key)]
    ok(hearth("keys", "init", *common))
    kept, removed = tmp_path / "kept.gguf", tmp_path / "removed.gguf"
    for path in (kept, removed):
        path.write_bytes(tiny_model.read_bytes())
    ok(hearth("models", "import", str(kept), "--name", "kept", *common))
    assert kept.exists()
    result = hearth("models", "import", str(removed), "--name", "removed", "--remove-source",
                    *common)
    ok(result)
    assert not removed.exists()
    assert f"removed {removed} (unlinked; not a secure erase)" in result.stderr
    notes = tmp_path / "notes.txt"
    notes.write_text("seen for follow-up\n" * 10)
    ok(hearth("data", "add", "notes", str(notes), "--remove-source", *common))
    assert not notes.exists()
    # A failed import leaves the source where it was.
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a model at all")
    failed = hearth("models", "import", str(junk), "--name", "junk", "--remove-source",
                    *common)
    assert failed.returncode != 0 and junk.exists()
    listing = ok(hearth("store", "list", *common))
    assert "kept" in listing and "removed" in listing and "junk" not in listing


def test_store_verify_finds_a_flipped_bit(tmp_path: Path, tiny_model: Path) -> None:
    """Fails if `store verify` did not decrypt and check every chunk: one
    bit flipped in the middle of the sealed object makes it exit INTEGRITY."""
    key = tmp_path / "master.key"
    state = tmp_path / "state"
    common = ["--state-dir", str(state), "--key-file", str(key)]
    ok(hearth("keys", "init", *common))
    ok(hearth("models", "import", str(tiny_model), "--name", "tiny", *common))
    assert "every chunk and the SHA-256 verify" in ok(hearth("store", "verify", "tiny",
                                                             *common))
    (sealed,) = (state / "objects").iterdir()
    data = bytearray(sealed.read_bytes())
    data[len(data) // 2] ^= 0x01
    sealed.write_bytes(bytes(data))
    bad = hearth("store", "verify", "tiny", *common)
    assert bad.returncode == ExitCode.INTEGRITY, bad.stderr
    missing = hearth("store", "verify", "nope", *common)
    assert missing.returncode != 0 and "nope" in missing.stderr


def test_audit_repair_sets_a_broken_log_aside_and_starts_a_new_chain(tmp_path: Path) -> None:
    """A log with a deleted record: `audit verify` exits INTEGRITY naming
    the break, `audit repair` keeps the broken file and starts a chain that
    verifies; a second repair is refused (nothing to repair).  Fails if
    repair left the broken log in place (verify would still fail)."""
    key = tmp_path / "master.key"
    state = tmp_path / "state"
    common = ["--state-dir", str(state), "--key-file", str(key)]
    ok(hearth("keys", "init", *common))
    store = SealedStore.open(state, key_from_file(str(key)))
    log = AuditLog(store)
    log.start()
    for i in range(5):
        log.record(RequestFinished(f"req-{i}", "tiny", "uid:0", "generate", "ok", "length",
                                   3, 5, 0, 0.0, 0.01, 0.02))
    log.close()
    store.close()
    assert "audit log intact" in ok(hearth("audit", "verify", *common))
    path = state / "audit" / "log.jsonl"
    lines = path.read_text().splitlines()
    del lines[2]
    path.write_text("\n".join(lines) + "\n")
    broken = hearth("audit", "verify", *common)
    assert broken.returncode == ExitCode.INTEGRITY and "audit log BROKEN" in broken.stdout
    repaired = ok(hearth("audit", "repair", *common))
    assert "set the broken log aside as" in repaired
    (aside,) = (state / "audit").glob("log-broken-*.jsonl")
    assert aside.read_text().splitlines() == lines
    assert "audit log intact" in ok(hearth("audit", "verify", *common))
    again = hearth("audit", "repair", *common)
    assert again.returncode != 0 and "nothing to repair" in again.stderr
