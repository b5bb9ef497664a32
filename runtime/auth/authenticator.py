"""Per-request authentication: token, then client certificate, then the
unix socket's uid; anonymous only where the configuration allows it."""
from __future__ import annotations

import os

import grpc

from runtime.auth.peercred import peer_uid
from runtime.auth.principal import ANONYMOUS, Principal, models_from_list
from runtime.auth.tls import cert_identity
from runtime.auth.tokens import TokenStore
from runtime.config import AuthConfig
from runtime.errors import Unauthenticated

AUTHORIZATION = "authorization"


class Authenticator:
    def __init__(self, config: AuthConfig, acl: dict[str, tuple[str, ...]],
                 tokens: TokenStore | None) -> None:
        self.config = config
        self.acl = acl
        self.tokens = tokens

    def _known(self, identity: str, admin: bool) -> Principal:
        models = self.acl.get(identity)
        return Principal(identity, models_from_list(models) if models else None,
                         admin=admin or identity in self.config.admins)

    def authenticate(self, context: grpc.aio.ServicerContext) -> Principal:
        bearer = None
        for key, value in context.invocation_metadata() or ():
            if key == AUTHORIZATION:
                if not isinstance(value, str) or not value.startswith("Bearer "):
                    raise Unauthenticated("authorization: expected 'Bearer <token>'")
                bearer = value[len("Bearer "):].strip()
        if bearer is not None:
            if self.tokens is None:
                raise Unauthenticated("this server does not accept tokens (no sealed store)")
            return self.tokens.verify(bearer)
        cert = cert_identity(context.auth_context() or {})
        if cert is not None:
            return self._known(cert, admin=False)
        peer = peer_uid(context.peer() or "")
        if peer is not None:
            uid = peer[0]
            return self._known(f"uid:{uid}", admin=uid in (0, os.getuid()))
        if self.config.require:
            raise Unauthenticated("credentials required: a bearer token (authorization: "
                                  "Bearer hth_...), a client certificate, or the unix socket")
        return ANONYMOUS
