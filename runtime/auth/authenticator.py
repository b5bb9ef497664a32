"""Per-request authentication: token, then client certificate, then the
unix socket's uid; anonymous only where the configuration allows it."""
from __future__ import annotations

import os

import grpc

from runtime.auth.peercred import peer_uid
from runtime.auth.principal import ANONYMOUS, ANONYMOUS_ADMIN, Principal, models_from_list
from runtime.auth.tls import cert_identity
from runtime.auth.tokens import PREFIX as TOKEN_PREFIX
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

    def anonymous(self) -> Principal:
        """A caller without credentials: no admin rights unless the config
        grants them explicitly (least privilege; SECURITY-CASES 27)."""
        return ANONYMOUS_ADMIN if self.config.anonymous_admin else ANONYMOUS

    def bearer(self, authorization: object) -> Principal:
        """`authorization: Bearer <token>` to the token's principal: the one
        token check that gRPC metadata and HTTP headers share."""
        token = bearer_token(authorization)
        if self.tokens is None:
            raise Unauthenticated("this server does not accept tokens (no sealed store)")
        return self.tokens.verify(token)

    def authenticate(self, context: grpc.aio.ServicerContext) -> Principal:
        authorization = None
        for key, value in context.invocation_metadata() or ():
            if key == AUTHORIZATION:
                bearer_token(value)        # every one must be well-formed
                authorization = value
        if authorization is not None:
            return self.bearer(authorization)
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
        return self.anonymous()

    def authenticate_http(self, authorization: str | None) -> Principal:
        """An HTTP request has only its Authorization header (no client
        certificate, no socket uid).  OpenAI clients always send a key, so
        where tokens are not required a key that is not a Hearth token
        (`api_key="none"`) is ignored, which grants nothing a request
        without the header would not get; a Hearth token is always verified,
        so its ACL applies."""
        if authorization is None:
            if self.config.require:
                raise Unauthenticated("credentials required: a bearer token "
                                      "(Authorization: Bearer hth_...)")
            return self.anonymous()
        if not self.config.require and not bearer_token(authorization).startswith(TOKEN_PREFIX):
            return self.anonymous()
        return self.bearer(authorization)


def bearer_token(authorization: object) -> str:
    """The token of an `authorization: Bearer <token>` value (the scheme
    name is case-insensitive, RFC 6750)."""
    if not isinstance(authorization, str) or authorization[:7].lower() != "bearer ":
        raise Unauthenticated("authorization: expected 'Bearer <token>'")
    return authorization[7:].strip()
