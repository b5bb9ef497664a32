"""Bearer tokens.

A token reads `hth_<id>_<secret>`.  The catalog keeps, per token, its name,
the models it may use, whether it may administer models, and
HMAC-SHA256(token_key, secret), where token_key is a key object in the
sealed store: the stored hashes are useless without the master key.
Presented tokens are compared in constant time; revocation is immediate
(lookups are cached for at most CACHE_S).
"""
from __future__ import annotations

import base64
import hmac
import json
import re
import secrets
import threading
import time
from dataclasses import dataclass

from runtime.auth.principal import Principal, models_from_list
from runtime.errors import AlreadyExists, InvalidArgument, NotFound, Unauthenticated
from runtime.names import check_name
from runtime.storage.store import Kind, SealedStore

PREFIX = "hth_"
_FORMAT = re.compile(r"^hth_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
CACHE_S = 1.0


@dataclass(frozen=True)
class TokenInfo:
    id: str
    name: str
    models: tuple[str, ...]
    admin: bool
    created_at: float
    revoked_at: float | None


class TokenStore:
    def __init__(self, store: SealedStore) -> None:
        self.store = store
        try:
            self._key = store.read_bytes(Kind.KEY, "token-hmac")
        except NotFound:
            store.put_bytes(Kind.KEY, "token-hmac", secrets.token_bytes(32))
            self._key = store.read_bytes(Kind.KEY, "token-hmac")
        self._cache: dict[str, tuple[float, tuple | None]] = {}
        self._lock = threading.Lock()

    def _hash(self, secret: str) -> bytes:
        return hmac.new(self._key, secret.encode(), "sha256").digest()

    def create(self, name: str, models: list[str], admin: bool = False) -> str:
        check_name(name, "token name")
        if not models:
            raise InvalidArgument("--models: name at least one model, or * for all")
        for m in models:
            if m != "*":
                check_name(m, "--models")
        token_id = secrets.token_hex(6)
        secret = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
        db = self.store.catalog
        with db.transaction() as tx:
            if tx.execute("SELECT 1 FROM tokens WHERE name=? AND revoked_at IS NULL",
                          (name,)).fetchone():
                raise AlreadyExists(f"a live token named {name!r} exists; revoke it first")
            tx.execute("INSERT INTO tokens VALUES (?,?,?,?,?,?,NULL)",
                       (token_id, name, self._hash(secret), json.dumps(sorted(models)),
                        int(admin), time.time()))
        return f"{PREFIX}{token_id}_{secret}"

    def list(self) -> list[TokenInfo]:
        rows = self.store.catalog.db.execute(
            "SELECT id, name, models, admin, created_at, revoked_at FROM tokens "
            "ORDER BY created_at").fetchall()
        return [TokenInfo(r[0], r[1], tuple(json.loads(r[2])), bool(r[3]), r[4], r[5])
                for r in rows]

    def revoke(self, name: str) -> bool:
        with self.store.catalog.transaction() as tx:
            done = tx.execute("UPDATE tokens SET revoked_at=? WHERE name=? AND revoked_at IS "
                              "NULL", (time.time(), name)).rowcount
        self.forget_cached()
        return bool(done)

    def forget_cached(self) -> None:
        """Drops cached lookups (a revoke from another process is otherwise
        seen within CACHE_S; SIGHUP makes it immediate)."""
        with self._lock:
            self._cache.clear()

    def _row(self, token_id: str) -> tuple | None:
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(token_id)
            if hit and now - hit[0] < CACHE_S:
                return hit[1]
        self.store.catalog.check("tokens")     # an edit made while we run is refused
        row = self.store.catalog.db.execute(
            "SELECT name, hash, models, admin, revoked_at FROM tokens WHERE id=?",
            (token_id,)).fetchone()
        with self._lock:
            self._cache[token_id] = (now, row)
        return row

    def verify(self, token: str) -> Principal:
        """The token's principal; Unauthenticated (one message) otherwise."""
        m = _FORMAT.match(token)
        row = self._row(m.group(1)) if m else None
        # Hash even when the id is unknown, so timing says nothing either way.
        presented = self._hash(m.group(2) if m else token)
        stored = row[1] if row else b"\0" * 32
        if not hmac.compare_digest(presented, stored) or row is None or row[4] is not None:
            raise Unauthenticated("invalid, unknown or revoked token")
        return Principal(f"token:{row[0]}", models_from_list(json.loads(row[2])),
                         admin=bool(row[3]))
