"""The tenant store and the authenticator, without a server: tokens hashed, roles, quotas,
revocation, the first admin, and what a call's metadata must hold."""

from __future__ import annotations

import sqlite3

import pytest

from equiprune.service.errors import AlreadyExists, InvalidArgument, NotFound, PermissionDenied, Unauthenticated
from equiprune.service.tenants.auth import CACHE_S, Authenticator, Caller, bearer_token
from equiprune.service.tenants.store import Quotas, TenantStore, token_hash


@pytest.fixture()
def store(tmp_path):
    s = TenantStore(tmp_path / "tenants.sqlite")
    yield s
    s.close()


def test_tokens_are_stored_hashed_and_shown_once(store, tmp_path):
    store.create_tenant("acme")
    info, secret = store.issue_token("acme", "ci")
    assert secret.startswith("ept_") and len(secret) == 4 + 43 and info.tenant == "acme"
    raw = (tmp_path / "tenants.sqlite").read_bytes() + (tmp_path / "tenants.sqlite-wal").read_bytes()
    assert secret.encode() not in raw and token_hash(secret).encode() in raw
    assert (tmp_path / "tenants.sqlite").stat().st_mode & 0o077 == 0
    assert store.authenticate(secret).name == "acme"
    assert store.authenticate(secret + "x") is None
    assert all(not hasattr(t, "secret") for t in store.tokens())


def test_revoked_tokens_and_unknown_tenants(store):
    store.create_tenant("acme")
    info, secret = store.issue_token("acme")
    store.revoke_token(info.token_id)
    assert store.authenticate(secret) is None
    assert store.revoke_token(info.token_id).revoke_time is not None  # idempotent
    with pytest.raises(NotFound):
        store.issue_token("nobody")
    with pytest.raises(AlreadyExists):
        store.create_tenant("acme")
    for bad in ("Acme", "a" * 33, "1abc", "a/b", ""):
        with pytest.raises(InvalidArgument):
            store.create_tenant(bad)
    with pytest.raises(InvalidArgument) as caught:
        store.create_tenant("zeta", quotas=Quotas(max_concurrent_jobs=0))
    assert caught.value.field == "quotas.max_concurrent_jobs"


def test_the_first_admin_is_made_once_and_again_when_its_token_stops_working(store):
    first = store.bootstrap(None)
    assert store.authenticate(first).role == "admin"
    assert store.bootstrap(first) is None
    (info,) = store.tokens("admin")
    store.revoke_token(info.token_id)
    second = store.bootstrap(first)
    assert second and second != first and store.authenticate(second).name == "admin"


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_the_authenticator_reads_bearer_tokens_and_forgets_revocations_within_the_cache_time(store):
    store.create_tenant("acme", quotas=Quotas(max_upload_sessions=2))
    info, secret = store.issue_token("acme")
    clock = Clock()
    auth = Authenticator(store, clock)
    caller = auth.caller([("authorization", f"Bearer {secret}")])
    assert caller == Caller("acme", "tenant", Quotas(max_upload_sessions=2))
    store.revoke_token(info.token_id)
    assert auth.caller([("authorization", f"bearer {secret}")]).tenant == "acme"  # cached
    clock.now += CACHE_S + 0.1
    with pytest.raises(Unauthenticated) as caught:
        auth.caller([("authorization", f"Bearer {secret}")])
    assert caught.value.field == "authorization" and "Bearer" in caught.value.message


@pytest.mark.parametrize("metadata", [
    [], [("authorization", "")], [("authorization", "Basic abc")], [("authorization", "Bearer")],
    [("authorization", "Bearer a"), ("authorization", "Bearer b")], [("authorization", "Bearer " + "x" * 300)],
    [("authorization", "Bearer ab\x00c")],
])
def test_malformed_authorization_is_unauthenticated_in_the_same_words(store, metadata):
    auth = Authenticator(store)
    with pytest.raises(Unauthenticated) as caught:
        auth.caller(metadata)
    with pytest.raises(Unauthenticated) as unknown:
        auth.caller([("authorization", "Bearer ept_unknown")])
    assert str(caught.value) == str(unknown.value)


def test_bearer_token_parsing():
    assert bearer_token([("Authorization", "Bearer  tok ")]) == "tok"
    assert bearer_token([("authorization", b"Bearer tok")]) == "tok"
    assert bearer_token([("x-other", "Bearer tok")]) is None


def test_only_admins_manage_tenants():
    with pytest.raises(PermissionDenied):
        Caller("acme").require_admin()
    Caller("root", "admin").require_admin()


def test_a_store_file_from_before_quota_changes_keeps_working(store, tmp_path):
    store.create_tenant("acme")
    store.set_quotas("acme", Quotas(max_stored_bytes=5))
    again = TenantStore(tmp_path / "tenants.sqlite")
    assert again.tenant("acme").quotas.max_stored_bytes == 5
    again.close()
    with sqlite3.connect(tmp_path / "tenants.sqlite") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_the_async_path_answers_cached_tokens_at_once_and_asks_the_store_for_the_rest(store):
    import asyncio

    store.create_tenant("acme")
    _, secret = store.issue_token("acme")
    auth = Authenticator(store)
    metadata = [("authorization", f"Bearer {secret}")]
    assert auth.remembered(metadata) is None
    assert asyncio.run(auth.caller_async(metadata)).tenant == "acme"
    assert auth.remembered(metadata).tenant == "acme"
    with pytest.raises(Unauthenticated):
        asyncio.run(auth.caller_async([("authorization", "Bearer ept_nope")]))
    with pytest.raises(Unauthenticated):  # now remembered as unknown
        auth.remembered([("authorization", "Bearer ept_nope")])
