"""Tenants, their quotas and their API tokens, in one SQLite file (WAL, synchronous=FULL: a
token the server handed out survives a crash).

A token is `ept_` + 43 url-safe characters (256 random bits). Only its sha256 is stored: a
copy of the database does not let anyone in, and with 256 random bits a plain hash needs no
salt or slow KDF (nothing to guess). Tokens are looked up by hash; the secret is shown once,
when it is issued, and never logged.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import sqlite3
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from equiprune.service.errors import AlreadyExists, InvalidArgument, NotFound
from equiprune.service.sqlite_file import SqliteFile

ROLES = ("tenant", "admin")
TENANT_NAME = re.compile(r"^[a-z][a-z0-9-]{0,31}$")
TOKEN_ID = re.compile(r"^tok-[0-9a-f]{16}$")
TOKEN_PREFIX = "ept_"
MAX_LABEL = 128
BOOTSTRAP_TENANT = "admin"
GiB = 1024**3


@dataclass(frozen=True)
class Quotas:
    """What one tenant may hold at once. Every field is a positive bound."""

    max_concurrent_jobs: int = 4
    max_stored_bytes: int = 100 * GiB
    max_upload_sessions: int = 16

    def checked(self) -> Quotas:
        for name, value in asdict(self).items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidArgument(f"must be a whole number of at least 1, got {value!r}", field=f"quotas.{name}")
        return self


@dataclass(frozen=True)
class Tenant:
    name: str
    role: str
    quotas: Quotas
    create_time: float


@dataclass(frozen=True)
class TokenInfo:
    """A token as listed: never its secret."""

    token_id: str
    tenant: str
    label: str
    create_time: float
    revoke_time: float | None


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


_SCHEMA = """
CREATE TABLE IF NOT EXISTS tenants (
    name                TEXT PRIMARY KEY,
    role                TEXT NOT NULL,
    max_concurrent_jobs INTEGER NOT NULL,
    max_stored_bytes    INTEGER NOT NULL,
    max_upload_sessions INTEGER NOT NULL,
    create_time         REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS tokens (
    token_id    TEXT PRIMARY KEY,
    token_hash  TEXT NOT NULL UNIQUE,
    tenant      TEXT NOT NULL REFERENCES tenants (name),
    label       TEXT NOT NULL,
    create_time REAL NOT NULL,
    revoke_time REAL
);
"""


def check_tenant_name(name: str, field: str = "name") -> str:
    if not isinstance(name, str) or not TENANT_NAME.match(name):
        raise InvalidArgument("1-32 characters of a-z, 0-9 and -, starting with a letter", field=field)
    return name


class TenantStore(SqliteFile):
    def __init__(self, path: str | Path) -> None:
        super().__init__(path, _SCHEMA, synchronous="FULL")
        self._path.chmod(0o600)

    # ------------------------------------------------------------------ tenants

    def create_tenant(self, name: str, role: str = "tenant", quotas: Quotas | None = None) -> Tenant:
        check_tenant_name(name)
        if role not in ROLES:
            raise InvalidArgument(f"one of {', '.join(ROLES)}", field="role")
        quotas = (quotas or Quotas()).checked()
        with self._transaction() as conn:
            if conn.execute("SELECT 1 FROM tenants WHERE name = ?", (name,)).fetchone():
                raise AlreadyExists(f"tenant {name!r} already exists", field="name")
            conn.execute("INSERT INTO tenants VALUES (?, ?, ?, ?, ?, ?)",
                         (name, role, quotas.max_concurrent_jobs, quotas.max_stored_bytes,
                          quotas.max_upload_sessions, time.time()))
        return self.tenant(name)

    def tenant(self, name: str, field: str = "name") -> Tenant:
        with self._lock:
            row = self._conn.execute("SELECT * FROM tenants WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise NotFound(f"no tenant {name!r}", field=field)
        return _tenant(row)

    def tenants(self) -> list[Tenant]:
        with self._lock:
            return [_tenant(r) for r in self._conn.execute("SELECT * FROM tenants ORDER BY name")]

    def set_quotas(self, name: str, quotas: Quotas) -> Tenant:
        quotas = quotas.checked()
        with self._transaction() as conn:
            updated = conn.execute(
                "UPDATE tenants SET max_concurrent_jobs = ?, max_stored_bytes = ?, max_upload_sessions = ? "
                "WHERE name = ?", (quotas.max_concurrent_jobs, quotas.max_stored_bytes, quotas.max_upload_sessions,
                                   name)).rowcount
        if not updated:
            raise NotFound(f"no tenant {name!r}", field="name")
        return self.tenant(name)

    # ------------------------------------------------------------------ tokens

    def issue_token(self, tenant: str, label: str = "") -> tuple[TokenInfo, str]:
        """A new token for `tenant`: its listing and its secret (returned this once)."""
        if len(label) > MAX_LABEL:
            raise InvalidArgument(f"at most {MAX_LABEL} characters", field="label")
        self.tenant(tenant, field="tenant")
        secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
        token_id = "tok-" + uuid.uuid4().hex[:16]
        with self._transaction() as conn:
            conn.execute("INSERT INTO tokens VALUES (?, ?, ?, ?, ?, NULL)",
                         (token_id, token_hash(secret), tenant, label, time.time()))
        return self.token_info(token_id), secret

    def token_info(self, token_id: str) -> TokenInfo:
        if not isinstance(token_id, str) or not TOKEN_ID.match(token_id):
            raise InvalidArgument(f"{token_id!r} is not a token id (tok- followed by 16 hex digits)", field="token_id")
        with self._lock:
            row = self._conn.execute("SELECT * FROM tokens WHERE token_id = ?", (token_id,)).fetchone()
        if row is None:
            raise NotFound(f"no token {token_id!r}", field="token_id")
        return _token(row)

    def tokens(self, tenant: str | None = None) -> list[TokenInfo]:
        where, params = ("WHERE tenant = ?", (tenant,)) if tenant else ("", ())
        with self._lock:
            rows = self._conn.execute(f"SELECT * FROM tokens {where} ORDER BY create_time, token_id", params)
            return [_token(r) for r in rows]

    def revoke_token(self, token_id: str) -> TokenInfo:
        self.token_info(token_id)
        with self._transaction() as conn:
            conn.execute("UPDATE tokens SET revoke_time = COALESCE(revoke_time, ?) WHERE token_id = ?",
                         (time.time(), token_id))
        return self.token_info(token_id)

    def authenticate(self, secret: str) -> Tenant | None:
        """The tenant a live token belongs to; None for an unknown or revoked token."""
        with self._lock:
            row = self._conn.execute(
                "SELECT tenants.* FROM tokens JOIN tenants ON tokens.tenant = tenants.name "
                "WHERE tokens.token_hash = ? AND tokens.revoke_time IS NULL", (token_hash(secret),)).fetchone()
        return None if row is None else _tenant(row)

    # ------------------------------------------------------------------ first start

    def bootstrap(self, existing_secret: str | None) -> str | None:
        """On a server's start: make sure an admin can get in. Returns a new admin token when
        one was issued (no admin tenant yet, or the stored admin token no longer works), else
        None (`existing_secret` still works)."""
        if existing_secret and (tenant := self.authenticate(existing_secret)) is not None and tenant.role == "admin":
            return None
        try:
            self.create_tenant(BOOTSTRAP_TENANT, role="admin")
        except AlreadyExists:
            pass
        return self.issue_token(BOOTSTRAP_TENANT, "created by equiprune serve on first start")[1]


def _tenant(row: sqlite3.Row) -> Tenant:
    return Tenant(row["name"], row["role"], Quotas(row["max_concurrent_jobs"], row["max_stored_bytes"],
                                                   row["max_upload_sessions"]), row["create_time"])


def _token(row: sqlite3.Row) -> TokenInfo:
    return TokenInfo(row["token_id"], row["tenant"], row["label"], row["create_time"], row["revoke_time"])
