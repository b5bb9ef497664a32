"""Authentication of HTTP requests: the same tokens and rules as gRPC,
from the Authorization header alone."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.auth.authenticator import Authenticator, bearer_token
from runtime.auth.principal import ANONYMOUS
from runtime.auth.tokens import TokenStore
from runtime.config import AuthConfig
from runtime.errors import Unauthenticated
from runtime.storage.keys import KeySource
from runtime.storage.store import SealedStore


@pytest.fixture
def tokens(tmp_path: Path) -> Iterator[TokenStore]:
    store = SealedStore.init(tmp_path / "state", KeySource("key-file", "t", b"k" * 32))
    yield TokenStore(store)
    store.close()


def authenticator(tokens: TokenStore | None, require: bool) -> Authenticator:
    return Authenticator(AuthConfig(require=require), {}, tokens)


def test_required_tokens(tokens: TokenStore) -> None:
    auth = authenticator(tokens, require=True)
    ward = tokens.create("ward", ["tiny"])
    caller = auth.authenticate_http(f"Bearer {ward}")
    assert caller.identity == "token:ward" and caller.models == frozenset({"tiny"})
    assert auth.authenticate_http(f"bearer {ward}").identity == "token:ward"
    with pytest.raises(Unauthenticated, match="credentials required"):
        auth.authenticate_http(None)
    for bad in ("Bearer none", "Bearer ", f"Basic {ward}", ward, f"Bearer {ward}x"):
        with pytest.raises(Unauthenticated):
            auth.authenticate_http(bad)
    tokens.revoke("ward")
    with pytest.raises(Unauthenticated, match="revoked"):
        auth.authenticate_http(f"Bearer {ward}")


def test_optional_tokens_ignore_placeholder_keys_but_verify_real_ones(tokens: TokenStore
                                                                     ) -> None:
    auth = authenticator(tokens, require=False)
    assert auth.authenticate_http(None) is ANONYMOUS
    # OpenAI clients insist on some key; one that is not a Hearth token is no credential
    assert auth.authenticate_http("Bearer none") is ANONYMOUS
    assert auth.authenticate_http("Bearer sk-placeholder") is ANONYMOUS
    ward = tokens.create("ward", ["tiny"])
    assert auth.authenticate_http(f"Bearer {ward}").models == frozenset({"tiny"})
    with pytest.raises(Unauthenticated):
        auth.authenticate_http("Bearer hth_000000000000_" + "A" * 43)
    with pytest.raises(Unauthenticated, match="expected 'Bearer <token>'"):
        auth.authenticate_http("Basic dXNlcjpwdw==")


def test_without_a_token_store_tokens_cannot_be_checked() -> None:
    with pytest.raises(Unauthenticated, match="does not accept tokens"):
        authenticator(None, require=True).authenticate_http("Bearer hth_x")
    assert authenticator(None, require=False).authenticate_http("Bearer none") is ANONYMOUS


def test_bearer_token_parsing() -> None:
    assert bearer_token("Bearer abc ") == "abc"
    assert bearer_token("BEARER abc") == "abc"
    for bad in (None, b"Bearer abc", "Bearerabc", "Token abc", ""):
        with pytest.raises(Unauthenticated):
            bearer_token(bad)
