"""The servicer registrations Serve's gRPC proxy calls: the generated ones, with a request
decoder that never raises.

Serve's proxy decodes each request with the generated ``FromString`` before any of our code
runs; bytes that are not a valid message made grpc answer UNKNOWN with "Unexpected <class
'google.protobuf.message.DecodeError'>" — an internal detail, and the wrong code for a
client's mistake. Here every method's decoder is wrapped: undecodable bytes become an
`UndecodableRequest`, which the proxy forwards like any request and the ingress refuses as
INVALID_ARGUMENT naming the message type (`ingress.unary`/`streaming`).

These functions run in the proxy process, before the proxy starts, so they are also where the
protocol-level pieces are installed (service/equiprune/service/rpc/): the hook that turns an
error's encoded google.rpc.Status into its `grpc-status-details-bin` trailer
(rpc/proxy_status.py), grpc.health.v1 (answered by the ingress, rpc/health.py) and server
reflection v1 + v1alpha (answered in the proxy itself, rpc/reflection.py).
"""

from __future__ import annotations

from collections.abc import Callable

from equiprune.v1 import artifacts_pb2_grpc, jobs_pb2_grpc, serving_pb2_grpc, tenants_pb2_grpc


class UndecodableRequest:
    """Bytes that did not decode as the method's request message."""

    def __init__(self, message_type: str, problem: str) -> None:
        self.message_type, self.problem = message_type, problem


def _never_raising(decode: Callable[[bytes], object], message_type: str) -> Callable[[bytes], object]:
    def decode_or_mark(raw: bytes) -> object:
        try:
            return decode(raw)
        except Exception as exc:  # noqa: BLE001 - protobuf raises DecodeError and, on odd input, others
            return UndecodableRequest(message_type, type(exc).__name__)

    return decode_or_mark


class _SafeDecodingServer:
    """Stands in for the server while a generated `add_*_to_server` registers its handlers."""

    def __init__(self, server) -> None:
        self._server = server

    @staticmethod
    def _wrapped(handlers: dict) -> dict:
        wrapped = {}
        for name, handler in handlers.items():
            decode = handler.request_deserializer
            message_type = getattr(getattr(decode, "__self__", None), "DESCRIPTOR", None)
            label = message_type.full_name if message_type is not None else name
            wrapped[name] = handler._replace(request_deserializer=_never_raising(decode, label))
        return wrapped

    def add_generic_rpc_handlers(self, generic_handlers) -> None:
        for generic in generic_handlers:
            generic._method_handlers = self._wrapped(generic._method_handlers)
        self._server.add_generic_rpc_handlers(generic_handlers)

    def add_registered_method_handlers(self, service_name: str, handlers: dict) -> None:
        adder = getattr(self._server, "add_registered_method_handlers", None)
        if adder is not None:
            adder(service_name, self._wrapped(handlers))


def _prepared(server) -> _SafeDecodingServer:
    """The server, with the status-trailer hook installed first (idempotent): the proxy builds
    each handler when it is registered, so the hook must be in place before."""
    from equiprune.service.rpc import proxy_status

    proxy_status.install(server)
    return _SafeDecodingServer(server)


def add_ArtifactServiceServicer_to_server(servicer, server) -> None:  # noqa: N802 - the generated names
    artifacts_pb2_grpc.add_ArtifactServiceServicer_to_server(servicer, _prepared(server))


def add_JobServiceServicer_to_server(servicer, server) -> None:  # noqa: N802
    jobs_pb2_grpc.add_JobServiceServicer_to_server(servicer, _prepared(server))


def add_ServingServiceServicer_to_server(servicer, server) -> None:  # noqa: N802
    serving_pb2_grpc.add_ServingServiceServicer_to_server(servicer, _prepared(server))


def add_TenantServiceServicer_to_server(servicer, server) -> None:  # noqa: N802
    tenants_pb2_grpc.add_TenantServiceServicer_to_server(servicer, _prepared(server))


def add_HealthServicer_to_server(servicer, server) -> None:  # noqa: N802
    """grpc.health.v1.Health: Check and Watch route to the ingress by method name (HealthMixin)."""
    from grpc_health.v1 import health_pb2_grpc

    health_pb2_grpc.add_HealthServicer_to_server(servicer, _prepared(server))


def add_ServerReflectionServicer_to_server(servicer, server) -> None:  # noqa: N802
    """Reflection v1 and v1alpha, run inside the proxy; the servicer Serve passes is unused."""
    from equiprune.service.rpc import reflection

    reflection.register(server)
