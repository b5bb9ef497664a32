"""A caller's identity and rights."""
from __future__ import annotations

import contextvars
from dataclasses import dataclass

from runtime.errors import PermissionDenied


@dataclass(frozen=True)
class Principal:
    identity: str                         # anonymous | uid:N | cert:CN | token:NAME
    models: frozenset[str] | None = None  # None: every model
    admin: bool = False                   # may load and unload models

    def may_use(self, model: str) -> bool:
        return self.models is None or model in self.models

    def check_model(self, model: str) -> None:
        if not self.may_use(model):
            raise PermissionDenied(f"{self.identity} may not use model {model!r}")

    def check_admin(self, what: str) -> None:
        if not self.admin:
            hint = (" (a caller without credentials may only use models: call over the unix "
                    "socket or with an admin token, or set [auth] anonymous_admin = true)"
                    ) if self.anonymous else ""
            raise PermissionDenied(f"{self.identity} may not {what}{hint}")

    @property
    def anonymous(self) -> bool:
        """A caller without credentials (token, certificate or socket uid)."""
        return self.identity == ANONYMOUS_IDENTITY


ANONYMOUS_IDENTITY = "anonymous"
# A caller without credentials, where auth.require is false, may use every
# model; it may manage models only where [auth] anonymous_admin grants it.
ANONYMOUS = Principal(ANONYMOUS_IDENTITY, None, admin=False)
ANONYMOUS_ADMIN = Principal(ANONYMOUS_IDENTITY, None, admin=True)

# The principal of the RPC being handled (each RPC runs in its own task).
current: contextvars.ContextVar[Principal] = contextvars.ContextVar(
    "hearth_principal", default=ANONYMOUS)


def models_from_list(names: list[str] | tuple[str, ...]) -> frozenset[str] | None:
    """An ACL list; "*" means every model."""
    return None if "*" in names else frozenset(names)
