"""grpc.health.v1.Health on the ingress: the standard check that load balancers, Kubernetes
(`grpc` probes), grpc_health_probe and every gRPC library already speak.

Serve's proxy routes a unary or server-streaming call to the ingress deployment by *method
name* alone, so `Check` and `Watch` are methods of the ingress: `Ingress` inherits them from
`HealthMixin`. (Serve's own health check is `ray.serve.RayServeAPIService/Healthz`: a
different service and method name, so nothing clashes.) The handlers are registered in the
proxy by `rpc/servicers.add_HealthServicer_to_server`.

An answer comes from a running ingress replica, which Serve only routes to once the
application is deployed: that is what SERVING means here. "" (the whole server) and each of
our services are known; any other name is NOT_FOUND for Check and SERVICE_UNKNOWN for Watch,
as the health protocol asks.
"""

from __future__ import annotations

import asyncio

from grpc_health.v1 import health_pb2

from equiprune.service.errors import ClientStatus, InvalidArgument, client_status
from equiprune.service.rpc.servicers import UndecodableRequest
from equiprune.service.rpc import status

SERVICES = ("", "equiprune.v1.ArtifactService", "equiprune.v1.JobService", "equiprune.v1.ServingService",
            "equiprune.v1.TenantService")
# A Watch stream stays open (the protocol's contract); it re-checks this often and sends a
# message only when the status changes.
WATCH_RECHECK_S = 30.0

_Status = health_pb2.HealthCheckResponse.ServingStatus


class HealthMixin:
    """`Check` and `Watch` of grpc.health.v1.Health, for the Serve ingress deployment."""

    def health_status(self, service: str) -> int:
        """The status of `service` (one of SERVICES). A subclass may refine it; answering at
        all means the application is up."""
        return _Status.SERVING

    async def Check(self, request, grpc_context):  # noqa: N802 - the RPC's name
        refusal = _refusal(request)
        if refusal is None and request.service not in SERVICES:
            refusal = ClientStatus("NOT_FOUND", f"service: unknown service {request.service!r}", "service")
        if refusal is not None:
            status.apply(grpc_context, refusal)
            return health_pb2.HealthCheckResponse()
        return health_pb2.HealthCheckResponse(status=self.health_status(request.service))

    async def Watch(self, request, grpc_context):  # noqa: N802
        refusal = _refusal(request)
        if refusal is not None:
            status.apply(grpc_context, refusal)
            # Serve applies a failed stream's status only when the generator raises.
            raise _WatchRefused()
        last = None
        while True:
            current = (self.health_status(request.service) if request.service in SERVICES
                       else _Status.SERVICE_UNKNOWN)
            if current != last:
                yield health_pb2.HealthCheckResponse(status=current)
                last = current
            # Ends when the client cancels: Serve cancels this generator.
            await asyncio.sleep(WATCH_RECHECK_S)


class _WatchRefused(Exception):
    """Ends a refused Watch stream after its status was set."""


def _refusal(request) -> ClientStatus | None:
    """INVALID_ARGUMENT for bytes that did not decode (rpc/servicers.py wraps every decoder)."""
    if isinstance(request, UndecodableRequest):
        return client_status(InvalidArgument(
            f"the bytes received are not a valid {request.message_type} message ({request.problem})",
            field="request"))
    return None
