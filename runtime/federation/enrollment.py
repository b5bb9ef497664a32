"""Setting a federation up, on sealed stores: the coordinator's keys and CA
(`hearth fed init`), a site's keys and enrollment request (`enroll`), the
coordinator issuing the site's certificate and kit (`issue`), and the site
taking the kit in (`join`).
"""
from __future__ import annotations

import secrets
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from runtime.errors import FailedPrecondition, InvalidArgument, NotFound
from runtime.federation.coordinator import FederationSettings
from runtime.federation.documents import SiteKit, SiteRequest, b64, raw_public
from runtime.federation.pki import FederationAuthority, make_site_request, pem_cert, pem_key
from runtime.federation.state import (
    CoordinatorRecord,
    SiteRecord,
    coordinator_keys,
    file_sha256,
    load_coordinator_record,
    load_site_record,
    save_coordinator_keys,
    save_coordinator_record,
    save_site_record,
)
from runtime.storage.store import Kind, SealedStore

_PRIVATE_RAW = (serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                serialization.NoEncryption())


# ---- the coordinator ------------------------------------------------------------------------

def init_coordinator(store: SealedStore, settings: FederationSettings, base_model_path: str
                     ) -> CoordinatorRecord:
    try:
        store.read_bytes(Kind.FEDERATION, "coordinator")
    except NotFound:
        pass
    else:
        raise FailedPrecondition("this state directory already holds a federation coordinator")
    authority = FederationAuthority.create(settings.federation)
    save_coordinator_keys(store, authority.signing_key, X25519PrivateKey.generate(),
                          secrets.token_bytes(32), pem_key(authority.ca_key))
    record = CoordinatorRecord(settings, str(Path(base_model_path).resolve()),
                               pem_cert(authority.ca_cert).decode())
    save_coordinator_record(store, record)
    return record


def coordinator_authority(store: SealedStore, record: CoordinatorRecord) -> FederationAuthority:
    from cryptography import x509

    signing, _, _ = coordinator_keys(store)
    ca_key = serialization.load_pem_private_key(store.read_bytes(Kind.KEY, "fed-ca"), None)
    ca_cert = x509.load_pem_x509_certificate(record.ca_cert_pem.encode())
    return FederationAuthority(record.settings.federation, signing, ca_key,  # type: ignore[arg-type]
                               ca_cert)


def issue_kit(store: SealedStore, request: bytes, coordinator_address: str = "") -> SiteKit:
    """Enrolls the site of `request`: its certificate, and the kit it joins with."""
    record = load_coordinator_record(store)
    req = SiteRequest.loads(request)
    if req.site in record.sites:
        raise FailedPrecondition(f"site {req.site!r} is already enrolled")
    authority = coordinator_authority(store, record)
    cert = authority.issue_site(req.csr_pem.encode())
    signing, exchange, release_key = coordinator_keys(store)
    kit = SiteKit(
        federation=record.settings.federation, site=req.site, coordinator=coordinator_address,
        ca_cert_pem=record.ca_cert_pem, site_cert_pem=pem_cert(cert).decode(),
        federation_key=b64(raw_public(signing.public_key())),
        coordinator_exchange_key=b64(raw_public(exchange.public_key())),
        base_model_sha256=record.settings.base_model_sha256,
        sealed_release_key=SiteKit.seal_release_key(release_key, req.exchange_public(),
                                                    req.site))
    record.sites[req.site] = req.signing_key
    save_coordinator_record(store, record)
    return kit


# ---- a site ---------------------------------------------------------------------------------

def enroll_site(store: SealedStore, site: str) -> SiteRequest:
    try:
        existing = load_site_record(store)
    except FailedPrecondition:
        existing = None
    if existing is not None and existing.kit:
        raise FailedPrecondition(f"this state directory is already site {existing.site!r} of "
                                 f"federation {existing.federation!r}")
    tls_key, csr = make_site_request(site)
    signing, exchange = Ed25519PrivateKey.generate(), X25519PrivateKey.generate()
    store.put_bytes(Kind.KEY, "fed-site-tls", pem_key(tls_key))
    store.put_bytes(Kind.KEY, "fed-site-signing", signing.private_bytes(*_PRIVATE_RAW))
    store.put_bytes(Kind.KEY, "fed-site-exchange", exchange.private_bytes(*_PRIVATE_RAW))
    save_site_record(store, SiteRecord(site=site))
    return SiteRequest(site=site, csr_pem=csr.decode(),
                       signing_key=b64(raw_public(signing.public_key())),
                       exchange_key=b64(raw_public(exchange.public_key())))


def join_site(store: SealedStore, kit_bytes: bytes, base_model_path: str) -> SiteKit:
    record = load_site_record(store)
    kit = SiteKit.loads(kit_bytes)
    if kit.site != record.site:
        raise InvalidArgument(f"site kit: issued for {kit.site!r}, this is {record.site!r}")
    exchange = X25519PrivateKey.from_private_bytes(store.read_bytes(Kind.KEY, "fed-site-exchange"))
    release_key = kit.open_release_key(exchange)
    digest = file_sha256(base_model_path)
    if digest != kit.base_model_sha256:
        raise InvalidArgument(f"base model {base_model_path}: SHA-256 {digest[:12]}..., the "
                              f"federation trains {kit.base_model_sha256[:12]}...")
    store.put_bytes(Kind.KEY, "fed-release", release_key)
    record.federation, record.kit = kit.federation, kit_bytes.decode()
    record.base_model_path = str(Path(base_model_path).resolve())
    save_site_record(store, record)
    return kit
