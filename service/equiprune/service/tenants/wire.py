"""TenantService messages ↔ the tenant plane's records."""

from __future__ import annotations

from equiprune.v1 import tenants_pb2

from equiprune.service.errors import InvalidArgument
from equiprune.service.tenants.store import Tenant, TokenInfo

_ROLES = {tenants_pb2.TENANT_ROLE_UNSPECIFIED: "", tenants_pb2.TENANT: "tenant", tenants_pb2.ADMIN: "admin"}
_ROLE_VALUES = {"tenant": tenants_pb2.TENANT, "admin": tenants_pb2.ADMIN}


def role(value: int) -> str:
    if value not in _ROLES:
        raise InvalidArgument(f"unknown role {value}", field="role")
    return _ROLES[value]


def quotas(message: tenants_pb2.TenantQuotas) -> dict:
    values = {"max_concurrent_jobs": message.max_concurrent_jobs, "max_stored_bytes": message.max_stored_bytes,
              "max_upload_sessions": message.max_upload_sessions}
    for name, value in values.items():
        if value < 0:
            raise InvalidArgument(f"must be at least 1 (0 keeps the current value), got {value}",
                                  field=f"quotas.{name}")
    return values


def tenant_to_proto(t: Tenant) -> tenants_pb2.Tenant:
    message = tenants_pb2.Tenant(name=t.name, role=_ROLE_VALUES[t.role], quotas=tenants_pb2.TenantQuotas(
        max_concurrent_jobs=t.quotas.max_concurrent_jobs, max_stored_bytes=t.quotas.max_stored_bytes,
        max_upload_sessions=t.quotas.max_upload_sessions))
    message.create_time.FromNanoseconds(int(t.create_time * 1e9))
    return message


def token_to_proto(t: TokenInfo) -> tenants_pb2.TokenInfo:
    message = tenants_pb2.TokenInfo(token_id=t.token_id, tenant=t.tenant, label=t.label)
    message.create_time.FromNanoseconds(int(t.create_time * 1e9))
    if t.revoke_time is not None:
        message.revoke_time.FromNanoseconds(int(t.revoke_time * 1e9))
    return message


def usage_to_proto(usage: dict) -> tenants_pb2.TenantUsage:
    return tenants_pb2.TenantUsage(**usage)
