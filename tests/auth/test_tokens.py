"""Bearer tokens and principals, without a daemon."""
from __future__ import annotations

from pathlib import Path

import pytest

from runtime.auth.principal import Principal
from runtime.auth.tokens import TokenStore
from runtime.errors import AlreadyExists, PermissionDenied, Unauthenticated
from runtime.storage.keys import KeySource
from runtime.storage.store import SealedStore


@pytest.fixture
def tokens(tmp_path: Path) -> TokenStore:
    store = SealedStore.init(tmp_path / "state", KeySource("key-file", "t", b"k" * 32))
    yield TokenStore(store)
    store.close()


def test_a_token_carries_its_models_and_admin_flag(tokens: TokenStore) -> None:
    token = tokens.create("ward", ["tiny", "gemma"])
    p = tokens.verify(token)
    assert p.identity == "token:ward" and p.models == frozenset({"tiny", "gemma"})
    assert not p.admin
    ops = tokens.verify(tokens.create("ops", ["*"], admin=True))
    assert ops.models is None and ops.admin


def test_only_a_keyed_hash_is_stored(tokens: TokenStore) -> None:
    token = tokens.create("ward", ["tiny"])
    secret = token.rsplit("_", 1)[1].encode()
    catalog = b"".join(p.read_bytes() for p in tokens.store.state_dir.glob("catalog.sqlite*"))
    assert secret not in catalog and token.encode() not in catalog


@pytest.mark.parametrize("bad", ["", "hth_", "Bearer x", "hth_000000000000_" + "A" * 43,
                                 "x" * 5000, "hth_zzzzzzzzzzzz_" + "A" * 43])
def test_bad_tokens_are_unauthenticated(tokens: TokenStore, bad: str) -> None:
    tokens.create("ward", ["tiny"])
    with pytest.raises(Unauthenticated, match="invalid, unknown or revoked token"):
        tokens.verify(bad)


def test_tampered_and_revoked_tokens_fail(tokens: TokenStore, monkeypatch: pytest.MonkeyPatch
                                          ) -> None:
    token = tokens.create("ward", ["tiny"])
    flipped = token[:-1] + ("A" if token[-1] != "A" else "B")
    with pytest.raises(Unauthenticated):
        tokens.verify(flipped)
    assert tokens.revoke("ward")
    with pytest.raises(Unauthenticated):
        tokens.verify(token)
    assert not tokens.revoke("ward")
    # The name can be reused once the old token is revoked, not before.
    tokens.create("ward", ["tiny"])
    with pytest.raises(AlreadyExists):
        tokens.create("ward", ["tiny"])
    assert [t.revoked_at is not None for t in tokens.list()] == [True, False]


def test_principal_checks() -> None:
    p = Principal("token:ward", frozenset({"tiny"}))
    p.check_model("tiny")
    with pytest.raises(PermissionDenied, match="token:ward may not use model 'gemma'"):
        p.check_model("gemma")
    with pytest.raises(PermissionDenied, match="may not load models"):
        p.check_admin("load models")
