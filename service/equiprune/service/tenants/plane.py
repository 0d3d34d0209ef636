"""The tenant plane: tenants, quotas and tokens (admin only), and WhoAmI — protocol-neutral."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from equiprune.service.tenants.auth import Authenticator, Caller
from equiprune.service.tenants.store import Quotas, Tenant, TenantStore, TokenInfo, check_tenant_name


class TenantsPlane:
    def __init__(self, store: TenantStore, authenticator: Authenticator, artifacts, jobs) -> None:
        self.store, self.authenticator = store, authenticator
        self.artifacts, self.jobs = artifacts, jobs  # ArtifactsPlane and JobsPlane, for usage

    def create_tenant(self, caller: Caller, name: str, role: str, quotas: dict) -> Tenant:
        caller.require_admin()
        return self.store.create_tenant(name, role or "tenant", _quotas(Quotas(), quotas))

    def list_tenants(self, caller: Caller) -> list[Tenant]:
        caller.require_admin()
        return self.store.tenants()

    def update_quotas(self, caller: Caller, name: str, quotas: dict) -> Tenant:
        caller.require_admin()
        tenant = self.store.tenant(check_tenant_name(name))
        updated = self.store.set_quotas(name, _quotas(tenant.quotas, quotas))
        self.authenticator.forget()  # this replica applies the new quotas at once
        return updated

    def create_token(self, caller: Caller, tenant: str, label: str) -> tuple[TokenInfo, str]:
        caller.require_admin()
        return self.store.issue_token(check_tenant_name(tenant, "tenant"), label)

    def revoke_token(self, caller: Caller, token_id: str) -> TokenInfo:
        caller.require_admin()
        info = self.store.revoke_token(token_id)
        self.authenticator.forget()
        return info

    def list_tokens(self, caller: Caller, tenant: str) -> list[TokenInfo]:
        caller.require_admin()
        if tenant:
            self.store.tenant(check_tenant_name(tenant, "tenant"), field="tenant")
        return self.store.tokens(tenant or None)

    async def whoami(self, caller: Caller) -> tuple[Tenant, dict]:
        tenant = await asyncio.to_thread(self.store.tenant, caller.tenant)
        usage = await asyncio.to_thread(self.artifacts.usage, caller)
        return tenant, {**usage, "unfinished_jobs": await self.jobs.unfinished(caller)}


def _quotas(base: Quotas, changes: dict) -> Quotas:
    """`base` with the changes that are set (a zero or absent value keeps the base's)."""
    return replace(base, **{k: v for k, v in changes.items() if v}).checked()
