"""Structured error details: every refusal leaves as a readable message *and* a
`google.rpc.Status` in the `grpc-status-details-bin` trailer, the convention every gRPC
language has a decoder for (grpc-status in Python, @grpc/grpc-js + google/rpc/*.proto in
Node, status.FromError in Go...). A client in any language can then point at the field at
fault (`google.rpc.BadRequest.field_violations`) without parsing English.

`apply(context, status)` is the one place that writes a status onto a call; the ingress's
`_status` calls it. It works on a plain grpc ServicerContext and on Serve's
RayServegRPCContext alike. Serve forwards the trailer of a unary call as it is, but the
status of a failing server stream reaches its proxy only as a code and a details string (its
gRPCStatusError carries nothing else), so on a Serve context the details string also carries
the encoded Status behind a marker; `rpc/proxy_status.py`, installed in the proxy process by
our servicer functions, strips it off again and turns it into the trailer. Clients never see
the marker.
"""

from __future__ import annotations

import base64
import re

import grpc
from google.rpc import error_details_pb2, status_pb2

from equiprune.service.errors import ClientStatus

DETAILS_KEY = "grpc-status-details-bin"
DOMAIN = "equiprune.v1"
# Behind a line break and an invisible separator: never the start of a readable message, and
# never produced by our messages (which are single-line). base64 text follows it.
_MARK = "\n\u2063equiprune-status:"
_INCIDENT = re.compile(r"incident ([0-9a-f]{6,32})")
# Codes about the request's content: a client fixes a field and retries.
_FIELD_CODES = frozenset({"INVALID_ARGUMENT", "FAILED_PRECONDITION", "OUT_OF_RANGE"})
_RESOURCE_CODES = frozenset({"NOT_FOUND", "ALREADY_EXISTS"})


def problem_of(status: ClientStatus) -> str:
    """The message without its leading "field: " (ServiceError prefixes the field), so a
    field violation reads `field=spec.epochs, description=must be positive`."""
    prefix = f"{status.field}: " if status.field else ""
    return status.message[len(prefix):] if prefix and status.message.startswith(prefix) else status.message


def to_proto(status: ClientStatus) -> status_pb2.Status:
    """The google.rpc.Status for a client status: code, message, and the details that apply."""
    code = grpc.StatusCode[status.code]
    pb = status_pb2.Status(code=code.value[0], message=status.message)
    problem = problem_of(status)
    metadata = {"field": status.field} if status.field else {}
    incident = _INCIDENT.search(status.message) if status.code == "INTERNAL" else None
    if incident:
        metadata["incident"] = incident.group(1)
    # ErrorInfo on every error: `reason` is the stable, machine-readable code name.
    pb.details.add().Pack(error_details_pb2.ErrorInfo(reason=status.code, domain=DOMAIN, metadata=metadata))
    if status.code in _FIELD_CODES and status.field:
        # BadRequest for both request-content codes: one place for clients to find the field.
        pb.details.add().Pack(error_details_pb2.BadRequest(field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=status.field, description=problem)]))
    if status.code == "FAILED_PRECONDITION":
        pb.details.add().Pack(error_details_pb2.PreconditionFailure(violations=[
            error_details_pb2.PreconditionFailure.Violation(type="FIELD" if status.field else "STATE",
                                                            subject=status.field or "", description=problem)]))
    if status.code in _RESOURCE_CODES:
        # The field names the reference that did not resolve (artifact_id, spec.model...).
        pb.details.add().Pack(error_details_pb2.ResourceInfo(resource_type=status.field or "",
                                                             description=problem))
    return pb


def apply(context, status: ClientStatus) -> None:
    """Set the call's code, details and `grpc-status-details-bin` trailer from `status`."""
    payload = to_proto(status).SerializeToString()
    context.set_code(grpc.StatusCode[status.code])
    context.set_details(status.message)
    context.set_trailing_metadata([(DETAILS_KEY, payload)])
    if hasattr(context, "_set_on_grpc_context"):  # Serve's RayServegRPCContext (see the module doc)
        context.set_details(status.message + _MARK + base64.b64encode(payload).decode("ascii"))


def split_details(details: str | None) -> tuple[str | None, bytes | None]:
    """(readable message, encoded Status) from a details string `apply` wrote on a Serve context;
    (details, None) for any other string."""
    if not details or _MARK not in details:
        return details, None
    message, _, encoded = details.rpartition(_MARK)
    try:
        return message, base64.b64decode(encoded, validate=True)
    except ValueError:
        return message, None
