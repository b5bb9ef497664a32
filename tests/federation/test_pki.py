"""The federation's CA: site enrollment, certificates from another CA refused,
and a real mutual-TLS handshake with the issued kit."""
from __future__ import annotations

import datetime
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from runtime.errors import InvalidArgument, Unauthenticated
from runtime.federation.pki import (
    FederationAuthority,
    make_site_request,
    pem_cert,
    pem_key,
    verify_site_cert,
)


@pytest.fixture(scope="module")
def fed() -> FederationAuthority:
    return FederationAuthority.create("clinics")


def test_enroll_issue_verify(fed: FederationAuthority) -> None:
    key, csr = make_site_request("ward-3")
    cert = fed.issue_site(csr)
    assert verify_site_cert(cert, fed.ca_cert) == "ward-3"
    assert cert.public_key().public_numbers() == key.public_key().public_numbers()


def test_a_certificate_from_another_ca_is_refused(fed: FederationAuthority) -> None:
    other = FederationAuthority.create("clinics")     # same name, another CA
    _, csr = make_site_request("ward-3")
    with pytest.raises(Unauthenticated, match="not signed by this federation's CA"):
        verify_site_cert(other.issue_site(csr), fed.ca_cert)
    banks = FederationAuthority.create("banks")
    with pytest.raises(Unauthenticated, match="another CA"):
        verify_site_cert(banks.issue_site(csr), fed.ca_cert)


def test_expired_and_server_certificates_are_refused(fed: FederationAuthority) -> None:
    _, csr = make_site_request("ward-3")
    cert = fed.issue_site(csr, days=1)
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=2)
    with pytest.raises(Unauthenticated, match="validity"):
        verify_site_cert(cert, fed.ca_cert, now=later)
    _, server = fed.issue_server(["localhost", "127.0.0.1"])
    with pytest.raises(Unauthenticated, match="client authentication"):
        verify_site_cert(server, fed.ca_cert)


def test_bad_requests(fed: FederationAuthority) -> None:
    with pytest.raises(InvalidArgument, match="not a PEM CSR"):
        fed.issue_site(b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n")
    with pytest.raises(InvalidArgument, match=r"site name: '\.\./ward' is not a valid name"):
        make_site_request("../ward")
    _, csr = make_site_request("ward-3")
    der = bytearray(x509.load_pem_x509_csr(csr).public_bytes(serialization.Encoding.DER))
    der[-5] ^= 0x01                        # inside the signature
    tampered = x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM)
    with pytest.raises(InvalidArgument, match="signature does not verify"):
        fed.issue_site(tampered)


def test_the_kit_completes_a_mutual_tls_handshake(fed: FederationAuthority, tmp_path: Path,
                                                  tiny_model: Path) -> None:
    """The coordinator's certificate and a site's kit work with gRPC's TLS;
    a site certified by another CA never gets a connection."""
    from tests.integration.conftest import start_daemon

    server_key, server_cert = fed.issue_server(["localhost", "127.0.0.1"])
    files = {"ca.pem": pem_cert(fed.ca_cert), "server.pem": pem_cert(server_cert),
             "server.key": pem_key(server_key)}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    config = tmp_path / "hearth.toml"
    config.write_text(f'''
[server]
listen = ["127.0.0.1:0"]
[tls]
listen = ["127.0.0.1:0"]
cert_file = "server.pem"
key_file = "server.key"
client_ca_file = "ca.pem"
[models.tiny]
path = "{tiny_model}"
n_ctx = 512
n_parallel = 1
threads = 1
''')
    d = start_daemon(["--config", str(config)], tmp_path)
    try:
        port = next(a for a in d.addresses if a.startswith("tls:")).rpartition(":")[2]

        def call(authority: FederationAuthority) -> grpc.StatusCode | None:
            key, csr = make_site_request("ward-3")
            creds = grpc.ssl_channel_credentials(pem_cert(fed.ca_cert), pem_key(key),
                                                 pem_cert(authority.issue_site(csr)))
            with grpc.secure_channel(f"localhost:{port}", creds) as ch:
                from grpc_health.v1 import health_pb2, health_pb2_grpc
                try:
                    health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(),
                                                         timeout=10)
                    return None
                except grpc.RpcError as exc:
                    return exc.code()

        assert call(fed) is None
        assert call(FederationAuthority.create("clinics")) == grpc.StatusCode.UNAVAILABLE
    finally:
        assert d.stop() == 0, d.log()
