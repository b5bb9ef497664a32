"""Master key sources and the keyring (SECURITY-CASES 5)."""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from runtime.errors import ConfigError, FailedPrecondition, IntegrityError, WrongKey
from runtime.storage.keys import (
    Keyring,
    KeySource,
    create_key_file,
    key_from_credential,
    key_from_file,
    key_source,
    passphrase_from_file,
)


def test_key_file_must_be_private(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    create_key_file(str(path))
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert key_from_file(str(path)).kind == "key-file"
    os.chmod(path, 0o640)
    with pytest.raises(ConfigError, match=r"readable by others.*chmod 600"):
        key_from_file(str(path))
    short = tmp_path / "short.key"
    short.write_bytes(b"too short")
    os.chmod(short, 0o600)
    with pytest.raises(ConfigError, match="at least 32"):
        key_from_file(str(short))


def test_credential_comes_from_the_systemd_directory(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    with pytest.raises(ConfigError, match="CREDENTIALS_DIRECTORY"):
        key_from_credential("hearth-master")
    (tmp_path / "hearth-master").write_bytes(b"c" * 40)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    assert key_from_credential("hearth-master").secret == b"c" * 40
    with pytest.raises(ConfigError, match="not a credential name"):
        key_from_credential("../etc/passwd")


def test_exactly_one_source(tmp_path: Path) -> None:
    pf = tmp_path / "pass"
    pf.write_text("correct horse battery staple\n")
    assert passphrase_from_file(str(pf)).secret == b"correct horse battery staple"
    with pytest.raises(ConfigError, match="give one of"):
        key_source("a", str(pf), None)


def test_passphrase_keyring_records_scrypt_and_refuses_wrong_keys(tmp_path: Path) -> None:
    ring = Keyring(tmp_path)
    right = KeySource("passphrase", "t", b"open sesame")
    master = ring.init(right)
    data = ring.load()
    assert data["keks"][0]["kdf"] == {"name": "scrypt", "n": 32768, "r": 8, "p": 1}
    assert ring.unlock(right).key == master.key
    with pytest.raises(WrongKey) as by_passphrase:
        ring.unlock(KeySource("passphrase", "t", b"open sesame!"))
    with pytest.raises(WrongKey) as by_file:
        ring.unlock(KeySource("key-file", "t", b"k" * 32))
    assert str(by_passphrase.value) == str(by_file.value)
    with pytest.raises(FailedPrecondition):
        ring.init(right)


def test_repeated_failures_are_slowed_down_across_restarts(tmp_path: Path) -> None:
    ring = Keyring(tmp_path)
    ring.init(KeySource("key-file", "t", b"a" * 32))
    wrong = KeySource("key-file", "t", b"b" * 32)
    for _ in range(3):
        with pytest.raises(WrongKey):
            ring.unlock(wrong, now=1e12)   # as if long after: count, do not wait
    data = Keyring(tmp_path).load()        # a new process reads the same counter
    assert data["failed_attempts"] == 3
    assert Keyring.backoff_s(3) == 2.0
    assert Keyring.backoff_s(20) == 60.0
    start = time.monotonic()
    with pytest.raises(WrongKey):
        Keyring(tmp_path).unlock(wrong)    # waits out the 2 s back-off first
    assert time.monotonic() - start >= 1.5
    Keyring(tmp_path).unlock(KeySource("key-file", "t", b"a" * 32), now=1e12)
    assert Keyring(tmp_path).load()["failed_attempts"] == 0


def test_wrapped_keys_are_bound_to_their_object(tmp_path: Path) -> None:
    master = Keyring(tmp_path).init(KeySource("key-file", "t", b"a" * 32))
    wrapped = master.wrap(b"d" * 32, "object-1")
    assert master.unwrap(wrapped, "object-1") == b"d" * 32
    with pytest.raises(IntegrityError):
        master.unwrap(wrapped, "object-2")


def test_corrupt_keyring_is_an_integrity_error(tmp_path: Path) -> None:
    (tmp_path / "keyring.json").write_text("{not json")
    with pytest.raises(IntegrityError):
        Keyring(tmp_path).load()
