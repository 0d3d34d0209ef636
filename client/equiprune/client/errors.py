"""The one error type the SDK raises for a refused or failed call.

The service words its refusals as `<field>: <problem>` (e.g. `sha256: must be 64 hex digits`),
and every error also carries a `google.rpc.Status` in its `grpc-status-details-bin` trailer
(docs/contract.md): `google.rpc.BadRequest` field violations name the field at fault and
`google.rpc.ErrorInfo.reason` the code. The SDK reads those details first and falls back to
the message (a server, proxy or load balancer that sends no details), so callers can always
point at the flag or argument a person has to change.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import grpc

# A field path such as `sha256`, `spec.data.group_by` or `spec.data.group_by[0]`, then ": ".
# Free text ("failed to connect to all addresses; ...") has spaces before its first colon and
# therefore never matches.
_FIELD_PREFIX = re.compile(r"^(?P<field>[A-Za-z_][A-Za-z0-9_]*(?:(?:\.[A-Za-z_][A-Za-z0-9_]*)|(?:\[\d+\]))*): (?P<problem>.+)$",
                           re.DOTALL)


@dataclass(frozen=True)
class FieldViolation:
    """One `google.rpc.BadRequest.FieldViolation`: the field at fault and what is wrong."""

    field: str
    description: str


class EquipruneError(Exception):
    """A call the server refused or could not complete.

    code: the gRPC status code. message: the server's message (naming the field when there is
    one). field: the field at fault (from the structured details, else parsed from the
    message), or None. field_violations: the decoded google.rpc.BadRequest violations.
    reason: google.rpc.ErrorInfo.reason (the code name for our server), or None.
    """

    def __init__(self, code: grpc.StatusCode, message: str, field: str | None = None, *,
                 field_violations: tuple[FieldViolation, ...] = (), reason: str | None = None) -> None:
        self.code = code
        self.message = message
        self.field = field
        self.field_violations = tuple(field_violations)
        self.reason = reason
        super().__init__(f"{code.name}: {message}")

    @property
    def problem(self) -> str:
        """The message without its `<field>: ` prefix."""
        if self.field and self.message.startswith(f"{self.field}: "):
            return self.message[len(self.field) + 2:]
        return self.message

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError) -> "EquipruneError":
        """The EquipruneError for a failed call (a grpc.RpcError that is also a grpc.Call)."""
        code = error.code() if callable(getattr(error, "code", None)) else grpc.StatusCode.UNKNOWN
        details = error.details() if callable(getattr(error, "details", None)) else None
        message = details or str(error) or code.name
        violations, reason = decode_details(error)
        field = violations[0].field if violations else parse_field(message)
        return cls(code or grpc.StatusCode.UNKNOWN, message, field, field_violations=violations, reason=reason)


def decode_details(error: grpc.RpcError) -> tuple[tuple[FieldViolation, ...], str | None]:
    """(BadRequest field violations, ErrorInfo reason) from the call's google.rpc.Status trailer;
    ((), None) when there is none or it does not decode. Never raises: details are a bonus."""
    try:
        from google.rpc import error_details_pb2
        from grpc_status import rpc_status

        status = rpc_status.from_call(error) if callable(getattr(error, "trailing_metadata", None)) else None
    except (ImportError, ValueError, TypeError, AttributeError):
        # from_call raises ValueError when the trailer's code or message disagree with the call's.
        return (), None
    if status is None:
        return (), None
    violations: list[FieldViolation] = []
    reason = None
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations += [FieldViolation(v.field, v.description) for v in bad.field_violations]
        elif detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR) and reason is None:
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason = info.reason or None
    return tuple(violations), reason


def parse_field(message: str) -> str | None:
    """The field named by a message of the form `<field>: <problem>`, else None."""
    match = _FIELD_PREFIX.match(message)
    return match.group("field") if match else None


def status_code(error: BaseException) -> grpc.StatusCode | None:
    """The status code of a failed gRPC call or an EquipruneError; None for anything else."""
    if isinstance(error, EquipruneError):
        return error.code
    if isinstance(error, grpc.RpcError) and callable(getattr(error, "code", None)):
        return error.code()
    return None


class SpecError(ValueError):
    """An argument refused before any call: `field` names it, `problem` says why."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}")
