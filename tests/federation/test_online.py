"""The Federation service's authenticator: the registry authenticates every
call with it, so a servicer method never runs for a caller that is not an
enrolled site (the TLS handshake already refused certificates of another
CA; tests/integration/test_federation.py shows that)."""
from __future__ import annotations

import pytest

from runtime.errors import PermissionDenied
from runtime.federation.online import SiteAuthenticator


class Context:
    def __init__(self, auth: dict) -> None:
        self.auth = auth

    def auth_context(self) -> dict:
        return self.auth


def test_an_enrolled_site_is_named_by_its_certificate() -> None:
    who = SiteAuthenticator({"ward-0": object()}).authenticate(
        Context({"x509_common_name": [b"ward-0"]}))  # type: ignore[arg-type]
    assert who.identity == "site:ward-0" and not who.admin and who.models == frozenset()


@pytest.mark.parametrize("auth", [{"x509_common_name": [b"ward-9"]}, {}],
                         ids=["not-enrolled", "no-certificate"])
def test_anyone_else_is_refused(auth: dict) -> None:
    with pytest.raises(PermissionDenied, match="is not enrolled in this federation"):
        SiteAuthenticator({"ward-0": object()}).authenticate(Context(auth))  # type: ignore[arg-type]
