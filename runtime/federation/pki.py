"""The federation's keys and certificates (what `hearth fed init` and
`hearth fed enroll` will produce).

* The federation authority holds an Ed25519 key that signs round plans and
  releases, and a certificate authority (ECDSA P-256: what every TLS stack
  takes) for the mutual TLS of online rounds.
* A site makes its own key and a certificate request naming it; the
  authority issues a client certificate (clientAuth only, not a CA), so the
  private key never leaves the site.  The coordinator gets a server
  certificate for its host names.
* `verify_site_cert` is the application-level check behind the TLS
  handshake: issued by this federation's CA, in its validity period, for
  client authentication; it returns the site name.  A certificate from
  another CA is refused.
"""
from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from runtime.errors import ConfigError, InvalidArgument, Unauthenticated
from runtime.names import check_name

CA_YEARS = 10


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _name(cn: str, federation: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if federation:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, federation))
    return x509.Name(attrs)


def pem_key(key: ec.EllipticCurvePrivateKey | Ed25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@dataclass
class FederationAuthority:
    name: str
    signing_key: Ed25519PrivateKey          # plans and releases
    ca_key: ec.EllipticCurvePrivateKey
    ca_cert: x509.Certificate

    @classmethod
    def create(cls, name: str) -> FederationAuthority:
        check_name(name, "federation name")
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        subject = _name(f"{name} federation CA", name)
        cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=365 * CA_YEARS))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                             False), critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                               critical=False)
                .sign(key, hashes.SHA256()))
        return cls(name, Ed25519PrivateKey.generate(), key, cert)

    def _issue(self, subject: x509.Name, public: ec.EllipticCurvePublicKey, days: int,
               usage: x509.ObjectIdentifier, san: list[x509.GeneralName] | None
               ) -> x509.Certificate:
        now = _now()
        builder = (x509.CertificateBuilder().subject_name(subject)
                   .issuer_name(self.ca_cert.subject).public_key(public)
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=days))
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
                   .add_extension(x509.ExtendedKeyUsage([usage]), critical=True)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                       self.ca_key.public_key()), critical=False))
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return builder.sign(self.ca_key, hashes.SHA256())

    def issue_site(self, csr_pem: bytes, days: int = 365) -> x509.Certificate:
        """A client certificate for the site named in the request."""
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
        except ValueError as exc:
            raise InvalidArgument(f"certificate request: not a PEM CSR ({exc})") from None
        if not csr.is_signature_valid:
            raise InvalidArgument("certificate request: its signature does not verify")
        names = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if len(names) != 1 or not isinstance(names[0].value, str):
            raise InvalidArgument("certificate request: needs exactly one common name")
        site = check_name(names[0].value, "site name")
        public = csr.public_key()
        if not isinstance(public, ec.EllipticCurvePublicKey):
            raise InvalidArgument("certificate request: the key must be ECDSA")
        return self._issue(_name(site, self.name), public, days,
                           ExtendedKeyUsageOID.CLIENT_AUTH, None)

    def issue_server(self, hosts: list[str], days: int = 365
                     ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        """The coordinator's key and certificate for these host names or IPs."""
        if not hosts:
            raise ConfigError("coordinator certificate: at least one host name")
        san: list[x509.GeneralName] = []
        for h in hosts:
            try:
                san.append(x509.IPAddress(ipaddress.ip_address(h)))
            except ValueError:
                san.append(x509.DNSName(h))
        key = ec.generate_private_key(ec.SECP256R1())
        return key, self._issue(_name(hosts[0], self.name), key.public_key(), days,
                                ExtendedKeyUsageOID.SERVER_AUTH, san)


def make_site_request(site: str) -> tuple[ec.EllipticCurvePrivateKey, bytes]:
    """`hearth fed enroll`: the site's own key and its certificate request."""
    check_name(site, "site name")
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder().subject_name(_name(site))
           .sign(key, hashes.SHA256()))
    return key, csr.public_bytes(serialization.Encoding.PEM)


def verify_site_cert(cert: x509.Certificate, ca_cert: x509.Certificate,
                     now: datetime.datetime | None = None) -> str:
    """The site name, if this federation's CA issued `cert` for clients."""
    ca_public = ca_cert.public_key()
    assert isinstance(ca_public, ec.EllipticCurvePublicKey)
    if cert.issuer != ca_cert.subject:
        raise Unauthenticated("site certificate: issued by another CA")
    try:
        ca_public.verify(cert.signature, cert.tbs_certificate_bytes,
                         ec.ECDSA(cert.signature_hash_algorithm or hashes.SHA256()))
    except InvalidSignature:
        raise Unauthenticated("site certificate: not signed by this federation's CA") from None
    at = now or _now()
    if not cert.not_valid_before_utc <= at <= cert.not_valid_after_utc:
        raise Unauthenticated("site certificate: outside its validity period")
    try:
        usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        raise Unauthenticated("site certificate: no extended key usage") from None
    if ExtendedKeyUsageOID.CLIENT_AUTH not in usage:
        raise Unauthenticated("site certificate: not issued for client authentication")
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value)
