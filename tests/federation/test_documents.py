"""Enrollment requests, site kits and release files: round trips, and every
way a changed or misdirected document is refused."""
from __future__ import annotations

import json
import os

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from runtime import errors
from runtime.federation.documents import (
    SiteKit,
    SiteRequest,
    open_release_file,
    seal_release_file,
)
from runtime.federation.pki import FederationAuthority, make_site_request, pem_cert

RELEASE_KEY = os.urandom(32)


def test_release_file_round_trip_and_a_courier_sees_nothing() -> None:
    adapter = b"GGUF" + os.urandom(4000)
    blob = seal_release_file(b'{"manifest": "m"}', adapter, RELEASE_KEY)
    assert open_release_file(blob, RELEASE_KEY) == (b'{"manifest": "m"}', adapter)
    assert adapter[4:64] not in blob


@pytest.mark.parametrize("change", ["flip-envelope", "flip-adapter", "truncate", "magic",
                                    "other-key"])
def test_release_file_changes_are_refused(change: str) -> None:
    blob = bytearray(seal_release_file(b'{"manifest": "m"}', b"adapter bytes", RELEASE_KEY))
    key = RELEASE_KEY
    if change == "flip-envelope":
        blob[22] ^= 1
    elif change == "flip-adapter":
        blob[-3] ^= 1
    elif change == "truncate":
        blob = blob[:30]
    elif change == "magic":
        blob[0:6] = b"XXXXXX"
    else:
        key = os.urandom(32)
    with pytest.raises(errors.IntegrityError, match="release file"):
        open_release_file(bytes(blob), key)


def _request(site: str = "ward-1") -> tuple[SiteRequest, X25519PrivateKey]:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from runtime.federation.documents import b64, raw_public

    _, csr = make_site_request(site)
    exchange = X25519PrivateKey.generate()
    return SiteRequest(site, csr.decode(), b64(raw_public(Ed25519PrivateKey.generate()
                                                          .public_key())),
                       b64(raw_public(exchange.public_key()))), exchange


def test_request_and_kit_round_trip_with_the_release_key_sealed_to_the_site() -> None:
    req, exchange = _request()
    assert SiteRequest.loads(req.dumps()) == req
    authority = FederationAuthority.create("clinics")
    kit = SiteKit("clinics", req.site, "127.0.0.1:7443", pem_cert(authority.ca_cert).decode(),
                  pem_cert(authority.issue_site(req.csr_pem.encode())).decode(),
                  req.signing_key, req.exchange_key, "ab" * 32,
                  SiteKit.seal_release_key(RELEASE_KEY, req.exchange_public(), req.site))
    again = SiteKit.loads(kit.dumps())
    assert again.open_release_key(exchange) == RELEASE_KEY
    assert RELEASE_KEY.hex() not in kit.dumps().decode()
    with pytest.raises(errors.IntegrityError, match="not sealed to this site"):
        again.open_release_key(X25519PrivateKey.generate())


@pytest.mark.parametrize("edit", [{"format": "other/1"}, {"extra": 1}, {"signing_key": "!!"},
                                  {"exchange_key": "AAAA"}])
def test_malformed_requests_are_refused(edit: dict) -> None:
    req, _ = _request()
    doc = json.loads(req.dumps())
    doc.update(edit)
    with pytest.raises(errors.InvalidArgument):
        SiteRequest.loads(json.dumps(doc).encode())


def test_a_kit_that_is_not_json_or_has_a_bad_certificate_is_refused() -> None:
    with pytest.raises(errors.InvalidArgument, match="not JSON"):
        SiteKit.loads(b"\xff\x00")
    req, _ = _request()
    doc = {"federation": "f", "site": "s", "coordinator": "", "ca_cert_pem": "junk",
           "site_cert_pem": "junk", "federation_key": req.signing_key,
           "coordinator_exchange_key": req.exchange_key, "base_model_sha256": "ab" * 32,
           "sealed_release_key": "", "format": "hearth-site-kit/1"}
    with pytest.raises(errors.InvalidArgument, match="site kit"):
        SiteKit.loads(json.dumps(doc).encode())
