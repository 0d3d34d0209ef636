"""The TenantService methods of EquipruneClient: tenants, quotas and tokens (admin tokens
only), and `whoami` (any token). See proto/equiprune/v1/tenants.proto."""

from __future__ import annotations

from equiprune.v1 import tenants_pb2

from .errors import SpecError

ROLES = {"tenant": tenants_pb2.TENANT, "admin": tenants_pb2.ADMIN}


def quotas_message(max_concurrent_jobs: int | None = None, max_stored_bytes: int | None = None,
                   max_upload_sessions: int | None = None) -> tenants_pb2.TenantQuotas:
    """Quotas to set; None (or 0) keeps the current value or the default."""
    values = {"max_concurrent_jobs": max_concurrent_jobs, "max_stored_bytes": max_stored_bytes,
              "max_upload_sessions": max_upload_sessions}
    for name, value in values.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise SpecError(name, f"must be a whole number of at least 1, got {value!r}")
    return tenants_pb2.TenantQuotas(**{k: v for k, v in values.items() if v is not None})


class TenantCalls:
    """Relies on the client's `_tenants` stub and `_unary` (one call with deadline and retries)."""

    def whoami(self, *, timeout: float | None = None) -> tenants_pb2.WhoAmIResponse:
        """The caller's tenant, role, quotas and what it holds now."""
        return self._unary(self._tenants.WhoAmI, tenants_pb2.WhoAmIRequest(), timeout=timeout, read=True)

    def create_tenant(self, name: str, role: str = "tenant", *, quotas: tenants_pb2.TenantQuotas | None = None,
                      timeout: float | None = None) -> tenants_pb2.Tenant:
        if role not in ROLES:
            raise SpecError("role", f"one of {', '.join(ROLES)}, not {role!r}")
        request = tenants_pb2.CreateTenantRequest(name=name, role=ROLES[role], quotas=quotas)
        return self._unary(self._tenants.CreateTenant, request, timeout=timeout).tenant

    def list_tenants(self, *, timeout: float | None = None) -> list[tenants_pb2.Tenant]:
        reply = self._unary(self._tenants.ListTenants, tenants_pb2.ListTenantsRequest(), timeout=timeout, read=True)
        return list(reply.tenants)

    def update_tenant_quotas(self, name: str, quotas: tenants_pb2.TenantQuotas, *,
                             timeout: float | None = None) -> tenants_pb2.Tenant:
        request = tenants_pb2.UpdateTenantQuotasRequest(name=name, quotas=quotas)
        return self._unary(self._tenants.UpdateTenantQuotas, request, timeout=timeout).tenant

    def create_token(self, tenant: str, label: str = "", *,
                     timeout: float | None = None) -> tenants_pb2.CreateTokenResponse:
        """A new token; the reply's `secret` is the only copy there will ever be (a retry after
        a lost reply issues a second token; the first is listed by ListTokens and can be revoked)."""
        request = tenants_pb2.CreateTokenRequest(tenant=tenant, label=label)
        return self._unary(self._tenants.CreateToken, request, timeout=timeout)

    def revoke_token(self, token_id: str, *, timeout: float | None = None) -> tenants_pb2.TokenInfo:
        request = tenants_pb2.RevokeTokenRequest(token_id=token_id)
        return self._unary(self._tenants.RevokeToken, request, timeout=timeout).token

    def list_tokens(self, tenant: str = "", *, timeout: float | None = None) -> list[tenants_pb2.TokenInfo]:
        request = tenants_pb2.ListTokensRequest(tenant=tenant)
        return list(self._unary(self._tenants.ListTokens, request, timeout=timeout, read=True).tokens)
