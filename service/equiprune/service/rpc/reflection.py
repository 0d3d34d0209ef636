"""gRPC server reflection, v1 and v1alpha, answered inside Serve's gRPC proxy from the
committed descriptor set (client/equiprune/v1/equiprune.protoset), so the descriptors a tool
receives carry the .proto comments.

Why here and not on the ingress: ServerReflectionInfo is a bidi stream, a pure lookup in
static data; routing it to a replica would cost a Ray hop per message for nothing. ray 2.60's
gRPCGenericServer overrides *every* handler kind (unary and streaming alike) to route to
replicas, except for services marked with `add_passthrough_service`, whose handlers run as
registered, in the proxy's own event loop. That is how Serve runs its own reflection, so we
use the same door.

Two things Serve does on its own are corrected:
- Serve registers its reflection (v1alpha only, from the default descriptor pool: no comments)
  *after* every servicer function, and a later registered-method handler replaces an earlier
  one. `register` marks the reflection services as ours on that one server object and drops
  any later registration of them (a guard on the instance, logged once).
- grpcio-reflection's servicer rebuilds each FileDescriptorProto with `CopyToProto`, which
  leaves out source_code_info. Here a file from the descriptor set is served as it was
  generated, comments included; only files outside it (health, reflection) are rebuilt.

v1 is wire-identical to v1alpha (same messages and field numbers, another package name), so
one servicer answers both, each under its own service name.
"""

from __future__ import annotations

import logging

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, text_format
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2 as v1alpha_pb2
from grpc_reflection.v1alpha._async import ReflectionServicer

from equiprune.v1 import file_descriptor_set

log = logging.getLogger("equiprune.service")

V1ALPHA = "grpc.reflection.v1alpha.ServerReflection"
V1 = "grpc.reflection.v1.ServerReflection"
OUR_SERVICES = ("equiprune.v1.ArtifactService", "equiprune.v1.JobService", "equiprune.v1.ServingService",
                "equiprune.v1.TenantService")
HEALTH = "grpc.health.v1.Health"
_GUARDED = "_equiprune_owned_services"


def _v1_reflection_file() -> descriptor_pb2.FileDescriptorProto:
    """grpc/reflection/v1/reflection.proto, derived from v1alpha's (only the package differs)."""
    alpha = descriptor_pb2.FileDescriptorProto()
    v1alpha_pb2.DESCRIPTOR.CopyToProto(alpha)
    text = text_format.MessageToString(alpha).replace("grpc.reflection.v1alpha", "grpc.reflection.v1")
    v1 = text_format.Parse(text, descriptor_pb2.FileDescriptorProto())
    v1.name = "grpc/reflection/v1/reflection.proto"
    v1.ClearField("options")
    return v1


def build_files() -> dict[str, descriptor_pb2.FileDescriptorProto]:
    """Every file reflection can serve, by name, in dependency order (ours with source info)."""
    files = {f.name: f for f in descriptor_pb2.FileDescriptorSet.FromString(file_descriptor_set()).file}
    for module in (health_pb2, v1alpha_pb2):
        proto = descriptor_pb2.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(proto)
        files.setdefault(proto.name, proto)
    v1 = _v1_reflection_file()
    files[v1.name] = v1
    return files


class DocumentedReflectionServicer(ReflectionServicer):
    """grpcio-reflection's async servicer, answering with the stored FileDescriptorProtos."""

    def __init__(self, service_names, files: dict[str, descriptor_pb2.FileDescriptorProto]) -> None:
        pool = descriptor_pool.DescriptorPool()
        for proto in files.values():  # a set from --include_imports is in dependency order
            pool.Add(proto)
        super().__init__(service_names, pool=pool)
        self._serialized = {name: proto.SerializeToString() for name, proto in files.items()}
        self._files = files

    def _response(self, filename: str, request):
        seen: list[str] = []
        stack = [filename]
        while stack:
            name = stack.pop()
            if name not in seen:
                seen.append(name)
                stack.extend(self._files[name].dependency)
        return v1alpha_pb2.ServerReflectionResponse(
            original_request=request,
            file_descriptor_response=v1alpha_pb2.FileDescriptorResponse(
                file_descriptor_proto=[self._serialized[n] for n in seen]))

    def _file_by_filename(self, request, filename):
        if filename not in self._files:
            return super()._file_by_filename(request, filename)  # NOT_FOUND
        return self._response(filename, request)

    def _file_containing_symbol(self, request, fully_qualified_name):
        try:
            name = self._pool.FindFileContainingSymbol(fully_qualified_name).name
        except KeyError:
            return super()._file_containing_symbol(request, fully_qualified_name)  # NOT_FOUND
        return self._response(name, request)

    def _file_containing_extension(self, request, containing_type, extension_number):
        answer = super()._file_containing_extension(request, containing_type, extension_number)
        if answer.HasField("file_descriptor_response"):
            first = descriptor_pb2.FileDescriptorProto.FromString(answer.file_descriptor_response.file_descriptor_proto[0])
            return self._response(first.name, request)
        return answer


def _handlers(servicer) -> dict:
    return {"ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=v1alpha_pb2.ServerReflectionRequest.FromString,
        response_serializer=v1alpha_pb2.ServerReflectionResponse.SerializeToString)}


def register(server) -> None:
    """Serve reflection v1 and v1alpha on `server` (Serve's gRPCGenericServer, or a plain one)."""
    names = (V1, V1ALPHA)
    passthrough = getattr(server, "add_passthrough_service", None)
    if passthrough is None and hasattr(server, "service_handler_factory"):
        log.warning("this Serve version cannot run handlers in its proxy; gRPC reflection is off")
        return
    for name in names:
        if passthrough is not None:
            passthrough(name)
    servicer = DocumentedReflectionServicer(OUR_SERVICES + (HEALTH,) + names, build_files())
    for name in names:
        handlers = _handlers(servicer)
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, handlers),))
        server.add_registered_method_handlers(name, handlers)
    _guard(server, set(names))


def _guard(server, owned: set[str]) -> None:
    """Drop later registrations of `owned` services on this server object (Serve's own
    reflection, registered after all servicer functions, would replace ours)."""
    if getattr(server, _GUARDED, None) is not None:
        getattr(server, _GUARDED).update(owned)
        return
    setattr(server, _GUARDED, set(owned))
    add_generic, add_registered = server.add_generic_rpc_handlers, server.add_registered_method_handlers

    def add_generic_rpc_handlers(generic_handlers):
        names = {key.split("/")[1] for h in generic_handlers for key in getattr(h, "_method_handlers", {})}
        if names and names <= getattr(server, _GUARDED):
            log.info("gRPC services %s are already served by equiprune; a second registration is ignored",
                     sorted(names))
            return None
        return add_generic(generic_handlers)

    def add_registered_method_handlers(service_name, method_handlers):
        if service_name in getattr(server, _GUARDED):
            return None
        return add_registered(service_name, method_handlers)

    server.add_generic_rpc_handlers = add_generic_rpc_handlers
    server.add_registered_method_handlers = add_registered_method_handlers
