"""Who is calling: the bearer token of a call's metadata, resolved to a tenant.

Every API call (not grpc.health.v1 nor reflection, which tell nothing about anyone's data)
must carry `authorization: Bearer <token>`. A missing, malformed, unknown or revoked token is
UNAUTHENTICATED, with the same words whichever it was, so a guess learns nothing. A resolved
token is remembered for CACHE_S seconds: a revocation takes effect within that time on
every replica, and a call costs one dictionary lookup rather than a database read.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass

from equiprune.service.errors import PermissionDenied, Unauthenticated
from equiprune.service.tenants.store import Quotas, Tenant, TenantStore, token_hash

CACHE_S = 5.0
MAX_TOKEN_CHARS = 256
_CACHE_ENTRIES = 10_000


@dataclass(frozen=True)
class Caller:
    """The tenant a call acts for. Every resource a call may touch is scoped to `tenant`."""

    tenant: str
    role: str = "tenant"
    quotas: Quotas = Quotas()

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def require_admin(self) -> None:
        if not self.is_admin:
            raise PermissionDenied("only an admin token may manage tenants and tokens", field="authorization")

    @classmethod
    def of(cls, tenant: Tenant) -> Caller:
        return cls(tenant.name, tenant.role, tenant.quotas)


_REFUSAL = ("a valid API token is required: send the metadata `authorization: Bearer <token>` "
            "(`equiprune --token`, EQUIPRUNE_TOKEN, or the file `equiprune serve` wrote for its admin)")


class Authenticator:
    def __init__(self, store: TenantStore, clock=time.monotonic) -> None:
        self.store = store
        self._clock = clock
        self._cache: dict[str, tuple[float, Caller | None]] = {}
        self._lock = threading.Lock()

    async def caller_async(self, metadata) -> Caller:
        """`caller`, for an event loop: a token not in the cache is looked up in a thread, so a
        flood of unknown tokens cannot hold the loop on database reads."""
        secret, key = _secret_and_key(metadata)
        return self._cached(key) or await asyncio.to_thread(self._look_up, secret, key)

    def remembered(self, metadata) -> Caller | None:
        """The cached caller of a valid, cached token; None when the database must be asked."""
        return self._cached(_secret_and_key(metadata)[1])

    def caller(self, metadata) -> Caller:
        """The caller named by a call's metadata (pairs of key and value), or Unauthenticated."""
        secret, key = _secret_and_key(metadata)
        return self._cached(key) or self._look_up(secret, key)

    def _cached(self, key: str) -> Caller | None:
        """The cached caller of `key`; None when not cached or expired; Unauthenticated for a
        token remembered as unknown."""
        with self._lock:
            cached = self._cache.get(key)
        if cached is None or cached[0] <= self._clock():
            return None
        if cached[1] is None:
            raise Unauthenticated(_REFUSAL, field="authorization")
        return cached[1]

    def _look_up(self, secret: str, key: str) -> Caller:
        """Ask the store, and remember the answer (an unknown token too) for CACHE_S."""
        tenant = self.store.authenticate(secret)
        caller = Caller.of(tenant) if tenant is not None else None
        with self._lock:
            if len(self._cache) >= _CACHE_ENTRIES:  # many bad tokens must not grow memory
                self._cache.clear()
            self._cache[key] = (self._clock() + CACHE_S, caller)
        if caller is None:
            raise Unauthenticated(_REFUSAL, field="authorization")
        return caller

    def forget(self) -> None:
        """Drop every remembered token (after this replica revoked one)."""
        with self._lock:
            self._cache.clear()


def _secret_and_key(metadata) -> tuple[str, str]:
    """The bearer token of a call and its cache key (its hash), or Unauthenticated."""
    secret = bearer_token(metadata)
    if secret is None:
        raise Unauthenticated(_REFUSAL, field="authorization")
    return secret, token_hash(secret)


def bearer_token(metadata) -> str | None:
    """The token of `authorization: Bearer <token>`, or None (absent, several, or malformed)."""
    values = [v for k, v in (metadata or ()) if isinstance(k, str) and k.lower() == "authorization"]
    if len(values) != 1:
        return None
    value = values[0].decode("latin-1") if isinstance(values[0], bytes) else str(values[0])
    scheme, _, token = value.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or len(token) > MAX_TOKEN_CHARS or not token.isprintable():
        return None
    return token
