"""mTLS: server credentials, and the identity in a client certificate.

With a client CA configured, gRPC requires and verifies the client's
certificate during the TLS handshake: a certificate from another CA never
gets a connection, so no handler can run for it (the client sees the
handshake fail, UNAVAILABLE).  The identity is the certificate subject's
common name, `cert:<CN>`.
"""
from __future__ import annotations

from pathlib import Path

import grpc

from runtime.errors import ConfigError


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"tls.{what}: cannot read {path}: {exc.strerror}") from exc


def server_credentials(cert_file: str, key_file: str, client_ca_file: str
                       ) -> grpc.ServerCredentials:
    if not cert_file or not key_file:
        raise ConfigError("tls: cert_file and key_file are both required")
    pairs = [(_read(key_file, "key_file"), _read(cert_file, "cert_file"))]
    if client_ca_file:
        return grpc.ssl_server_credentials(pairs, _read(client_ca_file, "client_ca_file"),
                                           require_client_auth=True)
    return grpc.ssl_server_credentials(pairs)


def cert_identity(auth_context: dict) -> str | None:
    names = auth_context.get("x509_common_name") or []
    if not names:
        return None
    name = names[0]
    return "cert:" + (name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name))
